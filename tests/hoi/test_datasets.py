"""HICO-DET (both json layouts) and V-COCO readers on tiny files written here."""

import json

import numpy as np
import pytest
import torch

from tenfold.hoi.datasets import (
    coco_id_to_index,
    gt_pairs,
    hicodet_classes,
    hoi_classes,
    read_hicodet,
    read_vcoco,
)

H1, H2, O1, O2 = [1.0, 2.0, 30.0, 40.0], [50.0, 5.0, 80.0, 60.0], [20.0, 30.0, 45.0, 50.0], [5.0, 5.0, 9.0, 9.0]


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def _qpic_file(tmp_path, with_ids=True):
    # image 0: box order object, person, person; COCO ids 1 (person), 62 (chair -> 80-index 56), 3 (car -> 2)
    rows0 = [
        {"subject_id": 1, "object_id": 0, "category_id": 37, "hoi_category_id": 2},
        {"subject_id": 2, "object_id": 0, "category_id": 37, "hoi_category_id": 2},
        {"subject_id": 1, "object_id": 2, "category_id": 58, "hoi_category_id": 1},
    ]
    rows1 = [{"subject_id": 0, "object_id": 1, "category_id": 5, "hoi_category_id": 3}]
    if not with_ids:
        for r in rows0 + rows1:
            del r["hoi_category_id"]
    data = [
        {
            "file_name": "a.jpg",
            "annotations": [
                {"bbox": O1, "category_id": 62},
                {"bbox": H1, "category_id": 1},
                {"bbox": H2, "category_id": 1},
            ],
            "hoi_annotation": rows0,
        },
        {
            "file_name": "b.jpg",
            "annotations": [{"bbox": H1, "category_id": 1}, {"bbox": O2, "category_id": 3}],
            "hoi_annotation": rows1,
        },
        {"file_name": "empty.jpg", "annotations": [], "hoi_annotation": []},
    ]
    return _write(tmp_path, "test_hico.json", data)


def test_coco_ids():
    assert coco_id_to_index(1) == 0 and coco_id_to_index(13) == 11 and coco_id_to_index(90) == 79
    with pytest.raises(ValueError, match="not a COCO category id"):
        coco_id_to_index(12)


def test_qpic_layout(tmp_path):
    recs = read_hicodet(_qpic_file(tmp_path))
    assert [r.file_name for r in recs] == ["a.jpg", "b.jpg", "empty.jpg"] and recs[0].size is None
    t = recs[0].target
    # persons first (file order among them), then the chair
    assert torch.equal(t["boxes"], torch.tensor([H1, H2, O1]))
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    assert t["labels"].tolist() == [0, 0, 56]
    assert t["hoi"].tolist() == [[0, 2, 36], [1, 2, 36], [0, 1, 57]]
    assert recs[2].target["boxes"].shape == (0, 4) and recs[2].target["hoi"].shape == (0, 3)
    cls = hicodet_classes(tmp_path / "test_hico.json")
    assert cls.official_ids and cls.hoi.tolist() == [[57, 0], [36, 56], [4, 2]]
    assert cls.counts.tolist() == [1, 2, 1]
    assert hoi_classes(recs[0], cls).tolist() == [1, 1, 0]
    assert cls.correct_mat.shape == (117, 80) and cls.correct_mat.sum() == 3
    assert cls.object_to_verbs[56] == [36] and cls.verbs is None
    gi, gc, gb = gt_pairs(recs, cls)
    assert gi.tolist() == [0, 0, 0, 1] and gc.tolist() == [1, 1, 0, 2]
    np.testing.assert_array_equal(gb[1], H2 + O1)


def test_qpic_without_ids_sorts_classes(tmp_path):
    cls = hicodet_classes(_qpic_file(tmp_path, with_ids=False))
    assert not cls.official_ids
    assert cls.hoi.tolist() == [[57, 0], [4, 2], [36, 56]]  # by (object, verb)


