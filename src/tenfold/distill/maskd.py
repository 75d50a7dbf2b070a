r"""MasKD: masked knowledge distillation with receptive tokens (Huang et al., ICLR 2023, arXiv 2205.14589).

Two stages, both training-only (at inference the student runs alone):

1. **Learning receptive tokens.** The teacher is frozen. Each feature level gets a :class:`MaskModule`: T learnable
   tokens, each of which gives a soft spatial mask ``sigmoid(token . feature)``. The teacher's feature is replaced
   by the (weighted) sum of its masked copies and the tokens are trained with the teacher's own task loss plus a
   Dice diversity term (:func:`dice_coeff`) that pushes the masks apart. :class:`MaskedFeatures` does this for any
   model through a forward hook (e.g. on a detector's FPN).
2. **Masked distillation.** The tokens are frozen; the (aligned) student feature is regressed onto the teacher's
   inside each mask, normalised by the mask area (:class:`MasKDLoss`; segmentation: :class:`MasKDSegLoss`, on
   the 19-class logit maps).

Follows the official code, https://github.com/hunto/MasKD (commit b5af34f): ``mmrazor/mmrazor/models/losses/maskd.py``
(stage-2 detection loss), ``mmdetection/maskd.py`` and ``mmdetection/maskd_hook.py`` (stage 1, detection) and
``segmentation/losses/maskd.py`` (segmentation). Parameter names are the official ones, so the released stage-1
token checkpoints (``mask_modules.{i}.mask_token``, ``mask_modules.{i}.prob.{0,2}.*``; segmentation
``{'mask_token': (8, 19)}``) load unchanged with ``strict=True``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from tenfold.distill.taps import FeatureTaps
from tenfold.utils.checkpoint import load_checkpoint, load_state_dict_strict, unwrap_state_dict

__all__ = [
    "DICE_EPS",
    "SEG_EPS",
    "MasKDLoss",
    "MasKDParts",
    "MasKDSegLoss",
    "MaskModule",
    "MaskedFeatures",
    "MaskedOutput",
    "SegMaskModule",
    "dice_coeff",
    "masked_distance",
    "token_masks",
]

DICE_EPS = 1e-12
"""Added to each squared mask norm in the Dice denominator (official constant)."""

SEG_EPS = 1e-5
"""Added to the mask area in the segmentation loss's denominator (official; the detection loss has none)."""

TokenSource = str | os.PathLike | Mapping[str, Any]
Levels = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# The terms, as functions
# ---------------------------------------------------------------------------------------------------------------


