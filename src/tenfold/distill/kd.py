"""Vanilla knowledge distillation (Hinton et al., arXiv 1503.02531): temperature-scaled KL divergence on logits.

This is the KD baseline of the DIST paper (arXiv 2205.10536). It follows ``KLDivergence`` in
``lib/models/losses/kl_div.py`` of https://github.com/hunto/image_classification_sota (commit 6f7a70a), which the
DIST classification recipes use (``kd_method='kd'`` is tau = 4, ``'kdt<T>'`` is tau = T).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["KDLoss", "kd_loss"]

Reduction = Literal["batchmean", "sum", "mean"]
_REDUCTIONS: tuple[str, ...] = get_args(Reduction)


def _check_tau(tau: float) -> None:
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_logits(logits_student: torch.Tensor, logits_teacher: torch.Tensor) -> None:
    if logits_student.shape != logits_teacher.shape:
        raise ValueError(
            "student and teacher logits must have the same shape, got "
            f"{tuple(logits_student.shape)} (student) and {tuple(logits_teacher.shape)} (teacher)"
        )
    # 3-D input is refused because (B, T, C) token logits would be softened over T, not over the classes.
    if logits_student.ndim not in (2, 4):
        raise ValueError(
            f"logits must be (B, C) or (N, C, H, W) with classes on dim 1, got shape {tuple(logits_student.shape)}"
        )


def kd_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    tau: float = 4.0,
    reduction: Reduction = "batchmean",
) -> torch.Tensor:
    r"""Temperature-scaled KL divergence from the teacher's to the student's softened class distribution.

    .. math::
        L = \tau^2 \sum_{b,c} p^t_{bc} (\log p^t_{bc} - \log p^s_{bc}) / D,
        \qquad p = \mathrm{softmax}(z / \tau) \text{ over classes (dim 1)},

    with ``D = B`` for ``"batchmean"``, ``D = 1`` for ``"sum"`` and ``D`` = number of elements for ``"mean"``
    (the reductions of ``torch.nn.functional.kl_div``). Classes with zero teacher probability contribute 0.

    Args:
        logits_student: Student logits, (B, C), or (N, C, H, W) with one distribution per pixel.
        logits_teacher: Teacher logits of the same shape; detached here, so no gradient reaches the teacher.
        tau: Softmax temperature (> 0). The tau^2 factor keeps gradient magnitudes comparable across tau.
        reduction: ``"batchmean"`` (sum / B; the true KL per sample and the official default), ``"sum"``, or
            ``"mean"`` (sum / number of elements, i.e. / (B*C) for 2-D input).

    Returns:
        Scalar loss, float32 for half-precision inputs, otherwise in the input dtype.

    Raises:
        ValueError: On mismatched shapes, input that is not 2-D or 4-D, tau <= 0, or an unknown reduction.

    Fidelity:
        Same value as the official ``KLDivergence(tau, reduction)``. For 4-D input the official code (and this
        function) softens over dim 1 per pixel and ``"batchmean"`` divides the sum over all pixels by N only.
        Half-precision logits are upcast to float32 first: under CUDA autocast the official softmax already runs
        in float32, while CPU autocast would keep it in bfloat16/float16.
    """
    _check_tau(tau)
    _check_reduction(reduction)
    _check_logits(logits_student, logits_teacher)
    dtype = torch.promote_types(logits_student.dtype, torch.float32)
    log_p_student = F.log_softmax(logits_student.to(dtype) / tau, dim=1)
    p_teacher = F.softmax(logits_teacher.detach().to(dtype) / tau, dim=1)
    # Reduce by hand from "sum": F.kl_div(reduction="mean") warns on every call, and the value is identical.
    total = F.kl_div(log_p_student, p_teacher, reduction="sum")
    if reduction == "batchmean":
        total = total / logits_student.shape[0]
    elif reduction == "mean":
        total = total / logits_student.numel()
    return tau**2 * total


class KDLoss(nn.Module):
    r"""Vanilla KD loss: ``tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau))``.

    References:
        [1] Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", arXiv 1503.02531.
        [2] Baseline of DIST, arXiv 2205.10536; official code ``KLDivergence`` in
            https://github.com/hunto/image_classification_sota, ``lib/models/losses/kl_div.py``.

    See :func:`kd_loss` for the formula, shapes and reductions. The loss has no weight of its own: the task
    multiplies it (the DIST ImageNet KD baseline uses ``0.9 * CE + 1.0 * KD(tau=4)``).

    Args:
        tau: Softmax temperature (> 0). Official ``kd_method='kd'`` means tau = 4.
        reduction: ``"batchmean"`` (default), ``"sum"`` or ``"mean"``, as in ``torch.nn.functional.kl_div``.

    Raises:
        ValueError: If tau <= 0 or the reduction is unknown.

    Example:
        >>> loss_fn = KDLoss(tau=4.0)
        >>> loss = loss_fn(torch.randn(8, 10, requires_grad=True), torch.randn(8, 10))
    """

    def __init__(self, tau: float = 4.0, reduction: Reduction = "batchmean") -> None:
        super().__init__()
        _check_tau(tau)
        _check_reduction(reduction)
        self.tau = float(tau)
        self.reduction = reduction

    def forward(self, logits_student: torch.Tensor, logits_teacher: torch.Tensor) -> torch.Tensor:
        """Compute the KD loss.

        Args:
            logits_student: (B, C) or (N, C, H, W) student logits.
            logits_teacher: Teacher logits of the same shape (detached inside).

        Returns:
            Scalar loss.

        Raises:
            ValueError: On mismatched shapes or input that is not 2-D or 4-D.
        """
        return kd_loss(logits_student, logits_teacher, tau=self.tau, reduction=self.reduction)

    def extra_repr(self) -> str:
        """Constructor values shown by ``repr``."""
        return f"tau={self.tau}, reduction={self.reduction!r}"
