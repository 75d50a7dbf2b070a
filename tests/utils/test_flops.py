"""FLOP and parameter counting, checked against hand-computed numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from tenfold.utils.flops import count_flops, count_parameters


def test_linear_macs_by_hand():
    # y = x W^T + b with x (3, 10), W (5, 10): 3 * 10 * 5 multiply-adds.
    result = count_flops(nn.Linear(10, 5), torch.randn(3, 10))
    assert result.macs == 150
    assert result.flops == 300
    assert result.by_operator == {"aten.addmm": 300}
    with pytest.raises(dataclasses.FrozenInstanceError):  # a count is a value: it cannot be edited after the fact
        result.macs = 0  # type: ignore[misc]


class _Attention(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return nn.functional.scaled_dot_product_attention(q, k, v)


def test_cpu_attention_macs_by_hand():
    # q k^T: (2 heads x 5 queries) x 7 keys x 4 dims, then A v: (2 x 5) x 7 keys x 4 dims; batch 3. Equal head
    # dims send CPU to its fused flash kernel, which PyTorch's counter would count as 0 without our formula.
    q, k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 4)
    result = count_flops(_Attention(), (q, k, v))
    assert result.macs == 3 * (2 * 5 * 7 * 4 + 2 * 5 * 7 * 4)
    assert result.flops == sum(result.by_operator.values()) == 2 * result.macs


def test_conv_macs_by_hand():
    # Each of the 8 x 16 x 16 outputs sums 3 input channels x 3 x 3 taps.
    result = count_flops(nn.Conv2d(3, 8, 3, padding=1), torch.randn(1, 3, 16, 16))
    assert result.macs == 3 * 9 * 8 * 16 * 16
    assert result.flops == 2 * result.macs
    assert set(result.by_operator) == {"aten.convolution"}


def test_per_sample_divides_by_batch():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    one = 3 * 4 * 64 + 4 * 64 * 2  # 1x1 conv at 8x8, then the linear layer
    assert count_flops(model, torch.randn(4, 3, 8, 8)).macs == 4 * one
    per_sample = count_flops(model, torch.randn(4, 3, 8, 8), per_sample=True)
    assert per_sample.macs == one
    assert sum(per_sample.by_operator.values()) == per_sample.flops


class _MatMul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


def test_tuple_inputs_are_positional_arguments():
    assert count_flops(_MatMul(), (torch.randn(2, 3), torch.randn(3, 4))).macs == 2 * 3 * 4


def test_per_sample_needs_a_batch():
    with pytest.raises(ValueError, match="batch"):
        count_flops(nn.Identity(), (3.0,), per_sample=True)


def test_norms_and_activations_count_zero():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    assert count_flops(model, torch.randn(2, 3, 8, 8)).flops == 0


class _Recorder(nn.Module):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.child = nn.Dropout(0.5)
        self.fail = fail
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        if self.fail:
            raise RuntimeError("boom")
        return self.child(self.lin(x))


def test_runs_in_eval_without_grad_and_restores_modes():
    model = _Recorder().train()
    model.child.eval()  # a mixed state must come back exactly
    count_flops(model, torch.randn(1, 2))
    assert model.seen == [(False, False)]
    assert model.training and model.lin.training and not model.child.training


def test_modes_restored_on_error():
    model = _Recorder(fail=True).train()
    with pytest.raises(RuntimeError, match="boom"):
        count_flops(model, torch.randn(1, 2))
    assert model.training and model.child.training


def test_count_parameters_by_hand():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))
    assert count_parameters(model) == (4 * 3 + 3) + (3 + 3) + 3 * 2  # running stats are buffers, not counted
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == (3 + 3) + 3 * 2
    assert count_parameters(model) == 27


def test_shared_parameters_count_once():
    shared = nn.Linear(5, 5)
    assert count_parameters(nn.Sequential(shared, shared)) == 30


def test_lazy_reexport_from_utils():
    import tenfold.utils

    assert tenfold.utils.count_flops is count_flops
    assert tenfold.utils.count_parameters is count_parameters
    with pytest.raises(AttributeError):
        tenfold.utils.not_a_helper  # noqa: B018
