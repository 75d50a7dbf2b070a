"""UPT-style baseline: parity with the official fredzzhang/upt modules and behaviour of the pieces."""

import json
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from tenfold.hoi.upt import (
    Detections,
    InteractionHead,
    UPTBaseline,
    associate_with_ground_truth,
    binary_focal_loss_with_logits,
    checkpoint_filter_fn,
    compute_spatial_encodings,
    correspondence_mask,
    interaction_loss,
    pair_labels,
    postprocess,
    prepare_region_proposals,
)

FIX = Path(__file__).parents[1] / "fixtures" / "upt"
CORR = [[0, 1, 2], [1, 3], [0, 2, 4, 5], [5], [0, 1, 2, 3, 4, 5]]
K, B = 6, 4


@pytest.fixture(scope="module")
def fx() -> dict:
    return torch.load(FIX / "upt_parity.pt", weights_only=True)


def seeded_weights(module: nn.Module) -> None:
    """The generator's weight rule (README): per key, torch.rand seeded with crc32(key), scaled by fan-in."""
    sd = {}
    for k, v in sorted(module.state_dict().items()):
        g = torch.Generator().manual_seed(zlib.crc32(k.encode()))
        u = torch.rand(v.shape, generator=g, dtype=torch.float64) * 2 - 1
        if v.dim() >= 2:
            sd[k] = u * v.shape[-1] ** -0.5
        elif k.endswith("norm.weight"):
            sd[k] = 1 + 0.1 * u
        else:
            sd[k] = 0.1 * u
    module.load_state_dict(sd, strict=True)


@pytest.fixture(scope="module")
def head() -> InteractionHead:
    h = InteractionHead(K, CORR, hidden_state_size=256, representation_size=32, num_channels=24).double()
    seeded_weights(h)
    return h


def raw_detections(fx: dict) -> list[Detections]:
    return [
        Detections(fx[f"det{b}_boxes"], fx[f"det{b}_scores"], fx[f"det{b}_labels"], fx[f"det{b}_hidden"])
        for b in range(B)
    ]


def test_spatial_encodings_match_official(fx):
    out = compute_spatial_encodings(fx["se_boxes_1"], fx["se_boxes_2"], fx["se_shape"])
    torch.testing.assert_close(out, fx["se_ref"], rtol=0, atol=1e-12)


def test_focal_loss_matches_official(fx):
    out = binary_focal_loss_with_logits(fx["fl_x"], fx["fl_y"], reduction="none")
    torch.testing.assert_close(out, fx["fl_ref_g02"], rtol=0, atol=1e-14)
    out = binary_focal_loss_with_logits(fx["fl_x"], fx["fl_y"], alpha=0.25, gamma=2.0, reduction="none")
    torch.testing.assert_close(out, fx["fl_ref_g20"], rtol=0, atol=1e-14)
    assert binary_focal_loss_with_logits(fx["fl_x"], fx["fl_y"]).item() == pytest.approx(
        fx["fl_ref_g02"].sum().item(), abs=1e-12
    )


def test_region_proposals_match_official(fx):
    props = prepare_region_proposals(raw_detections(fx))
    for b, p in enumerate(props):
        torch.testing.assert_close(p.boxes, fx[f"prop{b}_boxes"], rtol=0, atol=0)
        torch.testing.assert_close(p.scores, fx[f"prop{b}_scores"], rtol=0, atol=0)
        torch.testing.assert_close(p.labels, fx[f"prop{b}_labels"], rtol=0, atol=0)
        torch.testing.assert_close(p.hidden_states.sum(1), fx[f"prop{b}_hidden_sum"], rtol=0, atol=1e-12)


def test_head_eval_and_scores_match_official(fx, head):
    props = prepare_region_proposals(raw_detections(fx))
    head.eval()
    with torch.no_grad():
        out = head(fx["features"], fx["image_sizes"], props)
    assert out.num_pairs == fx["num_pairs"].tolist()
    torch.testing.assert_close(out.pair_h, fx["pair_h"], rtol=0, atol=0)
    torch.testing.assert_close(out.pair_o, fx["pair_o"], rtol=0, atol=0)
    torch.testing.assert_close(out.objects, fx["pair_objects"], rtol=0, atol=0)
    torch.testing.assert_close(out.logits, fx["eval_logits"], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.prior, fx["eval_prior"], rtol=0, atol=1e-14)
    dets = postprocess(out, props)
    for b, d in enumerate(dets):
        torch.testing.assert_close(d.pairing, fx[f"post{b}_pairing"], rtol=0, atol=0)
        torch.testing.assert_close(d.labels, fx[f"post{b}_labels"], rtol=0, atol=0)
        torch.testing.assert_close(d.objects, fx[f"post{b}_objects"], rtol=0, atol=0)
        torch.testing.assert_close(d.scores, fx[f"post{b}_scores"], rtol=0, atol=1e-12)


