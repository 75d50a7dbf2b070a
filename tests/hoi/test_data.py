"""HOI data: built-in splits and simulated detections, collate, vocabulary and counts, resize/flip, disk layouts."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from tenfold.data.synthetic.hoi import make_hoi
from tenfold.hoi.data import (
    HOIData,
    HOIDataset,
    HOIItem,
    builtin_vocabulary,
    hoi_collate,
    vocabulary_from_file,
)
from tenfold.hoi.detections import save_detections
from tenfold.hoi.upt import Detections

SMALL = dict(num_objects=3, num_verbs=4, train_size=24, val_size=8, test_size=8, batch_size=4, detection_hidden_size=8)


def test_builtin_splits_match_make_hoi_and_carry_simulated_detections():
    data = HOIData(**SMALL)
    data.setup("fit")
    train = data.dataset("train")
    assert len(train) == 24 and len(data.dataset("val")) == 8
    images, targets = make_hoi(24, 3, 4, seed=0, split="train", image_size=64, difficulty=0.5, interact_prob=0.8)
    item = train[(5, 0)]
    assert torch.equal(item.image, images[5].float() / 255)
    assert torch.equal(item.target["hoi"], targets[5]["hoi"]) and item.index == 5
    m = len(targets[5]["labels"])
    det = item.detections
    assert torch.equal(det.labels[:m], targets[5]["labels"]) and len(det) == m + 2  # 2 false positives
    assert det.hidden_states.shape == (m + 2, 8)
    # jittered GT: close to the GT boxes, not equal
    assert not torch.equal(det.boxes[:m], targets[5]["boxes"])
    assert (det.boxes[:m] - targets[5]["boxes"]).abs().max() < 10
    # a second module with the same settings gives the same detections; another seed other ones
    again = HOIData(**SMALL).dataset("train")[(5, 3)]
    assert torch.equal(again.detections.boxes, det.boxes) and torch.equal(again.image, item.image)
    other = HOIData(**SMALL, detection_seed=1).dataset("train")[(5, 0)]
    assert not torch.equal(other.detections.boxes, det.boxes)


def test_builtin_detection_features_share_one_label_table_across_splits():
    data = HOIData(**SMALL, feature_noise=0.0, num_false_positives=0)
    feats = {}
    for split in ("train", "test"):
        for i in range(len(data.dataset(split))):
            d = data.dataset(split)[i].detections
            for lab, f in zip(d.labels.tolist(), d.hidden_states, strict=True):
                feats.setdefault((split, lab), f)
    for lab in range(4):
        if ("train", lab) in feats and ("test", lab) in feats:
            assert torch.equal(feats[("train", lab)], feats[("test", lab)])
    assert not torch.equal(feats[("train", 0)], feats[("train", 1)])


def test_collate_pads_and_keeps_per_image_targets():
    a = HOIItem(torch.ones(3, 4, 6), {"boxes": torch.zeros(1, 4)}, None, 3)
    b = HOIItem(torch.ones(3, 5, 2), {"boxes": torch.zeros(2, 4)}, None, 7)
    batch = hoi_collate([a, b])
    assert batch.images.shape == (2, 3, 5, 6) and batch.detections is None
    assert batch.image_sizes.tolist() == [[4, 6], [5, 2]] and batch.indices.tolist() == [3, 7]
    assert batch.images[0, :, 4:].abs().sum() == 0 and batch.images[1, :, :, 2:].abs().sum() == 0
    assert [len(t["boxes"]) for t in batch.targets] == [1, 2]
    det = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="mixes"):
        hoi_collate([a, b._replace(detections=det)])


def test_builtin_vocabulary_counts_and_hoi_index():
    info = builtin_vocabulary(num_objects=2, num_verbs=3)
    assert info.vocabulary.objects == ("person", "object0", "object1")
    assert info.num_hois == 6 and info.correspondence == [[], [0, 1, 2], [0, 1, 2]]
    table = info.hoi_index()
    assert table[0].tolist() == [-1, -1, -1] and table[2, 1] == info.vocabulary.hois.index((1, 2))
    targets = [
        {"labels": torch.tensor([0, 2, 1]), "hoi": torch.tensor([[0, 1, 1], [0, 2, 0], [0, 1, 1]])},
        {"labels": torch.tensor([0]), "hoi": torch.zeros(0, 3, dtype=torch.long)},
    ]
    counts = info.hoi_counts(targets)
    assert counts.sum() == 3 and counts[table[2, 1]] == 2 and counts[table[1, 0]] == 1
    with pytest.raises(ValueError, match="not an HOI class"):
        info.hoi_counts([{"labels": torch.tensor([0, 0]), "hoi": torch.tensor([[0, 1, 0]])}])
    with pytest.raises(ValueError, match="num_verbs"):
        builtin_vocabulary(2, 17)


def test_train_counts_are_those_of_the_training_split():
    data = HOIData(**SMALL)
    _, targets = make_hoi(24, 3, 4, seed=0, split="train", image_size=64, difficulty=0.5, interact_prob=0.8)
    info = data.info
    expect = torch.zeros(info.num_hois, dtype=torch.long)
    for t in targets:
        for _, o, v in t["hoi"].tolist():
            expect[info.vocabulary.hois.index((v, int(t["labels"][o])))] += 1
    assert torch.equal(data.train_counts, expect)


def test_resize_and_flip_move_boxes_and_detections_with_the_image():
    image = torch.zeros(3, 20, 40)
    image[:, 4:10, 6:16] = 1.0  # a bright box at x 6..16, y 4..10
    box = torch.tensor([[6.0, 4.0, 16.0, 10.0]])
    target = {"boxes": box, "labels": torch.tensor([0]), "hoi": torch.zeros(0, 3, dtype=torch.long)}
    det = Detections(box.clone(), torch.ones(1), torch.zeros(1, dtype=torch.long), torch.zeros(1, 2))
    found = set()
    for epoch in range(8):
        ds = HOIDataset(lambda i: image, [target], [det], train=True, scales=(40,), max_size=100, flip=True, seed=0)
        item = ds[(0, epoch)]
        assert item.image.shape[-2:] == (40, 80)  # shorter side 20 -> 40
        mask = item.image[0] > 0.5
        ys, xs = mask.any(1).nonzero(), mask.any(0).nonzero()
        seen = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        assert torch.allclose(item.target["boxes"][0], seen, atol=1.0)
        assert torch.equal(item.detections.boxes, item.target["boxes"])
        found.add(bool(item.target["boxes"][0, 0] > 40))
    assert found == {True, False}  # both flipped and unflipped draws
    # eval: fixed scale, no flip, max_size respected
    ev = HOIDataset(lambda i: image, [target], None, scales=(40,), max_size=60)[0]
    assert ev.image.shape[-2:] == (30, 60) and torch.allclose(ev.target["boxes"], box * 1.5)


def test_vocabulary_file_layouts(tmp_path):
    plain = tmp_path / "v.json"
    plain.write_text(json.dumps({"verbs": ["ride", "hold"], "objects": ["person", "horse"], "hois": [[0, 1], [1, 1]]}))
    info = vocabulary_from_file(plain)
    assert info.vocabulary.hois == ((0, 1), (1, 1)) and info.correspondence == [[], [0, 1]]
    upt = tmp_path / "u.json"  # UPT's correspondence rows [hoi, object, verb], any order
    upt.write_text(
        json.dumps(
            {"verbs": ["ride", "hold"], "objects": ["person", "horse"], "correspondence": [[1, 1, 0], [0, 1, 1]]}
        )
    )
    assert vocabulary_from_file(upt).vocabulary.hois == ((1, 1), (0, 1))
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"verbs": []}))
    with pytest.raises(ValueError, match="objects"):
        vocabulary_from_file(bad)
    with pytest.raises(FileNotFoundError):
        vocabulary_from_file(tmp_path / "missing.json")


@dataclass
class _Record:
    file_name: str
    size: tuple[int, int] | None
    target: dict


def _fake_hicodet(tmp_path):
    """Two images, an annotation stub, a vocabulary and a detection file in the on-disk layout."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate([(30, 40), (40, 20)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        target = {
            "boxes": torch.tensor([[1.0, 2.0, 10.0, 20.0], [5.0, 5.0, 15.0, 15.0]]),
            "labels": torch.tensor([0, 1]),
            "hoi": torch.tensor([[0, 1, i]]),
        }
        records.append(_Record(f"img{i}.png", (h, w), target))
    vocab = tmp_path / "anno.json"
    vocab.write_text(
        json.dumps({"verbs": ["ride", "hold"], "objects": ["person", "bicycle"], "hois": [[0, 1], [1, 1]]})
    )
    dets = [
        Detections(r.target["boxes"].clone(), torch.tensor([0.9, 0.8]), r.target["labels"].clone(), torch.ones(2, 3))
        for r in records
    ]
    save_detections(tmp_path / "dets.json", dets)
    return folder, vocab, records


