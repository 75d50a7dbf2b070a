"""Safe checkpoint loading: plain values and tensors, argparse.Namespace of training scripts, nothing else."""

from __future__ import annotations

import argparse

import pytest
import torch

from tenfold.utils.checkpoint import load_checkpoint


def test_training_script_args_namespace_loads(tmp_path):
    path = tmp_path / "checkpoint-799.pth"
    args = argparse.Namespace(lr=1.5e-4, mask_ratio=0.75, model="green_mim_swin_base")
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 799, "args": args, "optimizer": {"state": {}}}, path)
    loaded = load_checkpoint(path)
    assert isinstance(loaded["args"], argparse.Namespace) and loaded["args"].mask_ratio == 0.75
    assert torch.equal(loaded["model"]["w"], torch.ones(2))


def test_namespace_holding_an_object_is_still_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"args": argparse.Namespace(module=torch.nn.Linear(1, 1))}, path)
    with pytest.raises(ValueError, match="pickled object"):
        load_checkpoint(path)
