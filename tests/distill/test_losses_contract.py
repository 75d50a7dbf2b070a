"""The loss contract, checked once for every exported distillation loss: finite, backpropagates to the student
logits, rejects mismatched shapes with ValueError."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn

import tenfold.distill.dist as dist_module
import tenfold.distill.kd as kd_module
from tenfold.distill.dist import DISTLoss
from tenfold.distill.kd import KDLoss

# (id, factory, input shape); every exported loss class must appear at least once (checked below).
CASES = [
    ("KDLoss", lambda: KDLoss(), (6, 10)),
    ("KDLoss-tau1-sum", lambda: KDLoss(tau=1.0, reduction="sum"), (6, 10)),
    ("KDLoss-dense", lambda: KDLoss(tau=2.0, reduction="mean"), (2, 5, 3, 3)),
    ("DISTLoss", lambda: DISTLoss(), (6, 10)),
    ("DISTLoss-tau4", lambda: DISTLoss(beta=2.0, gamma=0.5, tau=4.0), (6, 10)),
    ("DISTLoss-dense", lambda: DISTLoss(dense=True), (2, 5, 3, 3)),
    ("DISTLoss-dense-sigmoid", lambda: DISTLoss(dense=True, use_sigmoid=True), (2, 5, 3, 3)),
]
IDS = [case[0] for case in CASES]


def _exported_loss_classes() -> set[type]:
    found = set()
    for module in (kd_module, dist_module):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, nn.Module):
                found.add(obj)
    return found


def test_every_exported_loss_is_covered():
    covered = {type(factory()) for _, factory, _ in CASES}
    assert _exported_loss_classes() == covered


def _logits(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize(("name", "factory", "shape"), CASES, ids=IDS)
def test_finite_scalar_and_backpropagates(name, factory, shape):
    zs = _logits(shape, 0).requires_grad_()
    with torch.no_grad():
        zt = _logits(shape, 1)
    loss = factory()(zs, zt)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert zs.grad is not None and zs.grad.shape == zs.shape
    assert torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "factory", "shape"), CASES, ids=IDS)
def test_rejects_mismatched_shapes(name, factory, shape):
    loss = factory()
    wider = (shape[0], shape[1] + 1, *shape[2:])
    longer = (shape[0] + 1, *shape[1:])
    for other in (wider, longer):
        with pytest.raises(ValueError, match="shape"):
            loss(_logits(shape, 0), _logits(other, 1))
        with pytest.raises(ValueError, match="shape"):
            loss(_logits(other, 0), _logits(shape, 1))


@pytest.mark.parametrize(("name", "factory", "shape"), CASES, ids=IDS)
def test_is_a_plain_module_without_parameters(name, factory, shape):
    loss = factory()
    assert isinstance(loss, nn.Module)
    assert list(loss.parameters()) == [] and list(loss.buffers()) == []
    assert name.split("-")[0] in repr(loss)
