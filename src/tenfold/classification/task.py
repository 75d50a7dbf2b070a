"""The image-classification LightningModule (training glue only: the model comes from the timm registry)."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

import tenfold.models  # noqa: F401  (registers the tenfold architectures with timm)
from tenfold.engine.optim import OptimConfig, configure_optimizers, timm_scheduler_step
from tenfold.engine.rundir import last_checkpoint
from tenfold.utils.checkpoint import load_checkpoint, load_state_dict_strict, task_weights, unwrap_state_dict
from tenfold.utils.config import config_from

__all__ = [
    "ClassificationTask",
    "MixupConfig",
    "ClassifierTaskBase",
    "check_num_classes",
    "classification_metrics",
    "create_model",
    "load_state_dict_strict",
]


#: Key prefixes that the official KD framework (hunto/image_classification_sota) attaches to students: ``_diff.*``
#: (DiffKD blocks) and ``_align.*`` (feature aligners). Dropped when such a student is loaded as a plain model.
OFFICIAL_KD_PREFIXES = ("_diff.", "_align.")


def create_model(name: str, num_classes: int, weights: str | None = None, **kwargs: Any) -> torch.nn.Module:
    """Create a timm-registered model (tenfold's or timm's), optionally from a local weight file.

    Args:
        name: a name from ``timm.list_models()`` (``resnet8x4``, ``wrn_40_2``, ``resnet18``, ``lightvit_tiny``...).
        num_classes: classifier outputs.
        weights: optional local file: a tenfold training checkpoint (the model is taken from its ``model.*`` or
            ``student.*`` weights; a run folder, or a folder of runs such as ``runs/distill/tiny_teacher``, means its
            most recent ``checkpoints/last.ckpt``), or a released/plain state dict (``.pth``/``.pt``/``.safetensors``),
            loaded through timm's loader with the family's ``checkpoint_filter_fn``. Keys must match exactly, except
            the ``_diff.*``/``_align.*`` keys that official KD students carry, which are dropped.
        **kwargs: further architecture arguments.

    Raises:
        ValueError: an unknown model name, or weights whose keys or shapes do not fit the model.
        FileNotFoundError: ``weights`` does not exist.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=8)
        raise ValueError(f"unknown model {name!r}; close registered names: {close}")
    if weights is None:
        return timm.create_model(name, num_classes=num_classes, **kwargs)
    if Path(weights).is_dir():
        weights = str(last_checkpoint(weights))
    checkpoint = load_checkpoint(weights)
    if isinstance(checkpoint, dict) and "pytorch-lightning_version" in checkpoint:
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
        sub = task_weights(checkpoint, weights)
        load_state_dict_strict(model, sub, source=weights)
        return model
    try:
        state = unwrap_state_dict(checkpoint)
    except ValueError:  # not a flat state dict (e.g. EMA-first layouts): timm's loader below knows those
        state = {}
    if any(k.startswith(OFFICIAL_KD_PREFIXES) for k in state):
        # an official KD student: the training code attached its loss modules (DiffKD blocks, aligners) to the
        # student, so its state dict carries foreign keys; the student itself is the rest, loaded strictly
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
        student = {k: v for k, v in state.items() if not k.startswith(OFFICIAL_KD_PREFIXES)}
        load_state_dict_strict(model, student, source=weights)
        return model
    # num_classes in the overlay too: otherwise timm treats a class-count difference as fine-tuning and silently
    # re-initialises the classifier instead of loading it
    overlay = {"file": str(weights), "num_classes": num_classes}
    try:
        return timm.create_model(
            name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs
        )
    except RuntimeError as err:  # torch's strict-loading error lists the missing/unexpected keys
        raise ValueError(f"weights {weights!r} do not fit {name}: {err}") from err


