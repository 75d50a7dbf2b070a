"""DIST: knowledge distillation from a stronger teacher by matching Pearson relations (arXiv 2205.10536).

Follows the official code: ``lib/models/losses/dist_kd.py`` of https://github.com/hunto/image_classification_sota
(commit 6f7a70a; classification, with temperature) for 2-D logits, and ``segmentation/losses/dist_kd.py`` of
https://github.com/hunto/DIST_KD (commit 2418f18) and ``mmrazor/mmrazor/models/losses/dist_kd.py`` of
https://github.com/hunto/MasKD (commit b5af34f; optional sigmoid) for dense (N, C, H, W) logits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn

__all__ = [
    "DISTLoss",
    "DISTParts",
    "dist_loss",
    "dist_loss_parts",
    "inter_class_relation",
    "intra_class_relation",
    "pearson_correlation",
]

PEARSON_EPS = 1e-8


class DISTParts(NamedTuple):
    """The two relation terms of DIST and the loss built from them (for logging).

    Attributes:
        inter: Inter-class relation ``1 - mean_r rho(Y_s[r], Y_t[r])`` over samples (pixels for dense input),
            in [0, 2]; unweighted (no beta, no tau^2).
        intra: Intra-class relation ``1 - mean_c rho(Y_s[:, c], Y_t[:, c])`` over classes, in [0, 2]; unweighted.
        total: The loss, ``beta * tau^2 * inter + gamma * tau^2 * intra``.
    """

    inter: torch.Tensor
    intra: torch.Tensor
    total: torch.Tensor


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{what}: student and teacher must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = PEARSON_EPS) -> torch.Tensor:
    r"""Pearson correlation of each row of ``a`` with the same row of ``b``.

    .. math::
        \rho_r = \frac{\sum_k a'_{rk} b'_{rk}}{\lVert a'_r\rVert_2 \lVert b'_r\rVert_2 + \epsilon},
        \qquad a'_r = a_r - \mathrm{mean}(a_r),\ b'_r = b_r - \mathrm{mean}(b_r).

    ``eps`` is added to the product of the two norms, so a constant row gives rho = 0 (not NaN). The value is
    unchanged by ``a_r -> s * a_r + t`` for any s > 0 and shift t (up to the eps term).

    Args:
        a: (R, K) tensor.
        b: (R, K) tensor.
        eps: Added to the product of the norms.

    Returns:
        (R,) correlations in [-1, 1].

    Raises:
        ValueError: If the shapes differ or the inputs are not 2-D.
    """
    _check_pair(a, b, "pearson_correlation")
    if a.ndim != 2:
        raise ValueError(f"pearson_correlation expects 2-D (R, K) tensors, got shape {tuple(a.shape)}")
    a_c = a - a.mean(dim=1, keepdim=True)
    b_c = b - b.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(a_c, dim=1) * torch.linalg.vector_norm(b_c, dim=1)
    return (a_c * b_c).sum(dim=1) / (norms + eps)


def inter_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """Inter-class relation distance: ``1 - mean over rows (samples) of rho(y_s[r], y_t[r])``.

    Args:
        y_s: (B, C) student probabilities.
        y_t: (B, C) teacher probabilities.

    Returns:
        Scalar in [0, 2]; 0 when every row is perfectly positively correlated.

    Raises:
        ValueError: If the shapes differ or the inputs are not 2-D.
    """
    return 1 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """Intra-class relation distance: ``1 - mean over columns (classes) of rho(y_s[:, c], y_t[:, c])``.

    The correlation of one class is taken across the samples of the batch, so the value depends on the batch
    composition.

    Args:
        y_s: (B, C) student probabilities.
        y_t: (B, C) teacher probabilities.

    Returns:
        Scalar in [0, 2].

    Raises:
        ValueError: If the shapes differ or the inputs are not 2-D.
    """
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def _check_hparams(beta: float, gamma: float, tau: float) -> None:
    for name, value in (("beta", beta), ("gamma", gamma)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")


def _to_rows(logits: torch.Tensor, dense: bool) -> torch.Tensor:
    if logits.ndim == 2:
        return logits
    if logits.ndim == 4:
        if not dense:
            raise ValueError(
                f"got 4-D logits {tuple(logits.shape)} with dense=False; the classification DIST would correlate "
                "over the wrong axes. Pass dense=True to treat every pixel as a sample, or flatten to (B, C)"
            )
        # The official code orders rows (N, W, H); the order does not change either relation term.
        return logits.movedim(1, -1).reshape(-1, logits.shape[1])
    raise ValueError(f"DIST expects (B, C) or (N, C, H, W) logits, got shape {tuple(logits.shape)}")


def _probabilities(logits: torch.Tensor, tau: float, use_sigmoid: bool) -> torch.Tensor:
    # Half inputs go to float32: eps = 1e-8 is 0 in float16, so constant rows would give 0/0.
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / tau
    return z.sigmoid() if use_sigmoid else z.softmax(dim=1)


def dist_loss_parts(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
    dense: bool = False,
    use_sigmoid: bool = False,
) -> DISTParts:
    """DIST loss and its two relation terms; see :class:`DISTLoss` for the formula and arguments.

    Returns:
        :class:`DISTParts` ``(inter, intra, total)``.

    Raises:
        ValueError: On mismatched shapes, input that is not 2-D or 4-D, 4-D input with ``dense=False``,
            tau <= 0, or negative beta/gamma.
    """
    _check_hparams(beta, gamma, tau)
    _check_pair(logits_student, logits_teacher, "DIST logits")
    y_s = _probabilities(_to_rows(logits_student, dense), tau, use_sigmoid)
    y_t = _probabilities(_to_rows(logits_teacher, dense), tau, use_sigmoid)
    inter = inter_class_relation(y_s, y_t)
    intra = intra_class_relation(y_s, y_t)
    scale = tau**2
    return DISTParts(inter, intra, beta * scale * inter + gamma * scale * intra)


def dist_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
    dense: bool = False,
    use_sigmoid: bool = False,
) -> torch.Tensor:
    """DIST loss as a scalar; see :class:`DISTLoss` for the formula and arguments.

    Raises:
        ValueError: As :func:`dist_loss_parts`.
    """
    return dist_loss_parts(logits_student, logits_teacher, beta, gamma, tau, dense, use_sigmoid).total


class DISTLoss(nn.Module):
    r"""DIST loss: match the inter-class and intra-class Pearson relations of student and teacher predictions.

    With ``Y = softmax(Z / tau)`` over classes (rows = samples, columns = classes):

    .. math::
        L = \beta \tau^2 \Big(1 - \frac{1}{B}\sum_i \rho(Y^s_{i,:}, Y^t_{i,:})\Big)
          + \gamma \tau^2 \Big(1 - \frac{1}{C}\sum_j \rho(Y^s_{:,j}, Y^t_{:,j})\Big)

    where rho is :func:`pearson_correlation` (eps 1e-8 on the product of the norms). Each bracket lies in
    [0, 2] and is 0 when the relations are perfectly correlated.

    Dense input (``dense=True``): an (N, C, H, W) map becomes N*H*W rows of C classes, as in the official
    segmentation and detection versions; the intra-class term then correlates, per class, all pixels of the
    batch. The temperature acts exactly as for 2-D input (``softmax(z / tau)`` and tau^2 on both terms). The
    official dense versions have no temperature: the default tau = 1 makes this loss equal to them.

    ``use_sigmoid=True`` replaces the softmax by an element-wise ``sigmoid(z / tau)`` (the mmrazor option used on
    RetinaNet's anchor x class channels); it applies to 2-D and dense input alike.

    References:
        [1] Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022,
            arXiv 2205.10536.
        [2] Official code: https://github.com/hunto/image_classification_sota ``lib/models/losses/dist_kd.py``
            (2-D, tau); https://github.com/hunto/DIST_KD ``segmentation/losses/dist_kd.py`` (dense);
            https://github.com/hunto/MasKD ``mmrazor/mmrazor/models/losses/dist_kd.py`` (dense, sigmoid).

    Args:
        beta: Weight of the inter-class term (>= 0). The paper's beta = 2 is realised by the official recipes as
            beta = 1 here times a KD loss weight of 2 in the task; do not double both.
        gamma: Weight of the intra-class term (>= 0); paper's gamma = 2 likewise.
        tau: Softmax temperature (> 0); both terms are multiplied by tau^2. ImageNet recipes use 1, CIFAR 4.
        dense: Accept (N, C, H, W) logits and treat every pixel as a sample. With ``False`` such input raises
            ``ValueError``; 2-D input is accepted either way.
        use_sigmoid: Element-wise sigmoid instead of a softmax over classes.

    Raises:
        ValueError: If tau <= 0, or beta or gamma is negative.

    Fidelity:
        - tau^2: the paper softens with tau but its pseudo-code has no tau^2 factor; the official code multiplies
          both terms by tau^2 (image_classification_sota issue #19) and so does this loss.
        - eps: the paper's Pearson coefficient has no eps; the code adds 1e-8 to the product of the norms, after
          centring each row. A constant row therefore gives rho = 0, and the gradient with respect to a
          constant student row is the centred teacher row divided by 1e-8 (huge, but finite in float32; it
          overflows float16 logits), as officially. An exactly uniform student (e.g. a zero-initialised
          classifier) therefore receives very large gradients on its first step.
        - No detach: the teacher is not detached inside the loss (the official code neither); run the teacher
          under ``torch.no_grad()``, as the official wrapper does.
        - Dense reshape from the segmentation/mmrazor versions (rows in (N, H, W) order rather than the
          official (N, W, H); the loss value does not depend on the row order). Their ``loss_weight`` is left
          to the task. The classification version would silently correlate over other axes for 4-D input,
          hence ``dense`` must be set explicitly here.
        - The intra-class relation is computed over the batch seen by this process only (no all-gather under
          DDP), as in the official code.
        - float16/bfloat16 logits are upcast to float32 before the softmax (eps = 1e-8 vanishes in float16);
          under CUDA autocast the official softmax also runs in float32.

    Example:
        >>> loss_fn = DISTLoss(tau=4.0)
        >>> loss = loss_fn(torch.randn(8, 100, requires_grad=True), torch.randn(8, 100))
        >>> seg_loss = DISTLoss(dense=True)  # (N, C, H, W) maps; 4-D input raises without dense=True
        >>> inter, intra, total = seg_loss.forward_parts(torch.randn(2, 19, 8, 8), torch.randn(2, 19, 8, 8))
    """

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        tau: float = 1.0,
        dense: bool = False,
        use_sigmoid: bool = False,
    ) -> None:
        super().__init__()
        _check_hparams(beta, gamma, tau)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.tau = float(tau)
        self.dense = bool(dense)
        self.use_sigmoid = bool(use_sigmoid)

    def forward_parts(self, logits_student: torch.Tensor, logits_teacher: torch.Tensor) -> DISTParts:
        """Compute the loss and its unweighted relation terms.

        Args:
            logits_student: (B, C) logits, or (N, C, H, W) with ``dense=True``.
            logits_teacher: Teacher logits of the same shape (not detached here).

        Returns:
            :class:`DISTParts` ``(inter, intra, total)``.

        Raises:
            ValueError: On mismatched shapes, input that is not 2-D or 4-D, or 4-D input with ``dense=False``.
        """
        return dist_loss_parts(
            logits_student, logits_teacher, self.beta, self.gamma, self.tau, self.dense, self.use_sigmoid
        )

    def forward(self, logits_student: torch.Tensor, logits_teacher: torch.Tensor) -> torch.Tensor:
        """Compute the DIST loss.

        Args:
            logits_student: (B, C) logits, or (N, C, H, W) with ``dense=True``.
            logits_teacher: Teacher logits of the same shape (not detached here).

        Returns:
            Scalar loss (float32 for half-precision input).

        Raises:
            ValueError: On mismatched shapes, input that is not 2-D or 4-D, or 4-D input with ``dense=False``.
        """
        return self.forward_parts(logits_student, logits_teacher).total

    def extra_repr(self) -> str:
        """Constructor values shown by ``repr``."""
        return (
            f"beta={self.beta}, gamma={self.gamma}, tau={self.tau}, dense={self.dense}, use_sigmoid={self.use_sigmoid}"
        )
