"""Parity of tenfold's ScaleNet with the official luminolx/ScaleNet code (recording: tests/fixtures/scalenet/)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from parity import assert_float32_close, assert_matches_official

from tenfold.nas.scalenet import (
    ScaleNetSpace,
    ScaleNetSuperNet,
    check_basenet,
    official_flops,
    official_state_dict,
    s_softmax_loss,
    sample_subnet,
    scale_basenet,
    scaling_values,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "scalenet" / "official.pt"


@pytest.fixture(scope="module")
def official() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _inputs(dtype: torch.dtype) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = {r: torch.randn(4, 3, r, r, generator=g, dtype=torch.float64) for r in (16, 20, 24)}
    return {r: v.to(dtype) for r, v in x.items()}


def _tiny_net(official: dict, dtype: torch.dtype) -> ScaleNetSuperNet:
    """Our tiny super-supernet, initialised like the official one (seed 0), loaded through the checkpoint filter."""
    torch.manual_seed(0)
    net = ScaleNetSuperNet(ScaleNetSpace.tiny_spec())
    ckpt = {"step": 0, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    net.load_state_dict(official_state_dict(ckpt), strict=True)
    return net.to(dtype)


def _run(net: ScaleNetSuperNet, official: dict, dtype: torch.dtype) -> dict:
    """Same call sequence as the generator: 3 train calls of A, a 4th with loss/backward, B, C, eval, proxy."""
    x = _inputs(dtype)
    a, b, c = official["subnets"]
    out: dict = {}
    net.train()
    out["train_A_3calls"] = [net(x, a).detach() for _ in range(3)]
    net.zero_grad()
    net.set_subnet(a)
    logits = net(x, a)
    loss = s_softmax_loss(logits, official["labels"])
    loss.backward()
    out["train_A_call4_logits"], out["train_A_call4_loss"] = logits.detach(), loss.detach()
    out["grads"] = {k: p.grad for k, p in net.named_parameters() if p.grad is not None}
    out["train_B"], out["train_C"] = net(x, b).detach(), net(x, c).detach()
    net.eval()
    with torch.no_grad():
        out["eval_A_2calls"] = [net(x, a) for _ in range(2)]
        out["eval_C"] = net(x, c)
    net.reset_bn()
    net.train()
    with torch.no_grad():
        out["proxy_B_sum2"] = net(x, b) + net(x, b)
    return out


OUTPUT_KEYS = ["train_A_3calls", "train_A_call4_logits", "train_B", "train_C", "eval_A_2calls", "eval_C"]


def test_state_dict_keys_shapes_and_init_match_official(official):
    torch.manual_seed(0)
    sd = ScaleNetSuperNet(ScaleNetSpace.tiny_spec()).state_dict()
    assert list(sd) == official["tiny_keys"]
    assert [list(v.shape) for v in sd.values()] == official["tiny_shapes"]
    keys = official["tiny_init_float_keys"]
    assert_matches_official(torch.stack([sd[k].double().sum() for k in keys]), official["tiny_init_sum"], what="init")
    sumsq = torch.stack([sd[k].double().pow(2).sum() for k in keys])
    assert_matches_official(sumsq, official["tiny_init_sumsq"], what="init sum of squares")


def test_float64_forward_loss_and_gradients_match_official(official):
    assert {r: v.sum() for r, v in _inputs(torch.float64).items()} == official["x_sums"]
    ours = _run(_tiny_net(official, torch.float64), official, torch.float64)
    # the toggling: call 2 of the same subnet differs from call 1, call 3 equals call 1 (all counters back in phase)
    c1, c2, c3 = official["train_A_3calls"]
    assert (c1 - c2).abs().max() > 1e-4 and torch.equal(c1, c3)
    for key in [*OUTPUT_KEYS, "train_A_call4_loss", "proxy_B_sum2"]:
        assert_matches_official(ours[key], official[key], what=key)
    grads = ours["grads"]
    assert set(grads) == set(official["grads_sumsq"])
    assert_matches_official({k: grads[k] for k in official["grads_small"]}, official["grads_small"], what="grads")
    assert_matches_official({k: g.pow(2).sum() for k, g in grads.items()}, official["grads_sumsq"], what="|grad|^2")
    gen = torch.Generator().manual_seed(3)
    proj = {k: (g * torch.randn(g.shape, generator=gen, dtype=torch.float64)).sum() for k, g in grads.items()}
    assert_matches_official(proj, official["grads_proj"], what="grad projections")


def test_float32_forward_close_to_official(official):
    ours = _run(_tiny_net(official, torch.float32), official, torch.float32)
    # train-mode outputs only: in eval the untrained running stats (var ~1) shrink the activations layer by layer to
    # ~1e-5 of the train-mode scale, where float32 cancellation is no longer bounded by the per-layer rule
    for key in ["train_A_3calls", "train_A_call4_logits", "train_B", "train_C"]:
        assert_float32_close(ours[key], official[key], depth=40, what=f"{key} (float32)")


def test_sampler_matches_official_random_stream(official):
    paper, tiny = ScaleNetSpace.paper(), ScaleNetSpace.tiny_spec()
    rng = random.Random(2026)
    assert [sample_subnet(paper, rng) for _ in range(20)] == official["paper_samples_seed2026"]
    rng = random.Random(5)
    assert [sample_subnet(tiny, rng) for _ in range(50)] == official["tiny_samples_seed5"]
    rng = random.Random(7)
    draws = [sample_subnet(paper, rng) for _ in range(3000)]
    ops = torch.tensor([d[:-2] for d in draws[:500]], dtype=torch.int8)
    assert torch.equal(ops, official["paper_seed7_ops_first500"])
    assert torch.equal(torch.tensor([d[-2] for d in draws], dtype=torch.float64), official["paper_seed7_cm"])
    assert torch.equal(torch.tensor([d[-1] for d in draws], dtype=torch.int16), official["paper_seed7_r"])
    flops = torch.tensor([official_flops(paper, d) for d in draws[:200]])
    assert torch.equal(flops, official["paper_flops_samples200"])


def test_check_basenet_scaling_and_flops_match_official(official):
    paper = ScaleNetSpace.paper()
    bases = official["check_basenet_in"].tolist()
    assert torch.equal(
        torch.tensor([check_basenet(paper, b) for b in bases], dtype=torch.int8), official["check_basenet_out"]
    )
    strategy = official["generate_subnet_scaling"]
    scaled = [[scale_basenet(paper, b, *scaling_values(paper, s, strategy.get(s))) for s in range(4)] for b in bases]
    assert scaled == official["generate_subnet_out"]
    flops = torch.tensor([[official_flops(paper, e) for e in row] for row in scaled])
    assert torch.equal(flops, official["paper_flops_generated"])
    tiny = ScaleNetSpace.tiny_spec()
    assert torch.equal(
        torch.tensor([official_flops(tiny, s) for s in official["subnets"]]), official["tiny_flops_subnets"]
    )
    samples = official["tiny_samples_seed5"]
    assert torch.equal(torch.tensor([official_flops(tiny, s) for s in samples]), official["tiny_flops_samples"])


def test_paper_supernet_size_matches_official(official):
    paper = ScaleNetSpace.paper()
    with torch.device("meta"):
        net = ScaleNetSuperNet(paper)
    assert sum(p.numel() for p in net.parameters()) == official["paper_num_params"] == 320_014_229
    assert len(net.state_dict()) == official["paper_state_dict_len"] == 2594
    assert [list(d) for d in paper.depth_stage] == official["paper_depth_stage"]
    assert paper.num_blocks == 43
    sd = net.state_dict()
    assert sd["net.backbone_stage2_0.1.conv1.weight"].shape == (258, 43, 1, 1)
    assert sd["net.backbone_conv_out_0.0.conv.weight"].shape == (1280, 845, 1, 1)
    assert sd["net.head_linear1.0.module.0.weight"].shape == (1000, 1280)


def test_grid_search_ranking_matches_official():
    """Official ``grid_search_scaling`` rankings (stub proxy, paper space; fixture README) equal ``grid_search``."""
    import json

    from tenfold.nas.scalenet_search import grid_search

    rec = json.loads((FIXTURE.parent / "grid_official.json").read_text())
    paper = ScaleNetSpace.paper()

    def proxy(e):  # the recording's stub score of a scaled encoding
        return float(sum(1 for o in e[:-2] if o > 0) + 2 * round(e[-2], 2) + (e[-1] % 48) / 16)

    assert len(rec["cases"]) == 18
    for case in rec["cases"]:
        base = case["base"]
        assert official_flops(paper, [*base, 1.0, 224]) == case["base_flops"]
        ours = [list(idx) for _, idx in grid_search(paper, base, case["stage"], proxy)]
        assert ours == case["ranking"], (case["stage"], case["base_flops"])
    assert any(abs(c["base_flops"] - 306e6) > 50e6 for c in rec["cases"])  # the base-penalty rule is exercised
