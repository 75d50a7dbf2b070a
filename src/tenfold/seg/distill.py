"""Segmentation distillation tasks: DIST / MasKD on the logit maps of a frozen teacher segmenter (training glue only).

The losses are pure PyTorch (:class:`~tenfold.distill.dist.DISTLoss` with ``dense=True``,
:class:`~tenfold.distill.maskd.MasKDSegLoss`, :class:`~tenfold.distill.maskd.SegMaskModule`); the networks are those
of :mod:`tenfold.seg.models`; evaluation, losses and schedule come from :class:`~tenfold.seg.task.SegmentationTask`.

* :class:`SegMaskTokenTask`: MasKD stage 1 (spec 2.9, official ``segmentation/train_mask_module.py``). The teacher
  is frozen and run under ``no_grad``; its main logits pass through :class:`SegMaskModule`; the loss is
  ``CE(up(masked logits), y) + aux_weight * CE(up(aux), y) + dice_weight * Dice``, and only the tokens are trained.
  At the end the tokens are written in the layout of the released file, ``{'mask_token': (T, C)}``.
* :class:`SegDistillationTask`: the KD stage (official ``train_kd.py`` of DIST_KD and ``train_maskd.py`` of MasKD).
  ``loss = CE(up(z_s), y) + aux_weight * CE(up(a_s), y) + kd_weight * (L(z_s, z_t) + kd_aux_weight * L(a_s, a_t))``
  with L a DIST or MasKD term on the logits at the networks' output resolution (1/8 for DeepLabV3).

Official code: https://github.com/hunto/DIST_KD (2418f18) ``segmentation/train_kd.py``; https://github.com/hunto/MasKD
(b5af34f) ``segmentation/train_mask_module.py``, ``segmentation/train_maskd.py``, ``segmentation/losses/maskd.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tenfold.distill.maskd import MasKDSegLoss, SegMaskModule
from tenfold.engine.optim import OptimConfig
from tenfold.engine.rundir import last_checkpoint
from tenfold.seg.inference import inference
from tenfold.seg.metrics import SegmentationScores
from tenfold.seg.models import SegOutput, load_segmenter_weights
from tenfold.seg.task import SegmentationTask, as_seg_output, describe_model, upsample_logits
from tenfold.utils.checkpoint import save_checkpoint

__all__ = ["TOKENS_FILE", "SegDistillationTask", "SegMaskTokenTask", "resolve_tokens"]

#: File name of the stage-1 token export inside a run folder (the released layout ``{'mask_token': (T, C)}``).
TOKENS_FILE = "tokens.pth"


def _weights_path(source: str) -> str:
    """A checkpoint path from a file, a run folder or a folder of runs (its latest ``last.ckpt``)."""
    return str(last_checkpoint(source)) if Path(source).is_dir() else source


def resolve_tokens(source: str) -> str:
    """The token file a ``tokens`` option names.

    Accepts a token file (the released ``{'mask_token': (T, C)}`` file, or any checkpoint
    :meth:`MasKDSegLoss.load_tokens` reads), a stage-1 run folder (its ``tokens.pth``, else its ``last.ckpt``), or
    a folder of stage-1 runs such as ``runs/maskd/tiny_seg_stage1`` (the latest run with a ``last.ckpt``).

    Raises:
        FileNotFoundError: a folder holds neither.
    """
    path = Path(source)
    if not path.is_dir():
        return str(path)
    if (path / TOKENS_FILE).is_file():
        return str(path / TOKENS_FILE)
    ckpt = last_checkpoint(path)
    run = ckpt.parent.parent
    return str(run / TOKENS_FILE) if (run / TOKENS_FILE).is_file() else str(ckpt)


def _frozen_teacher(teacher: nn.Module, weights: str | None, allow_random: bool) -> nn.Module:
    if weights is None and not allow_random:
        raise ValueError(
            "model.init_args.teacher_weights is required: the teacher's run folder or checkpoint, or a released "
            "state dict (torchvision, CIRKD, PRCL layouts)"
        )
    if not hasattr(teacher, "num_classes"):
        raise ValueError(f"the teacher ({type(teacher).__name__}) must have a num_classes attribute")
    if weights is not None:
        load_segmenter_weights(teacher, _weights_path(weights))
    return teacher.requires_grad_(False)


def _describe_loss(loss: nn.Module | None) -> dict[str, Any] | None:
    """A loss as plain values for the checkpoint's hyper-parameters (its class and ``repr`` settings)."""
    if loss is None:
        return None
    cls = type(loss)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "settings": loss.extra_repr()}


