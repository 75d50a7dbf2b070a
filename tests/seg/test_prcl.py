"""Behaviour of the PRCL core (tenfold.seg.prcl): loss scale, variance bounds, gradient paths, RNG, GDP, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tenfold.seg.prcl import (
    PRCLDeepLabV3Plus,
    PRCLLoss,
    UncertaintyHead,
    contrastive_targets,
    ema_decay,
    ema_update_,
    mutual_likelihood_score,
    poly_epoch_lr,
    prcl_weight,
)


def _batch(seed: int = 0, c: int = 3, d: int = 8, h: int = 6, w: int = 7, hard_fraction: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(2, d, h, w, generator=g).requires_grad_()
    sigma = (torch.rand(2, d, h, w, generator=g) * 0.9 + 0.05).requires_grad_()
    label = torch.randint(0, c, (2, h, w), generator=g)
    onehot = F.one_hot(label, c).permute(0, 3, 1, 2).float()
    easy = torch.rand(2, h, w, generator=g) > hard_fraction
    prob = torch.where(easy[:, None], onehot * 0.9 + 0.1 / c, torch.full_like(onehot, 1.0 / c))
    return mu, sigma, onehot, torch.ones(2, 1, h, w), prob


def test_loss_is_log_one_plus_n_at_temperature_100_and_not_at_half():
    mu, sigma, onehot, mask, prob = _batch()
    g = torch.Generator().manual_seed(1)
    loss = PRCLLoss(16, 32, temperature=100.0)(mu, sigma, onehot, mask, prob, generator=g)
    assert abs(loss.item() - math.log(33)) < 0.02
    low = PRCLLoss(16, 32, temperature=0.5)(mu, sigma, onehot, mask, prob, generator=g)
    assert abs(low.item() - math.log(33)) > 0.1


def test_variance_stays_in_open_unit_interval():
    head = UncertaintyHead(12, 8)
    with torch.no_grad():
        head.gamma.fill_(30.0)  # pushes h far to both sides
    sigma = head(torch.randn(4, 12, 5, 5) * 10)
    assert sigma.min() > 0 and sigma.max() <= 1
    assert sigma.min() >= 0.99e-6  # the +1e-6 inside the log bounds it below by sigmoid(log 1e-6)
    head.gamma.data.fill_(1.0)
    moderate = head(torch.randn(4, 12, 5, 5))
    assert 0 < moderate.min() and moderate.max() < 1


def test_gradients_flow_only_through_anchor_pixels():
    mu, sigma, onehot, mask, prob = _batch(2)
    loss_fn = PRCLLoss(8, 16)
    loss = loss_fn(mu, sigma, onehot, mask, prob, generator=torch.Generator().manual_seed(0))
    g_mu, g_sigma = torch.autograd.grad(loss, [mu, sigma])
    # easy pixels (prob >= 0.8 for their class) feed prototypes and negatives, which are detached
    easy = (prob * onehot).sum(1) >= 0.8
    assert easy.any() and (~easy).any()
    assert g_mu.permute(0, 2, 3, 1)[easy].abs().max() == 0
    assert g_sigma.permute(0, 2, 3, 1)[easy].abs().max() == 0
    assert g_mu.abs().sum() > 0 and g_sigma.abs().sum() > 0
    # exactly the sampled anchor pixels get a gradient
    hard_pixels = []
    for slot, c in enumerate(loss_fn.last_sample.classes):
        hard = ((onehot[:, c] > 0) & (prob[:, c] < 0.8)).nonzero()
        hard_pixels += [tuple(hard[i].tolist()) for i in loss_fn.last_sample.anchors[slot].tolist()]
    with_grad = {tuple(p) for p in (g_mu.abs().sum(1) > 0).nonzero().tolist()}
    assert with_grad == set(hard_pixels)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_keeps_mls_and_loss_finite(dtype):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(12, 8, 1)
    head = UncertaintyHead(12, 8)
    with torch.no_grad():
        head.gamma.fill_(-40.0)  # variances near their 1e-6 floor: 1 / (2e-6) overflows float16
    x = torch.randn(2, 12, 6, 7)
    _, _, onehot, mask, prob = _batch(3)
    with torch.autocast("cpu", dtype=dtype):
        mu, sigma = conv(x), head(x)
        assert mu.dtype == dtype
        mls = mutual_likelihood_score(mu[:, None].permute(0, 1, 3, 4, 2), mu[:, None].permute(0, 1, 3, 4, 2).flip(0),
                                      sigma[:, None].permute(0, 1, 3, 4, 2).to(dtype),
                                      sigma[:, None].permute(0, 1, 3, 4, 2).to(dtype))  # fmt: skip
        loss = PRCLLoss(8, 16)(mu, sigma.to(dtype), onehot, mask, prob, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(mls).all() and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()
    # the same variances in plain float16 arithmetic do overflow, so the upcast is what keeps it finite
    s16 = sigma.detach().to(torch.float16)
    assert not torch.isfinite(1 / (s16 + s16)).all()


def test_same_generator_or_sample_reproduces_and_other_seed_differs():
    mu, sigma, onehot, mask, prob = _batch(4)
    loss_fn = PRCLLoss(8, 16, temperature=0.5)
    a = loss_fn(mu, sigma, onehot, mask, prob, generator=torch.Generator().manual_seed(5))
    sample = loss_fn.last_sample
    b = loss_fn(mu, sigma, onehot, mask, prob, generator=torch.Generator().manual_seed(5))
    assert a.item() == b.item()
    pairs = zip(sample.negative_indices, loss_fn.last_sample.negative_indices, strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    c = loss_fn(mu, sigma, onehot, mask, prob, sample=sample)
    assert c.item() == a.item()
    d = loss_fn(mu, sigma, onehot, mask, prob, generator=torch.Generator().manual_seed(6))
    assert d.item() != a.item()


def test_negative_indices_fall_in_the_drawn_class_pools():
    mu, sigma, onehot, mask, prob = _batch(7, c=4)
    loss_fn = PRCLLoss(5, 40)
    loss_fn(mu, sigma, onehot, mask, prob, generator=torch.Generator().manual_seed(0))
    s = loss_fn.last_sample
    counts = [int(((onehot[:, c] > 0) & (mask[:, 0] > 0)).sum()) for c in s.classes]
    k = len(s.classes)
    for i in range(k):
        order = list(range(i + 1, k)) + list(range(i))
        n = torch.tensor([counts[j] for j in order])
        offsets = torch.cumsum(n, 0) - n
        idx = s.negative_indices[i].reshape(5, 40)
        slot = torch.searchsorted(offsets, idx, right=True) - 1  # which pool each index lies in
        expected = torch.sort(s.negative_classes[i], dim=1).values
        assert torch.equal(slot, expected)


def test_global_prototypes_off_by_default_and_change_with_momentum():
    first, second = _batch(8), _batch(9)
    plain = PRCLLoss(8, 16)
    plain(*first)
    assert not plain.global_prototypes and not hasattr(plain, "global_mu")  # no memory without GDP
    gdp = PRCLLoss(8, 16, global_prototypes=True, prototype_momentum=0.9)
    gdp(*first, generator=torch.Generator().manual_seed(0))
    after_first = gdp.global_mu.clone()
    loss_gdp = gdp(*second, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(gdp.global_mu, after_first)
    # with momentum the prototypes are not the second batch's own: the loss differs from the memory-less one
    loss_plain = plain(*second, sample=gdp.last_sample)
    assert abs(loss_gdp.item() - loss_plain.item()) > 1e-6
    # momentum 0 forgets the past: the memory equals the batch prototypes of the last call
    reset = PRCLLoss(8, 16, global_prototypes=True, prototype_momentum=0.0)
    reset(*first, generator=torch.Generator().manual_seed(0))
    reset_loss = reset(*second, sample=gdp.last_sample)
    assert abs(reset_loss.item() - loss_plain.item()) < 1e-6


def test_shape_and_sample_errors_are_clear():
    mu, sigma, onehot, mask, prob = _batch(10)
    loss_fn = PRCLLoss(4, 8)
    with pytest.raises(ValueError, match="sigma"):
        loss_fn(mu, sigma[:, :4], onehot, mask, prob)
    with pytest.raises(ValueError, match="mask"):
        loss_fn(mu, sigma, onehot, mask[:, :, :3], prob)
    with pytest.raises(ValueError, match="label_onehot"):
        loss_fn(mu, sigma, onehot[:1], mask, prob)
    loss_fn(mu, sigma, onehot, mask, prob)
    other = _batch(11, c=4)
    with pytest.raises(ValueError, match="classes"):
        PRCLLoss(4, 8)(*other, sample=loss_fn.last_sample)
    with pytest.raises(ValueError, match="same last dimension"):
        mutual_likelihood_score(mu[..., :3], mu[..., :4], mu[..., :3], mu[..., :4])
    with pytest.raises(ValueError, match="UncertaintyHead"):
        UncertaintyHead(12, 8)(torch.randn(1, 10, 3, 3))


def test_contrastive_targets_masks_ignore_and_low_confidence():
    labels = torch.tensor([[[0, 1], [255, 2]]]).repeat_interleave(2, 1).repeat_interleave(2, 2)  # (1, 4, 4)
    pseudo = torch.tensor([[[2, 2], [1, 0]]]).repeat_interleave(2, 1).repeat_interleave(2, 2)
    conf = torch.tensor([[[0.9, 0.6], [0.7, 0.95]]]).repeat_interleave(2, 1).repeat_interleave(2, 2)
    logits = torch.randn(2, 3, 2, 2)
    onehot, mask, prob = contrastive_targets(labels, pseudo, conf, logits, num_classes=3)
    assert onehot.shape == (2, 3, 2, 2) and mask.shape == (2, 1, 2, 2)
    assert mask[0, 0].tolist() == [[1.0, 1.0], [0.0, 1.0]]
    assert mask[1, 0].tolist() == [[1.0, 0.0], [1.0, 1.0]]  # 0.7 is kept (>=)
    assert onehot[0].argmax(0).tolist() == [[0, 1], [0, 2]]  # ignore -> class 0, masked out
    assert onehot[1].argmax(0).tolist() == [[2, 2], [1, 0]]
    assert torch.allclose(prob, logits.softmax(1))
    with pytest.raises(ValueError, match="logits_all"):
        contrastive_targets(labels, pseudo, conf, logits[:1], num_classes=3)


def test_schedules_hit_the_spec_values():
    assert prcl_weight(0) == 1.0 and prcl_weight(200) == 0.0
    assert prcl_weight(50) == pytest.approx(0.7316, abs=1e-4)
    assert prcl_weight(100) == pytest.approx(0.2865, abs=1e-4)
    assert prcl_weight(199) == pytest.approx(0.00708, abs=1e-4)
    assert poly_epoch_lr(3.2e-3, 0) == 3.2e-3 and poly_epoch_lr(3.2e-3, 200) == 1e-6
    assert [round(ema_decay(s), 4) for s in (0, 1, 2, 98, 99, 500)] == [0.0, 0.5, 0.6667, 0.9899, 0.99, 0.99]


def test_ema_update_parameters_only_by_default():
    student = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    teacher = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    student[1].running_mean.fill_(3.0)
    t0 = teacher[0].weight.clone()
    assert ema_update_(teacher, student, step=1) == 0.5
    assert torch.allclose(teacher[0].weight, 0.5 * t0 + 0.5 * student[0].weight)
    assert teacher[1].running_mean.abs().sum() == 0
    ema_update_(teacher, student, step=1, include_buffers=True)
    assert torch.allclose(teacher[1].running_mean, torch.full((2,), 1.5))


def test_forward_prcl_shapes_and_plain_forward_agree():
    torch.manual_seed(0)
    model = PRCLDeepLabV3Plus(num_classes=3, backbone="resnet18", aspp_channels=16, decoder_channels=16,
                              representation_dim=8).eval()  # fmt: skip
    x = torch.randn(1, 3, 32, 32)
    out = model.forward_prcl(x)
    assert out.logits.shape == (1, 3, 8, 8) and out.representation.shape == (1, 8, 8, 8)
    assert out.features.shape == (1, 48 + 16, 8, 8) and model.feature_channels == 64
    assert torch.allclose(model(x).logits, out.logits)
    sigma = UncertaintyHead(model.feature_channels, 8).eval()(out.features)
    assert sigma.shape == out.representation.shape
