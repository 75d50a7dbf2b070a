"""LightViT recipes through the real command line: the ImageNet recipes on a fake ImageFolder, the tiny recipe."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from tenfold.cli import main

from conftest import REPO

CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
       "--trainer.num_sanity_val_steps", "0"]  # fmt: skip


def _imagefolder(root, classes=4, per_class=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")


#: What each ImageNet recipe must resolve to (the official recipe, see the YAML headers): drop path per model.
DROP_PATH = {"tiny": 0.1, "small": 0.1, "base": 0.3}


@pytest.mark.parametrize("variant", ["tiny", "small", "base"])
def test_imagenet_recipe_trains_two_steps_on_an_imagefolder(tmp_path, monkeypatch, variant):
    """The full-size model of each recipe at 224 px (its minimum: a multiple of 8 * window 7 * 2**2), batch 2."""
    import timm

    from tenfold.utils.checkpoint import load_checkpoint

    _imagefolder(tmp_path / "imagenet")  # 16 training images: 8 updates an epoch at batch 2
    monkeypatch.chdir(tmp_path)
    config = REPO / "configs" / "lightvit" / f"imagenet_lightvit_{variant}.yaml"
    args = ["fit", "--config", str(config), *CPU, "--data.init_args.root", str(tmp_path / "imagenet"),
            "--model.init_args.num_classes", "4", "--data.init_args.batch_size", "2",
            "--data.init_args.eval_batch_size", "2", "--data.init_args.num_workers", "0",
            "--trainer.precision", "32-true", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
            "--trainer.val_check_interval", "2", "--run_dir", "run"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["_global_step"] == 2 and math.isfinite(metrics["train/loss"]) and "val/acc1" in metrics
    # one final checkpoint, not a second versioned copy (Lightning >= 2.6 also saves "last" at the end)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt"]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    # the recipe's model: the registered architecture's exact parameter names and shapes
    reference = timm.create_model(f"lightvit_{variant}", num_classes=4)
    trained = {k.removeprefix("model."): tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    assert trained == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ckpt["hyper_parameters"]["model_kwargs"] == {"drop_path_rate": DROP_PATH[variant]}
    assert ckpt["hyper_parameters"]["label_smoothing"] == 0.1
    assert ckpt["hyper_parameters"]["mixup"] == {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "prob": 1.0,
                                                 "switch_prob": 0.5, "mode": "batch"}  # fmt: skip
    # AdamW (0.9, 0.999), eps 1e-8; weight decay 0.04 except 1-D parameters, biases, global_token and the relative
    # position bias tables; every parameter updated twice
    optim = ckpt["optimizer_states"][0]
    exempt = ("global_token", "relative_position_bias_table")
    no_decay = sum(1 for n, p in reference.named_parameters() if p.ndim <= 1 or n.endswith(exempt))
    groups = {g["weight_decay"]: g for g in optim["param_groups"]}
    assert set(groups) == {0.0, 0.04} and len(groups[0.0]["params"]) == no_decay
    assert len(groups[0.04]["params"]) == len(list(reference.parameters())) - no_decay
    assert all(g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8 and g["initial_lr"] == 1e-3 for g in groups.values())
    assert len(optim["state"]) == len(list(reference.parameters()))
    assert all(float(s["step"]) == 2 for s in optim["state"].values())
    # per-iteration linear warm-up from 1e-7 to 1e-3 over 20 epochs of 8 updates: the lr after 2 updates
    expected_lr = 1e-7 + 2 * (1e-3 - 1e-7) / (20 * 8)
    assert [g["lr"] for g in groups.values()] == pytest.approx([expected_lr, expected_lr], rel=1e-9)
    data = ckpt["datamodule_hyper_parameters"]
    assert {k: data[k] for k in ("image_size", "augment", "auto_augment", "re_prob", "re_mode", "interpolation")} == {
        "image_size": 224, "augment": "timm", "auto_augment": "rand-m9-mstd0.5", "re_prob": 0.25, "re_mode": "pixel",
        "interpolation": "bicubic"}  # fmt: skip


def test_tiny_recipe_learns_on_builtin_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(REPO / "configs" / "lightvit" / "tiny.yaml"), *CPU,
            "--data.init_args.train_size", "1024", "--data.init_args.val_size", "256", "--trainer.max_epochs", "3",
            "--run_dir", "tiny"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((tmp_path / "tiny" / "metrics.json").read_text())
    assert metrics["_global_step"] == 48
    with open(tmp_path / "tiny" / "logs" / "version_0" / "metrics.csv") as f:
        val_losses = [float(row["val/loss"]) for row in csv.DictReader(f) if row["val/loss"]]
    assert len(val_losses) == 3 and val_losses[0] > val_losses[1] > val_losses[2]  # learns every epoch
    assert metrics["val/acc1"] > 0.13  # 10 classes: chance is 0.10 (ViTs start slowly; 31 % after 256 steps)
