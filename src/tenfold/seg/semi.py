"""Semi-supervised segmentation task: supervised baseline, mean teacher, and PRCL (Haoyu-Xie/PRCL, d8829da).

One training step (spec 2.8), on a batch ``{"labelled": (images, labels), "unlabelled": images}`` of UN-normalised
[0, 1] images (:class:`tenfold.data.semi.SemiSegmentationData`):

1. teacher (EMA copy of the segmentation net; the uncertainty head has no EMA) on the weak unlabelled view, in
   train mode under ``no_grad`` (official; ``teacher_train_mode``), logits upsampled to the image; ``conf, pl =
   max softmax``;
2. :func:`~tenfold.seg.mixing.rescale_crop`, :func:`~tenfold.seg.mixing.generate_mix` (ClassMix),
   :func:`~tenfold.seg.mixing.strong_augment`, normalisation;
3. student forward on the labelled and on the mixed unlabelled images;
4. ``CE_sup + attention_threshold_loss + prcl_weight(epoch) * PRCLLoss(rep, uncertainty_head(features), ...)``;
5. after the optimiser step, :func:`~tenfold.seg.prcl.ema_update_` (parameters only unless ``ema_buffers``).

``supervised`` keeps step 3's labelled CE only; ``mean_teacher`` drops the PRCL term. An "epoch" is
``epoch_images`` labelled images (official 2000); the learning rate follows :func:`~tenfold.seg.prcl.poly_epoch_lr`
and the PRCL weight :func:`~tenfold.seg.prcl.prcl_weight`, both per epoch. The uncertainty head is its own
parameter group at ``uncertainty_lr`` (the official second SGD at 5e-5, same momentum and decay).

Logged: ``train/loss``, ``train/ce``, ``train/unsup``, ``train/prcl``, ``train/prcl_weight``, ``train/epoch``,
``train/sigma_mean|min|max``, ``train/ema_decay``; validation/test as :class:`~tenfold.seg.task.SegmentationTask`.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tenfold.data.semi import SemiSegmentationData
from tenfold.engine.optim import OptimConfig, configure_optimizers
from tenfold.seg.prcl import (
    PRCLLoss,
    UncertaintyHead,
    attention_threshold_loss,
    contrastive_targets,
    ema_decay,
    ema_update_,
    poly_epoch_lr,
    prcl_weight,
)
from tenfold.seg.task import SegmentationTask, as_seg_output, upsample_logits

__all__ = ["METHODS", "SemiSupervisedSegTask"]

METHODS = ("supervised", "mean_teacher", "prcl")


class SemiSupervisedSegTask(SegmentationTask):
    """Semi-supervised segmentation with a mean teacher and PRCL's probabilistic contrastive loss.

    Args:
        model: a :class:`~tenfold.seg.prcl.PRCLDeepLabV3Plus` (any segmenter for ``supervised``/``mean_teacher``).
        method: ``supervised``, ``mean_teacher`` or ``prcl``.
        weights: optional initial weights of the student (see :class:`~tenfold.seg.task.SegmentationTask`).
        ignore_index: ignored label (255).
        optim: optimiser settings (official SGD Nesterov: ``opt: sgd``, lr 3.2e-3, momentum 0.9, wd 5e-4); its
            ``sched`` is not used: the lr is :func:`poly_epoch_lr` per epoch.
        uncertainty_lr: lr of the uncertainty head's parameter group (5e-5, also poly-decayed).
        ema_alpha: EMA decay cap (0.99).
        ema_buffers: also average BN buffers (official: parameters only).
        teacher_train_mode: run the teacher in train mode (batch-statistics BN, official) when pseudo-labelling.
        un_threshold: strong threshold of :func:`attention_threshold_loss` (0.97).
        weak_threshold: confidence of unlabelled pixels used by PRCL (0.7).
        strong_threshold: anchors are pixels with probability below this (0.8).
        num_queries: PRCL anchors per class (256).
        num_negatives: PRCL negatives per anchor (512).
        temperature: PRCL temperature (official 100).
        global_prototypes: journal-version Global Distribution Prototypes (off, not in the official code).
        mix_mode: ``classmix`` (official), ``cutmix`` or ``cutout``.
        strong_scale_range: rescale range of the strong unlabelled branch (VOC (0.5, 1.5), Cityscapes (0.5, 2.0));
            the labelled images' range is the data module's ``scale_range`` (Cityscapes (1, 1)).
        strong_crop_size: crop of the strong branch; None = the unlabelled images' size (the data's crop).
        epoch_images: labelled images per "epoch" (2000).
        iters_per_epoch: optimiser steps per "epoch"; None = the trainer's batches per epoch when the data module
            defines the official epoch (:class:`~tenfold.data.semi.SemiSegmentationData` does), else
            ``epoch_images // labelled batch size``. The official
            count is ``int(epoch_images / batch / L) * L`` with L the labelled loader's length (VOC-662 at 16: 84;
            Cityscapes-150 at 6: 325): the recipes set it.
        total_epochs: epochs of the poly lr and of the PRCL rampdown (200).
        prcl_multiplier: rampdown exponent multiplier (-5).
        poly_power: poly power (0.9).
        min_lr: poly floor (1e-6).
        seed: seed of the per-step generators of the mixing and PRCL sampling (a resumed run redraws the same).
        eval_model: ``ema`` (official) or ``student``.
        eval_mode: ``whole``, ``slide`` or ``random_crop`` (official, non-standard: one random crop of
            ``eval_crop`` per image, seeded per batch).
        eval_crop: (height, width) of ``random_crop`` evaluation (VOC 321, Cityscapes 512).
        eval_window, eval_stride, eval_flip, eval_max_batch: as :class:`~tenfold.seg.task.SegmentationTask`.

    Raises:
        ValueError: an unknown method, eval model or mode, a PRCL model without ``forward_prcl``, bad thresholds.
    """

    def __init__(
        self,
        model: nn.Module,
        method: Literal["supervised", "mean_teacher", "prcl"] = "prcl",
        weights: str | None = None,
        ignore_index: int = 255,
        optim: OptimConfig | None = None,
        uncertainty_lr: float = 5e-5,
        ema_alpha: float = 0.99,
        ema_buffers: bool = False,
        teacher_train_mode: bool = True,
        un_threshold: float = 0.97,
        weak_threshold: float = 0.7,
        strong_threshold: float = 0.8,
        num_queries: int = 256,
        num_negatives: int = 512,
        temperature: float = 100.0,
        global_prototypes: bool = False,
        mix_mode: Literal["classmix", "cutmix", "cutout"] = "classmix",
        strong_scale_range: tuple[float, float] = (0.5, 1.5),
        strong_crop_size: tuple[int, int] | None = None,
        epoch_images: int = 2000,
        iters_per_epoch: int | None = None,
        total_epochs: int = 200,
        prcl_multiplier: float = -5.0,
        poly_power: float = 0.9,
        min_lr: float = 1e-6,
        seed: int = 0,
        eval_model: Literal["ema", "student"] = "ema",
        eval_mode: Literal["whole", "slide", "random_crop"] = "whole",
        eval_crop: tuple[int, int] | None = None,
        eval_window: tuple[int, int] | None = None,
        eval_stride: tuple[int, int] | None = None,
        eval_flip: bool = False,
        eval_max_batch: int = 8,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if eval_model not in ("ema", "student"):
            raise ValueError(f"eval_model must be 'ema' or 'student', got {eval_model!r}")
        if eval_mode == "random_crop" and eval_crop is None:
            raise ValueError("eval_mode 'random_crop' needs eval_crop, e.g. [321, 321] (VOC) or [512, 512]")
        if method == "prcl" and not hasattr(model, "forward_prcl"):
            raise ValueError(f"method 'prcl' needs a model with forward_prcl (PRCLDeepLabV3Plus), got {type(model)}")
        for name, value in (("un", un_threshold), ("weak", weak_threshold), ("strong", strong_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}_threshold must be in [0, 1], got {value}")
        if epoch_images < 1 or total_epochs < 1:
            raise ValueError(f"epoch_images and total_epochs must be >= 1, got {epoch_images}, {total_epochs}")
        optim = optim or OptimConfig(opt="sgd", lr=3.2e-3, momentum=0.9, weight_decay=5e-4, sched="none")
        super().__init__(
            model,
            weights=weights,
            aux_weight=0.0,
            ignore_index=ignore_index,
            optim=optim,
            eval_mode="whole" if eval_mode == "random_crop" else eval_mode,
            eval_window=eval_window,
            eval_stride=eval_stride,
            eval_flip=eval_flip,
            eval_max_batch=eval_max_batch,
        )
        self.hparams["eval_mode"] = eval_mode
        self.method = method
        self.ema = copy.deepcopy(model).requires_grad_(False) if method != "supervised" else None
        self.uncertainty_head = (
            UncertaintyHead(model.feature_channels, model.representation_dim) if method == "prcl" else None
        )
        self.prcl_loss = (
            PRCLLoss(num_queries, num_negatives, temperature, strong_threshold, global_prototypes)
            if method == "prcl"
            else None
        )
        self.uncertainty_lr = uncertainty_lr
        self.ema_alpha = ema_alpha
        self.ema_buffers = ema_buffers
        self.teacher_train_mode = teacher_train_mode
        self.un_threshold = un_threshold
        self.weak_threshold = weak_threshold
        self.mix_mode = mix_mode
        self.strong_scale_range = tuple(strong_scale_range)
        self.strong_crop_size = tuple(strong_crop_size) if strong_crop_size is not None else None
        self.epoch_images = epoch_images
        self.total_epochs = total_epochs
        self.prcl_multiplier = prcl_multiplier
        self.poly_power = poly_power
        self.min_lr = min_lr
        self.seed = seed
        self.eval_model = eval_model
        self.semi_eval_mode = eval_mode
        self.eval_crop = tuple(eval_crop) if eval_crop is not None else None
        self.iters_per_epoch = iters_per_epoch
        self.register_buffer("norm_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("norm_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    # -- wiring -----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """The base checks, then the data's normalisation statistics."""
        super().setup(stage)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        if mean is not None and std is not None:
            self.norm_mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(self.norm_mean.device)
            self.norm_std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(self.norm_std.device)

    def configure_optimizers(self) -> Any:
        """The optim config's optimiser on the student (no timm schedule) + the uncertainty head's group."""
        optimizer = configure_optimizers(self, self.trainable_modules(), replace(self.optim, sched="none"))
        for group in optimizer.param_groups:
            group["poly_base_lr"] = group["lr"]
        if self.uncertainty_head is not None:
            optimizer.add_param_group(
                {
                    "params": list(self.uncertainty_head.parameters()),
                    "lr": self.uncertainty_lr,
                    "weight_decay": self.optim.weight_decay,
                    "poly_base_lr": self.uncertainty_lr,
                }
            )
        return optimizer

    def normalize(self, images: Tensor) -> Tensor:
        """Images in [0, 1] normalised with the data's mean and std."""
        return (images - self.norm_mean.to(images.dtype)) / self.norm_std.to(images.dtype)

    def current_epoch_images(self, labelled_batch: int) -> int:
        """The "epoch" (of ``epoch_images`` labelled images) of the current step."""
        if self.iters_per_epoch is None:
            n = getattr(self._trainer, "num_training_batches", None) if self._trainer is not None else None
            from_data = isinstance(getattr(self._trainer, "datamodule", None), SemiSegmentationData)
            if from_data and isinstance(n, int) and n > 0:
                self.iters_per_epoch = n
            else:
                self.iters_per_epoch = max(1, self.epoch_images // max(1, labelled_batch))
        return int(self.trainer.global_step) // self.iters_per_epoch if self._trainer is not None else 0

    def _step_generator(self) -> torch.Generator:
        step = int(self.trainer.global_step) if self._trainer is not None else 0
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step)

    # -- training ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def pseudo_label(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher confidence and pseudo-label (B, H, W) of normalised unlabelled images."""
        teacher = self.ema
        teacher.train(self.teacher_train_mode)
        logits = upsample_logits(teacher, as_seg_output(teacher(images)).logits, images.shape[-2:])
        conf, label = torch.softmax(logits, dim=1).max(dim=1)
        return conf, label

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # noqa: D102
        if not isinstance(batch, dict) or "labelled" not in batch:
            raise ValueError("SemiSupervisedSegTask expects batches {'labelled': (images, labels), 'unlabelled': ...}")
        images_l, labels_l = batch["labelled"]
        b = images_l.shape[0]
        epoch = self.current_epoch_images(b)
        for group in self.optimizers().optimizer.param_groups if self._trainer is not None else []:
            group["lr"] = poly_epoch_lr(
                group["poly_base_lr"], min(epoch, self.total_epochs), self.total_epochs, self.poly_power, self.min_lr
            )
        x_l = self.normalize(images_l)
        parts: dict[str, Tensor] = {}
        if self.method == "supervised":
            total = F.cross_entropy(
                upsample_logits(self.model, self(x_l).logits, labels_l.shape[-2:]),
                labels_l,
                ignore_index=self.ignore_index,
            )
            parts["ce"] = total
        else:
            total = self._semi_loss(x_l, labels_l, batch["unlabelled"], epoch, parts)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=b, sync_dist=True)
        self.log("train/epoch", float(epoch), batch_size=b)
        self.log("train/loss", total, prog_bar=True, batch_size=b, sync_dist=True)
        return total

    def _semi_loss(self, x_l: Tensor, labels_l: Tensor, images_u: Tensor, epoch: int, parts: dict) -> Tensor:
        from tenfold.seg import mixing

        gen = self._step_generator()
        conf, pseudo = self.pseudo_label(self.normalize(images_u))
        crop = self.strong_crop_size or tuple(images_u.shape[-2:])
        images_u, pseudo, conf = mixing.rescale_crop(
            images_u, pseudo, conf, self.strong_scale_range, crop, generator=gen, ignore_index=self.ignore_index
        )
        images_u, pseudo, conf = mixing.generate_mix(
            images_u, pseudo, conf, self.mix_mode, generator=gen, ignore_index=self.ignore_index
        )
        images_u, pseudo, conf = mixing.strong_augment(images_u, pseudo, conf, generator=gen)
        x_u = self.normalize(images_u)
        if self.method == "prcl":
            out_l, out_u = self.model.forward_prcl(x_l), self.model.forward_prcl(x_u)
            logits_l, logits_u = out_l.logits, out_u.logits
        else:
            logits_l, logits_u = self(x_l).logits, self(x_u).logits
        ce = F.cross_entropy(
            upsample_logits(self.model, logits_l, labels_l.shape[-2:]), labels_l, ignore_index=self.ignore_index
        )
        unsup = attention_threshold_loss(
            upsample_logits(self.model, logits_u, pseudo.shape[-2:]),
            pseudo,
            conf,
            self.un_threshold,
            self.ignore_index,
        )
        parts.update(ce=ce, unsup=unsup)
        total = ce + unsup
        if self.method == "prcl":
            sigma = self.uncertainty_head(torch.cat([out_l.features, out_u.features]))
            rep = torch.cat([out_l.representation, out_u.representation])
            onehot, mask, prob = contrastive_targets(
                labels_l,
                pseudo,
                conf,
                torch.cat([logits_l, logits_u]),
                self.num_classes,
                self.weak_threshold,
                self.ignore_index,
            )
            lam = prcl_weight(epoch, self.total_epochs, self.prcl_multiplier)
            loss_prcl = self.prcl_loss(rep, sigma, onehot, mask, prob, generator=gen)
            total = total + lam * loss_prcl
            parts.update(
                prcl=loss_prcl.detach(),
                prcl_weight=torch.tensor(lam),
                sigma_mean=sigma.detach().mean(),
                sigma_min=sigma.detach().min(),
                sigma_max=sigma.detach().max(),
            )
        return total

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the EMA update of the teacher (official decay of step ``global_step``: 0 first).

        Done here rather than in ``on_train_batch_end``: Lightning runs the callbacks' batch-end hooks (the
        checkpoint's among them) before the module's, so a checkpoint written at step N would miss update N.
        """
        super().optimizer_step(*args, **kwargs)
        if self.ema is None:
            return
        step = int(self.trainer.global_step)  # Lightning counts this update once the hook returns
        ema_update_(self.ema, self.model, step, self.ema_alpha, include_buffers=self.ema_buffers)
        self.log("train/ema_decay", ema_decay(step, self.ema_alpha))

    # -- evaluation -------------------------------------------------------------------------------------------
    def eval_network(self) -> nn.Module:
        """The network evaluated: the EMA teacher (official) or the student."""
        return self.ema if self.eval_model == "ema" and self.ema is not None else self.model

    def predict_logits(self, images: Tensor) -> Tensor:
        """Full-resolution logits of the evaluated network (EMA teacher by default)."""
        net = self.eval_network()
        return upsample_logits(net, as_seg_output(net(images)).logits, images.shape[-2:])

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        if self.semi_eval_mode == "random_crop":
            batch = self._random_crop(*batch)
        super()._eval_step(batch, stage)

    def _random_crop(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Official evaluation: one random crop per batch (padded with ignore where the image is smaller)."""
        ch, cw = self.eval_crop
        h, w = labels.shape[-2:]
        if h < ch or w < cw:
            ph, pw = max(ch - h, 0), max(cw - w, 0)
            images = F.pad(images, (0, pw, 0, ph))
            labels = F.pad(labels, (0, pw, 0, ph), value=self.ignore_index)
            h, w = labels.shape[-2:]
        gen = torch.Generator().manual_seed(self.seed + int(labels.sum()) % 100_003)
        top = int(torch.randint(h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(w - cw + 1, (1,), generator=gen))
        return images[..., top : top + ch, left : left + cw], labels[..., top : top + ch, left : left + cw]
