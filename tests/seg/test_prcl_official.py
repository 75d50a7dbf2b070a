"""PRCL core vs float64 recordings of the official code (Haoyu-Xie/PRCL d8829da; tests/fixtures/prcl/README.md)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parity import assert_float32_close, assert_matches_official

from tenfold.seg.models import ASPP, checkpoint_filter_fn
from tenfold.seg.prcl import (
    PRCLDeepLabV3Plus,
    PRCLLoss,
    PRCLSample,
    UncertaintyHead,
    attention_threshold_loss,
    ema_update_,
    load_prcl_checkpoint,
    mutual_likelihood_score,
    poly_epoch_lr,
    prcl_weight,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "prcl"
KEYS = Path("/work/shared/specs/keys/prcl_state_dict_keys_voc.json")
IGNORE = 255


def _fx(name: str) -> dict:
    return torch.load(FIX / f"{name}.pt", weights_only=True)


def test_uncertainty_head_train_and_eval_match_official():
    fx = _fx("uncer")
    head = UncertaintyHead(12, 8).double()
    head.load_state_dict(fx["init_state"], strict=True)
    head.train()
    assert_matches_official(head(fx["x"]), fx["train_out"], what="uncer head (train)")
    assert_matches_official(head.state_dict(), fx["state_after_train"], what="uncer head BN buffers")
    head.eval()
    assert_matches_official(head(fx["x"]), fx["eval_out"], what="uncer head (eval)")
    # float32 run of the same head against the float64 recording: 2 linear maps (12/8-term dot products), 2 BNs,
    # exp/log/sigmoid -> depth 8
    head32 = UncertaintyHead(12, 8)
    head32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in fx["init_state"].items()})
    head32.train()
    assert_float32_close(head32(fx["x"].float()), fx["train_out"], depth=8, what="uncer head (float32)")


def test_mls_matches_official():
    fx = _fx("mls")
    out = mutual_likelihood_score(fx["mu0"], fx["mu1"], fx["sigma0"], fx["sigma1"])
    assert_matches_official(out, fx["out"], what="MLS")


def _inputs(fx: dict, num_classes: int = 4):
    label = fx["label"]
    onehot = F.one_hot(label.clamp(min=0), num_classes).permute(0, 3, 1, 2).double()
    return fx["mu"].clone().requires_grad_(), fx["sigma"].clone().requires_grad_(), onehot, fx["mask"], fx["prob"]


def _official_sample(fx: dict, classes: list[int], hard_present: list[bool]) -> PRCLSample:
    anchors, ncls, nidx = iter(fx["anchors"]), iter(fx["neg_classes"]), iter(fx["neg_indices"])
    s = PRCLSample(classes=classes)
    for present in hard_present:
        s.anchors.append(next(anchors) if present else None)
        s.negative_classes.append(next(ncls) if present else None)
        s.negative_indices.append(next(nidx) if present else None)
    return s


@pytest.mark.parametrize(
    ("case", "hard_present"),
    [("loss_normal", [True, True, True, True]), ("loss_empty_hard", [True, True, False, True])],
)
def test_prcl_loss_and_gradients_match_official(case, hard_present):
    fx = _fx(case)
    mu, sigma, onehot, mask, prob = _inputs(fx)
    sample = _official_sample(fx, [0, 1, 2, 3], hard_present)
    loss_fn = PRCLLoss(num_queries=6, num_negatives=10, temperature=100.0, strong_threshold=0.8)
    loss = loss_fn(mu, sigma, onehot, mask, prob, sample=sample)
    assert_matches_official(loss, fx["loss"], what=f"{case} loss")
    g_mu, g_sigma = torch.autograd.grad(loss, [mu, sigma])
    assert_matches_official(g_mu, fx["grad_mu"], what=f"{case} d/dmu")
    assert_matches_official(g_sigma, fx["grad_sigma"], what=f"{case} d/dsigma")
    # the 1e-5 criterion given the same indices, on a float32 run
    loss32 = loss_fn(mu.detach().float(), sigma.detach().float(), onehot.float(), mask.float(), prob.float(),
                     sample=sample)  # fmt: skip
    assert abs(loss32.item() - fx["loss"].item()) <= 1e-5
    # the recorded draws are what last_sample holds after the replay
    assert [a is None for a in loss_fn.last_sample.anchors] == [not h for h in hard_present]


def test_prcl_loss_one_class_is_zero_like_official():
    fx = _fx("loss_one_class")
    assert not fx["has_grad_fn"].item()
    mu, sigma, onehot, mask, prob = _inputs(fx)
    official = PRCLLoss(6, 10, official_no_grad_zero=True)(mu, sigma, onehot, mask, prob)
    assert_matches_official(official, fx["loss"], what="1-class loss")
    assert official.grad_fn is None
    ours = PRCLLoss(6, 10)(mu, sigma, onehot, mask, prob)
    assert ours.item() == 0.0 and ours.grad_fn is not None
    g_mu, g_sigma = torch.autograd.grad(ours, [mu, sigma])
    assert g_mu.abs().sum() == 0 and g_sigma.abs().sum() == 0


def test_attention_threshold_loss_matches_official():
    fx = _fx("atl")
    pseudo = torch.where(fx["pseudo"] < 0, torch.full_like(fx["pseudo"], IGNORE), fx["pseudo"])
    out = attention_threshold_loss(fx["pred"], pseudo, fx["conf"], threshold=0.97)
    assert_matches_official(out, fx["out"], what="attention threshold loss")


def test_aspp_matches_official():
    fx = _fx("aspp")
    aspp = ASPP(4, (1, 2, 3), out_channels=8, dropout=0.0).double()
    aspp.load_state_dict(fx["state"], strict=True)
    aspp.train()
    assert_matches_official(aspp(fx["x"]), fx["train_out"], what="ASPP (train)")
    aspp.eval()
    assert_matches_official(aspp(fx["x"]), fx["eval_out"], what="ASPP (eval)")


def test_schedules_match_official():
    fx = _fx("sched")
    ramp = torch.tensor([prcl_weight(int(e)) for e in fx["epochs"]], dtype=torch.float64)
    assert_matches_official(ramp, fx["ramp"], what="PRCL weight rampdown")
    lrs = torch.tensor([poly_epoch_lr(3.2e-3, e) for e in range(201)], dtype=torch.float64)
    assert_matches_official(lrs, fx["poly_lr"], what="poly epoch lr")


def test_ema_matches_official():
    fx = _fx("ema")
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).double()
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).double()
    teacher.load_state_dict(fx["teacher_init"])
    for step, (s_state, t_state) in enumerate(zip(fx["students"], fx["teachers"], strict=True)):
        student.load_state_dict(s_state)
        ema_update_(teacher, student, step, alpha=0.99)
        assert_matches_official(teacher.state_dict(), t_state, what=f"EMA teacher after step {step}")


def _official_keys() -> dict[str, list[int]]:
    return json.loads(KEYS.read_text())


def test_state_dict_keys_order_shapes_and_counts_equal_official():
    ref = _official_keys()
    with torch.device("meta"):
        model = PRCLDeepLabV3Plus(num_classes=21)
        head = UncertaintyHead()
    renamed = checkpoint_filter_fn({k: torch.empty(v, device="meta") for k, v in ref["model"].items()})
    ours = model.state_dict()
    assert list(ours) == list(renamed)
    assert all(list(ours[k].shape) == list(renamed[k].shape) for k in ours)
    assert [(k, list(v.shape)) for k, v in head.state_dict().items()] == list(ref["uncer_head"].items())
    assert sum(p.numel() for p in model.parameters()) == 59_520_693
    assert sum(p.numel() for p in head.parameters()) == 143_874


def test_official_format_checkpoint_loads_strictly(tmp_path):
    # a small build (R18) written with the official key layout: backbone renamed to resnet_*, DDP-free
    small = {"num_classes": 3, "backbone": "resnet18", "aspp_channels": 16, "decoder_channels": 16,
             "representation_dim": 16}  # fmt: skip
    model = PRCLDeepLabV3Plus(**small)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    head = UncertaintyHead(model.feature_channels, 16)

    def official(sd):
        return {k.replace("backbone.", "resnet_", 1) if k.startswith("backbone.") else k: v for k, v in sd.items()}

    path = tmp_path / "best_model.pth"
    torch.save({"epoch": 3, "ema": official(ema.state_dict()), "model": official(model.state_dict()),
                "uncer_head": head.state_dict(), "optimizer": {}, "optimizer_uncer": {}}, path)  # fmt: skip
    loaded = load_prcl_checkpoint(str(path))
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(loaded["ema"], strict=True)
    assert torch.equal(fresh.ASPP.project[0].weight, ema.ASPP.project[0].weight)
    assert torch.equal(fresh.backbone.layer1[0].conv1.weight, ema.backbone.layer1[0].conv1.weight)
    fresh.load_state_dict(loaded["model"], strict=True)
    assert torch.equal(fresh.representation[3].weight, model.representation[3].weight)
    fresh_head = UncertaintyHead(model.feature_channels, 16)
    fresh_head.load_state_dict(loaded["uncer_head"], strict=True)
    assert torch.equal(fresh_head.fc1, head.fc1)
    with pytest.raises(ValueError, match="uncer_head"):
        torch.save({"model": {}}, tmp_path / "bad.pth")
        load_prcl_checkpoint(str(tmp_path / "bad.pth"))


def test_global_rng_draws_equal_official_for_the_first_class():
    """Anchors (torch.randint) and negative classes (multinomial = Categorical.sample) are the official draws."""
    fx = _fx("loss_normal")
    torch.manual_seed(11)  # the generator's seed of this case, then the same two draws of mu and sigma
    torch.randn(2, 8, 7, 6, dtype=torch.float64)
    torch.rand(2, 8, 7, 6, dtype=torch.float64)
    mu, sigma, onehot, mask, prob = _inputs(fx)
    loss_fn = PRCLLoss(6, 10)
    loss_fn(mu, sigma, onehot, mask, prob)
    assert torch.equal(loss_fn.last_sample.anchors[0], fx["anchors"][0])
    assert torch.equal(loss_fn.last_sample.negative_classes[0], fx["neg_classes"][0])
