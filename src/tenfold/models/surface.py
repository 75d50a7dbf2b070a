"""timm's model surface shared by the stem / blocks / head-conv classifiers (MacroNet, ScaleNetModel).

A model mixing in :class:`StemBlocksHeadSurface` has ``stem``, ``blocks.<i>``, ``head_conv``, ``global_pool``,
``fc``, ``num_features``, ``num_classes`` and ``grad_checkpointing``, as timm's own CNNs do.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import create_classifier
from torch import nn

__all__ = ["StemBlocksHeadSurface"]


class StemBlocksHeadSurface:
    """``group_matcher``, ``set_grad_checkpointing``, ``no_weight_decay``, ``get_classifier``, ``reset_classifier``."""

    num_classes: int
    num_features: int
    global_pool: Any
    fc: nn.Module
    grad_checkpointing: bool

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes grouping parameters into stem, one group per block, head conv (and classifier)."""
        return dict(stem=r"^stem", blocks=[(r"^blocks\.(\d+)", None), (r"^head_conv", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay: none (timm's factory already exempts biases and BN)."""
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final linear layer."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier.

        Args:
            num_classes: number of outputs; 0 makes ``forward`` return pooled features (B, num_features).
            global_pool: ``"avg"`` or ``""`` (no pooling, only with ``num_classes=0``); None keeps the current one.
        """
        self.num_classes = num_classes
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool)
