"""Segmentation distillation (DIST / MasKD on logit maps): the KD total by hand, the frozen teacher, stage 1 and its
released-format token export, wiring errors, the recipes, the tiny chain through the command line with an exact
kill-and-resume, and the ``maskd`` demo on a reduced budget."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from tenfold.data.segmentation import SegmentationData
from tenfold.distill import DISTLoss, MasKDSegLoss, dice_coeff
from tenfold.seg.distill import SegDistillationTask, SegMaskTokenTask, resolve_tokens
from tenfold.seg.models import DeepLabV3, SegOutput
from tenfold.utils.checkpoint import load_checkpoint

from conftest import REPO, run_tenfold

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = REPO / "configs" / "maskd"
NC = 4


class FixedLogits(nn.Module):
    """A 'segmenter' that returns fixed logits (learnable for a student), whatever the images."""

    def __init__(self, logits: torch.Tensor, aux: torch.Tensor | None, learnable: bool = False) -> None:
        super().__init__()
        self.num_classes = logits.shape[1]
        wrap = nn.Parameter if learnable else (lambda t: nn.Buffer(t))
        self.z = wrap(logits.clone())
        self.a = wrap(aux.clone()) if aux is not None else None

    def forward(self, x: torch.Tensor) -> SegOutput:
        return SegOutput(self.z, self.a)


def _logits(seed: int, size: tuple[int, int], n: int = 2) -> torch.Tensor:
    return 3 * torch.randn(n, NC, *size, generator=torch.Generator().manual_seed(seed))


def _net(channels=(16, 24, 24, 48), aspp: int = 16) -> DeepLabV3:
    return DeepLabV3(
        num_classes=NC, backbone="test_resnet", backbone_source="timm", output_stride=8, aspp_channels=aspp,
        atrous_rates=(1, 2, 3), head_dropout=0.1, align_corners=True, backbone_kwargs={"channels": list(channels)},
    )  # fmt: skip


DATA = dict(dataset="builtin", num_classes=NC, image_size=32, train_size=16, val_size=8, test_size=8,
            crop_size=(32, 32), batch_size=4, eval_batch_size=8)  # fmt: skip


def _trainer(root, max_steps: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, max_epochs=-1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False, limit_val_batches=0,
        enable_checkpointing=False, default_root_dir=root,
    )  # fmt: skip


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A random teacher whose BatchNorm statistics are not the defaults (an update would show), sharp logits."""
    torch.manual_seed(0)
    teacher = _net((32, 48, 48, 64), 24)
    for module in teacher.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():  # logits of a trained model's size (a few units), so that the tokens learn in a few steps
        teacher.classifier[4].weight.mul_(30)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(teacher.state_dict(), path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dist", "dist_sigmoid", "maskd"])
def test_kd_total_is_ce_plus_lambda_times_main_plus_04_aux_by_hand(kind):
    z_s, a_s, z_t, a_t = _logits(0, (6, 6)), _logits(1, (6, 6)), _logits(2, (6, 6)), _logits(3, (6, 6))
    labels = torch.randint(0, NC, (2, 24, 24), generator=torch.Generator().manual_seed(4))
    labels[:, :4] = 255
    make = {
        "dist": lambda: DISTLoss(dense=True),
        "dist_sigmoid": lambda: DISTLoss(dense=True, use_sigmoid=True),
        "maskd": lambda: MasKDSegLoss(NC, num_tokens=5),
    }[kind]
    loss_fn = make()
    if kind == "maskd":
        with torch.no_grad():
            loss_fn.mask_module.mask_token.copy_(torch.randn(5, NC, generator=torch.Generator().manual_seed(5)))
    task = SegDistillationTask(
        model=FixedLogits(z_s, a_s, learnable=True), teacher=FixedLogits(z_t, a_t), kd_loss=loss_fn, kd_weight=2.5,
        kd_aux_weight=0.4, aux_weight=0.4, allow_random_teacher=True, allow_random_tokens=True,
    )  # fmt: skip
    total, _, logs = task.compute_loss(torch.zeros(2, 3, 24, 24), labels)

    def up(x):
        return F.interpolate(x, (24, 24), mode="bilinear", align_corners=False)

    ce = F.cross_entropy(up(z_s), labels, ignore_index=255) + 0.4 * F.cross_entropy(up(a_s), labels, ignore_index=255)
    reference = make()
    if kind == "maskd":
        reference.load_state_dict(loss_fn.state_dict())
    kd_main, kd_aux = reference(z_s, z_t), reference(a_s, a_t)
    torch.testing.assert_close(total, ce + 2.5 * (kd_main + 0.4 * kd_aux), rtol=1e-6, atol=0)
    torch.testing.assert_close(logs["kd"], kd_main)
    torch.testing.assert_close(logs["kd_aux"], kd_aux)
    if kind.startswith("dist"):  # the relation terms are logged too
        parts = reference.forward_parts(z_s, z_t)
        torch.testing.assert_close(logs["kd_inter"], parts.inter)
        torch.testing.assert_close(logs["kd_intra"], parts.intra)
    total.backward()
    assert task.model.z.grad is not None and task.model.z.grad.abs().sum() > 0
    assert all(p.grad is None for p in task.kd_loss.parameters())  # frozen tokens


def test_student_logits_are_resized_to_the_teachers_and_aux_needs_both_heads():
    z_s, z_t, a_t = _logits(0, (8, 8)), _logits(1, (4, 4)), _logits(2, (4, 4))
    labels = torch.randint(0, NC, (2, 16, 16), generator=torch.Generator().manual_seed(3))
    task = SegDistillationTask(
        model=FixedLogits(z_s, None, learnable=True), teacher=FixedLogits(z_t, a_t), kd_loss=DISTLoss(dense=True),
        allow_random_teacher=True,
    )  # fmt: skip
    total, _, logs = task.compute_loss(torch.zeros(2, 3, 16, 16), labels)
    resized = F.interpolate(z_s, (4, 4), mode="bilinear", align_corners=False)
    ce = F.cross_entropy(F.interpolate(z_s, (16, 16), mode="bilinear", align_corners=False), labels)
    torch.testing.assert_close(total, ce + DISTLoss(dense=True)(resized, z_t))
    assert "kd_aux" not in logs and "aux" not in logs  # no aux head in the student: no aux CE, no aux KD
    baseline = SegDistillationTask(
        model=FixedLogits(z_s, None, learnable=True), teacher=FixedLogits(z_t, a_t), allow_random_teacher=True
    )
    total, _, logs = baseline.compute_loss(torch.zeros(2, 3, 16, 16), labels)
    assert set(logs) == {"ce"} and torch.equal(total, logs["ce"])  # kd_loss None: the CE baseline


def test_wiring_errors_fail_at_construction(tmp_path):
    z, a = _logits(0, (4, 4)), _logits(1, (4, 4))

    def build(**kw):
        args = dict(model=FixedLogits(z, a, True), teacher=FixedLogits(z, a), allow_random_teacher=True)
        return SegDistillationTask(**{**args, **kw})

    with pytest.raises(ValueError, match="dense=True"):
        build(kd_loss=DISTLoss())  # the classification DIST would correlate over the wrong axes
    with pytest.raises(ValueError, match="teacher_weights is required"):
        build(allow_random_teacher=False)
    with pytest.raises(ValueError, match="student has 4 classes but the teacher has 3"):
        build(teacher=FixedLogits(z[:, :3], a[:, :3]))
    with pytest.raises(ValueError, match="tokens is required for MasKD"):
        build(kd_loss=MasKDSegLoss(NC, 8))
    with pytest.raises(ValueError, match="takes no tokens"):
        build(kd_loss=DISTLoss(dense=True), tokens=str(tmp_path / "t.pth"))
    torch.save({"mask_token": torch.zeros(8, 19)}, tmp_path / "cityscapes.pth")  # the released shape, 19 classes
    with pytest.raises(ValueError, match=r"mask_token: file \(8, 19\) vs model \(8, 4\)"):
        build(kd_loss=MasKDSegLoss(NC, 8), tokens=str(tmp_path / "cityscapes.pth"))
    with pytest.raises(ValueError, match="kd_weight must be >= 0"):
        build(kd_weight=-1.0)


# ---------------------------------------------------------------------------------------------------------------
# the teacher and the tokens during training
# ---------------------------------------------------------------------------------------------------------------


def test_stage2_teacher_is_loaded_strictly_gets_no_gradient_and_never_changes(teacher_file, tmp_path):
    pl.seed_everything(0)
    task = SegDistillationTask(
        model=_net(), teacher=_net((32, 48, 48, 64), 24), teacher_weights=str(teacher_file),
        kd_loss=DISTLoss(dense=True), input_size=(3, 32, 32),
    )  # fmt: skip
    saved = torch.load(teacher_file, weights_only=True)
    assert all(torch.equal(task.teacher.state_dict()[k], v) for k, v in saved.items())
    student_before = {k: v.clone() for k, v in task.model.state_dict().items()}
    trainer = _trainer(tmp_path, 3)
    trainer.fit(task, datamodule=SegmentationData(**DATA))
    for key, value in task.teacher.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(value, saved[key]), key
    assert all(p.grad is None and not p.requires_grad for p in task.teacher.parameters())
    assert not task.teacher.training and task.model.training
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimised == {id(p) for p in task.model.parameters()}
    assert not torch.equal(task.model.state_dict()["classifier.4.weight"], student_before["classifier.4.weight"])
    assert {"train/kd", "train/kd_aux", "train/kd_inter", "train/kd_intra", "train/ce"} <= set(trainer.callback_metrics)
    with pytest.raises(ValueError, match="do not fit DeepLabV3"):  # strict: another architecture's weights fail
        SegDistillationTask(model=_net(), teacher=_net(), teacher_weights=str(teacher_file))


@pytest.mark.parametrize("train_mode", [True, False])
def test_stage1_optimises_only_the_tokens_and_writes_the_released_format(teacher_file, tmp_path, train_mode):
    pl.seed_everything(0)
    task = SegMaskTokenTask(
        teacher=_net((32, 48, 48, 64), 24), teacher_weights=str(teacher_file), num_tokens=6,
        teacher_train_mode=train_mode, tokens_file="tokens.pth",
    )  # fmt: skip
    assert (task.optim.opt, task.optim.lr, task.optim.momentum, task.optim.weight_decay) == ("momentum", 0.1, 0.9, 1e-3)
    assert task.optim.sched == "poly" and task.optim.decay_rate == 0.9 and task.optim.min_lr == 0.0
    saved = torch.load(teacher_file, weights_only=True)
    token_before = task.mask_module.mask_token.detach().clone()
    data = SegmentationData(**DATA)
    data.setup("fit")
    images = torch.stack([data._splits["train"][(i, 0)][0] for i in range(8)])
    with torch.no_grad():  # the Dice of the tokens on fixed teacher logits, before and after training
        logits = task.teacher.eval()(images).logits
        dice_before = dice_coeff(task.mask_module.forward_mask(logits).flatten(2))
    trainer = _trainer(tmp_path, 8)
    trainer.fit(task, datamodule=data)

    optimised = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
    assert len(optimised) == 1 and optimised[0] is task.mask_module.mask_token
    assert not torch.equal(task.mask_module.mask_token, token_before)
    teacher = task.teacher.state_dict()
    for key, value in saved.items():
        if "running_" in key or "num_batches" in key:
            # official quirk: in training mode the frozen teacher's BatchNorm still updates its statistics
            assert torch.equal(teacher[key], value) != train_mode, key
        else:
            assert torch.equal(teacher[key], value), key
    assert all(not p.requires_grad for p in task.teacher.parameters())
    assert task.teacher.training == train_mode
    assert {"train/ce", "train/aux", "train/dice", "train/loss"} <= set(trainer.callback_metrics)
    with torch.no_grad():
        dice_after = dice_coeff(task.mask_module.forward_mask(logits).flatten(2))
    assert dice_before > 0.9 and dice_after < dice_before  # near 1 at initialisation, then the masks move apart

    # the export is exactly the released raw layout, and stage 2 loads it strictly
    export = load_checkpoint(tmp_path / "tokens.pth")
    assert list(export) == ["mask_token"] and export["mask_token"].shape == (6, NC)
    assert torch.equal(export["mask_token"], task.mask_module.mask_token.detach())
    loss = MasKDSegLoss(NC, 6)
    loss.load_tokens(str(tmp_path / "tokens.pth"))
    assert torch.equal(loss.mask_module.mask_token, export["mask_token"])
    with pytest.raises(ValueError, match="mask_token"):
        MasKDSegLoss(NC, 8).load_tokens(str(tmp_path / "tokens.pth"))
    student = SegDistillationTask(
        model=_net(), teacher=_net((32, 48, 48, 64), 24), teacher_weights=str(teacher_file),
        kd_loss=MasKDSegLoss(NC, 6), tokens=str(tmp_path), input_size=(3, 32, 32),
    )  # fmt: skip
    assert resolve_tokens(str(tmp_path)) == str(tmp_path / "tokens.pth")
    assert torch.equal(student.kd_loss.mask_module.mask_token, export["mask_token"])
    assert not student.kd_loss.mask_module.mask_token.requires_grad


# ---------------------------------------------------------------------------------------------------------------
# recipes and the command line
# ---------------------------------------------------------------------------------------------------------------


def _printed(recipe: str, *extra: str) -> dict:
    from tenfold.engine.lightning_cli import run_lightning_cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        run_lightning_cli(["fit", "--config", str(CONFIGS / recipe), *extra, "--print_config"])
    assert done.value.code == 0, recipe
    return yaml.safe_load(out.getvalue())


def test_recipes_parse_with_the_official_settings(tmp_path, monkeypatch):
    from tenfold.engine.lightning_cli import run_lightning_cli

    monkeypatch.chdir(tmp_path)
    recipes = sorted(p.name for p in CONFIGS.glob("*.yaml") if "seg" in p.name or p.name.startswith("cityscapes_"))
    assert len(recipes) == 8
    cfg = {name: _printed(name) for name in recipes}
    for kind in ("maskd", "dist"):
        recipe = cfg[f"cityscapes_deeplabv3_r101_r18_{kind}.yaml"]
        args = recipe["model"]["init_args"]
        assert args["kd_weight"] == 1.0 and args["kd_aux_weight"] == 0.4 and args["aux_weight"] == 0.4
        assert args["teacher"]["init_args"]["backbone"] == "resnet101s"
        assert args["model"]["init_args"]["backbone"] == "resnet18"
        assert args["model"]["init_args"]["output_stride"] == args["teacher"]["init_args"]["output_stride"] == 8
        optim = args["optim"]
        assert (optim["opt"], optim["lr"], optim["momentum"], optim["weight_decay"]) == ("momentum", 0.02, 0.9, 5e-4)
        assert (optim["sched"], optim["decay_rate"], optim["min_lr"]) == ("poly", 0.9, 1e-4)
        assert recipe["trainer"]["max_steps"] == 40000 and recipe["trainer"]["devices"] == 8
        data = recipe["data"]["init_args"]
        assert data["batch_size"] == 2 and data["crop_size"] == [512, 1024] and data["dataset"] == "cityscapes"
    dist = cfg["cityscapes_deeplabv3_r101_r18_dist.yaml"]["model"]["init_args"]["kd_loss"]
    assert dist["class_path"] == "tenfold.distill.DISTLoss"
    assert dist["init_args"] == {"beta": 1.0, "gamma": 1.0, "tau": 1.0, "dense": True, "use_sigmoid": False}
    maskd = cfg["cityscapes_deeplabv3_r101_r18_maskd.yaml"]["model"]["init_args"]["kd_loss"]
    assert maskd["init_args"]["num_classes"] == 19 and maskd["init_args"]["num_tokens"] == 8
    stage1 = cfg["cityscapes_deeplabv3_r101_r18_stage1.yaml"]
    s1 = stage1["model"]["init_args"]
    assert s1["num_tokens"] == 8 and s1["teacher_train_mode"] and stage1["trainer"]["max_steps"] == 10000
    assert (s1["optim"]["lr"], s1["optim"]["weight_decay"], s1["optim"]["min_lr"]) == (0.1, 1e-3, 0.0)
    assert cfg["tiny_seg_ce.yaml"]["model"]["init_args"]["kd_loss"] is None
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit) as bad:
        run_lightning_cli(["fit", "--config", str(CONFIGS / "tiny_seg_maskd.yaml"), "--model.init_args.kd_wieght", "1"])
    assert bad.value.code != 0 and "kd_wieght" in err.getvalue()


