"""GreenMIM task, tiny pre-training, conversion to timm for fine-tuning, and the recipes."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from tenfold.mim.cli import convert_main
from tenfold.mim.convert import infer_encoder_config
from tenfold.mim.data import MIMImageData, make_gradient_images
from tenfold.mim.demo import _initial_val_loss, make_data, make_task
from tenfold.mim.encoder import GreenSwinConfig
from tenfold.mim.greenmim import GreenMIM, GreenMIMConfig
from tenfold.utils.config import config_from

from conftest import run_tenfold

REPO = Path(__file__).resolve().parents[2]


def test_tiny_pretraining_loss_falls_below_six_tenths(tmp_path, one_thread):
    from tenfold.engine.quick import quick_fit

    data = make_data("gradients")
    result = quick_fit(make_task, data, max_steps=100, val_every=100, out_dir=tmp_path, seed=0)
    start = _initial_val_loss(result.task, data, 0)
    assert result.steps == 100
    assert start > 1.0  # about E[x^2] of the images: the untrained decoder predicts roughly 0
    assert result.final["val/loss"] < 0.6 * start


def test_weight_decay_groups_and_betas():
    task = make_task()
    no_decay = task.model.no_weight_decay()

    opt = task.configure_optimizers()
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    names = {id(p): n for n, p in task.model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "mask_token" not in decayed and not any("relative_position_bias_table" in n for n in decayed)
    assert "encoder.layers.0.blocks.0.attn.qkv.weight" in decayed
    assert "mask_token" in no_decay


def test_gradient_images_and_data_module():
    x = make_gradient_images(64, 32, seed=1)
    assert x.shape == (64, 3, 32, 32)
    assert 0.9 < float((x**2).mean()) < 1.5
    assert torch.equal(x, make_gradient_images(64, 32, seed=1))
    data = MIMImageData(image_size=32, train_size=8, val_size=4, batch_size=4)
    data.setup("fit")
    image, label, _ = data._splits["train"][0]
    assert image.shape == (3, 32, 32) and label == 0
    with pytest.raises(ValueError, match="source must be"):
        MIMImageData(source="imagenet")


def _tiny_224() -> GreenMIM:
    return GreenMIM(
        GreenMIMConfig(
            encoder=GreenSwinConfig(
                img_size=224, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7
            ),
            decoder_embed_dim=32,
            decoder_num_heads=4,
        )
    )


def test_convert_command_to_timm_then_finetune_loader(tmp_path, one_thread):
    from tenfold.classification.task import create_model

    torch.manual_seed(0)
    model = _tiny_224().eval()
    src = tmp_path / "checkpoint-799.pth"
    torch.save({"model": model.state_dict(), "epoch": 799}, src)
    out = tmp_path / "backbone_timm.pth"
    assert convert_main([str(src), str(out), "--num-classes", "10"]) == 0
    cfg = infer_encoder_config({k[8:]: v for k, v in model.state_dict().items() if k.startswith("encoder.")})
    assert cfg == {
        "img_size": 224,
        "patch_size": 4,
        "embed_dim": 16,
        "depths": (2, 2, 2, 2),
        "num_heads": (1, 2, 4, 8),
        "window_size": 7,
    }
    clf = create_model(
        "swin_tiny_patch4_window7_224",
        10,
        str(out),
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    ).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(clf.forward_features(x).flatten(1, 2), model.encoder(x), atol=1e-5, rtol=0)
    with pytest.raises(FileExistsError):
        convert_main([str(src), str(out)])
    swin = tmp_path / "backbone_swin.pth"
    assert convert_main([str(src), str(swin), "--format", "swin", "--released-channel-order"]) == 0
    state = torch.load(swin, weights_only=True)
    assert set(state) == set(model.encoder.state_dict())
    w = model.encoder.state_dict()["layers.0.downsample.norm.weight"]
    assert torch.equal(state["layers.0.downsample.norm.weight"], torch.cat([w[:16], w[32:48], w[16:32], w[48:]]))


def test_recipes_build_their_models():
    from tenfold.mim.task import GreenMIMTask

    base = yaml.safe_load((REPO / "configs" / "mim" / "greenmim_swin_base.yaml").read_text())
    args = base["model"]["init_args"]
    enc = args["greenmim"]["encoder"]
    assert base["model"]["class_path"] == "tenfold.mim.task.GreenMIMTask"
    assert (enc["embed_dim"], enc["depths"], enc["num_heads"], enc["window_size"]) == (
        128,
        [2, 2, 18, 2],
        [4, 8, 16, 32],
        7,
    )
    # ONE official script, the 2022 one (800 epochs, 256 x 8 GPUs, blr 1.0e-4), not mixed with the current one
    # (200 epochs, 586 x 8, blr 1.5e-4)
    assert base["trainer"]["max_epochs"] == 800 and base["trainer"]["devices"] == 8
    assert base["data"]["init_args"]["batch_size"] == 256
    assert args["optim"]["lr"] == pytest.approx(1.0e-4 * 256 * 8 / 256)
    assert args["optim"]["warmup_epochs"] == 40 and args["optim"]["warmup_prefix"] is True
    tiny = yaml.safe_load((REPO / "configs" / "mim" / "tiny.yaml").read_text())
    mim = tiny["model"]["init_args"]["greenmim"]
    task = GreenMIMTask(config_from(GreenMIMConfig, mim))
    assert task.model.num_units == 36
    # the official AdamW betas come from the optimiser settings (the task has no betas of its own)
    assert args["optim"]["opt_betas"] == tiny["model"]["init_args"]["optim"]["opt_betas"] == [0.9, 0.95]


def _recipe_lrs(config: str, updates_per_epoch: int, steps: list[int]) -> list[float]:
    """Learning rates of a recipe's ``optim`` at the given updates, through the engine's scheduler factory."""
    from types import SimpleNamespace

    from tenfold.engine.optim import OptimConfig, configure_optimizers

    recipe = yaml.safe_load((REPO / "configs" / "mim" / config).read_text())
    optim = OptimConfig(**recipe["model"]["init_args"]["optim"])
    loader = [None] * updates_per_epoch
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(train_dataloader=lambda: loader),
        limit_train_batches=1.0,
        accumulate_grad_batches=1,
        max_epochs=recipe["trainer"]["max_epochs"],
        max_steps=-1,
    )
    param = torch.nn.Parameter(torch.zeros(2, 2))
    out = configure_optimizers(SimpleNamespace(trainer=trainer), [param], optim)
    scheduler, optimizer = out["lr_scheduler"]["scheduler"], out["optimizer"]
    lrs = []
    for t in steps:
        scheduler.step_update(num_updates=t)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_pretraining_schedule_is_maes_warmup_then_half_cycle_cosine():
    """MAE's lr_sched (used by GreenMIM): lr * e / 40 for e < 40, then lr * (1 + cos(pi (e - 40) / 760)) / 2."""
    per_epoch, lr = 4, 8e-4
    steps = [0, 1, 80, 159, 160, 161, 400, 1000, 1800, 2600, 3199]
    ours = _recipe_lrs("greenmim_swin_base.yaml", per_epoch, steps)
    for t, got in zip(steps, ours, strict=True):
        e = t / per_epoch
        mae = lr * e / 40 if e < 40 else lr * 0.5 * (1 + math.cos(math.pi * (e - 40) / (800 - 40)))
        assert got == pytest.approx(mae, rel=1e-6, abs=1e-12), (t, got, mae)


