"""Short in-process training runs for demos and tests (no CLI, no run folder bookkeeping)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl

from tenfold.engine.lightning_cli import TRAINER_DEFAULTS

__all__ = ["History", "QuickRun", "quick_fit"]


class History(pl.Callback):
    """Record every logged validation metric with the step it was measured at."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        if trainer.sanity_checking:
            return
        record = {"step": float(trainer.global_step)}
        record.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.records.append(record)


@dataclass
class QuickRun:
    """Result of :func:`quick_fit`: validation history, final metrics, wall time (seconds), the trained task."""

    history: list[dict[str, float]]
    final: dict[str, float]
    seconds: float
    steps: int
    task: pl.LightningModule | None = None
    extra: dict[str, float] = field(default_factory=dict)


def quick_fit(
    task: pl.LightningModule | Callable[[], pl.LightningModule],
    data: pl.LightningDataModule,
    *,
    max_steps: int,
    val_every: int,
    out_dir: str | Path,
    seed: int = 0,
    max_time_s: float | None = None,
) -> QuickRun:
    """Train ``task`` on ``data`` on the CPU for ``max_steps`` steps, validating every ``val_every`` steps.

    Args:
        task: the LightningModule, or a function that builds it: then it is built after seeding, so that its
            initial weights depend on ``seed`` alone (pass a function whenever runs are compared across seeds).
        data: the data module.
        max_steps: optimiser steps.
        val_every: validation period in steps (a validation also runs at the end).
        out_dir: folder for the CSV log.
        seed: ``seed_everything`` value applied before training.
        max_time_s: optional hard wall-clock limit (the run stops early, and ``steps`` says where).
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    if not isinstance(task, pl.LightningModule):
        task = task()
    history = History()
    trainer = pl.Trainer(
        **{k: v for k, v in TRAINER_DEFAULTS.items() if k not in ("accelerator", "devices")},
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=-1,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        logger=pl.loggers.CSVLogger(out_dir, name="", version=""),
        callbacks=[history],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        max_time={"seconds": max_time_s} if max_time_s else None,
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    if not history.records or history.records[-1]["step"] != trainer.global_step:
        trainer.validate(task, datamodule=data, verbose=False)
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        history.records.append({"step": float(trainer.global_step), **final})
    seconds = time.perf_counter() - start
    final = {k: v for k, v in history.records[-1].items() if k != "step"}
    return QuickRun(history=history.records, final=final, seconds=seconds, steps=trainer.global_step, task=task)