def test_hicodet_from_disk_with_a_stub_reader(tmp_path, monkeypatch):
    folder, vocab, records = _fake_hicodet(tmp_path)
    calls = []
    stub = types.ModuleType("tenfold.hoi.datasets")
    stub.read_hicodet = lambda path: calls.append(str(path)) or records
    monkeypatch.setitem(sys.modules, "tenfold.hoi.datasets", stub)
    data = HOIData(
        dataset="hicodet", train_annotations=str(vocab), test_annotations=str(vocab), train_images=str(folder),
        test_images=str(folder), train_detections=str(tmp_path / "dets.json"),
        test_detections=str(tmp_path / "dets.json"), train_scales=(60,), test_scale=60, max_size=100, batch_size=2,
    )  # fmt: skip
    data.setup("fit")
    assert data.info.num_hois == 2 and data.train_counts.tolist() == [1, 1]
    item = data.dataset("test")[1]  # 40 x 20 -> 100 x 50 would exceed max 100: scale min(60/20, 100/40) = 2.5
    assert item.image.shape[-2:] == (100, 50)
    assert torch.allclose(item.target["boxes"], records[1].target["boxes"] * 2.5)
    assert torch.allclose(item.detections.boxes, item.target["boxes"])
    batch = next(iter(data.val_dataloader()))
    assert batch.images.shape[0] == 2 and len(batch.detections) == 2 and batch.indices.tolist() == [0, 1]
    assert data.mean == (0.485, 0.456, 0.406)
    assert calls  # the reader was used