def check_num_classes(module: pl.LightningModule, num_classes: int) -> None:
    """Raise ValueError when the attached data module reports another class count than the model's."""
    datamodule = module.trainer.datamodule if module._trainer is not None else None
    data_classes = getattr(datamodule, "num_classes", None)
    if data_classes is not None and data_classes != num_classes:
        raise ValueError(f"the data has {data_classes} classes but model.init_args.num_classes is {num_classes}")


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 and top-5 accuracy (fractions, micro-averaged), reduced exactly across processes."""
    return MetricCollection(
        {
            "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        },
        prefix=prefix,
    )


class ClassifierTaskBase(pl.LightningModule):
    """Shared glue of tasks whose ``forward`` returns class logits: metrics, evaluation, optimiser hooks.

    Subclasses call :meth:`init_metrics` in ``__init__``, implement ``forward`` and ``training_step``, and name
    what the optimiser trains in :meth:`trainable_modules`. Validation and test log ``<stage>/loss``,
    ``<stage>/acc1`` and ``<stage>/acc5`` (fractions; torchmetrics states reduce exactly across processes).
    """

    optim: OptimConfig

    def init_metrics(self, num_classes: int) -> None:
        """Create the train/val/test accuracy collections and the mean evaluation losses."""
        self.train_metrics = classification_metrics(num_classes, "train/")
        self.val_metrics = classification_metrics(num_classes, "val/")
        self.test_metrics = classification_metrics(num_classes, "test/")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    def trainable_modules(self) -> torch.nn.Module:
        """What the optimiser trains (timm builds weight-decay groups from it)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Check that the data's class count matches the classifier before the first batch."""
        check_num_classes(self, self.hparams.num_classes)

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        images, labels = batch
        logits = self(images)
        metrics, mean_loss = (
            (self.val_metrics, self.val_loss) if stage == "val" else (self.test_metrics, self.test_loss)
        )
        metrics.update(logits, labels)
        mean_loss.update(F.cross_entropy(logits, labels), weight=labels.numel())
        self.log(f"{stage}/loss", mean_loss, batch_size=labels.numel())
        self.log_dict(metrics, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch, "test")

    def configure_optimizers(self) -> Any:  # noqa: D102
        return configure_optimizers(self, self.trainable_modules(), self.optim)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:  # noqa: D102
        timm_scheduler_step(self, scheduler)


@dataclass
class MixupConfig:
    """Mixup / CutMix on the training batch (timm ``Mixup``), with soft-target cross-entropy.

    Attributes:
        mixup_alpha: Beta(alpha, alpha) of mixup; 0 disables mixup.
        cutmix_alpha: Beta(alpha, alpha) of CutMix; 0 disables CutMix.
        prob: probability of mixing a batch at all.
        switch_prob: probability of CutMix instead of mixup when both are on.
        mode: ``batch`` (one lambda per batch), ``pair`` or ``elem``.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {self.mixup_alpha}, {self.cutmix_alpha}")
        if not (0.0 <= self.prob <= 1.0 and 0.0 <= self.switch_prob <= 1.0):
            raise ValueError(f"prob and switch_prob must be in [0, 1], got {self.prob}, {self.switch_prob}")
        if self.mode not in ("batch", "pair", "elem"):
            raise ValueError(f"mode must be 'batch', 'pair' or 'elem', got {self.mode!r}")

    @property
    def active(self) -> bool:
        """Whether any mixing happens."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


class ClassificationTask(ClassifierTaskBase):
    """Train and evaluate an image classifier with cross-entropy.

    Logs ``train/loss``, ``train/acc1``, ``val/loss``, ``val/acc1``, ``val/acc5`` (and ``test/*``) as fractions in
    [0, 1]; torchmetrics states are reduced across processes, so DDP numbers are exact.

    Args:
        model: timm model name.
        num_classes: number of classes (linked from the data module by the CLI).
        model_kwargs: extra architecture arguments (``drop_rate``, ``drop_path_rate``...).
        weights: optional local weight file to start from.
        label_smoothing: label smoothing of the cross-entropy (folded into the soft targets under mixup).
        optim: optimiser and schedule.
        mixup: mixup / CutMix of training batches (off by default). Training accuracy is then measured against
            the dominant (unmixed) labels.
    """

    def __init__(
        self,
        model: str = "resnet8x4",
        num_classes: int = 10,
        model_kwargs: dict[str, Any] | None = None,
        weights: str | None = None,
        label_smoothing: float = 0.0,
        optim: OptimConfig | None = None,
        mixup: MixupConfig | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        # checkpoints must hold plain values only (they are read back with weights_only=True)
        self.save_hyperparameters(ignore=["optim", "mixup"])
        self.optim = config_from(OptimConfig, optim) or OptimConfig()
        self.hparams["optim"] = asdict(self.optim)
        self.mixup = config_from(MixupConfig, mixup) or MixupConfig()
        self.hparams["mixup"] = asdict(self.mixup)
        self._mix = None
        if self.mixup.active:
            from timm.data import Mixup

            m = self.mixup
            self._mix = Mixup(mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob,
                              switch_prob=m.switch_prob, mode=m.mode, label_smoothing=label_smoothing,
                              num_classes=num_classes)  # fmt: skip
        self.model = create_model(model, num_classes, weights, **(model_kwargs or {}))
        self.label_smoothing = label_smoothing
        self.init_metrics(num_classes)

    def trainable_modules(self) -> torch.nn.Module:  # noqa: D102
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images (B, 3, H, W)."""
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: D102
        images, labels = batch
        if self._mix is not None:
            if images.shape[0] % 2:
                raise ValueError(f"mixup/CutMix need an even batch size, got {images.shape[0]}")
            images, soft = self._mix(images, labels)
            logits = self(images)
            loss = torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits = self(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.train_metrics.update(logits.detach(), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.numel(), sync_dist=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss
