"""V-COCO role AP in HOITask: the pair -> person-centric conversion and the logged val/role_ap_s1, _s2."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tenfold.engine.optim import OptimConfig
from tenfold.hoi.data import HOIBatch, HOIData, HOIVocabularyInfo
from tenfold.hoi.datasets import read_vcoco
from tenfold.hoi.task import HOITask
from tenfold.hoi.text import HOIVocabulary
from tenfold.hoi.upt import HOIDetections
from tenfold.hoi.vcoco_eval import pairs_to_vcoco_detections, vcoco_role_ap

ROLES = (("agent",), ("agent", "obj"), ("agent", "obj", "instr"))


def test_pairs_conversion_takes_the_best_pair_per_human_and_action():
    hb = np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    ob = np.array([[1.0, 1, 2, 2], [3, 3, 4, 4], [5, 5, 6, 6]])
    ph = np.array([0, 0, 1])
    nan = np.nan
    sc = np.array([[0.9, 0.2, 0.7], [0.1, 0.6, 0.7], [nan, 0.3, nan]])
    d = pairs_to_vcoco_detections([5, 6], [hb, np.zeros((0, 4))], [ph, np.zeros(0, int)], [ob, np.zeros((0, 4))],
                                  [sc, np.zeros((0, 3))], ROLES)  # fmt: skip
    assert d.image_id.tolist() == [5, 5]  # the empty image gives no detection
    np.testing.assert_array_equal(d.agent_boxes, hb)
    np.testing.assert_array_equal(d.agent_scores, [[0.9, 0.6, 0.7], [nan, 0.3, nan]])
    # action 0 has no role object: agent score only
    assert np.isnan(d.role_scores[:, 0]).all() and np.isnan(d.role_boxes[:, 0]).all()
    # action 1 (one role): the second pair of human 0 is best; its second role slot is unused
    np.testing.assert_array_equal(d.role_boxes[0, 1, 0], ob[1])
    assert d.role_scores[0, 1, 0] == 0.6 and np.isnan(d.role_scores[0, 1, 1])
    # action 2 (two roles): a tie picks the first pair, for both roles
    np.testing.assert_array_equal(d.role_boxes[0, 2], [ob[0], ob[0]])
    np.testing.assert_array_equal(d.role_scores[0, 2], [0.7, 0.7])
    # human 1: only action 1 scored
    np.testing.assert_array_equal(d.role_boxes[1, 1, 0], ob[2])
    assert np.isnan(d.role_scores[1, 2]).all() and np.isnan(d.role_boxes[1, 2]).all()
    empty = pairs_to_vcoco_detections([1], [hb], [np.zeros(0, int)], [np.zeros((0, 4))], [np.zeros((0, 3))], ROLES)
    assert len(empty.image_id) == 0 and empty.role_boxes.shape == (0, 3, 2, 4)
    with pytest.raises(ValueError, match="image 0: pair_humans"):
        pairs_to_vcoco_detections([5], [hb], [np.array([0, 0, 2])], [ob], [sc], ROLES)
    with pytest.raises(ValueError, match=r"image 0: object_boxes must be \(3, 4\) and pair_scores \(3, 3\)"):
        pairs_to_vcoco_detections([5], [hb], [ph], [ob], [sc[:, :2]], ROLES)


def _files(tmp_path):
    coco = {
        "images": [{"id": 7, "width": 100, "height": 50, "file_name": "7.jpg"},
                   {"id": 8, "width": 80, "height": 60, "file_name": "8.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 7, "bbox": [10, 10, 20, 30], "category_id": 1, "area": 5, "iscrowd": 0},
            {"id": 2, "image_id": 7, "bbox": [60, 30, 30, 15], "category_id": 37, "area": 5, "iscrowd": 0},
            {"id": 4, "image_id": 7, "bbox": [40, 5, 12, 20], "category_id": 1, "area": 5, "iscrowd": 0},
            {"id": 5, "image_id": 8, "bbox": [5, 5, 20, 40], "category_id": 1, "area": 5, "iscrowd": 0},
            {"id": 6, "image_id": 8, "bbox": [50, 40, 20, 15], "category_id": 37, "area": 5, "iscrowd": 0},
            {"id": 9, "image_id": 8, "bbox": [30, 2, 15, 30], "category_id": 1, "area": 5, "iscrowd": 0},
        ],
    }  # fmt: skip
    ann = [1, 4, 5]  # person 9 is not in V-COCO (ignored by the evaluator)
    # every positive has its role object: a pair-based model cannot predict the empty box scenario 1 asks for
    vc = [
        {"action_name": "stand", "role_name": ["agent"], "ann_id": ann, "image_id": [7, 7, 8], "label": [1, 1, 0],
         "role_object_id": ann, "include": [[]]},
        {"action_name": "kick", "role_name": ["agent", "obj"], "ann_id": ann, "image_id": [7, 7, 8],
         "label": [1, 0, 1], "role_object_id": ann + [2, 0, 6], "include": [[], []]},
        {"action_name": "look", "role_name": ["agent", "obj"], "ann_id": ann, "image_id": [7, 7, 8],
         "label": [0, 1, 0], "role_object_id": ann + [0, 2, 0], "include": [[], []]},
    ]  # fmt: skip
    (tmp_path / "vcoco_test.json").write_text(json.dumps(vc))
    (tmp_path / "vcoco_trainval.json").write_text(json.dumps(vc))  # the training split (train_counts)
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    objects = ["person"] + [f"object{i}" for i in range(1, 80)]
    voc = {"verbs": ["stand", "kick", "look"], "objects": objects, "hois": [[1, 32], [2, 32], [2, 0]]}
    (tmp_path / "voc.json").write_text(json.dumps(voc))
    return tmp_path / "vcoco_test.json", tmp_path / "instances.json", tmp_path / "voc.json"


def _task(**kw) -> HOITask:
    optim = OptimConfig(opt="adamw", lr=1e-3, sched="none")
    return HOITask(hidden_state_size=16, representation_size=16, text_encoder="random-16", text_cache_dir=None,
                   optim=optim, **kw)  # fmt: skip


def _predictions(gt, scale, noisy):
    """Per image: all V-COCO boxes (resized by ``scale``), every person x other box pair, every action scored.

    Perfect: score 1 for the GT (person, action, role object) triplets, 0.01 elsewhere; noisy: random scores.
    """
    rng = np.random.default_rng(0)
    outs = []
    for im in gt.images:
        persons = np.flatnonzero(im.labels == 0)
        order = np.concatenate([persons, np.flatnonzero(im.labels != 0)])
        boxes = torch.tensor(im.boxes[order] * scale, dtype=torch.float32)
        sub, obj, verb, score = [], [], [], []
        for i, p in enumerate(persons):
            for j, o in enumerate(order):
                if o == p:
                    continue
                for a in range(len(gt.actions)):
                    true = im.actions[p, a] == 1 and im.roles[p, a, 0] == o
                    sub.append(i), obj.append(j), verb.append(a)
                    score.append(rng.random() if noisy else (1.0 if true else 0.01))
        outs.append(HOIDetections(boxes, torch.tensor([sub, obj]), torch.tensor(score), torch.tensor(verb),
                                  torch.zeros(len(sub), dtype=torch.long)))  # fmt: skip
    return outs


def test_task_logs_the_role_ap_of_the_converted_pairs(tmp_path):
    v, c, voc = _files(tmp_path)
    data = HOIData(dataset="vcoco", train_annotations=str(tmp_path), test_annotations=str(tmp_path),
                   train_images=str(tmp_path), test_images=str(tmp_path), coco_instances=str(c),
                   vocabulary_file=str(voc))  # fmt: skip
    gt = data.vcoco_ground_truth("test")
    assert gt.actions == ("stand", "kick", "look") and len(gt.images) == 2
    task = _task()
    assert task.eval_protocol == "hico"
    task._trainer = SimpleNamespace(datamodule=data)  # configure_model reads the data module only
    task.configure_model()
    assert task.eval_protocol == "vcoco" and task.vcoco_gt is gt  # default from the dataset
    recs = gt.records()
    scale = 0.5
    targets = [{**r.target, "boxes": r.target["boxes"] * scale} for r in recs]
    sizes = torch.tensor([[im.size[1] * scale, im.size[0] * scale] for im in gt.images])
    batch = HOIBatch(torch.zeros(2, 3, 30, 50), sizes, targets, None, torch.tensor([0, 1]))
    for case in ("perfect", "noisy", "second image empty"):
        noisy = case == "noisy"
        preds = _predictions(gt, scale, noisy)
        if case == "second image empty":  # no pair: the image still counts (its positives are missed)
            e = torch.zeros(0, dtype=torch.long)
            preds[1] = HOIDetections(preds[1].boxes, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), e, e)
        task.forward = lambda b, preds=preds: preds
        logged: dict[str, float] = {}
        task.log = lambda name, value, logged=logged, **kw: logged.__setitem__(name, value)
        task.on_validation_epoch_start()
        task.validation_step(batch, 0)
        task.on_validation_epoch_end()
        assert {"val/map", "val/role_ap_s1", "val/role_ap_s2"} <= logged.keys()
        # the same detections built here, in original pixels, straight from the predictions
        dets = pairs_to_vcoco_detections(
            [im.image_id for im in gt.images], [p.boxes[: int((im.labels == 0).sum())].double().numpy() / scale
                                                for p, im in zip(preds, gt.images, strict=True)],
            [p.pairing[0].numpy()[:: len(gt.actions)] for p in preds],
            [p.boxes[p.pairing[1][:: len(gt.actions)]].double().numpy() / scale for p in preds],
            [p.scores.double().numpy().reshape(-1, len(gt.actions)) for p in preds], gt.roles,
        )  # fmt: skip
        for s in (1, 2):
            want = vcoco_role_ap(gt, dets, scenario=s).mAP
            assert logged[f"val/role_ap_s{s}"] == pytest.approx(want, abs=1e-12)
            if case == "perfect":
                assert want == pytest.approx(1.0)
        if case != "perfect":
            assert logged["val/role_ap_s1"] < 1.0


def test_vcoco_protocol_needs_matching_ground_truth(tmp_path):
    v, c, voc = _files(tmp_path)
    gt = read_vcoco(v, c)
    vocab = HOIVocabulary.from_lists(["kick", "stand", "look"], ["person", "ball"], [(0, 1)])
    task = _task(eval_protocol="vcoco")
    task.build(HOIVocabularyInfo(vocab))
    with pytest.raises(ValueError, match="verbs to be the V-COCO actions in order"):
        task.set_vcoco_ground_truth(gt)
    with pytest.raises(ValueError, match="needs V-COCO ground truth"):
        task.vcoco_role_metrics([])
    with pytest.raises(ValueError, match="eval_protocol"):
        _task(eval_protocol="coco")
    with pytest.raises(ValueError, match="needs dataset 'vcoco'"):
        HOIData().vcoco_ground_truth()
