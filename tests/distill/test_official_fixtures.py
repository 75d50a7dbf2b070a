"""tenfold's KD and DIST losses equal the official implementations' outputs, recorded in float64.

``tests/fixtures/dist/official_outputs.pt`` holds, per case, float64 inputs and the loss and student gradient of the
official classification DIST, dense (segmentation) DIST, mmrazor sigmoid DIST and ``KLDivergence``, run in double
precision (provenance in the fixture's README). Our float64 run must match every case to ``1e-10`` of each tensor's
scale (``parity.assert_matches_official``); one float32 check bounds the error of our float32 path against the same
float64 values (``parity.assert_float32_close``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from parity import assert_float32_close, assert_matches_official

from tenfold.distill import DISTLoss, KDLoss

CASES = torch.load(Path(__file__).parents[1] / "fixtures" / "dist" / "official_outputs.pt", weights_only=True)

# Dependent rounding steps of the deepest case (DIST with tau): forward z / tau, exp after the max shift, the
# softmax division, mean-centring, the row reductions (dot product and norms), the ratio with eps, the mean over
# rows with 1 - mean, and the tau^2 / beta / gamma weighting (8); the backward retraces the same 8 steps, starting
# from the rounded forward intermediates. KD (log-softmax, one sum, the tau^2 scaling) is shallower.
FLOAT32_DEPTH = 16


def _ours(name: str, kwargs: dict) -> torch.nn.Module:
    if name.startswith("kl_"):
        return KDLoss(tau=kwargs["tau"], reduction=kwargs["reduction"])
    if name.startswith("dist_dense"):
        return DISTLoss(dense=True, use_sigmoid="sigmoid" in name, **kwargs)
    return DISTLoss(**kwargs)


def _run(name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    case = CASES[name]
    student = case["student"].to(dtype).clone().requires_grad_(True)
    loss = _ours(name, case["kwargs"])(student, case["teacher"].to(dtype))
    loss.backward()
    assert loss.dtype == dtype and student.grad.dtype == dtype
    return loss.detach(), student.grad


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_gradient_match_official(name):
    assert CASES[name]["loss"].dtype == torch.float64, "the fixture must be the float64 recording"
    loss, grad = _run(name, torch.float64)
    assert_matches_official(loss, CASES[name]["loss"], what=f"{name} loss")
    assert_matches_official(grad, CASES[name]["grad"], what=f"{name} grad wrt student")


def test_float32_run_close_to_official_float64():
    for name in sorted(CASES):
        loss, grad = _run(name, torch.float32)
        assert_float32_close(loss, CASES[name]["loss"], depth=FLOAT32_DEPTH, what=f"{name} loss (float32 run)")
        assert_float32_close(grad, CASES[name]["grad"], depth=FLOAT32_DEPTH, what=f"{name} grad (float32 run)")


def test_fixture_covers_every_variant():
    assert {"dist_cls_tau4", "dist_cls_correlated_tau4", "dist_dense_softmax", "dist_dense_sigmoid"} <= set(CASES)
    assert {"kl_tau4_batchmean", "kl_tau4_sum", "kl_tau4_mean"} <= set(CASES)