def test_finetune_schedule_is_simmims_cosine_over_all_epochs():
    """SimMIM's build_scheduler: timm cosine with t_initial = all 100 epochs, the 20 warm-up epochs laid over it."""
    per_epoch, lr, low = 4, 1.875e-3, 3.75e-7
    steps = [0, 40, 100, 200, 399]
    ours = _recipe_lrs("greenmim_swin_base_finetune.yaml", per_epoch, steps)
    for t, got in zip(steps, ours, strict=True):
        if t < 20 * per_epoch:
            expected = low + t * (lr - low) / (20 * per_epoch)
        else:
            expected = low + 0.5 * (lr - low) * (1 + math.cos(math.pi * t / (100 * per_epoch)))
        assert got == pytest.approx(expected, rel=1e-6), (t, got, expected)


def test_pretraining_recipe_parses_with_the_official_augmentation(capsys):
    from tenfold.cli import main

    config = REPO / "configs" / "mim" / "greenmim_swin_base.yaml"
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--data.init_args.root", "/data/imagenet", "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    data = printed["data"]["init_args"]
    assert list(data["crop_scale"]) == [0.2, 1.0] and data["color_jitter"] == 0.0 and data["interpolation"] == "bicubic"


def test_tiny_recipe_runs_through_the_cli(tmp_path):
    import json

    run_tenfold(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "mim" / "tiny.yaml"),
            "--trainer.max_steps",
            "10",
            "--trainer.val_check_interval",
            "10",
            "--trainer.enable_progress_bar",
            "false",
        ],
        cwd=tmp_path,
    )
    metrics = json.loads(next(tmp_path.rglob("metrics.json")).read_text())
    assert metrics["_global_step"] == 10
    assert 0 < metrics["val/loss"] < 2.0


def test_finetune_recipe_parses_with_layer_decay(capsys):
    from tenfold.cli import main

    config = REPO / "configs" / "mim" / "greenmim_swin_base_finetune.yaml"
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--data.init_args.root", "/data/imagenet", "--print_config"])
    assert done.value.code in (0, None)
    optim = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["optim"]
    assert optim["layer_decay"] == 0.9 and optim["opt"] == "adamw"


def _recorded_training_masks(task, steps: int = 3) -> list[torch.Tensor]:
    """Masks the training step actually uses (recorded from the model's output), over ``steps`` steps."""
    masks = []
    forward = task.model.forward

    def recording(*args, **kwargs):
        out = forward(*args, **kwargs)
        masks.append(out.mask.detach().clone())
        return out

    task.model.forward = recording
    task.log = lambda *a, **k: None  # no trainer attached
    images = make_gradient_images(2, 96, seed=0)
    for i in range(steps):
        task.training_step((images, torch.zeros(2)), i)
    return masks