def test_disk_errors_name_the_setting(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="train_annotations"):
        HOIData(dataset="hicodet")
    with pytest.raises(ValueError, match="unknown dataset"):
        HOIData(dataset="coco")
    folder, vocab, records = _fake_hicodet(tmp_path)
    stub = types.ModuleType("tenfold.hoi.datasets")
    stub.read_hicodet = lambda path: records[:1]
    monkeypatch.setitem(sys.modules, "tenfold.hoi.datasets", stub)
    data = HOIData(
        dataset="hicodet", train_annotations=str(vocab), test_annotations=str(vocab), train_images=str(folder),
        test_images=str(tmp_path / "nowhere"), train_detections=str(tmp_path / "dets.json"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="2 images of detections for 1 annotation records"):
        data.dataset("train")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.dataset("test")


def test_vcoco_from_disk_with_a_stub_reader(tmp_path, monkeypatch):
    folder, vocab, records = _fake_hicodet(tmp_path)
    calls = []

    def read_vcoco(path, instances, split="test"):
        calls.append((path, instances, split))
        return types.SimpleNamespace(records=lambda: records)

    stub = types.ModuleType("tenfold.hoi.datasets")
    stub.read_vcoco = read_vcoco
    monkeypatch.setitem(sys.modules, "tenfold.hoi.datasets", stub)
    kw = dict(dataset="vcoco", train_annotations="vc", test_annotations="vc", train_images=str(folder),
              test_images=str(folder), vocabulary_file=str(vocab))  # fmt: skip
    with pytest.raises(ValueError, match="coco_instances"):
        HOIData(**kw).dataset("train")
    data = HOIData(**kw, coco_instances="inst.json", test_scale=30)
    assert len(data.dataset("train")) == 2 and data.dataset("test")[0].detections is None
    assert ("vc", "inst.json", "trainval") in calls and ("vc", "inst.json", "test") in calls
