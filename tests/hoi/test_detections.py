"""Detector-stage helpers: simulated detections on built-in scenes and detection files."""

import json

import pytest
import torch
from torchvision.ops import box_iou

from tenfold.data.synthetic.hoi import make_hoi
from tenfold.hoi.detections import load_detections, noisy_gt_detections, save_detections
from tenfold.hoi.upt import Detections, prepare_region_proposals


@pytest.fixture(scope="module")
def targets():
    return make_hoi(6, num_objects=4, num_verbs=3, seed=1)[1]


def test_noisy_gt_detections_follow_ground_truth(targets):
    dets = noisy_gt_detections(targets, image_size=64, seed=3, num_false_positives=2, hidden_size=16)
    for t, d in zip(targets, dets, strict=True):
        m = len(t["boxes"])
        assert len(d) == m + 2 and d.hidden_states.shape == (m + 2, 16)
        assert torch.equal(d.labels[:m], t["labels"])
        iou = box_iou(d.boxes[:m], t["boxes"]).diagonal()
        assert bool((iou > 0.6).all()), iou  # 5% jitter keeps each box near its GT
        assert bool((d.scores[:m] >= 0.6).all()) and bool((d.scores[m:] <= 0.4).all())
        assert bool((d.boxes >= 0).all()) and bool((d.boxes <= 64).all())
        assert bool((d.boxes[:, 2:] > d.boxes[:, :2]).all())
    # Without feature noise, features are the label's embedding: equal labels <=> equal features.
    flat = noisy_gt_detections(targets, image_size=64, seed=3, feature_noise=0.0, hidden_size=16)
    labels = torch.cat([d.labels for d in flat])
    feats = torch.cat([d.hidden_states for d in flat])
    same_label = labels.unsqueeze(0) == labels.unsqueeze(1)
    same_feat = (feats.unsqueeze(0) == feats.unsqueeze(1)).all(-1)
    assert torch.equal(same_label, same_feat)


def test_noisy_gt_detections_are_seeded(targets):
    a = noisy_gt_detections(targets, image_size=64, seed=5)
    b = noisy_gt_detections(targets, image_size=64, seed=5)
    c = noisy_gt_detections(targets, image_size=64, seed=6)
    assert all(
        torch.equal(x.boxes, y.boxes) and torch.equal(x.hidden_states, y.hidden_states)
        for x, y in zip(a, b, strict=True)
    )
    assert not torch.equal(a[0].boxes, c[0].boxes)
    # Usable by the proposal filter: GT humans (label 0) come out first.
    props = prepare_region_proposals(a)
    assert all(bool((p.labels[: int((p.labels == 0).sum())] == 0).all()) for p in props)


def test_noisy_gt_detections_reject_bad_arguments(targets):
    with pytest.raises(ValueError, match="box_noise"):
        noisy_gt_detections(targets, image_size=64, box_noise=-1)
    with pytest.raises(ValueError, match="score_range"):
        noisy_gt_detections(targets, image_size=64, score_range=(0.5, 1.5))
    with pytest.raises(ValueError, match="num_labels"):
        noisy_gt_detections(targets, image_size=64, num_labels=2)


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_round_trip(tmp_path, suffix):
    dets = [
        Detections(
            torch.tensor([[0.0, 1, 5, 6], [2, 2, 9, 9]]),
            torch.tensor([0.9, 0.25]),
            torch.tensor([0, 7]),
            torch.arange(6.0).view(2, 3),
        ),
        Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 3)),
    ]
    path = tmp_path / f"dets{suffix}"
    save_detections(path, dets)
    back = load_detections(path)
    assert len(back) == 2 and len(back[1]) == 0
    for a, b in zip(dets, back, strict=True):
        torch.testing.assert_close(b.boxes, a.boxes)
        torch.testing.assert_close(b.scores, a.scores)
        assert torch.equal(b.labels, a.labels)
    torch.testing.assert_close(back[0].hidden_states, dets[0].hidden_states)
    with pytest.raises(FileExistsError, match="refusing"):
        save_detections(path, dets)


def test_missing_hidden_states_need_hidden_size(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"images": [{"boxes": [[0, 0, 4, 4]], "scores": [0.5], "labels": [1]}]}))
    with pytest.raises(ValueError, match="hidden_states"):
        load_detections(path)
    (d,) = load_detections(path, hidden_size=8)
    assert d.hidden_states.shape == (1, 8) and d.labels.tolist() == [1]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([1, 2], "'images' list"),
        ({"images": [{"boxes": [[0, 0, 4, 4]], "scores": [0.5]}]}, r"images\[0\] lacks \['labels'\]"),
        ({"images": [{"boxes": [[0, 0, 4]], "scores": [0.5], "labels": [1]}]}, r"images\[0\].*boxes must have shape"),
        ({"images": [{"boxes": [[0, 0, 4, 4]], "scores": [0.5, 0.2], "labels": [1]}]}, "scores must have shape"),
        ({"images": [{"boxes": [[0, 0, 4, 4]], "scores": [1.5], "labels": [1]}]}, r"scores must lie in \[0, 1\]"),
        ({"images": [{"boxes": [[0, 0, 4, 4]], "scores": [0.5], "labels": [1.5]}]}, "labels must be integers"),
        ({"images": [{"boxes": [[5, 0, 4, 4]], "scores": [0.5], "labels": [1]}]}, "x2 >= x1"),
        ({"images": [{"boxes": "abc", "scores": [0.5], "labels": [1]}]}, r"images\[0\].boxes: cannot be read"),
    ],
)
def test_malformed_json_is_named(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        load_detections(path, hidden_size=4)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_detections(tmp_path / "nope.json")
    (tmp_path / "x.txt").write_text("{}")
    with pytest.raises(ValueError, match="unknown suffix '.txt'"):
        load_detections(tmp_path / "x.txt")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_detections(tmp_path / "x.json")
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="weights_only"):
        load_detections(tmp_path / "x.pt")