def test_each_rank_draws_its_own_training_masks(monkeypatch):
    """Under DDP every rank must draw a different mask per step (official: seed + rank), reproducibly."""
    from tenfold.mim.task import GreenMIMTask

    masks = {}
    for rank in (0, 1, 0):
        monkeypatch.setattr(GreenMIMTask, "global_rank", property(lambda self, r=rank: r))
        torch.manual_seed(0)  # seed_everything gives every rank the same global RNG
        task = make_task()
        task.setup("fit")
        masks.setdefault(rank, []).append(_recorded_training_masks(task))
    (rank0, rank0_again), (rank1,) = masks[0], masks[1]
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank0_again, strict=True))  # same rank, same seed
    assert all(not torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True))  # ranks differ at every step
    assert all(torch.equal(m, m[:1].expand_as(m)) for m in rank1)  # still one mask per batch within a rank


def test_mask_seed_defaults_to_the_run_seed():
    from tenfold.mim.task import GreenMIMTask

    drawn = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        task = make_task()
        task.setup("fit")
        drawn.append(task.training_mask(2).mask)
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])
    fixed = GreenMIMTask(
        GreenMIMConfig(
            encoder=GreenSwinConfig(img_size=96, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=3)
        ),
        mask_seed=5,
    )
    torch.manual_seed(123)
    fixed.setup("fit")
    assert torch.equal(fixed.training_mask(2).mask, drawn[0])  # mask_seed=5 on rank 0 equals run seed 5


def test_checkpoint_restores_each_ranks_mask_generator(tmp_path, monkeypatch):
    from tenfold.mim.task import GreenMIMTask
    from tenfold.utils.checkpoint import load_checkpoint

    a = make_task()
    a.mask_seed = 3
    a.setup("fit")
    a.training_mask(2)
    checkpoint: dict = {}
    a.on_save_checkpoint(checkpoint)
    expected = [a.training_mask(2).mask for _ in range(3)]
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    restored = load_checkpoint(path)  # the states survive a weights_only round trip
    b = make_task()
    b.mask_seed = 3
    b.setup("fit")
    b.on_load_checkpoint(restored)
    assert all(torch.equal(b.training_mask(2).mask, e) for e in expected)
    c = make_task()
    c.mask_seed = 3
    c.setup("fit")
    assert not torch.equal(c.training_mask(2).mask, expected[0])  # without the restore the sequence restarts
    # a two-rank file: each rank takes its own row
    other = torch.Generator().manual_seed(99)
    two = {GreenMIMTask.MASK_RNG_KEY: {"states": torch.stack([a.mask_generator.get_state(), other.get_state()])}}
    monkeypatch.setattr(GreenMIMTask, "global_rank", property(lambda self: 1))
    d = make_task()
    d.setup("fit")
    d.on_load_checkpoint(two)
    assert torch.equal(d.mask_generator.get_state(), other.get_state())


def test_resumed_fit_continues_the_mask_sequence(tmp_path, one_thread):
    """A real Lightning resume (setup, then on_load_checkpoint) gives the masks of an uninterrupted run."""
    import lightning.pytorch as pl

    def fit(max_steps: int, ckpt_path=None, save: bool = False):
        pl.seed_everything(0, verbose=False)
        task = make_task()
        recorded: list[torch.Tensor] = []
        forward = task.model.forward

        def recording(*args, **kwargs):
            out = forward(*args, **kwargs)
            if task.training:
                recorded.append(out.mask[:1].clone())
            return out

        task.model.forward = recording
        trainer = pl.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        data = MIMImageData(image_size=96, train_size=32, val_size=4, batch_size=4)
        trainer.fit(task, data, ckpt_path=ckpt_path)
        if save:
            trainer.save_checkpoint(tmp_path / "mid.ckpt")
        return recorded

    full = fit(4)
    fit(2, save=True)
    resumed = fit(4, ckpt_path=tmp_path / "mid.ckpt")
    assert len(full) == 4 and len(resumed) == 2
    assert all(torch.equal(a, b) for a, b in zip(full[2:], resumed, strict=True))


def test_checkpoint_gathers_the_generator_states_of_all_ranks():
    """Under DDP only rank 0 writes the file, so the states of every rank are gathered into it (world size 2 faked)."""
    from types import SimpleNamespace

    task = make_task()
    task.mask_seed = 0
    task.setup("fit")
    other_rank = torch.Generator().manual_seed(1).get_state()
    task._trainer = SimpleNamespace(world_size=2, global_rank=0)
    task.all_gather = lambda t: torch.stack([t, other_rank.to(t.device)])
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    states = checkpoint[task.MASK_RNG_KEY]["states"]
    assert states.shape == (2, other_rank.numel()) and states.dtype == torch.uint8
    assert torch.equal(states[0], task.mask_generator.get_state()) and torch.equal(states[1], other_rank)