def _fred_file(tmp_path):
    # 3 HICO objects suffice for the test; map them: HICO 0 (airplane) -> COCO-80 4, HICO 49 (person) -> 0
    perm = {str(k + 1): k for k in range(80)}  # identity, then swap person into HICO slot 49
    perm["1"], perm["50"] = 49, 0
    (tmp_path / "coco80tohico80.json").write_text(json.dumps(perm))
    objects = [f"obj{k}" for k in range(80)]
    objects[49] = "person"
    verbs = [f"verb{k}" for k in range(117)]
    corr = [[0, 3, 10], [1, 49, 20], [2, 3, 11]]
    data = {
        "annotation": [
            {  # two pairs share the human and the object; a person-object pair uses another human
                "boxes_h": [H1, H1, H2],
                "boxes_o": [O1, O1, H1],
                "hoi": [0, 2, 1],
                "object": [3, 3, 49],
                "verb": [10, 11, 20],
            },
            {"boxes_h": [], "boxes_o": [], "hoi": [], "object": [], "verb": []},
        ],
        "filenames": ["x.jpg", "y.jpg"],
        "size": [[640, 480], [10, 20]],
        "objects": objects,
        "verbs": verbs,
        "correspondence": corr,
    }
    return _write(tmp_path, "instances_test2015.json", data)


def test_fredzzhang_layout(tmp_path):
    p = _fred_file(tmp_path)
    recs = read_hicodet(p)
    assert recs[0].size == (640, 480) and recs[1].size == (10, 20)
    t = recs[0].target
    assert torch.equal(t["boxes"], torch.tensor([H1, H2, O1, H1]))
    assert t["labels"].tolist() == [0, 0, 3, 0]  # HICO object 3 -> COCO-80 3 (identity); person -> 0
    assert t["hoi"].tolist() == [[0, 2, 10], [0, 2, 11], [1, 3, 20]]
    cls = hicodet_classes(p)
    assert cls.official_ids and cls.hoi.tolist() == [[10, 3], [20, 0], [11, 3]]
    assert cls.objects[0] == "person" and cls.objects[49] == "obj0" and cls.verbs[20] == "verb20"
    assert hoi_classes(recs[0], cls).tolist() == [0, 2, 1]
    # explicit map given as a dict gives the same result
    perm = json.loads((tmp_path / "coco80tohico80.json").read_text())
    (tmp_path / "coco80tohico80.json").unlink()
    with pytest.raises(ValueError, match="coco80tohico80.json"):
        read_hicodet(p)
    assert torch.equal(read_hicodet(p, object_map=perm)[0].target["labels"], t["labels"])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d[1]["annotations"][1].update(category_id=12), r"record 1, field 'annotations.category_id'"),
        (lambda d: d[0]["hoi_annotation"][0].update(object_id=7), r"record 0, field 'hoi_annotation\[0\]"),
        (lambda d: d[0]["hoi_annotation"][0].update(subject_id=0), r"record 0, .*is not a person"),
        (lambda d: d[1]["hoi_annotation"][0].update(category_id=118), r"record 1, .*verb id 118"),
        (lambda d: d[0]["annotations"][0].update(bbox=[1, 2, 3]), r"record 0, field 'annotations.bbox'"),
        (lambda d: d[2].pop("annotations"), r"record 2, field 'annotations'"),
    ],
)
def test_qpic_malformed(tmp_path, mutate, match):
    p = _qpic_file(tmp_path)
    d = json.loads(p.read_text())
    mutate(d)
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match) as err:
        read_hicodet(p)
    assert "test_hico.json" in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["annotation"][0].update(verb=[10, 11]), r"record 0, field 'verb'"),
        (lambda d: d["annotation"][0].update(hoi=[1, 2, 1]), r"record 0, field 'hoi\[0\]'"),
        (lambda d: d["annotation"][0].update(boxes_o=[O1, O1]), r"record 0, field 'boxes_o'"),
        (lambda d: d["annotation"][1].update(object=[80]), r"record 1, field 'object'"),
        (lambda d: d.update(size=[[1, 2]]), r"field 'size'"),
        (lambda d: d.pop("filenames"), r"field 'filenames'"),
    ],
)
def test_fredzzhang_malformed(tmp_path, mutate, match):
    p = _fred_file(tmp_path)
    d = json.loads(p.read_text())
    mutate(d)
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match):
        read_hicodet(p)


