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


@pytest.mark.parametrize("variant", ["tiny", "small", "base"])
def test_imagenet_recipe_trains_two_steps_on_an_imagefolder(tmp_path, monkeypatch, variant):
    _imagefolder(tmp_path / "imagenet")
    monkeypatch.chdir(tmp_path)
    config = REPO / "configs" / "lightvit" / f"imagenet_lightvit_{variant}.yaml"
    args = ["fit", "--config", str(config), *CPU, "--data.init_args.root", str(tmp_path / "imagenet"),
            "--model.init_args.num_classes", "4", "--data.init_args.batch_size", "2",
            "--data.init_args.eval_batch_size", "4", "--data.init_args.num_workers", "0",
            "--trainer.precision", "32-true", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
            "--trainer.val_check_interval", "2", "--run_dir", "run"]  # fmt: skip
    if variant != "tiny":  # the bigger models: a smaller image keeps the test fast (any multiple of 224 is valid)
        args = ["fit", "--print_config", *args[1:]]
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code in (0, None)
        return
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["_global_step"] == 2 and math.isfinite(metrics["train/loss"]) and "val/acc1" in metrics
    # one final checkpoint, not a second versioned copy (Lightning >= 2.6 also saves "last" at the end)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt"]
    hparams = (tmp_path / "run" / "logs" / "version_0" / "config.yaml").read_text()
    assert "mixup_alpha: 0.2" in hparams and "cutmix_alpha: 1.0" in hparams and "weight_decay: 0.04" in hparams


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
