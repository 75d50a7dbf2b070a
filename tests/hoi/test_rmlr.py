"""RmLR: reduction to the UPT baseline with every part off, each part's effect and gradients, the loss terms."""

import math

import pytest
import torch
import torch.nn.functional as F

from tenfold.data.synthetic.hoi import make_hoi
from tenfold.hoi.detections import noisy_gt_detections
from tenfold.hoi.rmlr import (
    ReMining,
    RmLR,
    TextKnowledge,
    hoi_targets,
    knowledge_transfer_loss,
    sentence_alignment_loss,
    soft_target_cross_entropy,
    word_alignment_loss,
)
from tenfold.hoi.upt import InteractionHead, UPTBaseline

K, NO, D_T = 6, 5, 12
CORR = [[0, 1, 2]] + [list(range(K))] * (NO - 1)
SMALL = dict(remine_size=16, remine_heads=4, roi_size=2, spatial_scale=1 / 8, reason_heads=4)


def make_head() -> InteractionHead:
    return InteractionHead(K, CORR, hidden_state_size=16, representation_size=16, num_channels=8)


def make_text() -> TextKnowledge:
    g = torch.Generator().manual_seed(1)
    hois = [(v, o) for o, verbs in enumerate(CORR) for v in verbs]
    return TextKnowledge(
        F.normalize(torch.randn(len(hois), D_T, generator=g), dim=-1),
        F.normalize(torch.randn(K, D_T, generator=g), dim=-1),
        F.normalize(torch.randn(NO, D_T, generator=g), dim=-1),
        torch.tensor([v for v, _ in hois]),
        torch.tensor([o for _, o in hois]),
    )


@pytest.fixture(scope="module")
def batch():
    _, targets = make_hoi(3, num_objects=NO - 1, num_verbs=K, seed=0)
    dets = noisy_gt_detections(targets, image_size=64, seed=0, hidden_size=16, num_labels=NO)
    feats = torch.randn(3, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    sizes = torch.full((3, 2), 64.0)
    assert sum(len(t["hoi"]) for t in targets) > 0
    return feats, sizes, dets, targets


def pair_models(**parts):
    torch.manual_seed(0)
    base = UPTBaseline(make_head())
    model = RmLR(make_head(), text=make_text(), **SMALL, **parts)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(not k.startswith("interaction_head.") for k in missing)
    return base, model


def loss_of(model, batch, seed=3):
    torch.manual_seed(seed)  # identical dropout draws
    return model.train()(*batch)


def test_all_parts_off_equals_baseline_exactly(batch):
    base, model = pair_models()
    assert model.state_dict().keys() == base.state_dict().keys()
    base.eval(), model.eval()
    for a, b in zip(base(*batch[:3]), model(*batch[:3]), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert torch.equal(loss_of(base, batch), loss_of(model, batch))
    base.eval(), model.eval()
    props = model.proposals(batch[2])
    pairs = model.forward_pairs(*batch[:2], props)
    assert torch.equal(pairs.output.logits, base.interaction_head(*batch[:2], props).logits)


@pytest.mark.parametrize(
    ("part", "changes_output", "param"),
    [
        ("remine", True, "remining.query_proj.weight"),
        ("align", False, "projection.sentence.0.weight"),
        ("transfer", False, "projection.verb.2.weight"),
        ("reason", True, "reasoning.key.weight"),
    ],
)
def test_each_part_changes_result_and_gets_gradients(batch, part, changes_output, param):
    base, model = pair_models(**{part: True})
    base.eval(), model.eval()
    s_base = torch.cat([d.scores for d in base(*batch[:3])])
    s_model = torch.cat([d.scores for d in model(*batch[:3])])
    assert torch.equal(s_base, s_model) != changes_output
    lb, lm = loss_of(base, batch), loss_of(model, batch)
    assert not torch.equal(lb, lm)
    lm.backward()
    grad = dict(model.named_parameters())[param].grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.interaction_head.box_pair_predictor.weight.grad.abs().sum() > 0


def test_loss_terms_and_weights(batch):
    _, model = pair_models(align=True, transfer=True, sentence_alignment_weight=0.5, word_transfer_weight=2.0)
    props = model.proposals(batch[2])
    torch.manual_seed(3)
    terms = model.train().loss_terms(model.forward_pairs(*batch[:2], props), props, batch[3])
    assert all(float(t.detach()) > 0 for t in terms[1:])
    expected = (
        terms.focal
        + 0.5 * terms.sentence_alignment
        + terms.word_alignment
        + terms.sentence_transfer
        + 2.0 * terms.word_transfer
    )
    torch.testing.assert_close(terms.total, expected)
    _, only_align = pair_models(align=True)
    torch.manual_seed(3)
    t2 = only_align.train().loss_terms(only_align.forward_pairs(*batch[:2], props), props, batch[3])
    assert float(t2.sentence_transfer) == 0 and float(t2.word_transfer) == 0


def test_hoi_targets_are_multi_positive():
    # HOI classes: (verb, object) = (0, 1), (1, 1), (0, 2), (2, 1)
    hoi_verb, hoi_object = torch.tensor([0, 1, 0, 2]), torch.tensor([1, 1, 2, 1])
    labels = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    objects = torch.tensor([1, 2, 1])
    expected = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(hoi_targets(labels, objects, hoi_verb, hoi_object), expected)


def test_sentence_alignment_soft_targets_by_hand():
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    pos = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    lse0 = math.log(sum(math.exp(x) for x in (2.0, 1.0, 0.0, -1.0)))
    lse1 = math.log(3 + math.exp(3.0))
    expected = (0.5 * (lse0 - 2.0) + 0.5 * (lse0 - 1.0) + (lse1 - 3.0)) / 2  # row 2 has no positive: excluded
    assert sentence_alignment_loss(z, pos).item() == pytest.approx(expected, rel=1e-6)
    # known-object mask: only the first two sentences compete in row 0
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    lse0m = math.log(math.exp(2.0) + math.exp(1.0))
    expected_m = (0.5 * (lse0m - 2.0) + 0.5 * (lse0m - 1.0) + (lse1 - 3.0)) / 2
    assert sentence_alignment_loss(z, pos, mask).item() == pytest.approx(expected_m, rel=1e-6)


def test_second_true_sentence_is_not_a_negative():
    pos = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    low, high = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[2.0, 2.0, 0.0]])
    # multi-positive: raising the second true sentence lowers the loss; one-hot CE on the first would raise it
    assert sentence_alignment_loss(high, pos) < sentence_alignment_loss(low, pos)
    assert F.cross_entropy(high, torch.tensor([0])) > F.cross_entropy(low, torch.tensor([0]))


