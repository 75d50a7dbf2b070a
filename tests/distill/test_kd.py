"""KDLoss: values against an independent float64 reference, reductions, gradients, detach, errors, mixed precision."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tenfold.distill.kd import KDLoss, kd_loss

ZS = [[1.0, -0.5, 2.0], [0.3, 0.0, -1.2]]
ZT = [[2.5, 0.1, -0.7], [-0.4, 1.1, 0.9]]


def _np_softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def reference_kd(zs, zt, tau: float, reduction: str) -> float:
    """tau^2 * sum p_t (log p_t - log p_s) / D, written from the formula in float64."""
    zs, zt = np.asarray(zs, dtype=np.float64), np.asarray(zt, dtype=np.float64)
    ps, pt = _np_softmax(zs / tau), _np_softmax(zt / tau)
    total = float((pt * (np.log(pt) - np.log(ps))).sum())
    denom = {"batchmean": zs.shape[0], "sum": 1, "mean": zs.size}[reduction]
    return tau**2 * total / denom


def test_two_class_case_worked_by_hand():
    # teacher p = (1/4, 3/4), student p = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2); tau = 1 so no scaling
    zs = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    zt = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kd_loss(zs, zt, tau=1.0).item() == pytest.approx(expected, rel=1e-12)
    assert kd_loss(zs.float(), zt.float(), tau=1.0).item() == pytest.approx(expected, rel=1e-5)
    # tau = 2 doubles every logit's denominator: teacher p = (1, sqrt 3) / (1 + sqrt 3), and the tau^2 factor is 4
    r3 = math.sqrt(3.0)
    pt = (1 / (1 + r3), r3 / (1 + r3))
    expected_t2 = 4 * (pt[0] * math.log(pt[0] / 0.5) + pt[1] * math.log(pt[1] / 0.5))
    assert kd_loss(zs, zt, tau=2.0).item() == pytest.approx(expected_t2, rel=1e-12)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean"])
@pytest.mark.parametrize("tau", [1.0, 4.0, 0.5])
def test_matches_reference(reduction, tau):
    got = KDLoss(tau=tau, reduction=reduction)(
        torch.tensor(ZS, dtype=torch.float64), torch.tensor(ZT, dtype=torch.float64)
    )
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(reference_kd(ZS, ZT, tau, reduction), rel=1e-10)
    got32 = KDLoss(tau=tau, reduction=reduction)(torch.tensor(ZS), torch.tensor(ZT))
    assert got32.item() == pytest.approx(reference_kd(ZS, ZT, tau, reduction), rel=1e-5)


def test_reductions_relate_as_in_kl_div():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    total = kd_loss(zs, zt, tau=3.0, reduction="sum")
    torch.testing.assert_close(kd_loss(zs, zt, tau=3.0, reduction="batchmean"), total / 5)
    torch.testing.assert_close(kd_loss(zs, zt, tau=3.0, reduction="mean"), total / 35)
    # the official class passes its reduction to F.kl_div; "mean" there is the mean over all elements
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        official_mean = 9.0 * F.kl_div(F.log_softmax(zs / 3, 1), F.softmax(zt / 3, 1), reduction="mean")
    torch.testing.assert_close(kd_loss(zs, zt, tau=3.0, reduction="mean"), official_mean)


def test_gradient_is_tau_times_probability_gap():
    # d/dz_s [tau^2 KL(p_t || p_s)] / B = tau * (p_s - p_t) / B
    tau = 4.0
    zs = torch.tensor(ZS, dtype=torch.float64, requires_grad=True)
    zt = torch.tensor(ZT, dtype=torch.float64)
    KDLoss(tau=tau)(zs, zt).backward()
    ps = _np_softmax(np.asarray(ZS) / tau)
    pt = _np_softmax(np.asarray(ZT) / tau)
    np.testing.assert_allclose(zs.grad.numpy(), tau * (ps - pt) / 2, rtol=1e-10, atol=1e-14)


def test_dense_input_softens_per_pixel_and_batchmean_divides_by_n():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(2, 3, 4, 5, generator=g).double(), torch.randn(2, 3, 4, 5, generator=g).double()
    ps = _np_softmax(zs.numpy(), axis=1)
    pt = _np_softmax(zt.numpy(), axis=1)
    expected_sum = float((pt * (np.log(pt) - np.log(ps))).sum())
    assert kd_loss(zs, zt, tau=1.0).item() == pytest.approx(expected_sum / 2, rel=1e-10)
    assert kd_loss(zs, zt, tau=1.0, reduction="mean").item() == pytest.approx(expected_sum / zs.numel(), rel=1e-10)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2, 2)])
def test_gradcheck(shape):
    g = torch.Generator().manual_seed(2)
    zs = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(*shape, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, zt, tau=2.0), (zs,))


def test_teacher_is_detached():
    zs = torch.randn(3, 4, requires_grad=True)
    zt = torch.randn(3, 4, requires_grad=True)
    KDLoss()(zs, zt).backward()
    assert zt.grad is None
    assert zs.grad is not None and zs.grad.abs().sum() > 0


def test_identical_logits_give_zero():
    z = torch.randn(4, 6)
    assert KDLoss(tau=2.0)(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_finite_under_cpu_autocast(dtype):
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(8, 2), torch.nn.Linear(8, 2)
    x = torch.randn(16, 8) * 20  # large logits: saturated two-class softmax at tau = 0.5
    with torch.autocast("cpu", dtype=dtype):
        with torch.no_grad():
            zt = teacher(x)
        zs = student(x)
        assert zs.dtype == dtype  # the premise: autocast really hands half-precision logits to the loss
        loss = KDLoss(tau=0.5)(zs, zt)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_are_computed_in_float32(dtype):
    zs, zt = torch.tensor(ZS).to(dtype), torch.tensor(ZT).to(dtype)
    expected = reference_kd(zs.double().numpy(), zt.double().numpy(), 0.5, "batchmean")
    got = kd_loss(zs, zt, tau=0.5)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_rejects_bad_tau(tau):
    with pytest.raises(ValueError, match="tau"):
        KDLoss(tau=tau)
    with pytest.raises(ValueError, match="tau"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), tau=tau)


def test_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="'none'"):
        KDLoss(reduction="none")


@pytest.mark.parametrize(
    ("s", "t"), [((2, 3), (2, 4)), ((2, 3), (3, 3)), ((2, 3, 4, 4), (2, 3, 4, 5))], ids=["C", "B", "HW"]
)
def test_rejects_mismatched_shapes(s, t):
    with pytest.raises(ValueError, match="same shape"):
        KDLoss()(torch.randn(*s), torch.randn(*t))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (1, 2, 3, 4, 5)])
def test_rejects_other_ranks(shape):
    with pytest.raises(ValueError, match="classes on dim 1"):
        KDLoss()(torch.randn(*shape), torch.randn(*shape))
