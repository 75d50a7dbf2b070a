"""Optimiser and learning-rate schedule from timm's factories, wired for Lightning.

Recipes name the optimiser and schedule with the same words as timm's ``train.py`` (``opt``, ``sched``,
``decay_milestones``...). Schedules are stepped per optimiser update (``step_on_epochs=False``), the way the official
recipes of the methods here apply their step decays "per iteration"; epoch counts are converted with the number of
updates per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

__all__ = ["OptimConfig", "configure_optimizers", "timm_scheduler_step"]


@dataclass
class OptimConfig:
    """Optimiser and schedule settings (timm names).

    Attributes:
        opt: timm optimiser name. Note timm's ``sgd`` is SGD with Nesterov momentum; ``momentum`` is plain
            momentum SGD (the CIFAR distillation recipes); ``adamw``, ``rmsproptf``, ``lamb``... also work.
        lr: peak learning rate.
        momentum: momentum of SGD-type optimisers.
        weight_decay: weight decay.
        opt_eps: epsilon of adaptive optimisers (timm's default when None; the DIST strategy-B RMSpropTF uses 1e-3).
        opt_betas: betas of Adam-type optimisers (timm's default when None; MAE/GreenMIM pre-training uses
            (0.9, 0.95)).
        layer_decay: layer-wise learning-rate decay (BEiT/SimMIM fine-tuning): the lr of a layer at depth d of L is
            ``lr * layer_decay ** (L - d)``, layers from the model's timm ``group_matcher``; None for none.
        filter_bias_and_bn: exclude biases and 1-D parameters (norm weights) from weight decay.
        sched: timm scheduler name (``cosine``, ``step``, ``multistep``, ``poly``...) or ``none`` (constant lr).
        decay_epochs: period of ``step`` decay, in epochs.
        decay_milestones: epochs of ``multistep`` decay.
        decay_rate: multiplicative factor of step decays.
        warmup_epochs: linear warm-up length in epochs (may be fractional through ``warmup_steps``).
        warmup_lr: learning rate at the start of warm-up.
        warmup_prefix: run the decay over the epochs after the warm-up (MAE/GreenMIM: a half-cycle cosine over
            ``epochs - warmup_epochs``); False (timm's default) lays the decay over all epochs and lets the warm-up
            override its start.
        min_lr: floor of the schedule.
    """

    opt: str = "momentum"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    opt_eps: float | None = None
    opt_betas: tuple[float, float] | None = None
    layer_decay: float | None = None
    filter_bias_and_bn: bool = True
    sched: str = "cosine"
    decay_epochs: float = 30.0
    decay_milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    decay_rate: float = 0.1
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    warmup_prefix: bool = False
    min_lr: float = 0.0


def configure_optimizers(
    module: pl.LightningModule, params: Any, cfg: OptimConfig
) -> dict[str, Any] | torch.optim.Optimizer:
    """Build what ``LightningModule.configure_optimizers`` returns.

    Args:
        module: the task (its trainer gives the number of epochs and updates).
        params: a module (timm builds weight-decay groups from it) or parameter groups.
        cfg: the settings.

    Returns:
        The optimiser alone (``sched="none"``) or Lightning's dict with a per-step timm scheduler; the task must
        forward ``lr_scheduler_step`` to :func:`timm_scheduler_step`.
    """
    optimizer = create_optimizer_v2(
        params,
        opt=cfg.opt,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        filter_bias_and_bn=cfg.filter_bias_and_bn,
        layer_decay=cfg.layer_decay,
        **({"eps": cfg.opt_eps} if cfg.opt_eps is not None else {}),
        **({"betas": tuple(cfg.opt_betas)} if cfg.opt_betas is not None else {}),
    )
    if cfg.sched == "none":
        for group in optimizer.param_groups:  # timm's schedulers apply lr_scale (layer decay); without one, do it here
            group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
        return optimizer
    updates_per_epoch, num_epochs = _schedule_length(module.trainer)
    if cfg.warmup_prefix:  # timm then counts num_epochs after the warm-up; the run's total stays the trainer's
        num_epochs = max(num_epochs - cfg.warmup_epochs, 1e-6)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=num_epochs,
        decay_epochs=cfg.decay_epochs,
        decay_milestones=cfg.decay_milestones,
        decay_rate=cfg.decay_rate,
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        warmup_prefix=cfg.warmup_prefix,
        min_lr=cfg.min_lr,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _schedule_length(trainer: pl.Trainer) -> tuple[int, float]:
    """Updates per epoch and the number of (possibly partial) epochs the run will train.

    ``trainer.estimated_stepping_batches`` is not used on purpose: it builds the training loader before Lightning
    restores a checkpoint, after which the loader's saved position is never applied, so a resumed run would not
    continue the interrupted epoch where it stopped.
    """
    datamodule = trainer.datamodule
    loader = datamodule.train_dataloader() if datamodule is not None else trainer.lightning_module.train_dataloader()
    num_batches = len(loader)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        num_batches = min(num_batches, limit)
    elif limit is not None:
        num_batches = int(num_batches * limit)
    updates_per_epoch = max(1, num_batches // trainer.accumulate_grad_batches)
    max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    max_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else None
    if max_epochs is None and max_steps is None:
        raise ValueError("set trainer.max_epochs or trainer.max_steps: the learning-rate schedule needs a length")
    # a step budget may end mid-epoch: a fractional epoch count makes the schedule end exactly at max_steps
    epochs_by_steps = max_steps / updates_per_epoch if max_steps is not None else None
    num_epochs = min(e for e in (max_epochs, epochs_by_steps) if e is not None)
    return updates_per_epoch, num_epochs


def timm_scheduler_step(module: pl.LightningModule, scheduler: Any) -> None:
    """Advance a timm scheduler after an optimiser update (timm counts updates, Lightning calls per step)."""
    scheduler.step_update(num_updates=module.trainer.global_step)