def test_word_alignment_and_transfer_by_hand():
    vl = torch.tensor([[1.0, 0.0, 0.0]])
    y = torch.tensor([[0, 1, 1]])
    ol, o = torch.tensor([[0.0, 2.0]]), torch.tensor([1])
    lse_v, lse_o = math.log(math.e + 2), math.log(1 + math.exp(2.0))
    expected = 0.5 * lse_v + 0.5 * lse_v + (lse_o - 2.0)
    assert word_alignment_loss(vl, y, ol, o).item() == pytest.approx(expected, rel=1e-6)
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    e = torch.tensor([[1.0, 0.0]])
    # mean of rows 0 and 1 -> (0.5, 0.5) -> cos with (1, 0) = 1/sqrt(2)
    got = knowledge_transfer_loss(e, torch.tensor([[1, 1, 0]]), table)
    assert got.item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)


def test_soft_target_ce_rejects_rows_without_positive_and_shapes():
    with pytest.raises(ValueError, match="at least one positive"):
        soft_target_cross_entropy(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="must match"):
        soft_target_cross_entropy(torch.zeros(1, 3), torch.zeros(1, 2))


def test_text_parts_need_matching_text():
    with pytest.raises(ValueError, match="align=True needs text"):
        RmLR(make_head(), align=True)
    t = make_text()
    bad = TextKnowledge(t.sentences, t.verbs[:3], t.objects, t.hoi_verb.clamp(max=2), t.hoi_object)
    with pytest.raises(ValueError, match="text.verbs has 3 rows"):
        RmLR(make_head(), text=bad, reason=True)
    with pytest.raises(ValueError, match="hoi_object values must lie in"):
        TextKnowledge(t.sentences, t.verbs, t.objects, t.hoi_verb, t.hoi_object + NO)
    with pytest.raises(ValueError, match="text dimensions differ"):
        TextKnowledge(t.sentences, t.verbs[:, :4], t.objects, t.hoi_verb, t.hoi_object)


def test_centered_text_is_unit_and_zero_mean_direction():
    c = make_text().centered()
    torch.testing.assert_close(c.sentences.norm(dim=-1), torch.ones(len(c.sentences)))
    raw = make_text().sentences
    expected = F.normalize(raw - raw.mean(0), dim=-1)
    torch.testing.assert_close(c.sentences, expected)


def test_full_model_without_pairs_or_matches(batch):
    feats, sizes, dets, targets = batch
    no_human = [d.index(d.labels != 0) for d in dets[:2]]  # no human: no pairs at all
    empty = [{"boxes": t["boxes"], "hoi": t["hoi"][:0]} for t in targets[:2]]
    _, model = pair_models(remine=True, align=True, transfer=True, reason=True)
    torch.manual_seed(0)
    assert [len(d.scores) for d in model.eval()(feats[:2], sizes[:2], no_human)] == [0, 0]
    torch.manual_seed(0)
    props = model.proposals(dets[:2])
    terms = model.train().loss_terms(model.forward_pairs(feats[:2], sizes[:2], props), props, empty)
    assert all(float(t.detach()) == 0 for t in terms[2:])  # no matched pair: no alignment/transfer
    assert torch.isfinite(terms.total)
    terms.total.backward()


def test_remining_reads_only_its_boxes_in_its_image():
    torch.manual_seed(0)
    rm = ReMining(4, 8, hidden_size=8, num_layers=1, num_heads=2, roi_size=2, spatial_scale=1 / 8).eval()
    feats = torch.randn(2, 4, 8, 8)
    # pair 0 in image 0, boxes within the top-left 32 x 32 pixels (cells 0..3); pair 1 in image 1
    bh = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 16.0, 16.0]])
    bo = torch.tensor([[16.0, 16.0, 24.0, 24.0], [16.0, 16.0, 24.0, 24.0]])
    tokens = torch.randn(2, 8)
    ref = rm(feats, bh, bo, torch.tensor([0, 1]), tokens)
    far = feats.clone()
    far[0, :, 5:, :] += 10.0  # rows below the boxes of image 0
    far[0, :, :, 5:] += 10.0
    torch.testing.assert_close(rm(far, bh, bo, torch.tensor([0, 1]), tokens), ref)
    near = feats.clone()
    near[0, :, 2, 2] += 10.0  # inside the union box of image 0
    out = rm(near, bh, bo, torch.tensor([0, 1]), tokens)
    assert not torch.allclose(out[0], ref[0])
    torch.testing.assert_close(out[1], ref[1])