def _state(run_group) -> dict:
    return load_checkpoint(next(run_group.glob("*/checkpoints/last.ckpt")))


def test_tiny_chain_trains_through_the_cli_and_a_killed_maskd_run_resumes_exactly(tmp_path):
    fast = ["--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--data.init_args.train_size", "24",
            "--data.init_args.val_size", "4", "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size",
            "4", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]  # fmt: skip
    runs = tmp_path / "runs" / "maskd"
    for recipe in ("tiny_seg_teacher", "tiny_seg_stage1", "tiny_seg_ce", "tiny_seg_dist"):
        run_tenfold(["fit", "--config", str(CONFIGS / f"{recipe}.yaml"), *fast], tmp_path)
        assert next((runs / recipe).glob("*/checkpoints/last.ckpt")).is_file(), recipe
    teacher = {k[len("model.") :]: v for k, v in _state(runs / "tiny_seg_teacher")["state_dict"].items()}
    tokens_path = next((runs / "tiny_seg_stage1").glob("*/tokens.pth"))
    tokens = load_checkpoint(tokens_path)
    assert list(tokens) == ["mask_token"] and tokens["mask_token"].shape == (8, 5)
    for recipe in ("tiny_seg_ce", "tiny_seg_dist"):  # the same frozen teacher (BatchNorm statistics included)
        state = _state(runs / recipe)["state_dict"]
        assert all(torch.equal(state["teacher." + k], v) for k, v in teacher.items()), recipe
    metrics = {
        r: json.loads(next((runs / r).glob("*/metrics.json")).read_text()) for r in ("tiny_seg_ce", "tiny_seg_dist")
    }
    assert {"train/kd", "train/kd_aux", "train/kd_inter", "train/kd_intra", "val/teacher_miou"} <= set(
        metrics["tiny_seg_dist"]
    )
    assert "train/kd" not in metrics["tiny_seg_ce"] and 0 <= metrics["tiny_seg_ce"]["val/miou"] <= 1
    assert metrics["tiny_seg_dist"]["val/teacher_miou"] == metrics["tiny_seg_ce"]["val/teacher_miou"]

    # MasKD stage 2 from a copy of the stage-1 tokens: 8 steps, checkpoints every 4; a second run is killed at
    # step 6 and resumed from step 4 after the token file was changed: the checkpoint's tokens must win
    token_copy = tmp_path / "tokens.pth"
    shutil.copy(tokens_path, token_copy)
    maskd = [*fast, "--trainer.max_steps", "8", "--trainer.val_check_interval", "8",
             "--checkpoint.every_n_train_steps", "4", "--trainer.num_sanity_val_steps", "0",
             "--model.init_args.tokens", str(token_copy)]  # fmt: skip
    config = ["--config", str(CONFIGS / "tiny_seg_maskd.yaml")]
    run_tenfold(["fit", *config, *maskd, "--run_dir", "full"], tmp_path)
    killed = run_tenfold(["fit", *config, *maskd, "--run_dir", "crash",
                          "--trainer.callbacks+=tenfold_test_callbacks.KillAtStep", "--trainer.callbacks.step", "6"],
                         tmp_path, check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert load_checkpoint(tmp_path / "crash" / "checkpoints" / "last.ckpt")["global_step"] == 4
    torch.save({"mask_token": tokens["mask_token"] + 1.0}, token_copy)
    run_tenfold(["fit", *config, *maskd, "--run_dir", "crash", "--ckpt_path", "last"], tmp_path)
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "crash" / "checkpoints" / "last.ckpt")
    assert full["global_step"] == resumed["global_step"] == 8
    assert torch.equal(full["state_dict"]["kd_loss.mask_module.mask_token"], tokens["mask_token"])
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    metrics_full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    metrics_resumed = json.loads((tmp_path / "crash" / "metrics.json").read_text())
    assert metrics_resumed["val/miou"] == metrics_full["val/miou"] and "train/kd_aux" in metrics_full


