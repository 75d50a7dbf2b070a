"""The timm contract, checked once for every model that tenfold registers (timm ``tests/test_models.py`` style)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import group_parameters

import tenfold.models

MODELS = tenfold.models.list_models()
BATCH = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def _pooled_width(model: nn.Module) -> int:
    """timm: the width of ``forward_head(pre_logits=True)`` (``head_hidden_size`` when the head has a neck)."""
    return getattr(model, "head_hidden_size", None) or model.num_features


def _classifier_params(model: nn.Module) -> set[str]:
    prefix = model.pretrained_cfg["classifier"]
    return {n for n, _ in model.named_parameters() if n.startswith(prefix + ".")}


def _input(model: nn.Module) -> torch.Tensor:
    size = model.pretrained_cfg["input_size"]
    return torch.randn(BATCH, *size, generator=torch.Generator().manual_seed(0))


def test_registry_is_not_empty_and_excludes_timm_models():
    assert MODELS == sorted(MODELS)
    assert "resnet8x4" in MODELS
    assert "resnet18" not in MODELS and "vit_tiny_patch16_224" not in MODELS  # timm's own
    assert all(timm.is_model(name) for name in MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_forward(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = _input(model)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (BATCH, model.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = timm.create_model(name).train()
    x = _input(model)
    target = torch.arange(BATCH) % model.num_classes
    F.cross_entropy(model(x), target).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient on {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient on {pname}"


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_honoured(name):
    model = timm.create_model(name, num_classes=7).eval()
    assert model.num_classes == 7
    with torch.no_grad():
        assert model(_input(model)).shape == (BATCH, 7)


@pytest.mark.parametrize("name", MODELS)
def test_features_match_num_features(name):
    model = timm.create_model(name).eval()
    x = _input(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        assert torch.equal(logits, model(x))
        final, maps = model.forward_intermediates(x)
    channels = feats.shape[1] if feats.ndim == 4 else feats.shape[-1]  # NCHW maps, or NLC tokens
    assert feats.shape[0] == BATCH and channels == model.num_features
    assert pooled.shape == (BATCH, _pooled_width(model))
    assert torch.equal(final, feats)
    assert [m.shape[1] for m in maps] == [info["num_chs"] for info in model.feature_info]
    assert [x.shape[-1] // m.shape[-1] for m in maps] == [info["reduction"] for info in model.feature_info]


@pytest.mark.parametrize("name", MODELS)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    x = torch.randn(BATCH, 3, 32, 32)
    with torch.no_grad():
        maps = model(x)
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    assert [32 // m.shape[-1] for m in maps] == model.feature_info.reduction()


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier(name):
    model = timm.create_model(name).eval()
    x = _input(model)
    model.reset_classifier(0)
    assert model.num_classes == 0
    assert isinstance(model.get_classifier(), nn.Identity)
    with torch.no_grad():
        assert model(x).shape == (BATCH, _pooled_width(model))
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert model(x).ndim in (3, 4)  # unpooled: maps or tokens
    model.reset_classifier(5, "avg")
    assert model.get_classifier().out_features == 5
    with torch.no_grad():
        assert model(x).shape == (BATCH, 5)


@pytest.mark.parametrize("name", MODELS)
def test_training_helpers(name):
    model = timm.create_model(name)
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() <= names  # full names, as timm's optimiser factory matches them
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    # every parameter except the classifier falls into a stem / block / final-norm group
    groups = group_parameters(model, model.group_matcher())
    assert set(groups[max(groups)]) == _classifier_params(model) != set()
    assert sum(len(names) for names in groups.values()) == len(list(model.parameters()))
    assert len(groups) > 3


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_without_file_raises(name):
    with pytest.raises(ValueError, match="pretrained_cfg_overlay"):
        timm.create_model(name, pretrained=True)
