"""The loss contract, checked once for every loss the package exports: a finite scalar, gradients that reach the
prediction (student) input, ValueError on mismatched inputs, and no hidden trainable state.

The exported losses are discovered, not listed: every ``nn.Module`` subclass named ``*Loss`` (or deriving from
``torch.nn.modules.loss._Loss``) in the ``__all__`` of a ``tenfold`` subpackage. Each needs at least one recipe in
``CASES`` (how to build it and what to feed it); a newly exported loss without one fails
``test_every_exported_loss_has_a_recipe``. The file sits with the distillation tests because the contract started
there; it covers every family.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn as nn

import tenfold
from tenfold.distill import DiffKDLoss, DISTLoss, KDLoss, MasKDLoss, MasKDSegLoss
from tenfold.seg import PRCLLoss
from tenfold.speech import ComMagEuclideanLoss

Inputs = tuple[Any, ...]  # (prediction, target, *extra arguments); the prediction is a tensor or a list of levels


@dataclass(frozen=True)
class Recipe:
    """How to build one loss and feed it.

    Attributes:
        cls: the exported class the recipe covers.
        name: test id.
        build: a fresh loss.
        inputs: ``inputs(seed)`` -> (prediction, target, *extras) that the loss accepts.
        mismatched: argument tuples (each differs from a valid one in one shape) that must raise ValueError.
        match: a regex the ValueError's message must match (it names what does not fit).
        state: ``"none"`` (no parameters, no buffers), ``"frozen"`` (parameters, none trainable; buffers allowed)
            or ``"trainable"`` (trainable parameters, which the backward pass reaches).
    """

    cls: type
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], Inputs]
    mismatched: Callable[[], list[Inputs]]
    match: str
    state: str = "none"


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def _pair(shape: tuple[int, ...], *extras: Any) -> tuple[Callable[[int], Inputs], Callable[[], list[Inputs]]]:
    """Inputs of a loss on two same-shape tensors, and the mismatches: one more channel, or one more sample, on
    either side."""
    wider = (shape[0], shape[1] + 1, *shape[2:])
    longer = (shape[0] + 1, *shape[1:])

    def inputs(seed: int) -> Inputs:
        return (_randn(shape, seed), _randn(shape, seed + 1), *extras)

    def mismatched() -> list[Inputs]:
        return [(a, b, *extras) for other in (wider, longer)
                for a, b in ((_randn(shape, 0), _randn(other, 1)), (_randn(other, 0), _randn(shape, 1)))]  # fmt: skip

    return inputs, mismatched


def _recipe(cls: type, name: str, build: Callable[[], nn.Module], shape: tuple[int, ...], match: str,
            state: str = "none", extras: tuple = ()) -> Recipe:  # fmt: skip
    inputs, mismatched = _pair(shape, *extras)
    return Recipe(cls, name, build, inputs, mismatched, match, state)


# MasKD on two feature levels: (N, 4, 8, 8) and (N, 6, 4, 4)
_MASKD_LEVELS = ((2, 4, 8, 8), (2, 6, 4, 4))


def _maskd_inputs(seed: int) -> Inputs:
    return ([_randn(s, seed + i) for i, s in enumerate(_MASKD_LEVELS)],
            [_randn(s, seed + 10 + i) for i, s in enumerate(_MASKD_LEVELS)])  # fmt: skip


def _maskd_mismatched() -> list[Inputs]:
    good = [_randn(s, 0) for s in _MASKD_LEVELS]
    wider = [_randn((2, 5, 8, 8), 1), good[1]]  # level 0 with 5 channels instead of 4
    longer = [_randn((3, 4, 8, 8), 1), good[1]]  # level 0 with 3 images
    one_level = good[:1]
    return [(good, wider), (wider, wider), (good, longer), (longer, good), (one_level, one_level), (good, one_level)]


# PRCL on (N=2, D=6, 4, 4) means; 3 classes; every pixel valid and hard (probabilities 1/3 < 0.8)
_PRCL_SHAPE = (2, 6, 4, 4)


def _prcl_extras(n: int = 2, h: int = 4, w: int = 4, classes: int = 3) -> tuple[torch.Tensor, ...]:
    labels = torch.arange(n * h * w).reshape(n, h, w) % classes  # all classes present
    onehot = torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()
    return onehot, torch.ones(n, 1, h, w), torch.full((n, classes, h, w), 1.0 / classes)


def _prcl_inputs(seed: int) -> Inputs:
    return (_randn(_PRCL_SHAPE, seed), torch.sigmoid(_randn(_PRCL_SHAPE, seed + 1)), *_prcl_extras())


def _prcl_mismatched() -> list[Inputs]:
    mu, sigma, *extras = _prcl_inputs(0)
    wider = torch.sigmoid(_randn((2, 7, 4, 4), 1))  # sigma with one more dimension than mu
    return [(mu, wider, *extras), (mu, sigma, *_prcl_extras(h=5)), (mu[:1], sigma[:1], *extras)]


CASES = [
    _recipe(KDLoss, "KDLoss", lambda: KDLoss(), (6, 10), "shape"),
    _recipe(KDLoss, "KDLoss-tau1-sum", lambda: KDLoss(tau=1.0, reduction="sum"), (6, 10), "shape"),
    _recipe(KDLoss, "KDLoss-dense", lambda: KDLoss(tau=2.0, reduction="mean"), (2, 5, 3, 3), "shape"),
    _recipe(DISTLoss, "DISTLoss", lambda: DISTLoss(), (6, 10), "shape"),
    _recipe(DISTLoss, "DISTLoss-tau4", lambda: DISTLoss(beta=2.0, gamma=0.5, tau=4.0), (6, 10), "shape"),
    _recipe(DISTLoss, "DISTLoss-dense", lambda: DISTLoss(dense=True), (2, 5, 3, 3), "shape"),
    _recipe(DISTLoss, "DISTLoss-dense-sigmoid", lambda: DISTLoss(dense=True, use_sigmoid=True), (2, 5, 3, 3), "shape"),
    _recipe(
        DiffKDLoss,
        "DiffKDLoss-feature",
        lambda: DiffKDLoss(16, 16, kind="feature", ae_channels=8),
        (2, 16, 4, 4),
        "channels|batch and spatial",
        state="trainable",
    ),
    _recipe(
        DiffKDLoss,
        "DiffKDLoss-logits",
        lambda: DiffKDLoss(10, 10, kind="logits", tau=2.0),
        (6, 10),
        "channels|batch and spatial",
        state="trainable",
    ),
    _recipe(ComMagEuclideanLoss, "ComMagEuclideanLoss", lambda: ComMagEuclideanLoss(), (2, 2, 5, 6), r"\(B, 2, T, F\)"),
    _recipe(
        ComMagEuclideanLoss,
        "ComMagEuclideanLoss-L1-frames",
        lambda: ComMagEuclideanLoss(0.3, "L1"),
        (2, 2, 5, 6),
        r"\(B, 2, T, F\)",
        extras=(torch.tensor([5, 3]),),
    ),
    Recipe(
        MasKDLoss,
        "MasKDLoss-2-levels",
        lambda: MasKDLoss(channels=(4, 6), num_tokens=3),
        _maskd_inputs,
        _maskd_mismatched,
        "level|levels",
        state="frozen",
    ),
    _recipe(
        MasKDLoss,
        "MasKDLoss-1-level-unweighted",
        lambda: MasKDLoss(channels=(5,), num_tokens=2, weight_mask=False, custom_mask=False),
        (2, 5, 4, 4),
        "shape",
        state="frozen",
    ),
    _recipe(
        MasKDSegLoss,
        "MasKDSegLoss",
        lambda: MasKDSegLoss(num_classes=5, num_tokens=3),
        (2, 5, 4, 4),
        "shape",
        state="frozen",
    ),
    Recipe(
        PRCLLoss,
        "PRCLLoss-temp0.5",
        lambda: PRCLLoss(8, 16, temperature=0.5),
        _prcl_inputs,
        _prcl_mismatched,
        "must be|must have",
    ),  # fmt: skip
]
IDS = [case.name for case in CASES]


def _exported_losses() -> dict[type, str]:
    """Every loss class in a ``tenfold`` subpackage's ``__all__`` -> where it is exported."""
    found: dict[type, str] = {}
    for info in pkgutil.iter_modules(tenfold.__path__, "tenfold."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        for name in getattr(package, "__all__", ()):
            obj = getattr(package, name)
            is_module = inspect.isclass(obj) and issubclass(obj, nn.Module)
            if is_module and (name.endswith("Loss") or issubclass(obj, nn.modules.loss._Loss)):
                found.setdefault(obj, f"{info.name}.{name}")
    return found


def test_every_exported_loss_has_a_recipe():
    exported = _exported_losses()
    covered = {case.cls for case in CASES}
    missing = sorted(where for cls, where in exported.items() if cls not in covered)
    assert not missing, (
        f"exported losses without a contract recipe: {missing}; add a Recipe for each to CASES in {__file__} "
        "(how to build it, valid inputs, mismatched inputs)"
    )
    stale = sorted(cls.__name__ for cls in covered - set(exported))
    assert not stale, f"recipes for classes no tenfold subpackage exports in __all__: {stale}"


def _as_leaves(prediction: Any) -> list[torch.Tensor]:
    return list(prediction) if isinstance(prediction, list | tuple) else [prediction]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_finite_scalar_and_backpropagates(case):
    loss_fn = case.build()
    assert type(loss_fn) is case.cls
    prediction, target, *extras = case.inputs(0)
    leaves = _as_leaves(prediction)
    for leaf in leaves:
        leaf.requires_grad_()
    loss = loss_fn(prediction, target, *extras)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for leaf in leaves:
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape
        assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    trainable = [p for p in loss_fn.parameters() if p.requires_grad]
    if case.state == "trainable":  # the loss's own parameters are learned with the student
        assert trainable and all(p.grad is None or torch.isfinite(p.grad).all() for p in trainable)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    else:
        assert not trainable


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rejects_mismatched_shapes(case):
    loss_fn = case.build()
    bad = case.mismatched()
    assert bad
    for args in bad:
        with pytest.raises(ValueError, match=case.match):
            loss_fn(*args)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_is_what_the_recipe_declares(case):
    assert case.state in ("none", "frozen", "trainable")
    loss_fn = case.build()
    params = dict(loss_fn.named_parameters())
    trainable = sorted(name for name, p in params.items() if p.requires_grad)
    if case.state == "none":  # a plain function of its inputs: nothing to save, move or optimise
        assert params == {} and list(loss_fn.buffers()) == []
    elif case.state == "frozen":  # e.g. MasKD's stage-1 tokens: loaded, never optimised
        assert params and trainable == [], f"trainable parameters in a frozen loss: {trainable}"
    else:  # learned with the student (DiffKD's denoiser, AE and projection)
        assert params and trainable == sorted(params), f"frozen: {sorted(set(params) - set(trainable))}"
