"""The PRCL demo's variance analysis, on a stub task whose pseudo-labels and variances are set by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tenfold.seg.demo_prcl import plot_variance, variance_by_pseudo_label


class _Teacher(nn.Module):
    """Predicts the fixed pseudo-label map (one-hot logits), whatever the image."""

    def __init__(self, pseudo: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.logits = torch.nn.functional.one_hot(pseudo, num_classes).permute(0, 3, 1, 2).float() * 10

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits)


class _Student(nn.Module):
    def __init__(self, sigma: torch.Tensor) -> None:
        super().__init__()
        self.sigma = sigma

    def forward_prcl(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(features=self.sigma)


def _task(pseudo: torch.Tensor, sigma: torch.Tensor) -> SimpleNamespace:
    task = nn.Module()
    task.ema, task.model = _Teacher(pseudo, 3), _Student(sigma)
    task.uncertainty_head = lambda f: torch.stack([f, f + 0.2], dim=1)  # two dimensions, mean = f + 0.1
    task.normalize = lambda x: x
    return task


def test_variance_split_by_pseudo_label_correctness_overall_and_within_class() -> None:
    # 1 image of 2 x 4 pixels, features at full resolution (no resizing involved)
    true = torch.tensor([[[0, 0, 0, 0], [1, 1, 2, 255]]])
    pseudo = torch.tensor([[[0, 0, 1, 0], [1, 0, 2, 0]]])  # wrong at (0, 2) [class 0] and (1, 1) [class 1]
    sigma = torch.tensor([[[0.1, 0.3, 0.5, 0.2], [0.4, 0.6, 0.7, 0.9]]])  # (1, 2, 4); head adds 0.1 on average
    out = variance_by_pseudo_label(_task(pseudo, sigma), torch.zeros(1, 3, 2, 4, dtype=torch.uint8), true)
    assert (out["wrong_pixels"], out["right_pixels"]) == (2, 5)  # the ignored pixel counts in neither
    assert out["wrong"] == pytest.approx((0.5 + 0.6) / 2 + 0.1)
    assert out["right"] == pytest.approx((0.1 + 0.3 + 0.2 + 0.4 + 0.7) / 5 + 0.1)
    # class 0: wrong 0.5 vs right mean(0.1, 0.3, 0.2); class 1: 0.6 vs 0.4; class 2 has no wrong pixel
    gap0, gap1 = 0.5 - 0.2, 0.6 - 0.4
    assert out["within_class_gap"] == pytest.approx((gap0 + gap1) / 2)
    assert sorted(out["sigma_wrong"].tolist()) == pytest.approx([0.6, 0.7])


def test_variance_plot_is_written(tmp_path) -> None:
    path = plot_variance(torch.rand(50) * 0.5, torch.rand(20) * 0.5 + 0.3, tmp_path / "v.png")
    assert path.stat().st_size > 2000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
