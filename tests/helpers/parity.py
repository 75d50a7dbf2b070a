"""How every fixture-based parity test compares tenfold with recorded official outputs (the rule, in one place).

Official outputs are recorded **in float64** (the official code run once, in double precision, outside the
repository; provenance in ``tests/fixtures/<method>/README.md``). Two checks use them, and neither depends on the
CPU the fixture was recorded on:

* ``assert_matches_official`` (float64 run vs float64 recording): ``max|a - b| <= rtol * max|b|`` per tensor, with
  ``rtol = 1e-10`` by default. Float64 rounding differs between CPU families (BLAS blocking, FFT plans, vectorised
  reductions) by a few units of ``2.2e-16`` times the depth of the computation, i.e. 1e-13 .. 1e-12 of the tensor's
  scale for the deepest models here; a wrong formula (an epsilon, a transposed index, a missing term) moves the
  output by 1e-7 .. 1e-2 of its scale. 1e-10 separates the two by orders of magnitude on both sides.
* ``assert_float32_close`` (our float32 run vs the float64 recording): the error of a float32 computation against
  the exact value grows at most about linearly with the number of dependent rounding steps (the "depth": layers,
  or the length of the longest reduction chain that is not pairwise). The bound is
  ``max|a - b| <= FP32_SAFETY * depth * eps32 * max|b|`` with ``eps32 = 1.19e-7`` and a safety factor of 16 for the
  accumulation inside one layer (a few hundred-term dot products, pairwise-summed by BLAS, plus the activation's
  condition number). One such check per method keeps the float32 path honest without tying it to one CPU.

The comparison is relative to the tensor's scale, not element-wise: element-wise relative tolerances fail on
elements that are near zero by cancellation (a few in every gradient), which is how a float32 fixture broke on an
AMD EPYC machine while it passed on a Xeon.

Usage::

    from parity import assert_matches_official, assert_float32_close

    assert_matches_official(ours64, official["logits"], what="T logits")
    assert_float32_close(ours32, official["logits"], depth=12, what="T logits (float32 run)")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

FP64_RTOL = 1e-10
FP32_EPS = torch.finfo(torch.float32).eps
FP32_SAFETY = 16.0


def _scale_relative_check(actual, expected, *, rtol: float, atol: float, what: str) -> None:
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{what}: expected a mapping, got {type(actual).__name__}"
        assert set(actual) == set(expected), f"{what}: keys differ: {sorted(set(actual) ^ set(expected))}"
        for key in expected:
            _scale_relative_check(actual[key], expected[key], rtol=rtol, atol=atol, what=f"{what}[{key!r}]")
        return
    if isinstance(expected, Sequence) and not isinstance(expected, str):
        assert len(actual) == len(expected), f"{what}: length {len(actual)} != {len(expected)}"
        for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
            _scale_relative_check(a, b, rtol=rtol, atol=atol, what=f"{what}[{i}]")
        return
    a = torch.as_tensor(actual).detach().cpu()
    b = torch.as_tensor(expected).detach().cpu()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != official {tuple(b.shape)}"
    if not (a.is_floating_point() or a.is_complex()) and not (b.is_floating_point() or b.is_complex()):
        assert torch.equal(a, b), f"{what}: integer tensors differ in {(a != b).sum().item()} of {a.numel()} entries"
        return
    wide = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    a, b = a.to(wide), b.to(wide)
    assert torch.isfinite(a).all(), f"{what}: non-finite values in our output"
    if b.numel() == 0:
        return
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    bound = rtol * scale + atol
    if err > bound:
        idx = (a - b).abs().argmax().item()
        pos = tuple(int(i) for i in torch.unravel_index(torch.tensor(idx), b.shape)) if b.dim() else ()
        raise AssertionError(
            f"{what}: max|ours - official| = {err:.3e} > {bound:.3e} (rtol {rtol:.1e} x scale {scale:.3e}"
            f"{f' + atol {atol:.1e}' if atol else ''}); worst at {pos}: ours {a.flatten()[idx].item():.10g}, "
            f"official {b.flatten()[idx].item():.10g}"
        )


def assert_matches_official(actual, expected, *, what: str, rtol: float = FP64_RTOL, atol: float = 0.0) -> None:
    """A float64 run against a float64 recording of the official code: ``max|a - b| <= rtol * max|b| + atol``.

    ``actual`` / ``expected`` are tensors, or (nested) dicts / sequences of tensors with the same structure; integer
    tensors must be equal. A tensor that is exactly zero in the recording must be exactly zero here too unless
    ``atol`` is given. Raise ``rtol`` only with a comment saying which rounding step needs it.
    """
    _scale_relative_check(actual, expected, rtol=rtol, atol=atol, what=what)


def float32_tolerance(depth: int) -> float:
    """Scale-relative bound for a float32 run of a computation of ``depth`` dependent steps (see the module doc)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return FP32_SAFETY * depth * FP32_EPS


def assert_float32_close(actual, expected, *, depth: int, what: str) -> None:
    """Our float32 run against the float64 official recording, within ``float32_tolerance(depth)`` of the scale."""
    _scale_relative_check(actual, expected, rtol=float32_tolerance(depth), atol=0.0, what=what)