def test_head_float32_within_1e5(fx, head):
    props = [
        Detections(p.boxes.float(), p.scores.float(), p.labels, p.hidden_states.float())
        for p in prepare_region_proposals(raw_detections(fx))
    ]
    h32 = InteractionHead(K, CORR, hidden_state_size=256, representation_size=32, num_channels=24)
    h32.load_state_dict({k: v.float() for k, v in head.state_dict().items()})
    h32.eval()
    with torch.no_grad():
        out = h32(fx["features"].float(), fx["image_sizes"].float(), props)
    torch.testing.assert_close(out.logits.double(), fx["eval_logits"], rtol=0, atol=1e-5)


def test_training_labels_and_loss_match_official(fx, head):
    props = prepare_region_proposals(raw_detections(fx))
    head.train()
    for m in head.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    out = head(fx["features"], fx["image_sizes"], props)
    torch.testing.assert_close(out.logits.detach(), fx["train_logits"], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.prior.detach(), fx["train_prior"], rtol=0, atol=1e-14)
    labels = torch.cat(
        [
            associate_with_ground_truth(
                p.boxes[h], p.boxes[o], fx[f"gt{b}_boxes_h"], fx[f"gt{b}_boxes_o"], fx[f"gt{b}_verbs"], K
            )
            for b, (p, h, o) in enumerate(
                zip(props, out.pair_h.split(out.num_pairs), out.pair_o.split(out.num_pairs), strict=True)
            )
        ]
    )
    torch.testing.assert_close(labels, fx["train_labels"], rtol=0, atol=0)
    loss = interaction_loss(out.logits, out.prior, labels)
    assert loss.item() == pytest.approx(fx["train_loss"].item(), abs=1e-12)
    loss.backward()
    assert head.coop_layer.mod_enc[0].attn[3].weight.grad.abs().sum() > 0
    head.zero_grad()
    head.eval()


def test_state_dict_keys_equal_official_hicodet_head():
    ref = json.loads((FIX / "head_keys_hicodet.json").read_text())
    h = InteractionHead(117, [[] for _ in range(80)])
    assert {k: list(v.shape) for k, v in h.state_dict().items()} == ref
    assert sum(p.numel() for p in h.parameters()) == 13_240_837
    ckpt = {"model_state_dict": {"detector.query_embed.weight": torch.zeros(100, 256)}}
    ckpt["model_state_dict"].update({f"interaction_head.{k}": torch.zeros(s) for k, s in ref.items()})
    h.load_state_dict(checkpoint_filter_fn(ckpt), strict=True)


def test_checkpoint_filter_rejects_foreign_dict():
    with pytest.raises(ValueError, match="interaction_head"):
        checkpoint_filter_fn({"model": {"backbone.weight": torch.zeros(1)}})


def test_no_pairs_without_humans_or_partner(head):
    head.eval()
    hs = torch.randn(2, 256, dtype=torch.float64)
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]], dtype=torch.float64)
    props = [
        Detections(boxes, torch.tensor([0.9, 0.8], dtype=torch.float64), torch.tensor([1, 2]), hs),
        Detections(boxes[:1], torch.tensor([0.9], dtype=torch.float64), torch.tensor([0]), hs[:1]),
    ]
    out = head(torch.randn(2, 24, 2, 2, dtype=torch.float64), torch.tensor([[32.0, 32], [32, 32]]), props)
    assert out.logits.shape == (0, K) and out.num_pairs == [0, 0]
    assert [len(d.scores) for d in postprocess(out, props)] == [0, 0]


def test_head_requires_humans_first(head):
    hs = torch.randn(2, 256, dtype=torch.float64)
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]], dtype=torch.float64)
    props = [Detections(boxes, torch.tensor([0.9, 0.8], dtype=torch.float64), torch.tensor([3, 0]), hs)]
    with pytest.raises(ValueError, match="humans"):
        head(torch.randn(1, 24, 2, 2, dtype=torch.float64), torch.tensor([[32.0, 32]]), props)


def test_prior_masks_invalid_verbs_and_uses_power():
    h = InteractionHead(K, CORR, representation_size=32, num_channels=8).eval()
    prior = h.compute_prior_scores(torch.tensor([0.5]), torch.tensor([0.8]), torch.tensor([1]))
    expected = torch.zeros(2, 1, K)
    expected[0, 0, [1, 3]] = 0.5**2.8
    expected[1, 0, [1, 3]] = 0.8**2.8
    torch.testing.assert_close(prior, expected)
    h.train()
    assert h.compute_prior_scores(torch.tensor([0.5]), torch.tensor([0.8]), torch.tensor([1]))[0, 0, 1] == 0.5
    with pytest.raises(ValueError, match="object labels"):
        h.compute_prior_scores(torch.tensor([0.5]), torch.tensor([0.8]), torch.tensor([7]))