class SegMaskTokenTask(SegmentationTask):
    """MasKD stage 1 for segmentation: learn receptive tokens on a frozen teacher's logit maps.

    Per step (official ``train_mask_module.py``): the teacher runs under ``no_grad``; its main logits z (N, C, h, w)
    pass through :class:`~tenfold.distill.maskd.SegMaskModule`, ``z~ = z * sum_t sigmoid(tau_t . z)``; the loss is

    ``CE(up(z~), y) + aux_weight * CE(up(aux), y) + dice_weight * Dice(M)``

    (the aux term is constant with respect to the tokens; it is kept so the logged total equals the official one).
    The optimiser sees the tokens only (official: SGD lr 0.1, momentum 0.9, weight decay 1e-3, poly power 0.9 without
    floor, 10000 iterations; the default ``optim``).

    Validation scores the masked teacher. The mask scales every pixel's logits by a positive factor, so its argmax,
    and hence its mIoU, is the teacher's own (the official log's 78.10 against 78.07 comes from the teacher's
    BatchNorm statistics, which stage 1 updates: see ``teacher_train_mode``).

    When training ends, the tokens are written atomically to ``<run folder>/<tokens_file>`` as the raw state dict
    ``{'mask_token': (T, C)}``, the layout of the released ``deeplabv3_resnet101_citys_best_model.pth``;
    :meth:`MasKDSegLoss.load_tokens` reads it strictly (and also the Lightning checkpoints, ``mask_module.*``).

    Args:
        teacher: the teacher segmenter (e.g. ``tenfold.seg.models.DeepLabV3`` by ``class_path``), with
            ``num_classes``; it returns :class:`~tenfold.seg.models.SegOutput` (or logits).
        teacher_weights: its weights: a tenfold checkpoint, run folder or folder of runs (latest ``last.ckpt``), or
            a released state dict, loaded strictly (:func:`~tenfold.seg.models.load_segmenter_weights`).
        num_tokens: T (official 8).
        dice_weight: weight of the Dice diversity term (official 1).
        teacher_train_mode: leave the teacher in training mode during training steps, as the official code does
            (``model.train()`` before the loop): its BatchNorm layers normalise with batch statistics and update
            their running statistics, and its dropout is active, although no weight is trained. False keeps the
            teacher in eval mode (what the detection stage 1 does, and what one would expect from a frozen teacher).
            The mode is set before every training step; validation always runs the teacher in eval mode.
        aux_weight: weight of the teacher's auxiliary CE in the logged loss (official 0.4).
        ignore_index: label value excluded from the losses and scores.
        optim: optimiser and schedule of the tokens.
        tokens_file: file name of the token export inside the run folder (``trainer.default_root_dir``); None: none.
        eval_mode: ``whole`` or ``slide`` (see :class:`SegmentationTask`).
        eval_window: sliding-window size.
        eval_stride: sliding-window stride.
        eval_flip: flip averaging at evaluation.
        eval_max_batch: windows per forward.
        allow_random_teacher: permit ``teacher_weights=None`` (tests only).

    Raises:
        ValueError: no teacher weights, weights that do not fit, ``num_tokens`` < 2 (Dice needs two masks), or an
            invalid setting of the base task.

    Logged: ``train/ce`` (masked logits), ``train/aux``, ``train/dice``, ``train/loss``; ``val/miou`` etc.
    """

    def __init__(
        self,
        teacher: nn.Module,
        teacher_weights: str | None = None,
        num_tokens: int = 8,
        dice_weight: float = 1.0,
        teacher_train_mode: bool = True,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
        optim: OptimConfig | None = None,
        tokens_file: str | None = TOKENS_FILE,
        eval_mode: Literal["whole", "slide"] = "whole",
        eval_window: tuple[int, int] | None = None,
        eval_stride: tuple[int, int] | None = None,
        eval_flip: bool = False,
        eval_max_batch: int = 8,
        allow_random_teacher: bool = False,
    ) -> None:
        if num_tokens < 2:
            raise ValueError(f"num_tokens must be >= 2 (the Dice term compares pairs of masks), got {num_tokens}")
        optim = optim or OptimConfig(
            opt="momentum", lr=0.1, momentum=0.9, weight_decay=1e-3, filter_bias_and_bn=False, sched="poly",
            decay_rate=0.9, min_lr=0.0, warmup_epochs=0,
        )  # fmt: skip
        teacher = _frozen_teacher(teacher, teacher_weights, allow_random_teacher)
        # The base is called by name, not through super(): Lightning's save_hyperparameters collects the arguments
        # of every __init__ up the stack that uses super(), and would copy the teacher module into the
        # hyper-parameters. This task records its own (plain) values below.
        SegmentationTask.__init__(
            self, model=teacher, aux_weight=aux_weight, ignore_index=ignore_index, optim=optim,
            eval_mode=eval_mode, eval_window=eval_window, eval_stride=eval_stride, eval_flip=eval_flip,
            eval_max_batch=eval_max_batch,
        )  # fmt: skip
        self.mask_module = SegMaskModule(self.num_classes, num_tokens)
        self.dice_weight = float(dice_weight)
        self.teacher_train_mode = bool(teacher_train_mode)
        self.tokens_file = tokens_file
        self.model.train(self.teacher_train_mode)
        self.save_hyperparameters(
            {
                "teacher": describe_model(teacher), "teacher_weights": teacher_weights, "num_tokens": num_tokens,
                "dice_weight": dice_weight, "teacher_train_mode": teacher_train_mode, "aux_weight": aux_weight,
                "ignore_index": ignore_index, "optim": dict(self.hparams["optim"]), "tokens_file": tokens_file,
                "eval_mode": eval_mode, "eval_window": eval_window, "eval_stride": eval_stride,
                "eval_flip": eval_flip, "eval_max_batch": eval_max_batch,
            },
            ignore=["model", "weights"],  # the base's names for the teacher and its weights
        )  # fmt: skip

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (stored as ``model``, so the evaluation of the base task scores it)."""
        return self.model

    def train(self, mode: bool = True) -> SegMaskTokenTask:
        """Training mode for the tokens; the teacher follows only with ``teacher_train_mode`` (else stays in eval)."""
        super().train(mode)
        if not self.teacher_train_mode:
            self.model.eval()
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Set the teacher's mode before every step (Lightning restores flags after validation, not via ``train``)."""
        self.model.train(self.teacher_train_mode)

    def trainable_modules(self) -> nn.Module:
        """The tokens only."""
        return self.mask_module

    def forward(self, x: Tensor) -> SegOutput:
        """The teacher's output with its main logits masked by the tokens (same argmax as the teacher's)."""
        out = as_seg_output(self.model(x))
        return SegOutput(self.mask_module(out.logits).features, out.aux)

    def compute_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, SegOutput, dict[str, Tensor]]:
        """Masked-logit CE + aux CE + Dice, the masked output, and the terms (``ce``, ``aux``, ``dice``)."""
        with torch.no_grad():
            out = as_seg_output(self.model(images))
        masked = self.mask_module(out.logits)
        output = SegOutput(masked.features, out.aux)
        total, parts = self.segmentation_loss(output, labels)
        parts["dice"] = masked.dice
        return total + self.dice_weight * masked.dice, output, parts

    def token_state(self) -> dict[str, Tensor]:
        """The tokens as the released raw state dict ``{'mask_token': (T, C)}`` (CPU copies)."""
        return {k: v.detach().cpu().clone() for k, v in self.mask_module.state_dict().items()}

    def on_train_end(self) -> None:
        """Write the tokens (rank 0, atomically) to ``<run folder>/<tokens_file>``."""
        if self.tokens_file is None or not self.trainer.is_global_zero:
            return
        save_checkpoint(self.token_state(), Path(self.trainer.default_root_dir) / self.tokens_file)


