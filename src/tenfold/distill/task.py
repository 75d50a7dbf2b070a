"""The distillation LightningModule: a frozen teacher, a student, and any number of weighted distillation terms.

Training glue only: the losses live in :mod:`tenfold.distill.kd` / :mod:`tenfold.distill.dist` (pure PyTorch), the
features come from :class:`~tenfold.distill.taps.FeatureTaps`, the models from the timm registry.

Total loss: ``ce_weight * CE(student(x), y) + sum_i weight_i * loss_i(student_tap_i, teacher_tap_i)``; every term is
logged separately (``train/ce``, ``train/<term>``, ``train/loss``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tenfold.classification.task import ClassifierTaskBase, classification_metrics, create_model
from tenfold.distill.taps import LOGITS, FeatureTaps
from tenfold.engine.optim import OptimConfig
from tenfold.utils.config import config_from

__all__ = ["DistillTerm", "DistillationTask"]


@dataclass
class DistillTerm:
    """One distillation term of the total loss.

    Attributes:
        loss: the loss module, called as ``loss(student_value, teacher_value)`` (e.g. ``KDLoss``, ``DISTLoss``).
        weight: its weight in the total loss (the official DIST recipes use 2.0).
        student: the student tap: a module path of the student, or ``"logits"`` for its output.
        teacher: the teacher tap: a module path of the teacher, or ``"logits"``.
        connector: map the student tap to the teacher tap's channels with a learnable 1x1 convolution and batch
            norm (for feature terms whose channel counts differ).
        name: the name under which the term is logged (default: the loss class name, lower-cased).
    """

    loss: nn.Module
    weight: float = 1.0
    student: str = LOGITS
    teacher: str = LOGITS
    connector: bool = False
    name: str | None = None


def _connector(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


class DistillationTask(ClassifierTaskBase):
    """Distil a frozen teacher into a student for image classification.

    The teacher is frozen (no gradients), kept in eval mode (its BatchNorm statistics never change) and run under
    ``no_grad``. Connectors are submodules of this task, so the student's own ``state_dict`` (``student.*`` keys,
    see ``tenfold export-student``) holds only the student.

    Args:
        student: timm model name of the student.
        teacher: timm model name of the teacher.
        num_classes: classes of both models.
        teacher_weights: the teacher's weights: a tenfold checkpoint (e.g. the ``last.ckpt`` of a classification
            run), or a plain / released state dict file.
        student_weights: optional initial weights of the student (same formats).
        student_kwargs: extra architecture arguments of the student.
        teacher_kwargs: extra architecture arguments of the teacher.
        terms: the distillation terms. ``[]`` trains the student with cross-entropy only (the baseline).
        ce_weight: weight of the student's cross-entropy (the official ImageNet KD baseline uses 0.9).
        label_smoothing: label smoothing of the cross-entropy.
        optim: optimiser and schedule of the student and the connectors.
        input_size: (C, H, W) of a dummy batch used to check the wiring and size the connectors before training.
        allow_random_teacher: permit ``teacher_weights=None`` (a randomly initialised teacher; for tests only).

    Raises:
        ValueError: a tap names no module, a term's shapes do not fit its loss, or no teacher weights are given.
    """

    def __init__(
        self,
        student: str = "resnet8x4",
        teacher: str = "resnet32x4",
        num_classes: int = 100,
        teacher_weights: str | None = None,
        student_weights: str | None = None,
        student_kwargs: dict[str, Any] | None = None,
        teacher_kwargs: dict[str, Any] | None = None,
        terms: list[DistillTerm] | None = None,
        ce_weight: float = 1.0,
        label_smoothing: float = 0.0,
        optim: OptimConfig | None = None,
        input_size: tuple[int, int, int] = (3, 32, 32),
        allow_random_teacher: bool = False,
    ) -> None:
        super().__init__()
        if teacher_weights is None and not allow_random_teacher:
            raise ValueError(
                "model.init_args.teacher_weights is required: a tenfold checkpoint or a state dict of the teacher"
            )
        terms = list(terms or [])
        self.optim = config_from(OptimConfig, optim) or OptimConfig()
        # checkpoints must hold plain values only (they are read back with weights_only=True)
        self.save_hyperparameters(ignore=["terms", "optim"])
        self.hparams["optim"] = asdict(self.optim)
        self.hparams["terms"] = [
            {**{k: v for k, v in asdict(t).items() if k != "loss"}, "loss": type(t.loss).__name__} for t in terms
        ]
        self.student = create_model(student, num_classes, student_weights, **(student_kwargs or {}))
        self.teacher = create_model(teacher, num_classes, teacher_weights, **(teacher_kwargs or {}))
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        names = [t.name or type(t.loss).__name__.lower() for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"distillation terms need distinct names, got {names}; set `name` on each term")
        self.term_names = names
        self.terms = terms
        self.losses = nn.ModuleDict({n: t.loss for n, t in zip(names, terms, strict=True)})
        self.student_taps = FeatureTaps(self.student, [t.student for t in terms])
        self.teacher_taps = FeatureTaps(self.teacher, [t.teacher for t in terms])
        self.connectors = nn.ModuleDict()
        self._check_wiring(input_size)
        self.label_smoothing = label_smoothing
        self.ce_weight = ce_weight
        self.init_metrics(num_classes)
        self.teacher_val_metrics = classification_metrics(num_classes, "val/teacher_")
        self._teacher_evaluated = False

    # -- wiring -----------------------------------------------------------------------------------------------
    def _tap_values(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        with self.teacher_taps, torch.no_grad():
            teacher_logits = self.teacher(images)
        with self.student_taps:
            student_logits = self.student(images)
        student = {LOGITS: student_logits, **{n: self.student_taps[n] for n in self.student_taps.names}}
        teacher = {LOGITS: teacher_logits, **{n: self.teacher_taps[n] for n in self.teacher_taps.names}}
        self.student_taps.clear()
        self.teacher_taps.clear()
        return student_logits, student, teacher

    def _check_wiring(self, input_size: tuple[int, int, int]) -> None:
        """Run a dummy batch once: size the connectors and make every loss accept its inputs before training."""
        was_training = self.student.training
        # eval mode: the dummy batch must not touch BatchNorm statistics of the student or of learnable losses
        self.student.eval()
        self.losses.eval()
        with torch.no_grad():
            _, student, teacher = self._tap_values(torch.zeros(2, *input_size))
            for name, term in zip(self.term_names, self.terms, strict=True):
                s, t = student[term.student], teacher[term.teacher]
                if term.connector:
                    if s.ndim != 4 or t.ndim != 4:
                        raise ValueError(f"term {name!r}: a connector needs (B, C, H, W) taps, got {tuple(s.shape)}")
                    self.connectors[name] = _connector(s.shape[1], t.shape[1])
                    self.connectors[name].eval()
                    s = self.connectors[name](s)
                if s.shape != t.shape:
                    raise ValueError(
                        f"term {name!r}: student tap {term.student!r} gives {tuple(s.shape)} but teacher tap "
                        f"{term.teacher!r} gives {tuple(t.shape)}; set connector: true or choose matching taps"
                    )
                term.loss(s, t)
        self.student.train(was_training)
        self.losses.train(was_training)

    def train(self, mode: bool = True) -> DistillationTask:
        """Switch the student (and connectors) to ``mode``; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    # -- steps ------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The student's logits (B, num_classes): at inference the teacher and the terms are not used."""
        return self.student(x)

    def compute_loss(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The total training loss of a batch, the student's logits, and every term to log (unweighted).

        Losses that expose ``forward_parts`` (DIST, DiffKD) also report each part as ``<term>_<part>``.
        """
        logits, student, teacher = self._tap_values(images)
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        total = self.ce_weight * ce
        logs = {"ce": ce}
        for name, term in zip(self.term_names, self.terms, strict=True):
            s, t = student[term.student], teacher[term.teacher]
            if name in self.connectors:
                s = self.connectors[name](s)
            loss_fn = self.losses[name]
            if hasattr(loss_fn, "forward_parts"):
                parts = loss_fn.forward_parts(s, t)
                value = parts.total
                for part, part_value in parts._asdict().items():
                    if part != "total" and isinstance(part_value, torch.Tensor) and part_value.numel() == 1:
                        logs[f"{name}_{part}"] = part_value
            else:
                value = loss_fn(s, t)
            logs[name] = value
            total = total + term.weight * value
        return total, logits, logs

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: D102
        images, labels = batch
        total, logits, logs = self.compute_loss(images, labels)
        batch_size = labels.numel()
        for name, value in logs.items():
            self.log(f"train/{name}", value, batch_size=batch_size, sync_dist=True)
        self.train_metrics.update(logits.detach(), labels)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return total

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:  # noqa: D102
        super().validation_step(batch, batch_idx)
        if not self._teacher_evaluated:
            # the teacher is frozen: its accuracy is measured in the first validation only
            images, labels = batch
            self.teacher_val_metrics.update(self.teacher(images), labels)
            self.log_dict(self.teacher_val_metrics)

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        if not self.trainer.sanity_checking:
            self._teacher_evaluated = True

    def trainable_modules(self) -> nn.Module:
        """The student, the connectors and the learnable losses (DiffKD); never the frozen teacher."""
        return nn.ModuleDict({"student": self.student, "connectors": self.connectors, "losses": self.losses})
