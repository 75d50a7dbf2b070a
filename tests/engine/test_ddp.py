"""Two CPU processes (DDP, gloo) reproduce one process with the same global batch; metrics are synchronised."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import torch

from tenfold.classification import ClassificationTask
from tenfold.utils.checkpoint import load_checkpoint

from conftest import FAST, run_tenfold

# A LayerNorm ViT has no batch statistics, so 2 processes x 16 images must give the same gradients as 1 x 32
# (up to float summation order). BatchNorm models differ slightly under DDP on CPU: each process normalises its own
# half-batch (SyncBatchNorm needs a GPU), which is the expected DDP behaviour, not a bug.
VIT_KWARGS = '{"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}'
VIT = [
    *FAST,
    "--model.init_args.model", "vit_tiny_patch16_224",
    "--model.init_args.model_kwargs", VIT_KWARGS,
    "--model.init_args.optim.opt", "adamw",
    "--model.init_args.optim.lr", "0.003",
    "--model.init_args.optim.weight_decay", "0.05",
    "--trainer.max_steps", "12",
    "--trainer.max_epochs", "-1",
    "--trainer.val_check_interval", "12",
    "--data.init_args.augment", "crop_flip",
]  # fmt: skip
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
# Tolerance: 12 AdamW steps amplify float32 summation-order differences of ~1e-7 in the gradients.
ATOL = 1e-4


def test_two_processes_match_one_with_same_global_batch(tmp_path):
    run_tenfold(["fit", *VIT, "--run_dir", "single"], tmp_path)
    run_tenfold(["fit", *VIT, *DDP, "--data.init_args.batch_size", "16", "--run_dir", "ddp"], tmp_path)
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.ckpt")
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")
    assert single["global_step"] == ddp["global_step"] == 12
    for key, value in single["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][key], value, rtol=0, atol=ATOL, msg=f"{key} differs")
    # the weights did move well beyond the tolerance, so the comparison is not between two initialisations
    pl.seed_everything(0)
    init = ClassificationTask(model="vit_tiny_patch16_224", num_classes=10, model_kwargs=json.loads(VIT_KWARGS))
    moved = max((init.state_dict()[k] - v).abs().max().item() for k, v in single["state_dict"].items())
    assert moved > 20 * ATOL

    # Metrics: each process validates half of the 128 images; the logged value must be the full-set value.
    m_single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    m_ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert abs(m_ddp["val/acc1"] - m_single["val/acc1"]) <= 1 / 128 + 1e-9
    assert abs(m_ddp["val/loss"] - m_single["val/loss"]) < 1e-3

    # validate the same checkpoint with 1 and with 2 processes: synchronised metrics are identical
    ckpt = str(tmp_path / "single" / "checkpoints" / "last.ckpt")
    run_tenfold(["validate", *VIT, "--ckpt_path", ckpt, "--run_dir", "val1"], tmp_path)
    run_tenfold(["validate", *VIT, *DDP, "--ckpt_path", ckpt, "--run_dir", "val2"], tmp_path)
    v1 = json.loads((tmp_path / "val1" / "metrics.json").read_text())
    v2 = json.loads((tmp_path / "val2" / "metrics.json").read_text())
    assert v2["val/acc1"] == v1["val/acc1"]
    assert abs(v2["val/loss"] - v1["val/loss"]) < 1e-6
