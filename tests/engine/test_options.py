"""Engine options: mixed precision and EMA of weights, through the real command line."""

from __future__ import annotations

import json
import math

import torch

from tenfold.cli import main
from tenfold.utils.checkpoint import load_checkpoint

from conftest import FAST

STEPS = ["--trainer.max_steps", "3", "--trainer.max_epochs", "-1", "--trainer.val_check_interval", "3"]


def test_bf16_mixed_precision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *FAST, *STEPS, "--trainer.precision", "bf16-mixed", "--run_dir", "bf16"]) == 0
    metrics = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    ckpt = load_checkpoint(tmp_path / "bf16" / "checkpoints" / "last.ckpt")
    assert all(v.dtype != torch.bfloat16 for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_ema_of_weights_is_checkpointed_safely(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ema = ["--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay", "0.5"]
    assert main(["fit", *FAST, *STEPS, *ema, "--run_dir", "ema"]) == 0
    ckpt = load_checkpoint(tmp_path / "ema" / "checkpoints" / "last.ckpt")  # weights_only: plain values only
    assert any("EMAWeightAveraging" in key for key in ckpt["callbacks"])
    # resuming restores the average too (the run is already finished: it loads and stops at once)
    assert main(["fit", *FAST, *STEPS, *ema, "--run_dir", "ema", "--ckpt_path", "last"]) == 0
