"""The image-classification LightningModule (training glue only: the model comes from the timm registry)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

import tenfold.models  # noqa: F401  (registers the tenfold architectures with timm)
from tenfold.engine.optim import OptimConfig, configure_optimizers, timm_scheduler_step

__all__ = ["ClassificationTask", "create_model"]


def create_model(
    name: str, num_classes: int, weights: str | None = None, **kwargs: Any
) -> torch.nn.Module:
    """Create a timm-registered model (tenfold's or timm's), optionally from a local weight file.

    Args:
        name: a name from ``timm.list_models()`` (``resnet8x4``, ``wrn_40_2``, ``resnet18``, ``lightvit_tiny``...).
        num_classes: classifier outputs.
        weights: optional local checkpoint (``.pth``/``.pt``/``.safetensors``), loaded through timm's loader with
            the family's ``checkpoint_filter_fn`` and strict key matching.
        **kwargs: further architecture arguments.

    Raises:
        ValueError: an unknown model name.
        FileNotFoundError: ``weights`` does not exist.
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        raise ValueError(f"unknown model {name!r}; similar registered names: {close}")
    if weights is None:
        return timm.create_model(name, num_classes=num_classes, **kwargs)
    from pathlib import Path

    if not Path(weights).is_file():
        raise FileNotFoundError(f"model weights {weights!r} do not exist")
    return timm.create_model(
        name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": str(weights)}, **kwargs
    )


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        },
        prefix=prefix,
    )


class ClassificationTask(pl.LightningModule):
    """Train and evaluate an image classifier with cross-entropy.

    Logs ``train/loss``, ``train/acc1``, ``val/loss``, ``val/acc1``, ``val/acc5`` (and ``test/*``) as fractions in
    [0, 1]; torchmetrics states are reduced across processes, so DDP numbers are exact.

    Args:
        model: timm model name.
        num_classes: number of classes (linked from the data module by the CLI).
        model_kwargs: extra architecture arguments (``drop_rate``, ``drop_path_rate``...).
        weights: optional local weight file to start from.
        label_smoothing: label smoothing of the cross-entropy.
        optim: optimiser and schedule.
    """

    def __init__(
        self,
        model: str = "resnet8x4",
        num_classes: int = 10,
        model_kwargs: dict[str, Any] | None = None,
        weights: str | None = None,
        label_smoothing: float = 0.0,
        optim: OptimConfig | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        # checkpoints must hold plain values only (they are read back with weights_only=True)
        self.save_hyperparameters(ignore=["optim"])
        self.optim = optim or OptimConfig()
        self.hparams["optim"] = asdict(self.optim)
        self.model = create_model(model, num_classes, weights, **(model_kwargs or {}))
        self.label_smoothing = label_smoothing
        self.train_metrics = _metrics(num_classes, "train/")
        self.val_metrics = _metrics(num_classes, "val/")
        self.test_metrics = _metrics(num_classes, "test/")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    def setup(self, stage: str) -> None:
        """Check that the data's class count matches the classifier before the first batch."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.hparams.num_classes:
            raise ValueError(
                f"the data has {data_classes} classes but model.init_args.num_classes is {self.hparams.num_classes}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images (B, 3, H, W)."""
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: D102
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.train_metrics.update(logits.detach(), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.numel(), sync_dist=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        metrics, mean_loss = (
            (self.val_metrics, self.val_loss) if stage == "val" else (self.test_metrics, self.test_loss)
        )
        metrics.update(logits, labels)
        mean_loss.update(loss, weight=labels.numel())
        self.log(f"{stage}/loss", mean_loss, batch_size=labels.numel())
        self.log_dict(metrics, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch, "test")

    def configure_optimizers(self) -> Any:  # noqa: D102
        return configure_optimizers(self, self.model, self.optim)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:  # noqa: D102
        timm_scheduler_step(self, scheduler)