def dice_coeff(masks: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    r"""Dice diversity of T masks: the mean pairwise Dice coefficient over distinct pairs (stage-1 loss term).

    .. math::
        D_{nij} = \frac{2 \langle m_{ni}, m_{nj}\rangle}{(\lVert m_{nj}\rVert^2 + \epsilon)
                  + (\lVert m_{ni}\rVert^2 + \epsilon)},\qquad
        \mathrm{div} = \frac{1}{N T (T-1)} \sum_n \sum_{i \ne j} D_{nij}

    The diagonal is excluded and both orders of a pair are counted, as in the official ``dice_coeff``. With all
    masks equal (tokens near zero at initialisation: every mask is about 0.5) the value is about 1; disjoint masks
    give 0. Half-precision masks are reduced in float32.

    Args:
        masks: (N, T, L) masks, e.g. ``forward_mask(x).flatten(2)``.
        eps: added to each squared norm (official 1e-12).

    Returns:
        Scalar in [0, 1] for masks in [0, 1].

    Raises:
        ValueError: ``masks`` is not 3-D or has fewer than 2 masks (the official code returns 0/0 = NaN then).
    """
    if masks.ndim != 3:
        raise ValueError(f"dice_coeff expects (N, T, L) masks, got shape {tuple(masks.shape)}")
    n, t, _ = masks.shape
    if t < 2:
        raise ValueError(f"dice_coeff needs at least 2 masks (T >= 2) to measure their diversity, got T = {t}")
    m = masks.to(torch.promote_types(masks.dtype, torch.float32))
    inner = m @ m.transpose(1, 2)  # (N, T, T): <m_i, m_j>
    sq = inner.diagonal(dim1=1, dim2=2) + eps  # (N, T): ||m_i||^2 + eps
    dice = 2 * inner / (sq[:, None, :] + sq[:, :, None])
    # zero the diagonal rather than subtract it: no cancellation when the masks are nearly disjoint
    diagonal = torch.eye(t, dtype=torch.bool, device=masks.device)
    return dice.masked_fill(diagonal, 0.0).sum() / (n * t * (t - 1))


def token_masks(tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""Soft spatial masks of T tokens on a feature map: ``M[n, t] = sigmoid(tokens[t] . x[n, :, h, w])``.

    No ``1 / sqrt(C)`` scaling, as officially.

    Args:
        tokens: (T, C) receptive tokens.
        x: (N, C, H, W) feature (or logit) map.

    Returns:
        (N, T, H, W) masks in (0, 1).

    Raises:
        ValueError: ``x`` is not 4-D or its channels differ from the tokens'.
    """
    if x.ndim != 4 or x.shape[1] != tokens.shape[1]:
        raise ValueError(
            f"expected an (N, {tokens.shape[1]}, H, W) map for {tokens.shape[0]} tokens of {tokens.shape[1]} "
            f"channels, got shape {tuple(x.shape)}"
        )
    n, _, h, w = x.shape
    return torch.sigmoid(tokens.to(x.dtype) @ x.flatten(2)).view(n, tokens.shape[0], h, w)


def masked_distance(y_s: torch.Tensor, y_t: torch.Tensor, mask: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    r"""Area-normalised masked squared distance per sample, token and channel.

    .. math::
        e_{ntc} = \frac{\sum_{hw} (M_{nthw} y^s_{nchw} - M_{nthw} y^t_{nchw})^2}{\sum_{hw} M_{nthw} + \epsilon}
                = \frac{\sum_{hw} M_{nthw}^2 (y^s_{nchw} - y^t_{nchw})^2}{\sum_{hw} M_{nthw} + \epsilon}

    The mask is squared in the numerator (it multiplies both features before the difference) but not in the
    denominator, as officially. Computed as one batched matrix product, without the official (N, T, C, H, W)
    intermediate.

    Args:
        y_s: (N, C, H, W) student feature.
        y_t: (N, C, H, W) teacher feature.
        mask: (N, T, H, W) masks.
        eps: added to the mask area (detection 0, segmentation :data:`SEG_EPS`).

    Returns:
        (N, T, C) distances.
    """
    diff2 = (y_s - y_t).square().flatten(2)  # (N, C, HW)
    m = mask.flatten(2)  # (N, T, HW)
    return (m.square() @ diff2.transpose(1, 2)) / (m.sum(-1, keepdim=True) + eps)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # half inputs are reduced in float32: sums of squares over H*W overflow float16 and lose bits in bfloat16
    return torch.promote_types(x.dtype, torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# Mask modules (stage 1)
# ---------------------------------------------------------------------------------------------------------------


class MaskedOutput(NamedTuple):
    """What a mask module returns in stage 1.

    Attributes:
        features: (N, C, H, W) the (weighted) sum over tokens of the masked input, ``sum_t w_t M_t * x``.
        dice: Scalar Dice diversity of the T masks (:func:`dice_coeff`); added to the task loss with weight 1.
    """

    features: torch.Tensor
    dice: torch.Tensor


class MaskModule(nn.Module):
    r"""Receptive tokens of one feature level, with the optional token-weighting branch (detection version).

    Parameters (official names; C channels, T tokens):

    * ``mask_token`` (T, C), drawn from N(0, 0.01^2);
    * if ``weight_mask``: ``prob = Sequential(Conv2d(C, C, 3, padding=1), AdaptiveAvgPool2d(1), Conv2d(C, T, 1))``,
      no activation or normalisation, weights from N(0, 2 / (k * k * out_channels)) (He, fan-out), biases 0.

    Stage-1 forward (paper Sec. 3, official ``MaskModule.forward_train``):

    .. math::
        M_t = \sigma(\tau_t^\top x) \in (0,1)^{H \times W},\qquad w = \mathrm{softmax}_t(\mathrm{prob}(x)),\qquad
        \tilde x = \sum_t w_t\, M_t \odot x,\qquad \mathcal L_\text{div} = \mathrm{dice}(M)

    with w = 1 when ``weight_mask`` is False. Per level at C = 256, T = 6: 593,158 parameters (token 1,536; 3x3
    conv 590,080; 1x1 conv 1,542).

    References:
        [1] Huang, You, Wang, Qian, Xu, "Masked Distillation with Receptive Tokens", ICLR 2023, arXiv 2205.14589.
        [2] Official code: https://github.com/hunto/MasKD (b5af34f), ``mmdetection/maskd.py`` and
            ``mmrazor/mmrazor/models/losses/maskd.py`` (``MaskModule``).

    Args:
        channels: C, the channels of the feature level.
        num_tokens: T, the number of tokens (all official detection configs: 6).
        weight_mask: build the ``prob`` branch that weights the tokens per image (all official configs: True).

    Raises:
        ValueError: ``channels`` or ``num_tokens`` < 1.

    Fidelity:
        - Initialisation draws the same random numbers in the same order as the official class, so the same seed
          gives the same tokens and weights: the official code fills the token with ``randn`` and then overwrites
          it with ``normal_(0, 0.01)`` (two draws), then builds the convolutions (their default initialisation
          draws), then overwrites the conv weights.
        - :meth:`forward_prob` returns (N, T); the official method returns (N, T, 1, 1, 1).
        - The official defaults differ between classes (mmrazor ``num_tokens=8, weight_mask=False``; mmdetection
          6 / True); the defaults here are the ones every config uses, 6 / True.

    Example:
        >>> module = MaskModule(16, num_tokens=4)
        >>> masked, dice = module(torch.randn(2, 16, 8, 8))   # (2, 16, 8, 8), scalar (about 1 at init)
    """

    def __init__(self, channels: int, num_tokens: int = 6, weight_mask: bool = True) -> None:
        super().__init__()
        if channels < 1 or num_tokens < 1:
            raise ValueError(f"channels and num_tokens must be >= 1, got channels={channels}, num_tokens={num_tokens}")
        self.channels = int(channels)
        self.num_tokens = int(num_tokens)
        self.weight_mask = bool(weight_mask)
        self.mask_token = nn.Parameter(torch.empty(num_tokens, channels))
        with torch.no_grad():
            # the official code draws randn and then overwrites it: kept so that seeded inits equal the official ones
            self.mask_token.normal_()
            self.mask_token.normal_(0.0, 0.01)
        if self.weight_mask:
            self.prob = nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size=3, padding=1),
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(channels, num_tokens, kernel_size=1),
            )
            for m in self.prob:
                if isinstance(m, nn.Conv2d):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                    nn.init.zeros_(m.bias)

    def forward_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The T soft masks of ``x``: (N, C, H, W) -> (N, T, H, W) (see :func:`token_masks`).

        Raises:
            ValueError: ``x`` is not (N, C, H, W) with this module's C.
        """
        return token_masks(self.mask_token, x)

    def forward_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image token weights ``softmax_t(prob(x))``: (N, C, H, W) -> (N, T), rows summing to 1.

        Raises:
            ValueError: the module was built with ``weight_mask=False``.
        """
        if not self.weight_mask:
            raise ValueError("forward_prob needs the weighting branch; this MaskModule has weight_mask=False")
        return self.prob(x).flatten(1).softmax(dim=1)

    def forward(self, x: torch.Tensor) -> MaskedOutput:
        """Stage 1: replace ``x`` by the weighted sum of its masked copies, and the masks' Dice diversity.

        Args:
            x: (N, C, H, W) (teacher) feature.

        Returns:
            :class:`MaskedOutput` ``(features (N, C, H, W), dice scalar)``.

        Raises:
            ValueError: wrong input shape, or T < 2 (no diversity to measure).
        """
        mask = self.forward_mask(x)  # (N, T, H, W)
        weighted = mask * self.forward_prob(x)[:, :, None, None] if self.weight_mask else mask
        # sum_t w_t M_t x = x * sum_t w_t M_t: no (N, T, C, H, W) intermediate
        features = x * weighted.sum(dim=1, keepdim=True)
        return MaskedOutput(features, dice_coeff(mask.flatten(2)))

    def extra_repr(self) -> str:
        """Constructor values shown by ``repr``."""
        return f"channels={self.channels}, num_tokens={self.num_tokens}, weight_mask={self.weight_mask}"


class SegMaskModule(MaskModule):
    """Receptive tokens of the segmentation version: ``mask_token`` (T, num_classes) only, acting on logit maps.

    Same as ``MaskModule(num_classes, num_tokens, weight_mask=False)``: the stage-1 forward returns the
    *unweighted* sum of the masked logits and the Dice term. The official segmentation class also takes a
    ``use_prob`` argument that it ignores; it is not offered here. The tokens act on the 19-channel logit map of
    the segmenter (MasKD issue #7), not on a feature map. 152 parameters for 8 tokens and 19 classes.

    References:
        Official code: https://github.com/hunto/MasKD (b5af34f), ``segmentation/losses/maskd.py`` (``MaskModule``).

    Args:
        num_classes: channels of the logit map (Cityscapes 19).
        num_tokens: T (official 8).
    """

    def __init__(self, num_classes: int = 19, num_tokens: int = 8) -> None:
        super().__init__(num_classes, num_tokens, weight_mask=False)


# ---------------------------------------------------------------------------------------------------------------
# Stage 1 on any model: replace a module's (FPN) outputs by their masked versions
# ---------------------------------------------------------------------------------------------------------------


def _levels_list(levels: Any, what: str) -> tuple[list[torch.Tensor], list[str] | None]:
    if isinstance(levels, torch.Tensor):
        return [levels], None
    if isinstance(levels, Mapping):
        return list(levels.values()), list(levels.keys())
    if isinstance(levels, tuple | list):
        return list(levels), None
    raise ValueError(f"{what}: expected a tensor, a tuple/list or a dict of (N, C, H, W) levels, got {type(levels)}")


class MaskedFeatures(nn.Module):
    """MasKD stage 1 for any multi-level model: mask every level of one module's output and collect the Dice terms.

    Holds one :class:`MaskModule` per level as ``mask_modules.{i}``, so its ``state_dict()`` is exactly what
    :meth:`MasKDLoss.load_tokens` reads (the official stage-1 checkpoint also keeps them as ``mask_modules.{i}``).
    :meth:`attach` puts a forward hook (a :class:`~tenfold.distill.taps.FeatureTaps` with a transform) on the
    named module; inside its ``with`` block every level the module returns is replaced by its masked version, so the
    downstream heads and their task loss see the masked features, as the official ``MasKDHook`` does on the
    detector's ``neck``. The stage-1 loss is ``task_loss + dice_loss()`` (Dice weight 1).

    The official recipe also freezes every parameter of the model (``model.requires_grad_(False)``), keeps its
    BatchNorm layers in eval mode, and optimises only these tokens (Adam lr 0.01, weight decay 1e-3, cosine to
    1e-6 over 2000 iterations); that is the task's job.

    Args:
        channels: channels of each level, in the order the module returns them (5 x 256 for an FPN).
        num_tokens: T per level (official 6).
        weight_mask: per-level token weighting branch (official True).

    Raises:
        ValueError: ``channels`` is empty.

    Example:
        >>> fpn = torchvision.ops.FeaturePyramidNetwork([8, 16], 16)      # returns an OrderedDict of 2 levels
        >>> masker = MaskedFeatures(channels=(16, 16), num_tokens=4)
        >>> with masker.attach(detector, "backbone.fpn"):
        ...     losses = detector(images, targets)
        >>> loss = sum(losses.values()) + masker.dice_loss()
    """

    def __init__(self, channels: Sequence[int] = (256,) * 5, num_tokens: int = 6, weight_mask: bool = True) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels:
            raise ValueError("channels must name at least one level, got an empty sequence")
        self.mask_modules = nn.ModuleList(MaskModule(c, num_tokens, weight_mask) for c in channels)
        #: the Dice term of every level masked inside the current ``attach`` block, in order (official logs them as
        #: ``mask_div_loss_{i}``)
        self.dice_terms: list[torch.Tensor] = []

    def forward(self, levels: Levels) -> tuple[Any, torch.Tensor]:
        """Mask every level; returns the levels in the input's container type and the sum of their Dice terms.

        Args:
            levels: one (N, C, H, W) tensor, a tuple/list, or a dict (e.g. torchvision's FPN ``OrderedDict``) of
                ``len(mask_modules)`` levels.

        Returns:
            ``(masked_levels, dice_sum)``; ``masked_levels`` has the type (and keys) of ``levels``.

        Raises:
            ValueError: the number of levels or a level's shape does not fit the mask modules.
        """
        masked, dice = self._mask_levels(levels)
        return masked, torch.stack(dice).sum()

    def _mask_levels(self, levels: Levels) -> tuple[Any, list[torch.Tensor]]:
        tensors, keys = _levels_list(levels, "MaskedFeatures")
        if len(tensors) != len(self.mask_modules):
            raise ValueError(
                f"MaskedFeatures has {len(self.mask_modules)} mask modules but the module returned {len(tensors)} "
                "levels; set channels to one entry per level"
            )
        outs = [module(x) for module, x in zip(self.mask_modules, tensors, strict=True)]
        masked = [o.features for o in outs]
        dice = [o.dice for o in outs]
        if isinstance(levels, torch.Tensor):
            return masked[0], dice
        if keys is not None:
            return type(levels)(zip(keys, masked, strict=True)), dice
        return type(levels)(masked), dice

    def _replace(self, name: str, output: Any) -> Any:
        masked, dice = self._mask_levels(output)
        self.dice_terms.extend(dice)
        return masked

    def attach(self, model: nn.Module, module_name: str) -> _MaskingHook:
        """A context manager that masks the outputs of ``model``'s submodule ``module_name`` while active.

        The module name is checked now (before any forward). Entering the block clears :attr:`dice_terms`.

        Args:
            model: the (frozen) teacher, e.g. a detector.
            module_name: dotted path of the module whose outputs are the levels (``"neck"`` in mmdet,
                ``"backbone.fpn"`` or ``"backbone"`` in torchvision's detectors), as ``named_modules()`` prints it.

        Returns:
            The context manager.

        Raises:
            ValueError: ``module_name`` is not a submodule of ``model`` (closest names listed).
        """
        return _MaskingHook(self, FeatureTaps(model, [module_name], transform=self._replace))

    def dice_loss(self) -> torch.Tensor:
        """Sum over levels (and hooked forwards) of the Dice terms since the last ``with masker.attach(...)``.

        Raises:
            ValueError: nothing was masked (the model was not run inside the block, or the module was not called).
        """
        if not self.dice_terms:
            raise ValueError("no level was masked: run the model inside `with masker.attach(model, name):` first")
        return torch.stack(self.dice_terms).sum()


class _MaskingHook:
    """Context manager returned by :meth:`MaskedFeatures.attach`."""

    def __init__(self, masker: MaskedFeatures, taps: FeatureTaps) -> None:
        self.masker = masker
        self.taps = taps

    def __enter__(self) -> MaskedFeatures:
        self.masker.dice_terms = []
        self.taps.__enter__()
        return self.masker

    def __exit__(self, *exc: Any) -> None:
        self.taps.__exit__(*exc)
        self.taps.clear()


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: the distillation losses
# ---------------------------------------------------------------------------------------------------------------


class MasKDParts(NamedTuple):
    """The MasKD loss and its per-level terms (for logging).

    Attributes:
        level_losses: (L,) the unweighted loss of each level.
        total: their sum (the loss; the task multiplies it by its weight).
    """

    level_losses: torch.Tensor
    total: torch.Tensor


class MasKDTokens(nn.Module):
    """The mask modules seen alone (keys ``mask_modules.*``), so token files load strictly without other state."""

    def __init__(self, mask_modules: nn.ModuleList) -> None:
        super().__init__()
        self.mask_modules = mask_modules


def _read_state(source: TokenSource, what: str) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(source, str | os.PathLike):
        return unwrap_state_dict(load_checkpoint(source)), str(source)
    if isinstance(source, Mapping):
        return unwrap_state_dict(dict(source)), f"<{what} state dict>"
    raise ValueError(f"{what}: expected a checkpoint path or a state dict, got {type(source).__name__}")


class MasKDLoss(nn.Module):
    r"""MasKD stage-2 loss for detection: regress student features onto the teacher's inside the learned masks.

    Per level l with student feature y_s (already through the distiller's 1x1 align conv) and teacher feature y_t,
    both (N, C, H, W), and the frozen :class:`MaskModule` of that level:

    .. math::
        M = \sigma(\tau^\top y_t)\ [\odot\ \mathrm{sg}(\sigma(\tau^\top y_s)) \text{ once } k \ge W],\qquad
        e_{ntc} = \frac{\sum_{hw} M^2 (y_s - y_t)^2}{\sum_{hw} M},

    .. math::
        \mathcal L_l = \frac{1}{N}\sum_n \sum_t w_{nt} \frac{1}{C}\sum_c e_{ntc},\quad
        w_n = \mathrm{softmax}(\mathrm{prob}(y_t)_n) \qquad (\text{without weights: } \mathrm{mean}_{n,t,c}\, e),
        \qquad \mathcal L = \sum_l \mathcal L_l

    where sg is stop-gradient (the student's mask is computed under ``no_grad``), k is the number of training
    calls so far (:attr:`num_calls`) and W = ``custom_mask_warmup``. The gradient reaches the student only through
    y_s in the squared difference. :func:`masked_distance` is e.

    References:
        [1] Huang, You, Wang, Qian, Xu, "Masked Distillation with Receptive Tokens", ICLR 2023, arXiv 2205.14589.
        [2] Official code: https://github.com/hunto/MasKD (b5af34f), ``mmrazor/mmrazor/models/losses/maskd.py``.

    Args:
        channels: channels of each level (official FPN: 5 x 256).
        num_tokens: T per level (official 6).
        weight_mask: weight the tokens per image by the ``prob`` branch on the teacher feature (official True).
        custom_mask: after the warm-up, multiply the teacher mask by the student's own (stop-gradient) mask.
        custom_mask_warmup: W, the number of training calls before the customised mask switches on. Default
            1000, the official class default; the official configs set 5000 to 8500 (about one COCO epoch), so
            recipes set it explicitly. 0 uses the customised mask from the first call. Counted per call of this
            loss in training mode (micro-batches, not optimiser steps), as officially.
        official_counter_reset: behave as the official code on resume: the call counter is not saved in
            checkpoints (a non-persistent buffer) and is reset to 0 by ``load_state_dict``, so a resumed run starts
            the warm-up again. Default False: ``num_calls`` is a persistent buffer and a resumed run continues.
        trainable_tokens: leave the tokens and weighting branch trainable. Default False: they are frozen
            (``requires_grad=False``), which is what the official ``lr_mult=0, decay_mult=0`` achieves.
        pretrained: optional stage-1 checkpoint loaded by :meth:`load_tokens` (official argument).

    Raises:
        ValueError: empty ``channels``, ``num_tokens`` < 1 or ``custom_mask_warmup`` < 0; see :meth:`load_tokens`.

    Fidelity:
        - No internal loss weight: the official ``loss_weight`` (lambda: 1 for Faster R-CNN, 7 for RetinaNet, 10
          for FCOS/RepPoints) is the task's weight of this term.
        - Warm-up counter: the official ``_iter`` is a Python attribute, lost on resume; here it is the buffer
          ``num_calls`` (saved, so a resumed run continues the warm-up) unless ``official_counter_reset=True``. It
          counts calls in training mode only (the official loss is only called in training); a call in eval mode
          (e.g. a wiring check on a dummy batch) does not advance it. The official one-time print at the switch is
          dropped (no logging in a loss; see :attr:`custom_mask_active`).
        - Frozen tokens: the official parameters receive gradients that the optimiser ignores (lr 0). With
          ``requires_grad=False`` nothing is computed for them, and gradient-norm clipping (RetinaNet recipes:
          max_norm 35) then no longer counts their gradients in the total norm, which the official run does.
        - No eps in the denominator (official): a mask whose area underflows to 0 gives inf. Half-precision
          features are computed in float32 with autocast disabled (the sums over H*W overflow float16).
        - Single-tensor input is accepted for a one-level loss (as officially), so the loss can also be used as
          a term of :class:`~tenfold.distill.task.DistillationTask` on one feature map.

    Example:
        >>> loss_fn = MasKDLoss(channels=(16, 16), num_tokens=4, custom_mask_warmup=100)
        >>> loss_fn.load_tokens(masker.state_dict())      # tokens learned by MaskedFeatures (stage 1)
        >>> loss = loss_fn((s3, s4), (t3, t4))            # aligned student levels, teacher levels
    """

    def __init__(
        self,
        channels: Sequence[int] = (256,) * 5,
        num_tokens: int = 6,
        weight_mask: bool = True,
        custom_mask: bool = True,
        custom_mask_warmup: int = 1000,
        official_counter_reset: bool = False,
        trainable_tokens: bool = False,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels:
            raise ValueError("channels must name at least one level, got an empty sequence")
        if custom_mask_warmup < 0:
            raise ValueError(f"custom_mask_warmup must be >= 0, got {custom_mask_warmup}")
        self.channels = channels
        self.num_tokens = int(num_tokens)
        self.weight_mask = bool(weight_mask)
        self.custom_mask = bool(custom_mask)
        self.custom_mask_warmup = int(custom_mask_warmup)
        self.official_counter_reset = bool(official_counter_reset)
        self.mask_modules = nn.ModuleList(MaskModule(c, num_tokens, weight_mask) for c in channels)
        self.mask_modules.requires_grad_(bool(trainable_tokens))
        self.register_buffer("num_calls", torch.zeros((), dtype=torch.long), persistent=not official_counter_reset)
        # a host-side copy of num_calls: reading the buffer would synchronise with the GPU on every call
        self._calls = 0
        if pretrained is not None:
            self.load_tokens(pretrained)

    @property
    def custom_mask_active(self) -> bool:
        """Whether the next training call multiplies in the student's mask (``custom_mask`` and k >= W)."""
        return self.custom_mask and self._calls >= self.custom_mask_warmup

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):  # noqa: D102
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        if self.official_counter_reset:
            self.num_calls.zero_()
        self._calls = int(self.num_calls)

    def load_tokens(self, source: TokenSource) -> None:
        """Load stage-1 tokens: every key containing ``mask_modules``, cut to start there, strictly.

        Reads an mmdet stage-1 checkpoint (``{'meta', 'state_dict', 'optimizer'}``; the detector's keys are
        ignored), an mmrazor / tenfold checkpoint (any prefix before ``mask_modules`` is dropped, e.g.
        ``distiller.losses.loss_maskd_fpn.``), a :class:`MaskedFeatures` state dict, or a raw dict. Files are
        read safely (``weights_only=True`` or safetensors). ``num_calls`` is not touched.

        Args:
            source: a checkpoint path, or a (nested) state dict.

        Raises:
            FileNotFoundError: no such file.
            ValueError: an unreadable/unsafe file; no key contains ``mask_modules``; two keys give the same name
                after the cut; or the mask-module keys do not fit (missing, unexpected and mis-shaped keys named).
        """
        state, where = _read_state(source, "MasKDLoss.load_tokens")
        tokens: dict[str, torch.Tensor] = {}
        origin: dict[str, str] = {}
        for key, value in state.items():
            if "mask_modules" not in key:
                continue
            name = key[key.find("mask_modules") :]
            if name in tokens:
                raise ValueError(f"{where}: keys {origin[name]!r} and {key!r} both give {name!r}; pass one state dict")
            tokens[name], origin[name] = value, key
        if not tokens:
            raise ValueError(
                f"{where} holds no key containing 'mask_modules' (found {len(state)} keys, e.g. {list(state)[:5]}); "
                "expected a MasKD stage-1 checkpoint"
            )
        load_state_dict_strict(MasKDTokens(self.mask_modules), tokens, source=where)

    def _check_levels(self, feats_student: Levels, feats_teacher: Levels) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ys, keys_s = _levels_list(feats_student, "MasKDLoss student features")
        yt, keys_t = _levels_list(feats_teacher, "MasKDLoss teacher features")
        if keys_s != keys_t:
            raise ValueError(f"MasKDLoss: student levels {keys_s} and teacher levels {keys_t} have different keys")
        if not (len(ys) == len(yt) == len(self.mask_modules)):
            raise ValueError(
                f"MasKDLoss has {len(self.mask_modules)} levels (channels={self.channels}) but got {len(ys)} student "
                f"and {len(yt)} teacher levels"
            )
        for i, (s, t, c) in enumerate(zip(ys, yt, self.channels, strict=True)):
            if s.shape != t.shape:
                raise ValueError(
                    f"MasKDLoss level {i}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)} "
                    "(align the student with a 1x1 conv first)"
                )
            if s.ndim != 4 or s.shape[1] != c:
                raise ValueError(f"MasKDLoss level {i}: expected shape (N, {c}, H, W), got {tuple(s.shape)}")
        return list(zip(ys, yt, strict=True))

    def forward_parts(self, feats_student: Levels, feats_teacher: Levels) -> MasKDParts:
        """Compute the loss and its per-level terms; advances the call counter in training mode.

        Args:
            feats_student: the student's aligned levels: a tuple/list (or dict) of (N, C_l, H_l, W_l) tensors,
                or one tensor for a one-level loss.
            feats_teacher: the teacher's levels, same structure and shapes (run the teacher under ``no_grad``).

        Returns:
            :class:`MasKDParts` ``(level_losses (L,), total)``, in float32 for half-precision input.

        Raises:
            ValueError: the number of levels, a level's shape or its channels do not fit.
        """
        pairs = self._check_levels(feats_student, feats_teacher)
        custom = self.custom_mask_active
        device_type = pairs[0][0].device.type
        level_losses = []
        with torch.autocast(device_type=device_type, enabled=False):
            for (y_s, y_t), module in zip(pairs, self.mask_modules, strict=True):
                dtype = _compute_dtype(y_s)
                y_s, y_t = y_s.to(dtype), y_t.to(dtype)
                mask = module.forward_mask(y_t)
                if custom:
                    with torch.no_grad():
                        mask_s = module.forward_mask(y_s)
                    mask = mask * mask_s
                e = masked_distance(y_s, y_t, mask)  # (N, T, C)
                if self.weight_mask:
                    weights = module.forward_prob(y_t.to(module.mask_token.dtype)).to(dtype)  # (N, T)
                    level_losses.append((e.mean(-1) * weights).sum(-1).mean())
                else:
                    level_losses.append(e.mean())
        if self.training:
            self._calls += 1
            self.num_calls.fill_(self._calls)
        stacked = torch.stack(level_losses)
        return MasKDParts(stacked, stacked.sum())

    def forward(self, feats_student: Levels, feats_teacher: Levels) -> torch.Tensor:
        """The unweighted MasKD loss summed over levels (see :meth:`forward_parts`).

        Raises:
            ValueError: the number of levels, a level's shape or its channels do not fit.
        """
        return self.forward_parts(feats_student, feats_teacher).total

    def extra_repr(self) -> str:
        """Constructor values shown by ``repr``."""
        return (
            f"channels={self.channels}, num_tokens={self.num_tokens}, weight_mask={self.weight_mask}, "
            f"custom_mask={self.custom_mask}, custom_mask_warmup={self.custom_mask_warmup}, "
            f"official_counter_reset={self.official_counter_reset}"
        )


class MasKDSegLoss(nn.Module):
    r"""MasKD stage-2 loss for segmentation, on logit maps, with the 8 released Cityscapes tokens.

    .. math::
        M = \sigma(\tau^\top z_t)\ (N, T, H, W),\qquad
        e_{ntc} = \frac{\sum_{hw} M^2 (z_s - z_t)^2}{\sum_{hw} M + 10^{-5}},\qquad
        \mathcal L = \tfrac12\, \mathrm{mean}_{n,t,c}\, e_{ntc}

    No customised mask and no token weights (official segmentation loss). The official recipe
    (``train_maskd.py``) uses ``lambda_kd * (L(z_s, z_t) + 0.4 * L(aux_s, aux_t))`` with lambda_kd = 1, the same
    tokens on the main and the auxiliary FCN-head logits; both weights are the task's.

    References:
        [1] Huang et al., arXiv 2205.14589.
        [2] Official code: https://github.com/hunto/MasKD (b5af34f), ``segmentation/losses/maskd.py``; released
            tokens ``segmentation/work_dirs/dv3-r101/deeplabv3_resnet101_citys_best_model.pth``
            (``{'mask_token': (8, 19)}``).

    Args:
        num_classes: channels of the logit maps (Cityscapes 19).
        num_tokens: T (official 8).
        trainable_tokens: leave ``mask_module.mask_token`` trainable; default False (frozen; officially the
            tokens are not in the optimiser).
        pretrained: optional token file loaded by :meth:`load_tokens` (official ``pretrained``; required there).

    Fidelity:
        The official loss requires a token file at construction and has an unused ``weight_s_mask_warmup``; here
        the file is optional (random tokens, e.g. for tests) and the unused argument is not offered.
        Half-precision logits are computed in float32 with autocast disabled.

    Example:
        >>> loss_fn = MasKDSegLoss(pretrained="deeplabv3_resnet101_citys_best_model.pth")
        >>> loss = loss_fn(student_logits, teacher_logits)        # (N, 19, H, W) each
    """

    def __init__(
        self,
        num_classes: int = 19,
        num_tokens: int = 8,
        trainable_tokens: bool = False,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        self.mask_module = SegMaskModule(num_classes, num_tokens)
        self.mask_module.requires_grad_(bool(trainable_tokens))
        if pretrained is not None:
            self.load_tokens(pretrained)

    def load_tokens(self, source: TokenSource) -> None:
        """Load the tokens strictly: the released raw ``{'mask_token': (T, C)}`` file, or a checkpoint of this loss.

        Keys containing ``mask_module.`` are cut after it (e.g. ``losses.maskd.mask_module.mask_token`` from a
        tenfold checkpoint) and only those are used; otherwise the whole (raw) dict must be exactly
        ``{'mask_token'}``. Files are read safely.

        Args:
            source: a checkpoint path, or a (nested) state dict.

        Raises:
            FileNotFoundError: no such file.
            ValueError: an unreadable/unsafe file, or keys/shapes that do not fit (named in the message).
        """
        state, where = _read_state(source, "MasKDSegLoss.load_tokens")
        marker = "mask_module."
        nested = {k[k.find(marker) + len(marker) :]: v for k, v in state.items() if marker in k}
        if len(nested) != sum(marker in k for k in state):
            raise ValueError(f"{where}: several keys end in the same mask_module key; pass one state dict")
        load_state_dict_strict(self.mask_module, nested or state, source=where)

    def forward(self, logits_student: torch.Tensor, logits_teacher: torch.Tensor) -> torch.Tensor:
        """Compute the segmentation MasKD loss.

        Args:
            logits_student: (N, num_classes, H, W) student logits.
            logits_teacher: teacher logits of the same shape (run the teacher under ``no_grad``).

        Returns:
            Scalar loss (float32 for half-precision input).

        Raises:
            ValueError: mismatched shapes, or not (N, num_classes, H, W).
        """
        if logits_student.shape != logits_teacher.shape:
            raise ValueError(
                f"MasKDSegLoss: student shape {tuple(logits_student.shape)} != teacher shape "
                f"{tuple(logits_teacher.shape)}"
            )
        with torch.autocast(device_type=logits_student.device.type, enabled=False):
            dtype = _compute_dtype(logits_student)
            z_s, z_t = logits_student.to(dtype), logits_teacher.to(dtype)
            mask = self.mask_module.forward_mask(z_t)
            return 0.5 * masked_distance(z_s, z_t, mask, eps=SEG_EPS).mean()

    def extra_repr(self) -> str:
        """Constructor values shown by ``repr``."""
        return f"num_classes={self.mask_module.channels}, num_tokens={self.mask_module.num_tokens}"
