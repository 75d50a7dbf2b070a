"""Dataclass settings come back from their dict form, so tasks restored from a checkpoint keep their settings."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from tenfold.classification.task import ClassificationTask, MixupConfig
from tenfold.engine.optim import OptimConfig
from tenfold.mim import GreenMIMConfig, GreenSwinConfig
from tenfold.mim.task import GreenMIMTask
from tenfold.utils.config import config_from


def test_round_trip_of_nested_and_tuple_fields():
    optim = OptimConfig(opt="adamw", lr=3e-4, opt_betas=(0.9, 0.95))
    back = config_from(OptimConfig, asdict(optim) | {"opt_betas": [0.9, 0.95]})  # YAML / JSON give lists
    assert back == optim and isinstance(back.opt_betas, tuple)
    mim = GreenMIMConfig(encoder=GreenSwinConfig(img_size=96, embed_dim=16, depths=(2, 2), num_heads=(1, 2)))
    assert config_from(GreenMIMConfig, asdict(mim)) == mim
    assert config_from(OptimConfig, optim) is optim and config_from(OptimConfig, None) is None


def test_unknown_keys_and_wrong_types_are_named():
    with pytest.raises(TypeError, match=r"OptimConfig has no field\(s\) \['lrr'\]"):
        config_from(OptimConfig, {"lrr": 0.1})
    with pytest.raises(TypeError, match="expected a OptimConfig or a mapping"):
        config_from(OptimConfig, 0.1)


def test_tasks_restored_from_a_checkpoint_keep_their_settings(tmp_path):
    optim = OptimConfig(opt="adamw", lr=3e-4, opt_betas=(0.8, 0.9), sched="none")
    task = ClassificationTask("resnet8", num_classes=10, optim=optim, mixup=MixupConfig(mixup_alpha=0.2))
    path = tmp_path / "cls.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": "2.6.0"}, path)  # fmt: skip
    back = ClassificationTask.load_from_checkpoint(path, weights_only=True)
    assert back.optim == optim and back.mixup == MixupConfig(mixup_alpha=0.2)
    mim = GreenMIMConfig(encoder=GreenSwinConfig(img_size=96, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                                                 window_size=3), decoder_embed_dim=32, decoder_depth=1)  # fmt: skip
    task = GreenMIMTask(mim)
    path = tmp_path / "mim.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": "2.6.0"}, path)  # fmt: skip
    back = GreenMIMTask.load_from_checkpoint(path, weights_only=True)
    assert back.model.config == mim
    for key, value in task.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
