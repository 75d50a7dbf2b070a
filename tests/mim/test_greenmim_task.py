"""GreenMIM task, tiny pre-training, conversion to timm for fine-tuning, and the recipes."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from tenfold.mim.cli import convert_main
from tenfold.mim.convert import infer_encoder_config
from tenfold.mim.data import MIMImageData, make_gradient_images
from tenfold.mim.demo import _initial_val_loss, make_data, make_task
from tenfold.mim.greenmim import GreenMIM

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


def _tiny_224(**kw) -> GreenMIM:
    return GreenMIM(
        img_size=224,
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        window_size=7,
        decoder_embed_dim=32,
        decoder_num_heads=4,
        **kw,
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
    assert base["model"]["class_path"] == "tenfold.mim.task.GreenMIMTask"
    assert (args["embed_dim"], args["depths"], args["num_heads"], args["window_size"]) == (
        128,
        [2, 2, 18, 2],
        [4, 8, 16, 32],
        7,
    )
    assert args["optim"]["lr"] == pytest.approx(1.5e-4 * 2048 / 256)
    tiny = yaml.safe_load((REPO / "configs" / "mim" / "tiny.yaml").read_text())
    task = GreenMIMTask(**{k: v for k, v in tiny["model"]["init_args"].items() if k != "optim"})
    assert task.model.num_units == 36


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