def test_proposal_limits_and_threshold():
    # 5 humans, scores 0.9..0.5; 2 objects below threshold; boxes far apart (no NMS suppression).
    boxes = torch.tensor([[i * 20.0, 0, i * 20 + 10, 10] for i in range(7)])
    det = Detections(
        boxes, torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.05]), torch.tensor([0, 0, 0, 0, 0, 3, 4]), torch.eye(7)
    )
    (p,) = prepare_region_proposals([det], max_instances=4, min_instances=2)
    assert p.labels.tolist() == [0, 0, 0, 0, 3, 4]  # top-4 humans; both objects kept although below 0.2
    assert p.hidden_states.argmax(1).tolist() == [0, 1, 2, 3, 5, 6]
    with pytest.raises(ValueError, match="min_instances"):
        prepare_region_proposals([det], min_instances=5, max_instances=4)


def test_detections_validation():
    with pytest.raises(ValueError, match="scores"):
        Detections(torch.zeros(2, 4), torch.zeros(3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="labels must be an integer"):
        Detections(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="boxes"):
        Detections(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, dtype=torch.long), torch.zeros(2, 8))


def test_loss_rejects_bad_shapes_and_zero_positives():
    with pytest.raises(ValueError, match="same shape"):
        binary_focal_loss_with_logits(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="prior"):
        interaction_loss(torch.zeros(2, 3), torch.zeros(2, 2, 4), torch.zeros(2, 3))
    loss = interaction_loss(torch.zeros(2, 3), torch.full((2, 2, 3), 0.5), torch.zeros(2, 3))
    assert torch.isfinite(loss)


def test_correspondence_mask_rejects_out_of_range():
    assert correspondence_mask([[0, 2], []], 3).tolist() == [[True, False, True], [False, False, False]]
    with pytest.raises(ValueError, match="verb 5"):
        correspondence_mask([[5]], 3)


def test_pair_labels_from_builtin_layout(head):
    boxes = torch.tensor([[0.0, 0, 10, 20], [8, 8, 14, 14], [30, 30, 40, 40]], dtype=torch.float64)
    props = [
        Detections(
            boxes,
            torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64),
            torch.tensor([0, 1, 2]),
            torch.randn(3, 256, dtype=torch.float64),
        )
    ]
    head.eval()
    out = head(torch.randn(1, 24, 2, 2, dtype=torch.float64), torch.tensor([[64.0, 64]]), props)
    assert out.pair_h.tolist() == [0, 0] and out.pair_o.tolist() == [1, 2]
    target = {"boxes": boxes[[0, 2]] + 0.5, "hoi": torch.tensor([[0, 1, 4], [0, 1, 2]])}
    labels = pair_labels(out, props, [target])
    expected = torch.zeros(2, K, dtype=torch.float64)
    expected[1, [2, 4]] = 1  # only pair (0, 2) overlaps the GT pair; it takes both GT verbs
    torch.testing.assert_close(labels, expected)
    with pytest.raises(ValueError, match="2 targets for 1 images"):
        pair_labels(out, props, [target, target])


def test_baseline_model_reproduces_official_loss_and_scores(fx, head):
    # dropout_prob=0 makes training mode deterministic, as the recording (dropout modules in eval mode).
    h = InteractionHead(K, CORR, hidden_state_size=256, representation_size=32, num_channels=24, dropout_prob=0.0)
    h.double().load_state_dict(head.state_dict())
    model = UPTBaseline(h)
    targets = []
    for b in range(B):
        gh, go, verbs = fx[f"gt{b}_boxes_h"], fx[f"gt{b}_boxes_o"], fx[f"gt{b}_verbs"]
        g = len(verbs)
        hoi = torch.stack([torch.arange(g), torch.arange(g) + g, verbs], dim=1)
        targets.append({"boxes": torch.cat([gh, go]), "hoi": hoi})
    model.train()
    loss = model(fx["features"], fx["image_sizes"], raw_detections(fx), targets)
    assert loss.item() == pytest.approx(fx["train_loss"].item(), abs=1e-12)
    model.eval()
    with torch.no_grad():
        dets = model(fx["features"], fx["image_sizes"], raw_detections(fx))
    torch.testing.assert_close(dets[3].scores, fx["post3_scores"], rtol=0, atol=1e-12)
