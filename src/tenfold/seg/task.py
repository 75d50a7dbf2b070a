"""The semantic-segmentation LightningModule (training glue only: networks in :mod:`tenfold.seg.models`).

Loss (CIRKD/DIST/MasKD recipes): ``CE(up(logits), y) + aux_weight * CE(up(aux_logits), y)``, both cross-entropies
averaged over the pixels whose label is not ``ignore_index``, logits upsampled bilinearly to the label size with the
model's ``align_corners``. Validation and test run whole-image or sliding-window inference (optionally with flip) on
full-resolution logits and accumulate one confusion matrix over the set (exact under DDP).

Logged: ``train/loss``, ``train/ce``, ``train/aux``; ``val/loss``, ``val/miou``, ``val/acc`` (pixel accuracy) and
``val/iou/<class>`` per class (fractions in [0, 1]); the same under ``test/``.

Subclasses (distillation with a teacher) override :meth:`SegmentationTask.compute_loss` and, when they add learnable
modules, :meth:`SegmentationTask.trainable_modules`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from tenfold.engine.optim import OptimConfig, configure_optimizers, timm_scheduler_step
from tenfold.engine.rundir import last_checkpoint
from tenfold.seg.inference import inference
from tenfold.seg.metrics import SegmentationScores
from tenfold.seg.models import SegOutput, load_segmenter_weights

__all__ = ["SegmentationTask", "as_seg_output", "describe_model", "upsample_logits"]


def as_seg_output(output: Any) -> SegOutput:
    """A model's output as :class:`SegOutput`: ours as is, a tensor as main logits, torchvision's ``{"out", "aux"}``."""
    if isinstance(output, SegOutput):
        return output
    if isinstance(output, Tensor):
        return SegOutput(output, None)
    if isinstance(output, dict):
        return SegOutput(output["out"], output.get("aux"))
    if isinstance(output, (tuple, list)):
        return SegOutput(output[0], output[1] if len(output) > 1 else None)
    raise ValueError(f"cannot read segmentation logits from a {type(output).__name__}")


def upsample_logits(model: nn.Module, logits: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Resize logits to ``size`` with the model's own ``upsample`` (bilinear, ``align_corners=False`` otherwise)."""
    if hasattr(model, "upsample"):
        return model.upsample(logits, size)
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationTask(pl.LightningModule):
    """Train and evaluate a semantic-segmentation network with (auxiliary) cross-entropy.

    Args:
        model: the network, e.g. ``tenfold.seg.models.DeepLabV3`` by ``class_path``; it returns
            :class:`~tenfold.seg.models.SegOutput` (or logits) and has ``num_classes``.
        weights: optional initial weights: a tenfold checkpoint or run folder, or a released state dict (PRCL,
            CIRKD, torchvision layouts; see :func:`~tenfold.seg.models.checkpoint_filter_fn`), loaded strictly.
        aux_weight: weight of the auxiliary head's cross-entropy (0.4 in the recipes; ignored without an aux head).
        ignore_index: label value excluded from the losses and the scores (255).
        optim: optimiser and schedule (the recipes: SGD momentum 0.9, ``sched: poly``, ``decay_rate: 0.9`` as the
            power, ``min_lr: 1e-4``; i.e. ``lr = min_lr + (lr0 - min_lr) (1 - it / max_it) ** 0.9`` per update).
        eval_mode: ``whole`` (one forward per image) or ``slide`` (sliding windows, averaged logits).
        eval_window: (height, width) of the sliding window.
        eval_stride: (vertical, horizontal) stride of the sliding window.
        eval_flip: average with the horizontally flipped prediction.
        eval_max_batch: windows per forward in sliding-window inference.

    Raises:
        ValueError: a negative ``aux_weight``, an invalid evaluation setting, or weights that do not fit.
    """

    def __init__(
        self,
        model: nn.Module,
        weights: str | None = None,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
        optim: OptimConfig | None = None,
        eval_mode: Literal["whole", "slide"] = "whole",
        eval_window: tuple[int, int] | None = None,
        eval_stride: tuple[int, int] | None = None,
        eval_flip: bool = False,
        eval_max_batch: int = 8,
    ) -> None:
        super().__init__()
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        if eval_mode not in ("whole", "slide"):
            raise ValueError(f"eval_mode must be 'whole' or 'slide', got {eval_mode!r}")
        if eval_mode == "slide" and (eval_window is None or eval_stride is None):
            raise ValueError("eval_mode 'slide' needs eval_window and eval_stride, e.g. [512, 1024] and [341, 683]")
        if not hasattr(model, "num_classes"):
            raise ValueError(f"the segmentation model ({type(model).__name__}) must have a num_classes attribute")
        # checkpoints must hold plain values only (they are read back with weights_only=True)
        self.save_hyperparameters(ignore=["model", "optim"])
        self.optim = optim or OptimConfig(opt="momentum", lr=0.01, sched="poly", decay_rate=0.9, min_lr=1e-4)
        self.hparams["optim"] = asdict(self.optim)
        self.hparams["model"] = describe_model(model)
        self.model = model
        if weights is not None:
            path = str(last_checkpoint(weights)) if Path(weights).is_dir() else weights
            load_segmenter_weights(model, path)
        self.num_classes = int(model.num_classes)
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.eval_mode = eval_mode
        self.eval_window = tuple(eval_window) if eval_window is not None else None
        self.eval_stride = tuple(eval_stride) if eval_stride is not None else None
        self.eval_flip = eval_flip
        self.eval_max_batch = eval_max_batch
        self.val_scores = SegmentationScores(self.num_classes, ignore_index)
        self.test_scores = SegmentationScores(self.num_classes, ignore_index)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.class_names: tuple[str, ...] = tuple(str(c) for c in range(self.num_classes))

    # -- wiring -----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Check the data's class count against the model's before the first batch; take the class names."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            raise ValueError(
                f"the data has {data_classes} classes (background included) but the model has {self.num_classes}: "
                "set model.init_args.model.init_args.num_classes"
            )
        names = getattr(datamodule, "class_names", None)
        if names is not None and len(names) == self.num_classes:
            self.class_names = tuple(names)

    def trainable_modules(self) -> nn.Module:
        """What the optimiser trains (timm builds weight-decay groups from it)."""
        return self.model

    def configure_optimizers(self) -> Any:  # noqa: D102
        return configure_optimizers(self, self.trainable_modules(), self.optim)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:  # noqa: D102
        timm_scheduler_step(self, scheduler)

    # -- losses -----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> SegOutput:
        """Main and auxiliary logits of images (B, 3, H, W) at the network's resolution."""
        return as_seg_output(self.model(x))

    def predict_logits(self, images: Tensor) -> Tensor:
        """Full-resolution main logits (B, C, H, W) of images (B, 3, H, W), one forward."""
        return upsample_logits(self.model, self(images).logits, images.shape[-2:])

    def segmentation_loss(self, output: SegOutput, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``CE(up(logits)) + aux_weight * CE(up(aux))`` and its parts (``ce``, ``aux``), labels (B, H, W)."""
        size = labels.shape[-2:]
        ce = F.cross_entropy(upsample_logits(self.model, output.logits, size), labels, ignore_index=self.ignore_index)
        parts = {"ce": ce}
        total = ce
        if output.aux is not None and self.aux_weight > 0:
            aux = F.cross_entropy(upsample_logits(self.model, output.aux, size), labels, ignore_index=self.ignore_index)
            parts["aux"] = aux
            total = total + self.aux_weight * aux
        return total, parts

    def compute_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, SegOutput, dict[str, Tensor]]:
        """The training loss of a batch, the network's output, and the terms to log (unweighted)."""
        output = self(images)
        total, parts = self.segmentation_loss(output, labels)
        return total, output, parts

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:  # noqa: D102
        images, labels = batch
        total, _, parts = self.compute_loss(images, labels)
        batch_size = labels.shape[0]
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=batch_size, sync_dist=True)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size, sync_dist=True)
        return total

    # -- evaluation -------------------------------------------------------------------------------------------
    def eval_logits(self, images: Tensor) -> Tensor:
        """Full-resolution logits of the evaluation setting (whole or sliding window, optional flip)."""
        return inference(
            self.predict_logits,
            images,
            self.eval_mode,
            self.eval_window,
            self.eval_stride,
            self.eval_flip,
            self.eval_max_batch,
        )

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        images, labels = batch
        logits = self.eval_logits(images)
        scores, mean_loss = (self.val_scores, self.val_loss) if stage == "val" else (self.test_scores, self.test_loss)
        scores.update(logits.argmax(1), labels)
        valid = int((labels != self.ignore_index).sum())
        if valid:
            loss = F.cross_entropy(logits, labels, ignore_index=self.ignore_index)
            mean_loss.update(loss, weight=valid)
        self.log(f"{stage}/loss", mean_loss, batch_size=labels.shape[0])

    def _log_scores(self, stage: str) -> None:
        scores = self.val_scores if stage == "val" else self.test_scores
        result = scores.compute()
        self.log(f"{stage}/miou", result["miou"].float(), prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc", result["acc"].float(), sync_dist=True)
        for name, value in zip(self.class_names, result["iou"], strict=True):
            self.log(f"{stage}/iou/{name}", value.float(), sync_dist=True)
        scores.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:  # noqa: D102
        self._log_scores("test")


def describe_model(model: nn.Module) -> dict[str, Any]:
    """The model as a LightningCLI ``class_path``/``init_args`` entry of plain values (when it records them)."""
    cls = type(model)
    entry: dict[str, Any] = {"class_path": f"{cls.__module__}.{cls.__qualname__}"}
    config = getattr(model, "init_config", None)
    if isinstance(config, dict):
        entry["init_args"] = dict(config)
    return entry
