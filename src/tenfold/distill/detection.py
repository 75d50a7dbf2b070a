"""MasKD for detection with torchvision detectors: stage 1 (receptive tokens) and stage 2 (masked FPN distillation).

Training glue only: the method is :mod:`tenfold.distill.maskd` (pure PyTorch). Student and teacher are torchvision
detection models built by name (:class:`DetectorConfig`, :func:`build_detector`); their FPN levels are read through
:class:`~tenfold.distill.taps.FeatureTaps` on a named module (``"backbone"``: torchvision's ``BackboneWithFPN``,
whose output is the ``OrderedDict`` of the 5 levels), so any pair of FPN detectors works without editing them.

* :class:`DetectionTask` trains one detector (the teacher of the tiny recipes; a student baseline).
* :class:`MaskTokenTask` is stage 1: the teacher is frozen (BatchNorm in eval mode before every step, the
  detector itself in training mode so that it computes its losses), its FPN levels are replaced by their masked
  versions (:meth:`~tenfold.distill.maskd.MaskedFeatures.attach`), the loss is the detector's losses plus the Dice
  terms, and only the mask modules are optimised. The tokens are saved in the released mmdet layout
  (``mask_modules.{i}.*``).
* :class:`DetectionDistillationTask` is stage 2: ``student detection losses + lambda * MasKDLoss(align(student
  levels), teacher levels)``, with per-level 1x1 align convs trained with the student and the stage-1 tokens frozen
  (not in the optimiser).

Official code followed: https://github.com/hunto/MasKD (b5af34f): ``mmdetection/maskd_hook.py`` and
``mmdetection/configs/maskd/*`` (stage 1), ``mmrazor/configs/distill/maskd/*`` with mmrazor's
``SingleTeacherDistiller`` (stage 2). Validation scores COCO mAP with torchmetrics' ``MeanAveragePrecision``
(``val/map``, ``val/map_50``, ``val/map_75``), which needs pycocotools.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from tenfold.distill.maskd import MasKDLoss, MaskedFeatures
from tenfold.distill.taps import FeatureTaps
from tenfold.engine.optim import OptimConfig, configure_optimizers, timm_scheduler_step
from tenfold.engine.rundir import last_checkpoint
from tenfold.utils.checkpoint import (
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
    task_weights,
    unwrap_state_dict,
)

__all__ = [
    "ARCHITECTURES",
    "DetectionDistillationTask",
    "DetectionTask",
    "DetectorConfig",
    "MaskTokenTask",
    "build_detector",
    "fpn_levels",
    "load_detector_weights",
]

#: Meta-architectures that take any torchvision ResNet (``backbone``) through ``resnet_fpn_backbone``, each with
#: the FPN layout of torchvision's own ``<name>_resnet50_fpn`` builder: (returned ResNet stages, extra levels).
ARCHITECTURES = {
    "retinanet": ([2, 3, 4], "p6p7"),  # P3-P7, P6 from P5 (torchvision v1; mmdet takes P6 from C5)
    "fcos": ([2, 3, 4], "p6p7"),
    "fasterrcnn": ([1, 2, 3, 4], "pool"),  # P2-P5 and a max-pooled P6 for the RPN
}


@dataclass
class DetectorConfig:
    """A torchvision detection model, built without any download.

    Attributes:
        name: ``retinanet``, ``fasterrcnn`` or ``fcos`` with a ResNet ``backbone`` (e.g. the R101 teachers of the
            MasKD recipes, which torchvision has no builder for), or the name of any builder in
            ``torchvision.models.detection`` (``retinanet_resnet50_fpn``, ``fasterrcnn_mobilenet_v3_large_fpn``...),
            called with ``weights=None, weights_backbone=None``; then ``backbone`` must be None.
        backbone: a torchvision ResNet name (``resnet18`` ... ``resnet152``, ``resnext101_32x8d``...) for the
            meta-architectures.
        min_size: shorter image side after the model's resize (torchvision's default 800; mmdet's 1333x800).
        max_size: longer side limit (default 1333).
        backbone_weights: a local ImageNet classification state dict of the ResNet (e.g. torchvision's
            ``resnet50-0676ba61.pth``), loaded strictly into ``backbone.body`` (``fc.*`` dropped).
        trainable_backbone_layers: ResNet stages left trainable, 0 to 5 (None: torchvision's rule, 3 with
            ``backbone_weights`` (mmdet's ``frozen_stages=1``), else 5).
        frozen_bn: use ``FrozenBatchNorm2d`` in the ResNet (None: torchvision's rule, frozen with
            ``backbone_weights``, else ordinary BatchNorm).
        kwargs: further arguments of the detector class (``RetinaNet``, ``FasterRCNN``...), e.g.
            ``box_batch_size_per_image``, ``detections_per_img``; plain values only.
    """

    name: str = "retinanet"
    backbone: str | None = "resnet50"
    min_size: int | None = None
    max_size: int | None = None
    backbone_weights: str | None = None
    trainable_backbone_layers: int | None = None
    frozen_bn: bool | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def build_detector(cfg: DetectorConfig, num_classes: int) -> nn.Module:
    """Build the detector that ``cfg`` names, randomly initialised apart from ``backbone_weights``.

    ``DetectorConfig(name="retinanet", backbone="resnet50")`` has exactly the modules (and state-dict keys) of
    ``torchvision.models.detection.retinanet_resnet50_fpn``, so torchvision's released weights load into it.

    Args:
        cfg: the configuration.
        num_classes: classes including label 0 (torchvision's convention; COCO 91).

    Raises:
        ValueError: an unknown name or backbone, a backbone given with a builder name, or backbone weights that do
            not fit.
        FileNotFoundError: ``backbone_weights`` does not exist.
    """
    from torchvision.models import detection, resnet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import misc as misc_ops
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    sizes = {k: v for k, v in (("min_size", cfg.min_size), ("max_size", cfg.max_size)) if v is not None}
    if cfg.name not in ARCHITECTURES:
        builder = getattr(detection, cfg.name, None)
        if cfg.name.startswith("_") or not callable(builder) or isinstance(builder, type):
            raise ValueError(
                f"unknown detector {cfg.name!r}; expected one of {sorted(ARCHITECTURES)} with a ResNet backbone, or "
                "a builder of torchvision.models.detection such as 'retinanet_resnet50_fpn'"
            )
        if cfg.backbone is not None or cfg.backbone_weights is not None or cfg.frozen_bn is not None:
            raise ValueError(
                f"detector {cfg.name!r} is a torchvision builder with its own backbone: set backbone, "
                "backbone_weights and frozen_bn to null (or use name: retinanet/fasterrcnn/fcos with a backbone)"
            )
        extra = (
            {}
            if cfg.trainable_backbone_layers is None
            else {"trainable_backbone_layers": cfg.trainable_backbone_layers}
        )
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, **sizes, **extra, **cfg.kwargs)
    if cfg.backbone is None or not callable(getattr(resnet, cfg.backbone, None)) or cfg.backbone.startswith("_"):
        raise ValueError(f"detector {cfg.name!r} needs a torchvision ResNet backbone name, got {cfg.backbone!r}")
    pretrained = cfg.backbone_weights is not None
    frozen = pretrained if cfg.frozen_bn is None else cfg.frozen_bn
    trainable = cfg.trainable_backbone_layers
    trainable = (3 if pretrained else 5) if trainable is None else trainable
    if not 0 <= trainable <= 5:
        raise ValueError(f"trainable_backbone_layers must be in [0, 5], got {trainable}")
    returned, extra_kind = ARCHITECTURES[cfg.name]
    backbone = resnet_fpn_backbone(
        backbone_name=cfg.backbone,
        weights=None,
        norm_layer=misc_ops.FrozenBatchNorm2d if frozen else nn.BatchNorm2d,
        trainable_layers=trainable,
        returned_layers=returned,
        extra_blocks=LastLevelP6P7(256, 256) if extra_kind == "p6p7" else LastLevelMaxPool(),
    )
    if pretrained:
        _load_backbone_weights(backbone.body, str(cfg.backbone_weights))
    cls = {"retinanet": detection.RetinaNet, "fcos": detection.FCOS, "fasterrcnn": detection.FasterRCNN}[cfg.name]
    return cls(backbone, num_classes=num_classes, **sizes, **cfg.kwargs)


def _load_backbone_weights(body: nn.Module, path: str) -> None:
    state = unwrap_state_dict(load_checkpoint(path))
    own = body.state_dict()
    # the classifier is not part of the detector; FrozenBatchNorm2d keeps no batch counter
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    state = {k: v for k, v in state.items() if not (k.endswith("num_batches_tracked") and k not in own)}
    load_state_dict_strict(body, state, source=path)


def load_detector_weights(model: nn.Module, source: str) -> None:
    """Load a whole detector's weights strictly.

    Args:
        model: the detector.
        source: a torchvision-layout state dict file (e.g. torchvision's released COCO weights, or a ``state_dict``
            / ``model`` nested in a checkpoint); a tenfold checkpoint (the detector is its ``model.*`` weights, or
            the ``student.*`` weights of a distillation run); or a run folder (its latest ``checkpoints/last.ckpt``).

    Raises:
        FileNotFoundError: no such file or checkpoint.
        ValueError: an unsafe/unreadable file, or keys and shapes that do not fit (named in the message).
    """
    path = Path(source)
    if path.is_dir():
        path = last_checkpoint(path)
    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, dict) and "pytorch-lightning_version" in checkpoint:
        sub = task_weights(checkpoint, str(path))
    else:
        sub = unwrap_state_dict(checkpoint)
    load_state_dict_strict(model, sub, source=str(path))


# --------------------------------------------------------------------------------------------------------------
# Reading FPN levels through taps
# --------------------------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised in a tap to end a forward once the levels are recorded (the teacher's heads are not needed)."""


def fpn_levels(output: Any) -> tuple[list[str] | None, list[Tensor]]:
    """The levels a module returned: ``(keys or None, tensors)`` for a dict (torchvision), tuple/list or tensor."""
    if isinstance(output, Tensor):
        return None, [output]
    if isinstance(output, dict):
        return [str(k) for k in output], list(output.values())
    if isinstance(output, tuple | list) and all(isinstance(x, Tensor) for x in output):
        return None, list(output)
    raise ValueError(f"the tapped module returned a {type(output).__name__}, not a dict, tuple or list of levels")


class _LevelTap:
    """Record everything a named module returns (all its levels), optionally ending the forward there.

    ``FeatureTaps`` keeps only the first element of a tuple output (one feature per block); an FPN returns all its
    levels, so they are taken from the tap's transform callback, which sees the whole output.
    """

    def __init__(self, model: nn.Module, name: str, stop: bool = False) -> None:
        self.name = name
        self.stop = stop
        self.taps = FeatureTaps(model, [name], transform=self._grab)
        self._output: Any = None

    def _grab(self, name: str, output: Any) -> None:
        self._output = output
        if self.stop:
            raise _StopForward

    def run(self, fn: Any, *args: Any) -> tuple[Any, Any]:
        """Call ``fn(*args)`` with the tap active; returns ``(result or None if stopped, the module's output)``."""
        self._output = None
        result = None
        with self.taps:
            try:
                result = fn(*args)
            except _StopForward:
                pass
        self.taps.clear()
        output, self._output = self._output, None
        if output is None:
            raise ValueError(f"module {self.name!r} was not called during the forward")
        return result, output


def _probe(model: nn.Module, name: str, size: int = 64) -> Any:
    """The tapped module's output on a small dummy batch (eval mode, no grad, the model's resize made small)."""
    transform = getattr(model, "transform", None)
    saved = (transform.min_size, transform.max_size) if hasattr(transform, "min_size") else None
    was_training = model.training
    model.eval()
    try:
        if saved is not None:  # the recipes resize to 800 px: a full-size dummy forward would take seconds
            transform.min_size, transform.max_size = (size,), size
        with torch.no_grad():
            _, output = _LevelTap(model, name, stop=True).run(model, [torch.zeros(3, size, size)] * 2)
    finally:
        if saved is not None:
            transform.min_size, transform.max_size = saved
        model.train(was_training)
    return output


def _bn_eval(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _check_same_resize(student: nn.Module, teacher: nn.Module) -> None:
    """Student (train mode) and teacher (eval mode) must resize a batch to the same size, or the levels differ."""
    ts, tt = getattr(student, "transform", None), getattr(teacher, "transform", None)
    if not (hasattr(ts, "min_size") and hasattr(tt, "min_size")):
        return
    if tuple(ts.min_size) != tuple(tt.min_size) or ts.max_size != tt.max_size or len(tuple(ts.min_size)) != 1:
        raise ValueError(
            f"student resize (min_size={tuple(ts.min_size)}, max_size={ts.max_size}) and teacher resize "
            f"(min_size={tuple(tt.min_size)}, max_size={tt.max_size}) must be one and the same size: the teacher "
            "sees the student's batch; set min_size/max_size equal in both"
        )


# --------------------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------------------


def _map_metric() -> Any:
    """COCO mAP (torchmetrics), or None (with a warning) when neither pycocotools nor faster_coco_eval is installed."""
    from torchmetrics.detection import MeanAveragePrecision

    for backend, module in (("pycocotools", "pycocotools"), ("faster_coco_eval", "faster_coco_eval")):
        try:
            __import__(module)
        except ImportError:
            continue
        return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=backend)
    warnings.warn(
        "val/map is not computed: torchmetrics' MeanAveragePrecision needs pycocotools (pip install pycocotools)",
        stacklevel=3,
    )
    return None


class _DetectorTaskBase(pl.LightningModule):
    """Shared glue: mAP evaluation, optimiser, and mmdet's iteration-based linear warm-up.

    mmdet's warm-up multiplies the scheduled lr by ``1 - (1 - it / warmup_iters) * (1 - warmup_ratio)`` for the
    first ``warmup_iters`` updates (tenfold's ``OptimConfig.warmup_epochs`` counts whole epochs; the COCO recipes
    warm up for 500 or 1000 iterations, a fraction of an epoch).
    """

    optim: OptimConfig

    def _init_common(self, num_classes: int, optim: OptimConfig, warmup_iters: int, warmup_ratio: float,
                     evaluate: bool) -> None:  # fmt: skip
        if warmup_iters < 0 or not 0.0 <= warmup_ratio <= 1.0:
            raise ValueError(
                f"warmup_iters must be >= 0 and warmup_ratio in [0, 1], got {warmup_iters}, {warmup_ratio}"
            )
        self.num_classes = num_classes
        self.optim = optim
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.val_map = _map_metric() if evaluate else None
        self.test_map = _map_metric() if evaluate and self.val_map is not None else None

    def trainable_modules(self) -> nn.Module:
        """What the optimiser trains."""
        raise NotImplementedError

    def eval_detector(self) -> nn.Module:
        """The detector whose detections are scored."""
        raise NotImplementedError

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections (``boxes`` xyxy in input pixels, ``scores``, ``labels``) per image, in eval mode."""
        return self.eval_detector()(images)

    def setup(self, stage: str) -> None:
        """Check the data's class count against the detectors' before the first batch."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            raise ValueError(
                f"the data has num_classes={data_classes} but model.init_args.num_classes is {self.num_classes}"
            )

    def _eval_step(self, batch: tuple[list[Tensor], list[dict[str, Tensor]]], metric: Any) -> None:
        if metric is None:
            return
        images, targets = batch
        detections = self(images)
        metric.update(
            [{k: d[k] for k in ("boxes", "scores", "labels")} for d in detections],
            [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets],
        )

    def _log_map(self, metric: Any, stage: str) -> None:
        if metric is None:
            return
        scores = metric.compute()
        metric.reset()
        for key in ("map", "map_50", "map_75"):
            self.log(f"{stage}/{key}", scores[key].float(), prog_bar=key == "map", rank_zero_only=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch, self.val_map)

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        self._log_map(self.val_map, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch, self.test_map)

    def on_test_epoch_end(self) -> None:  # noqa: D102
        self._log_map(self.test_map, "test")

    def _log_losses(self, logs: dict[str, Tensor], total: Tensor, batch_size: int) -> None:
        for name, value in logs.items():
            self.log(f"train/{name}", value.detach(), batch_size=batch_size, sync_dist=True)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=batch_size, sync_dist=True)

    def configure_optimizers(self) -> Any:  # noqa: D102
        return configure_optimizers(self, self.trainable_modules(), self.optim)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:  # noqa: D102
        timm_scheduler_step(self, scheduler)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Apply the linear warm-up to this update's lr (recomputed from the schedule, so a resume is exact)."""
        if self.warmup_iters <= 0:
            return
        step = self.trainer.global_step
        optimizers = self.optimizers(use_pl_optimizer=False)
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step_update(num_updates=step)
        else:
            for group in optimizers[0].param_groups:
                group["lr"] = self.optim.lr * group.get("lr_scale", 1.0)
        if step < self.warmup_iters:
            factor = 1.0 - (1.0 - step / self.warmup_iters) * (1.0 - self.warmup_ratio)
            for group in optimizers[0].param_groups:
                group["lr"] *= factor


def _plain(cfg: DetectorConfig) -> dict[str, Any]:
    return asdict(cfg)


class DetectionTask(_DetectorTaskBase):
    """Train one torchvision detector with its own losses (the teacher of the tiny recipes, or a baseline student).

    Args:
        model: the detector.
        num_classes: classes including label 0 (COCO 91; built-in scenes ``num_objects + 2``).
        weights: optional initial weights of the whole detector (see :func:`load_detector_weights`).
        optim: optimiser and schedule (mmdet's COCO schedules: SGD lr 0.02, momentum 0.9, wd 1e-4 on every
            parameter (``filter_bias_and_bn: false``), ``multistep`` at epochs 16 and 22 for 2x).
        warmup_iters: mmdet's linear warm-up length in updates (500 in mmdet's schedules).
        warmup_ratio: lr factor at the first update of the warm-up (mmdet 0.001).
        evaluate: score COCO mAP on the validation/test splits (needs pycocotools; warns and skips without).

    Logged: ``train/<loss name>`` for every loss of the detector, ``train/loss``; ``val/map``, ``val/map_50``,
    ``val/map_75``.
    """

    def __init__(
        self,
        model: DetectorConfig | None = None,
        num_classes: int = 91,
        weights: str | None = None,
        optim: OptimConfig | None = None,
        warmup_iters: int = 0,
        warmup_ratio: float = 0.001,
        evaluate: bool = True,
    ) -> None:
        super().__init__()
        model = model or DetectorConfig()
        optim = optim or OptimConfig(opt="momentum", lr=0.02, weight_decay=1e-4, filter_bias_and_bn=False)
        self.save_hyperparameters(ignore=["model", "optim"])
        self.hparams["model"] = _plain(model)
        self.hparams["optim"] = asdict(optim)
        self.model = build_detector(model, num_classes)
        if weights is not None:
            load_detector_weights(self.model, weights)
        self._init_common(num_classes, optim, warmup_iters, warmup_ratio, evaluate)

    def eval_detector(self) -> nn.Module:  # noqa: D102
        return self.model

    def trainable_modules(self) -> nn.Module:  # noqa: D102
        return self.model

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:  # noqa: D102
        images, targets = batch
        losses = self.model(images, targets)
        total = torch.stack(list(losses.values())).sum()
        self._log_losses(losses, total, len(images))
        return total


def _frozen_teacher(cfg: DetectorConfig, num_classes: int, weights: str | None, allow_random: bool) -> nn.Module:
    if weights is None and not allow_random:
        raise ValueError(
            "model.init_args.teacher_weights is required: the teacher's run folder or checkpoint, or a state dict "
            "of the detector (torchvision layout)"
        )
    teacher = build_detector(cfg, num_classes)
    if weights is not None:
        load_detector_weights(teacher, weights)
    teacher.requires_grad_(False)
    return teacher


class MaskTokenTask(_DetectorTaskBase):
    """MasKD stage 1 on a torchvision detector: learn the receptive tokens of a frozen teacher.

    Per training step (official ``MasKDHook``): the teacher is in training mode (so that it computes its losses) with
    every BatchNorm in eval mode, all its parameters frozen; inside ``MaskedFeatures.attach(teacher, fpn_module)``
    each FPN level is replaced by its masked version, and the loss is ``sum(detector losses) + dice_weight *
    sum_l Dice_l``. Only the mask modules are optimised (official: Adam lr 0.01, weight decay 1e-3 on every
    parameter, cosine to 1e-6 over 2000 iterations, no warm-up; the default ``optim``). Validation scores the masked
    teacher (the hook stays on, as officially).

    When training ends, the tokens are written to ``<run folder>/<tokens_file>`` as ``{"meta": {...},
    "state_dict": {"mask_modules.{i}.mask_token", "mask_modules.{i}.prob.{0,2}.*"}}``, the key layout of the
    released mmdet stage-1 checkpoints; the Lightning checkpoints hold the same tensors under ``masker.``. Stage 2
    reads either through :meth:`~tenfold.distill.maskd.MasKDLoss.load_tokens`.

    Args:
        teacher: the detector whose tokens are learned.
        teacher_weights: its weights (see :func:`load_detector_weights`).
        num_classes: classes including label 0.
        fpn_module: the teacher's module whose outputs are the FPN levels (``backbone`` for torchvision's
            detectors; ``backbone.fpn`` gives the same levels), as ``named_modules()`` prints it.
        num_tokens: T per level (official 6).
        weight_mask: the per-level token weighting branch (official True).
        dice_weight: weight of the Dice terms (official 1).
        optim: optimiser and schedule of the mask modules.
        warmup_iters: linear warm-up length in updates (official 0).
        warmup_ratio: lr factor at the first update of the warm-up.
        tokens_file: file name of the token export inside the run folder (``trainer.default_root_dir``); None: no
            export.
        evaluate: score the masked teacher's COCO mAP during validation.
        allow_random_teacher: permit ``teacher_weights=None`` (tests only).

    Raises:
        ValueError: ``fpn_module`` is not a module of the teacher, its output is not a set of levels, or no teacher
            weights are given.
    """

    def __init__(
        self,
        teacher: DetectorConfig | None = None,
        teacher_weights: str | None = None,
        num_classes: int = 91,
        fpn_module: str = "backbone",
        num_tokens: int = 6,
        weight_mask: bool = True,
        dice_weight: float = 1.0,
        optim: OptimConfig | None = None,
        warmup_iters: int = 0,
        warmup_ratio: float = 0.001,
        tokens_file: str | None = "tokens.pth",
        evaluate: bool = True,
        allow_random_teacher: bool = False,
    ) -> None:
        super().__init__()
        teacher = teacher or DetectorConfig()
        optim = optim or OptimConfig(
            opt="adam", lr=0.01, weight_decay=1e-3, filter_bias_and_bn=False, sched="cosine", min_lr=1e-6
        )
        self.save_hyperparameters(ignore=["teacher", "optim"])
        self.hparams["teacher"] = _plain(teacher)
        self.hparams["optim"] = asdict(optim)
        self.teacher = _frozen_teacher(teacher, num_classes, teacher_weights, allow_random_teacher)
        keys, levels = fpn_levels(_probe(self.teacher, fpn_module))  # also checks the module name
        self.level_keys = keys
        self.masker = MaskedFeatures([x.shape[1] for x in levels], num_tokens, weight_mask)
        _bn_eval(self.teacher)
        self._mask_hook = self.masker.attach(self.teacher, fpn_module)
        self.fpn_module = fpn_module
        self.dice_weight = dice_weight
        self.tokens_file = tokens_file
        self._init_common(num_classes, optim, warmup_iters, warmup_ratio, evaluate)

    def train(self, mode: bool = True) -> MaskTokenTask:
        """Training mode for the detector's losses, with every BatchNorm of the teacher kept in eval mode."""
        super().train(mode)
        _bn_eval(self.teacher)
        return self

    def eval_detector(self) -> nn.Module:  # noqa: D102
        return self.teacher

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections of the masked teacher (the tokens' masks applied to its FPN levels)."""
        with self._mask_hook:
            return self.teacher(images)

    def trainable_modules(self) -> nn.Module:
        """The mask modules only (the teacher is frozen)."""
        return self.masker

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        _bn_eval(self.teacher)  # official: every BatchNorm is put in eval mode before each iteration
        super().on_train_batch_start(batch, batch_idx)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:  # noqa: D102
        images, targets = batch
        with self._mask_hook:
            losses = self.teacher(images, targets)
        dice = self.masker.dice_loss()
        total = torch.stack(list(losses.values())).sum() + self.dice_weight * dice
        self._log_losses({**losses, "dice": dice}, total, len(images))
        return total

    def token_state(self) -> dict[str, Any]:
        """The token export: ``{"meta", "state_dict"}`` with the released ``mask_modules.{i}.*`` keys."""
        meta = {"tenfold_task": "MaskTokenTask", "fpn_module": self.fpn_module, "levels": self.level_keys}
        if self._trainer is not None:
            meta["step"] = int(self.trainer.global_step)
        state = {k: v.detach().cpu().clone() for k, v in self.masker.state_dict().items()}
        return {"meta": meta, "state_dict": state}

    def on_train_end(self) -> None:
        """Write the tokens (rank 0, atomically) to ``<run folder>/<tokens_file>``."""
        if self.tokens_file is None or not self.trainer.is_global_zero:
            return
        save_checkpoint(self.token_state(), Path(self.trainer.default_root_dir) / self.tokens_file)


class DetectionDistillationTask(_DetectorTaskBase):
    """MasKD stage 2: distil a frozen teacher detector's FPN levels into a student detector inside learned masks.

    Per step: the teacher runs (eval mode, ``no_grad``, stopped once its FPN module has returned) on the same image
    list as the student; the student computes its detection losses; its levels pass through per-level 1x1 align
    convs (``Conv2d(C_s, C_t, 1)`` with bias, PyTorch's default init, trained with the student: the official
    ``align_modules``); the loss is

    ``sum(student detection losses) + maskd_weight * MasKDLoss(aligned student levels, teacher levels)``.

    The MasKD tokens come from stage 1 (``tokens``) and stay frozen: the loss module is not in the optimiser (the
    official ``lr_mult=0, decay_mult=0`` on ``distiller.losses``). The loss's warm-up counter ``num_calls`` is one
    of its buffers, so it is saved in the checkpoints and a resumed run continues the customised-mask warm-up
    (``MasKDLoss(official_counter_reset=True)`` restarts it at 0, as the official code does).

    Args:
        student: the student detector.
        teacher: the teacher detector.
        num_classes: classes of both, including label 0.
        teacher_weights: the teacher's weights (see :func:`load_detector_weights`).
        student_weights: optional initial weights of the whole student.
        maskd: the MasKD loss (``class_path: tenfold.distill.MasKDLoss``; the recipes set ``custom_mask_warmup``).
            Default ``MasKDLoss()`` (5 levels of 256 channels, 6 tokens).
        maskd_weight: lambda (official ``loss_weight``: 1 for Faster R-CNN, 7 for RetinaNet).
        tokens: the stage-1 tokens: a stage-1 run folder or checkpoint, its ``tokens.pth``, or a released mmdet
            token checkpoint (every key containing ``mask_modules``).
        student_module: the student's module returning its FPN levels (``backbone`` for torchvision's detectors).
        teacher_module: the teacher's module returning its FPN levels.
        init_student_from_teacher: key prefixes of the detector state dict copied from the (loaded) teacher into
            the student at construction, e.g. ``[backbone.fpn, head]`` (the official RetinaNet recipes initialise
            the student's neck and head from the teacher); every copied key must exist in the student with the
            same shape.
        optim: optimiser and schedule of the student and the align convs.
        warmup_iters: mmdet's linear warm-up length in updates (RetinaNet recipes 1000, mmdet default 500).
        warmup_ratio: lr factor at the first update of the warm-up (mmdet 0.001).
        evaluate: score the student's COCO mAP during validation.
        allow_random_teacher: permit ``teacher_weights=None`` (tests only).
        allow_random_tokens: permit ``tokens=None`` (tests only).

    Raises:
        ValueError: a module name that is not in a model, levels that differ between student and teacher (number,
            keys or spatial sizes) or from ``maskd.channels``, different resize settings, missing weights or tokens.

    Logged: ``train/<loss name>`` for the student's losses, ``train/maskd`` (unweighted), ``train/maskd_level<i>``,
    ``train/custom_mask`` (1 once the customised mask is on), ``train/loss``.
    """

    def __init__(
        self,
        student: DetectorConfig | None = None,
        teacher: DetectorConfig | None = None,
        num_classes: int = 91,
        teacher_weights: str | None = None,
        student_weights: str | None = None,
        maskd: MasKDLoss | None = None,
        maskd_weight: float = 1.0,
        tokens: str | None = None,
        student_module: str = "backbone",
        teacher_module: str = "backbone",
        init_student_from_teacher: list[str] | None = None,
        optim: OptimConfig | None = None,
        warmup_iters: int = 0,
        warmup_ratio: float = 0.001,
        evaluate: bool = True,
        allow_random_teacher: bool = False,
        allow_random_tokens: bool = False,
    ) -> None:
        super().__init__()
        student = student or DetectorConfig()
        teacher = teacher or DetectorConfig(backbone="resnet101")
        maskd = maskd if maskd is not None else MasKDLoss()
        optim = optim or OptimConfig(opt="momentum", lr=0.02, weight_decay=1e-4, filter_bias_and_bn=False)
        if tokens is None and not allow_random_tokens:
            raise ValueError(
                "model.init_args.tokens is required: the stage-1 run folder (MaskTokenTask), its tokens.pth, or a "
                "released MasKD token checkpoint"
            )
        self.save_hyperparameters(ignore=["student", "teacher", "maskd", "optim"])
        self.hparams.update(student=_plain(student), teacher=_plain(teacher), optim=asdict(optim))
        self.hparams["maskd"] = {
            "class": type(maskd).__name__, "channels": list(maskd.channels), "num_tokens": maskd.num_tokens,
            "weight_mask": maskd.weight_mask, "custom_mask": maskd.custom_mask,
            "custom_mask_warmup": maskd.custom_mask_warmup, "official_counter_reset": maskd.official_counter_reset,
        }  # fmt: skip
        self.teacher = _frozen_teacher(teacher, num_classes, teacher_weights, allow_random_teacher)
        self.teacher.eval()
        self.student = build_detector(student, num_classes)
        if student_weights is not None:
            load_detector_weights(self.student, student_weights)
        if init_student_from_teacher:
            _copy_from_teacher(self.student, self.teacher, list(init_student_from_teacher))
        _check_same_resize(self.student, self.teacher)
        if tokens is not None:
            path = Path(tokens)
            maskd.load_tokens(str(last_checkpoint(path) if path.is_dir() else path))
        self.maskd = maskd
        self.maskd_weight = maskd_weight
        self.align = self._check_wiring(student_module, teacher_module)
        self._student_tap = _LevelTap(self.student, student_module)
        self._teacher_tap = _LevelTap(self.teacher, teacher_module, stop=True)
        self._init_common(num_classes, optim, warmup_iters, warmup_ratio, evaluate)

    def _check_wiring(self, student_module: str, teacher_module: str) -> nn.ModuleList:
        """Compare the levels of both models on a dummy batch with the loss's channels; build the align convs."""
        keys_s, levels_s = fpn_levels(_probe(self.student, student_module))
        keys_t, levels_t = fpn_levels(_probe(self.teacher, teacher_module))
        shapes_s = [tuple(x.shape[2:]) for x in levels_s]
        shapes_t = [tuple(x.shape[2:]) for x in levels_t]
        if keys_s != keys_t or shapes_s != shapes_t:
            raise ValueError(
                f"student levels {keys_s or len(levels_s)} of sizes {shapes_s} (module {student_module!r}) do not "
                f"match teacher levels {keys_t or len(levels_t)} of sizes {shapes_t} (module {teacher_module!r})"
            )
        channels_t = [x.shape[1] for x in levels_t]
        if channels_t != list(self.maskd.channels):
            raise ValueError(
                f"the teacher's levels have channels {channels_t} but model.init_args.maskd has channels="
                f"{list(self.maskd.channels)}; set them equal"
            )
        return nn.ModuleList(nn.Conv2d(s.shape[1], c, 1) for s, c in zip(levels_s, channels_t, strict=True))

    def train(self, mode: bool = True) -> DetectionDistillationTask:
        """Switch the student, align convs and loss to ``mode``; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def eval_detector(self) -> nn.Module:  # noqa: D102
        return self.student

    def trainable_modules(self) -> nn.Module:
        """The student and the align convs; never the teacher or the (frozen) tokens."""
        return nn.ModuleDict({"student": self.student, "align": self.align})

    def compute_loss(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        """The total training loss of a batch and every term to log (MasKD unweighted)."""
        with torch.no_grad():
            _, teacher_out = self._teacher_tap.run(self.teacher, images)
        losses, student_out = self._student_tap.run(self.student, images, targets)
        _, levels_t = fpn_levels(teacher_out)
        _, levels_s = fpn_levels(student_out)
        aligned = [conv(x) for conv, x in zip(self.align, levels_s, strict=True)]
        custom = torch.tensor(float(self.maskd.custom_mask_active), device=levels_t[0].device)
        parts = self.maskd.forward_parts(aligned, levels_t)
        total = torch.stack(list(losses.values())).sum() + self.maskd_weight * parts.total
        logs = {**losses, "maskd": parts.total, "custom_mask": custom}
        logs.update({f"maskd_level{i}": v for i, v in enumerate(parts.level_losses)})
        return total, logs

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:  # noqa: D102
        images, targets = batch
        total, logs = self.compute_loss(images, targets)
        self._log_losses(logs, total, len(images))
        return total


def _copy_from_teacher(student: nn.Module, teacher: nn.Module, prefixes: list[str]) -> None:
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    copied = {k: v for k, v in teacher_state.items() if k.startswith(tuple(prefixes))}
    if not copied:
        raise ValueError(f"init_student_from_teacher: no teacher key starts with {prefixes}")
    bad = [k for k, v in copied.items() if k not in student_state or student_state[k].shape != v.shape]
    if bad:
        raise ValueError(
            f"init_student_from_teacher: teacher keys missing or shaped differently in the student: {bad[:8]}"
        )
    student.load_state_dict(copied, strict=False)  # only the named parts; the rest keeps its initialisation