# ---------------------------------------------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------------------------------------------


def test_demo_runs_on_a_reduced_budget_and_writes_its_table_and_masks(tmp_path, monkeypatch):
    from matplotlib.image import imread
    from rich.console import Console

    import tenfold.seg.demo as demo
    from tenfold.engine.demo import run_demos

    for name, value in (("TEACHER_STEPS", 4), ("STAGE1_STEPS", 3), ("STUDENT_STEPS", 2), ("TRAIN_SIZE", 32),
                        ("VAL_SIZE", 16)):  # fmt: skip
        monkeypatch.setattr(demo, name, value)
    report = run_demos(only=["maskd"], out=tmp_path / "demo", console=Console(file=io.StringIO()))
    text = report.read_text()
    assert "| maskd | ok |" in text
    table = [line for line in text.splitlines() if line.startswith("| student")]
    assert [line.split("|")[2].strip() for line in table] == ["CE", "CE + DIST", "CE + MasKD"]
    for line in table:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        mean, per_seed, seeds = float(cells[2]), [float(v) for v in cells[4].split(",")], int(cells[6])
        assert seeds == 3 and len(per_seed) == 3
        assert all(0 <= v <= 1 for v in per_seed) and 0 <= mean <= 1
        assert mean == pytest.approx(float(np.mean(per_seed)), abs=2e-3)
    teacher_row = next(line for line in text.splitlines() if line.startswith("| teacher (1.4 M)"))
    assert 0 <= float(teacher_row.split("|")[3]) <= 1
    dice = next(line for line in text.splitlines() if "MasKD stage 1" in line).split("|")[9].strip()
    start, end = (float(v) for v in dice.split("->"))
    assert 0.99 < start <= 1 and 0 < end <= 1

    png = tmp_path / "demo" / "maskd" / "token_masks.png"
    assert f"![token_masks](maskd/{png.name})" in text
    pixels = imread(png)[..., :3]
    panels = 2 + demo.NUM_TOKENS
    assert pixels.shape[:2] == (demo.PANEL_PX, demo.PANEL_PX * panels)
    strips = [pixels[:, i * demo.PANEL_PX : (i + 1) * demo.PANEL_PX] for i in range(panels)]
    assert all(strip.std() > 0.02 for strip in strips)  # every panel holds a picture
    assert all(not np.array_equal(strips[i], strips[j]) for i in range(panels) for j in range(i))
    assert (tmp_path / "demo" / "maskd" / "tokens.pth").is_file()
