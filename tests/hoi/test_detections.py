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


# ---------------------------------------------------------------------------------------------------------------
# torchvision detector stage
# ---------------------------------------------------------------------------------------------------------------


def _detector(**kw):
    from tenfold.hoi.detections import TorchvisionDetector

    torch.manual_seed(0)
    return TorchvisionDetector(min_size=64, max_size=96, box_score_thresh=0.0, detections_per_img=12, **kw)


def _favour(det, category: int) -> None:
    """Make the box classifier predict ``category`` for every proposal (random weights otherwise)."""
    cls = det.net.roi_heads.box_predictor.cls_score
    with torch.no_grad():
        cls.weight.zero_()
        cls.bias.zero_()
        cls.bias[category] = 10.0


def test_torchvision_detector_shapes_label_mapping_and_determinism(tmp_path):
    from tenfold.hoi.detections import COCO_CATEGORY_IDS, coco_category_to_label

    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
    table = coco_category_to_label()
    assert table[1] == 0 and table[90] == 79 and table[12] == -1 and table[0] == -1
    det = _detector()
    images = [torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0)), torch.rand(3, 64, 40)]
    for category, label in ((1, 0), (90, 79), (44, 39)):
        _favour(det, category)
        out = det(images)
        assert len(out) == 2
        for d, img in zip(out, images, strict=True):
            assert len(d) > 0 and d.hidden_states.shape == (len(d), 1024)
            assert (d.labels == label).all()
            assert (d.boxes[:, 2] <= img.shape[-1] + 1e-4).all() and (d.boxes[:, 3] <= img.shape[-2] + 1e-4).all()
            assert ((d.scores >= 0) & (d.scores <= 1)).all()
    again = det(images)
    assert all(torch.equal(a.boxes, b.boxes) and torch.equal(a.hidden_states, b.hidden_states)
               for a, b in zip(out, again, strict=True))  # fmt: skip
    _favour(det, 12)  # an id outside the 80 classes: every top detection is dropped
    assert all(len(d) == 0 for d in det(images))
    # local weights load strictly; nothing downloads
    path = tmp_path / "frcnn.pth"
    torch.save(det.net.state_dict(), path)
    loaded = _detector(weights=str(path))
    pairs = zip(loaded.net.state_dict().values(), det.net.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="fasterrcnn_resnet50_fpn"):
        _detector(weights=str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError):
        _detector(weights=str(tmp_path / "none.pth"))
    assert not any(p.requires_grad for p in det.parameters())


def _task(**kw):
    from tenfold.hoi.task import HOITask

    return HOITask(
        hidden_state_size=kw.pop("hidden_state_size", 16), representation_size=16, text_encoder="random-16",
        text_cache_dir=None, **kw,
    )  # fmt: skip


def test_fasterrcnn_detector_stage_feeds_the_head_when_the_batch_has_no_detections():
    from tenfold.hoi.data import HOIItem, HOIVocabularyInfo
    from tenfold.hoi.text import HOIVocabulary

    info = HOIVocabularyInfo(
        HOIVocabulary.from_lists(["hold"], [f"o{i}" for i in range(80)], [(0, o) for o in range(1, 80)])
    )
    torch.manual_seed(0)
    kw = dict(min_size=64, max_size=96, box_score_thresh=0.0, detections_per_img=10)
    from tenfold.hoi.data import hoi_collate
    from tenfold.hoi.upt import HOIDetections

    task = _task(detector="fasterrcnn", detector_kwargs=kw, hidden_state_size=1024, min_instances=1)
    task.build(info)
    task.train()
    assert not task.detector.training and task.model.training  # the detector stays frozen in eval mode
    assert not any(id(p) in {id(q) for q in task.trainable_modules().parameters()} for p in task.detector.parameters())
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "hoi": torch.zeros(0, 3).long()}
    images = [torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    batch = hoi_collate([HOIItem(img, target, None, i) for i, img in enumerate(images)])
    _, dets = task.features_and_detections(batch)
    assert [len(d) for d in dets] == [len(d) for d in task.detector(images)] and dets[0].hidden_states.shape[1] == 1024
    task.eval()
    out = task(batch)
    assert len(out) == 2 and all(isinstance(o, HOIDetections) for o in out)
    with pytest.raises(ValueError, match="no detections"):
        _task().features_and_detections(batch)
