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
    from tenfold.classification.task import ClassificationTask

    train_logits: list[torch.dtype] = []  # the dtype of every training forward's logits
    forward = ClassificationTask.forward

    def spy(self, x):
        out = forward(self, x)
        if self.training:
            train_logits.append(out.dtype)
        return out

    monkeypatch.setattr(ClassificationTask, "forward", spy)
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *FAST, *STEPS, "--trainer.precision", "bf16-mixed", "--run_dir", "bf16"]) == 0
    assert train_logits == [torch.bfloat16] * 3  # the 3 training steps ran under bf16 autocast
    metrics = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    ckpt = load_checkpoint(tmp_path / "bf16" / "checkpoints" / "last.ckpt")
    # the weights stay float32 (mixed precision, not a bf16 model)
    floats = [v.dtype for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert floats and set(floats) == {torch.float32}


def test_ema_of_weights_is_checkpointed_safely(tmp_path, monkeypatch):
    """A run resumed from a mid-run checkpoint ends with the same average (and model) as the uninterrupted run."""
    monkeypatch.chdir(tmp_path)
    ema = ["--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay", "0.5"]
    six = ["--trainer.max_steps", "6", "--trainer.max_epochs", "-1", "--trainer.val_check_interval", "3"]
    every3 = ["--checkpoint.every_n_train_steps", "3", "--checkpoint.save_top_k", "-1"]
    assert main(["fit", *FAST, *six, *every3, *ema, "--run_dir", "full"]) == 0
    mid = tmp_path / "full" / "checkpoints" / "step0000003.ckpt"
    saved = load_checkpoint(mid)  # weights_only: plain values only
    # the average is what "state_dict" holds; the trained weights sit beside it, and they differ after 3 steps
    assert saved["global_step"] == 3 and saved["averaging_state"]["n_averaged"] == 3
    assert any(not torch.equal(saved["state_dict"][k], saved["current_model_state"][k]) for k in saved["state_dict"])
    assert main(["fit", *FAST, *six, *every3, *ema, "--run_dir", "resumed", "--ckpt_path", str(mid)]) == 0
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert full["global_step"] == resumed["global_step"] == 6
    assert resumed["averaging_state"]["n_averaged"] == full["averaging_state"]["n_averaged"] == 6
    for part in ("state_dict", "current_model_state"):  # the average and the trained weights, bit for bit
        assert resumed[part].keys() == full[part].keys()
        for key, value in full[part].items():
            torch.testing.assert_close(resumed[part][key], value, rtol=0, atol=0, msg=f"{part}[{key!r}] differs")
