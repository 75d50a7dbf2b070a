"""timm's model surface, written once for every stem -> stages -> head classifier in tenfold.

:class:`StagedSurface` serves any network that runs a stem, a list of stages and a head-feature step before
global pooling and a linear classifier (the CIFAR ResNets / WRNs, MacroNet, ScaleNetModel): ``forward_features``,
``forward_head``, ``forward``, ``forward_intermediates`` (timm's feature-extraction API), gradient checkpointing
per stage, ``get_classifier`` / ``reset_classifier``. A model supplies the parts through four small hooks.

:class:`StemBlocksHeadSurface` is the layout with modules ``stem``, ``blocks.<i>``, ``head_conv``,
``global_pool``, ``fc`` (as timm's own CNNs): it adds ``group_matcher`` and ``prune_intermediate_layers``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models._features import feature_take_indices  # not re-exported by timm.models
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["StagedSurface", "StemBlocksHeadSurface"]


class StagedSurface:
    """The timm classifier surface over four hooks: ``_stem``, ``_stages``, ``_head_features``, ``_norm_last_map``.

    Defaults: ``_stem`` calls ``self.stem``, ``_stages`` lists ``self.blocks``, ``_head_features`` calls
    ``self.head_conv``, ``_norm_last_map`` is the identity (what ``forward_intermediates(norm=True)`` applies to
    the map of the last stage). The pool module is the attribute named by :attr:`pool_attr`; a ``drop_rate``
    attribute > 0 adds dropout before the classifier.
    """

    #: Attribute holding the global pool (``avgpool`` where the reference code names it so).
    pool_attr: ClassVar[str] = "global_pool"

    num_classes: int
    num_features: int
    fc: nn.Module
    grad_checkpointing: bool
    feature_info: list[dict[str, Any]]
    training: bool

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)  # type: ignore[attr-defined]

    def _stages(self) -> list[nn.Module]:
        return list(self.blocks)  # type: ignore[attr-defined]

    def _head_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_conv(x)  # type: ignore[attr-defined]

    def _norm_last_map(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _run(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in the backward pass instead of storing its activations (non-reentrant)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay: none (timm's optimiser factory exempts biases and norms)."""
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The linear classifier ``fc``."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a new one with ``num_classes`` outputs.

        Args:
            num_classes: number of outputs; 0 makes ``forward`` return pooled features (B, num_features).
            global_pool: ``"avg"`` or ``""`` (no pooling, only with ``num_classes=0``); None keeps the current one.
        """
        self.num_classes = num_classes
        pool = getattr(self, self.pool_attr).pool_type if global_pool is None else global_pool
        pool_module, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool)
        setattr(self, self.pool_attr, pool_module)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> the feature map before pooling (B, num_features, h, w)."""
        x = self._stem(x)
        for stage in self._stages():
            x = self._run(stage, x)
        return self._head_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map (B, num_features, h, w) -> logits (B, num_classes), or pooled (B, num_features)."""
        x = getattr(self, self.pool_attr)(x)
        drop_rate = getattr(self, "drop_rate", 0.0)
        if drop_rate > 0.0:
            x = F.dropout(x, p=drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns the feature maps listed in ``feature_info`` (the stem's, then each stage's).

        Args:
            x: images (B, in_chans, H, W).
            indices: take the last n maps if an int, all if None, else the listed indices (0 = stem).
            norm: apply the network's final norm (if it has one) to the last stage's map.
            stop_early: stop after the last requested map (the returned final features are then that map).
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the list of maps.

        Returns:
            The list of maps, or ``(final features, list of maps)``; the final features are those of
            :meth:`forward_features` unless ``stop_early`` cut the forward short.

        Raises:
            ValueError: ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        stages = self._stages()
        last = len(stages)
        if stop_early:
            stages = stages[:max_index]
        x = self._stem(x)
        intermediates = [x] if 0 in take_indices else []
        for idx, stage in enumerate(stages, start=1):
            x = self._run(stage, x)
            if idx in take_indices:
                intermediates.append(self._norm_last_map(x) if norm and idx == last else x)
        if intermediates_only:
            return intermediates
        if len(stages) == last:
            x = self._head_features(x)
        return x, intermediates


class StemBlocksHeadSurface(StagedSurface):
    """:class:`StagedSurface` for modules ``stem``, ``blocks.<i>``, ``head_conv``, ``global_pool``, ``fc``."""

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes grouping parameters into stem, one group per block, head conv (and classifier)."""
        return dict(stem=r"^stem", blocks=[(r"^blocks\.(\d+)", None), (r"^head_conv", (99999,))])

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the head), for a features-only network.

        Args:
            indices: the feature maps to keep, as in :meth:`forward_intermediates`.
            prune_norm: accepted for timm's signature (there is no final norm).
            prune_head: also drop the head convolution and the classifier.

        Returns:
            The indices of the maps that :meth:`forward_intermediates` still returns.
        """
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self.blocks = self.blocks[:max_index]
        if prune_head:
            self.head_conv = nn.Identity()
            self.reset_classifier(0, "")
        return take_indices