class SegDistillationTask(SegmentationTask):
    """Distil a frozen teacher segmenter into a student on their logit maps (DIST or MasKD, spec 2.3 / 2.9).

    Per step (official ``train_kd.py`` / ``train_maskd.py``): the teacher runs in eval mode under ``no_grad`` on the
    same crops; the loss is

    ``CE(up(z_s), y) + aux_weight * CE(up(a_s), y) + kd_weight * (L(z_s, z_t) + kd_aux_weight * L(a_s, a_t))``

    with z the main and a the auxiliary (FCN head) logits at the networks' output resolution (1/8 for DeepLabV3 at
    output stride 8: the official code compares these maps, not upsampled ones), and L = ``kd_loss``:
    ``DISTLoss(dense=True)`` (beta = gamma = 1, softmax over classes; ``use_sigmoid`` for the mmrazor variant) or
    ``MasKDSegLoss`` (tokens from stage 1, frozen). The aux term is used only when both networks have an aux head
    (official: ResNet students; the teacher always has one). ``kd_loss: null`` trains the student with CE only (the
    baseline, same everything else).

    When the student's logits have another spatial size than the teacher's (e.g. a DeepLabV3+ student at 1/4 and a
    DeepLabV3 teacher at 1/8), the student's are resized to the teacher's (bilinear, the student's
    ``align_corners``) before the KD term; the official pairs all share one resolution, so this never happens there.

    The teacher's weights are frozen and its BatchNorm stays in eval mode (set at construction, by ``train()`` and
    before every training step: Lightning restores module flags directly after validation). The loss module is in
    eval mode too and is not trained unless its parameters require gradients (``MasKDSegLoss(trainable_tokens=True)``).
    The MasKD tokens are (frozen) parameters of ``kd_loss``, saved in every checkpoint: a resumed run uses the tokens
    it started with even if the token file changed meanwhile. MasKDSegLoss has no warm-up counter (unlike the
    detection loss), so nothing else carries state across a resume.

    Args:
        model: the student segmenter (``class_path``), with ``num_classes``.
        teacher: the teacher segmenter (``class_path``), with the same ``num_classes``.
        teacher_weights: the teacher's weights (a tenfold checkpoint, run folder or folder of runs, or a released
            state dict), loaded strictly.
        kd_loss: the KD term L, called as ``L(student_logits, teacher_logits)`` on (N, C, h, w) maps
            (``tenfold.distill.DISTLoss`` with ``dense: true``, or ``tenfold.distill.MasKDSegLoss``); None: CE only.
        kd_weight: lambda_kd (official 1).
        kd_aux_weight: weight of the aux-logit KD term inside the bracket (official 0.4).
        tokens: MasKD only: the stage-1 tokens (see :func:`resolve_tokens`: the released file, a stage-1 run folder
            or a folder of such runs), loaded strictly into ``kd_loss``. Required for ``MasKDSegLoss`` (its own
            ``pretrained`` argument is not looked at).
        weights: optional initial weights of the student (see :class:`SegmentationTask`).
        aux_weight: weight of the student's aux CE (official 0.4).
        ignore_index: label value excluded from the losses and scores.
        optim: optimiser and schedule of the student (official: SGD lr 0.02, momentum 0.9, wd 5e-4, poly 0.9 with a
            1e-4 floor).
        eval_mode: ``whole`` or ``slide``.
        eval_window: sliding-window size.
        eval_stride: sliding-window stride.
        eval_flip: flip averaging at evaluation.
        eval_max_batch: windows per forward.
        evaluate_teacher: also score the teacher in the first validation (``val/teacher_miou``).
        input_size: (C, H, W) of the dummy batch that checks the wiring at construction.
        allow_random_teacher: permit ``teacher_weights=None`` (tests only).
        allow_random_tokens: permit a MasKD term without ``tokens`` (tests only).

    Raises:
        ValueError: missing teacher weights or tokens, tokens for a loss that has none, student and teacher with
            different class counts, a KD term that refuses the logits (e.g. ``DISTLoss`` without ``dense``, tokens
            of another class count), or an invalid setting of the base task.

    Logged: ``train/ce``, ``train/aux``, ``train/kd`` and ``train/kd_aux`` (unweighted), the loss's parts of the main
    term (``train/kd_inter``, ``train/kd_intra`` for DIST), ``train/loss``; ``val/miou``..., ``val/teacher_miou``.
    """

    def __init__(
        self,
        model: nn.Module,
        teacher: nn.Module,
        teacher_weights: str | None = None,
        kd_loss: nn.Module | None = None,
        kd_weight: float = 1.0,
        kd_aux_weight: float = 0.4,
        tokens: str | None = None,
        weights: str | None = None,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
        optim: OptimConfig | None = None,
        eval_mode: Literal["whole", "slide"] = "whole",
        eval_window: tuple[int, int] | None = None,
        eval_stride: tuple[int, int] | None = None,
        eval_flip: bool = False,
        eval_max_batch: int = 8,
        evaluate_teacher: bool = True,
        input_size: tuple[int, int, int] = (3, 64, 64),
        allow_random_teacher: bool = False,
        allow_random_tokens: bool = False,
    ) -> None:
        for name, value in (("kd_weight", kd_weight), ("kd_aux_weight", kd_aux_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        optim = optim or OptimConfig(
            opt="momentum", lr=0.02, momentum=0.9, weight_decay=5e-4, filter_bias_and_bn=False, sched="poly",
            decay_rate=0.9, min_lr=1e-4, warmup_epochs=0,
        )  # fmt: skip
        # called by name, not through super(): see SegMaskTokenTask (the modules must not enter the hyper-parameters)
        SegmentationTask.__init__(
            self, model=model, weights=weights, aux_weight=aux_weight, ignore_index=ignore_index, optim=optim,
            eval_mode=eval_mode, eval_window=eval_window, eval_stride=eval_stride, eval_flip=eval_flip,
            eval_max_batch=eval_max_batch,
        )  # fmt: skip
        self.teacher = _frozen_teacher(teacher, teacher_weights, allow_random_teacher).eval()
        if int(self.teacher.num_classes) != self.num_classes:
            raise ValueError(
                f"the student has {self.num_classes} classes but the teacher has {self.teacher.num_classes}; "
                "both must predict the same classes"
            )
        if tokens is not None:
            if not hasattr(kd_loss, "load_tokens"):
                raise ValueError(
                    f"model.init_args.tokens is set but the KD term ({type(kd_loss).__name__}) takes no tokens; "
                    "use kd_loss: tenfold.distill.MasKDSegLoss or drop tokens"
                )
            kd_loss.load_tokens(resolve_tokens(tokens))  # type: ignore[union-attr]
        elif isinstance(kd_loss, MasKDSegLoss) and not allow_random_tokens:
            raise ValueError(
                "model.init_args.tokens is required for MasKD: the stage-1 run folder (SegMaskTokenTask), its "
                "tokens.pth, or the released token file {'mask_token': (T, C)} (instead of the loss's pretrained)"
            )
        self.kd_loss = kd_loss.eval() if kd_loss is not None else None
        self.kd_weight = float(kd_weight)
        self.kd_aux_weight = float(kd_aux_weight)
        self.evaluate_teacher = bool(evaluate_teacher)
        self.teacher_val_scores = SegmentationScores(self.num_classes, ignore_index)
        self._teacher_evaluated = False
        self._check_wiring(tuple(input_size))
        self.save_hyperparameters(
            {
                "model": self.hparams["model"], "teacher": describe_model(teacher), "teacher_weights": teacher_weights,
                "kd_loss": _describe_loss(kd_loss), "kd_weight": kd_weight, "kd_aux_weight": kd_aux_weight,
                "tokens": tokens, "weights": weights, "aux_weight": aux_weight, "ignore_index": ignore_index,
                "optim": dict(self.hparams["optim"]), "eval_mode": eval_mode, "eval_window": eval_window,
                "eval_stride": eval_stride, "eval_flip": eval_flip, "eval_max_batch": eval_max_batch,
                "evaluate_teacher": evaluate_teacher, "input_size": list(input_size),
            }
        )  # fmt: skip

    # -- wiring -----------------------------------------------------------------------------------------------
    def _check_wiring(self, input_size: tuple[int, int, int]) -> None:
        """Run a dummy batch once (eval mode, no BatchNorm update) so a KD term that refuses the logits fails now."""
        if self.kd_loss is None:
            return
        was_training = self.model.training
        self.model.eval()
        self.kd_loss.eval()
        try:
            with torch.no_grad():
                images = torch.zeros(2, *input_size)
                student, teacher = self(images), as_seg_output(self.teacher(images))
                self._kd_value(student.logits, teacher.logits, "main")
                if student.aux is not None and teacher.aux is not None:
                    self._kd_value(student.aux, teacher.aux, "aux")
        finally:
            self.model.train(was_training)

    def train(self, mode: bool = True) -> SegDistillationTask:
        """Switch the student to ``mode``; the teacher and the loss module always stay in eval mode."""
        super().train(mode)
        self.teacher.eval()
        if self.kd_loss is not None:
            self.kd_loss.eval()
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Put the teacher (and the loss module) in eval mode before every step, whatever mode the task was set to."""
        self.teacher.eval()
        if self.kd_loss is not None:
            self.kd_loss.eval()

    def trainable_modules(self) -> nn.Module:
        """The student, and the KD term's parameters that require gradients (none for DIST and frozen MasKD)."""
        modules = {"student": self.model}
        if self.kd_loss is not None:
            modules["kd_loss"] = self.kd_loss  # timm's parameter groups skip parameters without requires_grad
        return nn.ModuleDict(modules)

    # -- losses -----------------------------------------------------------------------------------------------
    def _kd_value(self, student: Tensor, teacher: Tensor, which: str) -> tuple[Tensor, dict[str, Tensor]]:
        """The KD term on one pair of logit maps and its scalar parts; the student is resized to the teacher."""
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(f"{which} logits: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
        if student.shape[-2:] != teacher.shape[-2:]:
            student = upsample_logits(self.model, student, teacher.shape[-2:])
        loss_fn = self.kd_loss
        try:
            if hasattr(loss_fn, "forward_parts"):
                parts = loss_fn.forward_parts(student, teacher)  # type: ignore[union-attr]
                named = {
                    k: v
                    for k, v in parts._asdict().items()
                    if k != "total" and isinstance(v, Tensor) and v.numel() == 1
                }
                return parts.total, named
            return loss_fn(student, teacher), {}  # type: ignore[misc]
        except ValueError as err:
            raise ValueError(f"kd_loss {type(loss_fn).__name__} refuses the {which} logits: {err}") from err

    def compute_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, SegOutput, dict[str, Tensor]]:
        """The training loss of a batch, the student's output, and every term to log (KD terms unweighted)."""
        student = self(images)
        total, parts = self.segmentation_loss(student, labels)
        if self.kd_loss is None:  # the CE baseline: the teacher is not run
            return total, student, parts
        with torch.no_grad():
            teacher = as_seg_output(self.teacher(images))
        kd, kd_parts = self._kd_value(student.logits, teacher.logits, "main")
        parts["kd"] = kd
        parts.update({f"kd_{k}": v for k, v in kd_parts.items()})
        bracket = kd
        if student.aux is not None and teacher.aux is not None and self.kd_aux_weight > 0:
            parts["kd_aux"], _ = self._kd_value(student.aux, teacher.aux, "aux")
            bracket = bracket + self.kd_aux_weight * parts["kd_aux"]
        return total + self.kd_weight * bracket, student, parts

    # -- evaluation -------------------------------------------------------------------------------------------
    def _teacher_logits(self, images: Tensor) -> Tensor:
        return upsample_logits(self.teacher, as_seg_output(self.teacher(images)).logits, images.shape[-2:])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:  # noqa: D102
        super().validation_step(batch, batch_idx)
        if self.evaluate_teacher and not self._teacher_evaluated:
            # the teacher is frozen: it is scored in the first validation only
            images, labels = batch
            logits = inference(
                self._teacher_logits, images, self.eval_mode, self.eval_window, self.eval_stride, self.eval_flip,
                self.eval_max_batch,
            )  # fmt: skip
            self.teacher_val_scores.update(logits.argmax(1), labels)

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        super().on_validation_epoch_end()
        if self.evaluate_teacher and not self._teacher_evaluated:
            result = self.teacher_val_scores.compute()
            self.log("val/teacher_miou", result["miou"].float(), sync_dist=True)
            self.teacher_val_scores.reset()
            if not self.trainer.sanity_checking:
                self._teacher_evaluated = True