def test_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="unknown HICO-DET layout"):
        read_hicodet(_write(tmp_path, "x.json", {"images": []}))
    with pytest.raises(ValueError, match="no such annotation file"):
        read_hicodet(tmp_path / "missing.json")


def _vcoco_files(tmp_path):
    coco = {
        "images": [{"id": 7, "width": 100, "height": 50, "file_name": "7.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 7, "bbox": [10, 10, 20, 30], "category_id": 1, "area": 5, "iscrowd": 0},
            {"id": 2, "image_id": 7, "bbox": [90, 40, 30, 30], "category_id": 37, "area": 5, "iscrowd": 0},
            {"id": 3, "image_id": 7, "bbox": [0, 0, 1, 1], "category_id": 1, "area": 1, "iscrowd": 0},  # 1x1: drop
            {"id": 4, "image_id": 7, "bbox": [50, 5, 10, 10], "category_id": 1, "area": 5, "iscrowd": 0},
        ],
    }
    vc = [
        {"action_name": "stand", "role_name": ["agent"], "ann_id": [1, 4], "image_id": [7, 7], "label": [1, 0],
         "role_object_id": [1, 4], "include": [[]]},
        {"action_name": "kick", "role_name": ["agent", "obj"], "ann_id": [1, 4], "image_id": [7, 7],
         "label": [1, 1], "role_object_id": [1, 4, 2, 0], "include": [[], []]},
    ]  # fmt: skip
    return _write(tmp_path, "vcoco_test.json", vc), _write(tmp_path, "instances.json", coco)


def test_read_vcoco(tmp_path):
    v, c = _vcoco_files(tmp_path)
    data = read_vcoco(tmp_path, c)  # folder form
    assert data.actions == ("stand", "kick") and data.roles == (("agent",), ("agent", "obj"))
    (im,) = data.images
    assert im.image_id == 7 and im.size == (100, 50)
    # x2 = x1 + w - 1, clipped to width - 1 / height - 1; the 1x1 box is dropped
    np.testing.assert_array_equal(im.boxes, [[10, 10, 29, 39], [90, 40, 99, 49], [50, 5, 59, 14]])
    assert im.labels.tolist() == [0, 32, 0]
    assert im.actions.tolist() == [[1, 1], [-1, -1], [0, 1]]
    assert im.roles[:, 1, 0].tolist() == [1, -1, -1] and (im.roles[:, 0] == -1).all()
    assert read_vcoco(v, c).images[0].boxes.shape == (3, 4)
    (rec,) = data.records()
    assert rec.file_name == "7.jpg" and rec.size == (100, 50)
    # persons (boxes 0 and 2) first, then the object; only "kick" of person 1 has an object
    assert rec.target["labels"].tolist() == [0, 0, 32]
    assert torch.equal(rec.target["boxes"], torch.tensor([[10.0, 10, 29, 39], [50, 5, 59, 14], [90, 40, 99, 49]]))
    assert rec.target["hoi"].tolist() == [[0, 2, 1]]


def test_read_vcoco_malformed(tmp_path):
    v, c = _vcoco_files(tmp_path)
    d = json.loads(v.read_text())
    d[1]["role_object_id"] = [1, 4, 3, 0]  # annotation 3 is dropped (1x1 box)
    v.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"record 1, field 'role_object_id'.*annotation 3"):
        read_vcoco(v, c)
    d[1]["role_object_id"] = [1, 4, 2]
    v.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"record 1, field 'role_object_id'.*expected 4"):
        read_vcoco(v, c)
