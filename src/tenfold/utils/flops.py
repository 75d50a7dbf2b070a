"""Parameter and FLOP counts, with the convention the papers' tables use.

Conventions:

* A multiply-add (MAC) is one multiplication plus one addition. ``torch.utils.flop_counter`` counts **2 FLOPs
  per MAC** (a ``(M, K) @ (K, N)`` product is ``2 * M * K * N`` FLOPs).
* The "FLOPs" column of most vision papers (ResNet, DIST, LightViT, ScaleNet...) reports **MACs**: ResNet-50's
  "4.1 G FLOPs" are 4.1 G MACs. Compare a paper's number with :attr:`FlopCount.macs`.
* Only the operators PyTorch's counter knows are counted: convolutions, matrix products (``mm``, ``addmm``,
  ``bmm``, ``baddbmm``) and scaled-dot-product attention, forward and (if run) backward. Normalisation,
  activations, pooling and element-wise additions count zero, which is also the papers' convention.
* Convolution and linear biases are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FlopCount", "count_flops", "count_parameters"]


@dataclass(frozen=True)
class FlopCount:
    """Result of :func:`count_flops`.

    Attributes:
        flops: floating-point operations as PyTorch counts them (2 per multiply-add).
        macs: multiply-adds, ``flops // 2``: the number papers call "FLOPs".
        by_operator: FLOPs per ATen operator (``"aten.convolution"``, ``"aten.addmm"``...).
    """

    flops: int
    macs: int
    by_operator: dict[str, int]


def _cpu_attention_formulas() -> dict:
    """Formulas for the CPU flash-attention kernels that ``FlopCounterMode`` does not know (it would count 0).

    ``F.scaled_dot_product_attention`` on CPU dispatches to ``_scaled_dot_product_flash_attention_for_cpu``; the
    count is the same as for the CUDA kernels: the two matrix products ``q k^T`` and ``A v``.
    """
    from torch.utils import flop_counter

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    formulas = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", forward),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", backward),
    ):
        if hasattr(aten, name):
            formulas[getattr(aten, name)] = formula
    return formulas


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared parameters counted once; buffers never).

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad=True``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, inputs: torch.Tensor | tuple, *, per_sample: bool = False) -> FlopCount:
    """FLOPs and multiply-adds of one inference forward pass of ``model`` on ``inputs``.

    The model runs in eval mode under ``torch.no_grad()``; each submodule's previous training flag is restored
    afterwards, also on error. See the module docstring for what is counted.

    Args:
        model: the module to measure.
        inputs: one tensor, or a tuple of positional arguments for ``model(*inputs)``.
        per_sample: divide every count by the batch size (the first dimension of the first tensor input).

    Returns:
        The counts, in total or per sample.

    Raises:
        ValueError: ``per_sample`` without a tensor input that has a non-empty batch dimension.

    Example:
        >>> count_flops(nn.Linear(10, 5), torch.zeros(3, 10)).macs
        150
    """
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    batch = 1
    if per_sample:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is None or first.dim() == 0 or first.shape[0] < 1:
            raise ValueError("per_sample=True needs a tensor input whose first dimension is a batch of >= 1")
        batch = first.shape[0]
    modes = {m: m.training for m in model.modules()}
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(*args)
    finally:
        for m, training in modes.items():
            m.training = training
    by_operator = {str(op): int(n) // batch for op, n in counter.get_flop_counts().get("Global", {}).items()}
    flops = int(counter.get_total_flops()) // batch
    return FlopCount(flops=flops, macs=flops // 2, by_operator=by_operator)
