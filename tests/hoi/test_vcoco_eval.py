"""V-COCO agent / role AP against the official s-gupta/v-coco ``vsrl_eval.py`` on synthetic cases."""

import json
from pathlib import Path

import numpy as np
import pytest

from tenfold.hoi.datasets import read_vcoco
from tenfold.hoi.vcoco_eval import VCOCODetections, vcoco_agent_ap, vcoco_detections, vcoco_role_ap

FIX = Path(__file__).parents[1] / "fixtures" / "vcoco"


def _load(seed: int, tmp_path: Path):
    z = np.load(FIX / f"vcoco_case{seed}.npz")
    (tmp_path / "vcoco_test.json").write_text(str(z["vcoco_json"]))
    (tmp_path / "coco.json").write_text(str(z["coco_json"]))
    gt = read_vcoco(tmp_path, tmp_path / "coco.json")
    dets = VCOCODetections(
        z["det_image_id"], z["det_agent_boxes"], z["det_agent_scores"], z["det_role_boxes"], z["det_role_scores"]
    )
    return z, gt, dets


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_official(seed: int, tmp_path: Path):
    z, gt, dets = _load(seed, tmp_path)
    agent = vcoco_agent_ap(gt, dets)
    np.testing.assert_allclose(agent.ap, z["ref_agent_ap"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(agent.npos, z["ref_npos"])
    for sc in (1, 2):
        m = vcoco_role_ap(gt, dets, scenario=sc)
        ref = z[f"ref_role_ap_s{sc}"]
        np.testing.assert_array_equal(np.isnan(m.ap), np.isnan(ref))
        np.testing.assert_allclose(m.ap[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=0, atol=1e-9)
        assert m.mAP == pytest.approx(np.nanmean(ref), abs=1e-9)
        assert len(m.names) == int((~np.isnan(ref)).sum())


def test_scenarios_differ_and_official_dicts(tmp_path: Path):
    z, gt, dets = _load(0, tmp_path)
    assert np.nanmax(np.abs(z["ref_role_ap_s1"] - z["ref_role_ap_s2"])) > 1e-3
    # the official pickle layout gives the same detections
    dicts = []
    for i in range(len(dets.image_id)):
        d = {"image_id": int(dets.image_id[i]), "person_box": dets.agent_boxes[i].tolist()}
        for a, (act, roles) in enumerate(zip(gt.actions, gt.roles, strict=True)):
            d[f"{act}_agent"] = float(dets.agent_scores[i, a])
            for r in range(1, len(roles)):
                d[f"{act}_{roles[r]}"] = [*dets.role_boxes[i, a, r - 1].tolist(), float(dets.role_scores[i, a, r - 1])]
        dicts.append(d)
    conv = vcoco_detections(dicts, gt.actions, gt.roles)
    m = vcoco_role_ap(gt, conv, scenario=1)
    np.testing.assert_allclose(m.ap, z["ref_role_ap_s1"], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="detection 0"):
        vcoco_detections([{"image_id": 1}], gt.actions, gt.roles)


def test_hand_case(tmp_path: Path):
    # one person doing "kick" with a ball; detections: right role (TP), duplicate (FP), empty role (FP in S1)
    coco = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [0, 0, 10, 10], "category_id": 1, "area": 1},
            {"id": 2, "image_id": 1, "bbox": [50, 50, 10, 10], "category_id": 37, "area": 1},
        ],
    }
    vc = [{"action_name": "kick", "role_name": ["agent", "obj"], "ann_id": [1], "image_id": [1], "label": [1],
           "role_object_id": [1, 2]}]  # fmt: skip
    (tmp_path / "v.json").write_text(json.dumps(vc))
    (tmp_path / "c.json").write_text(json.dumps(coco))
    gt = read_vcoco(tmp_path / "v.json", tmp_path / "c.json")
    person, ball = [0, 0, 9, 9], [50, 50, 59, 59]
    dets = VCOCODetections(
        np.array([1, 1, 1]),
        np.array([person] * 3, float),
        np.array([[0.9], [0.8], [0.7]]),
        np.array([[[ball, [0] * 4]], [[ball, [0] * 4]], [[[0] * 4, [0] * 4]]], float),
        np.array([[[0.5, np.nan]], [[0.4, np.nan]], [[0.6, np.nan]]]),
    )
    # ranking by role score: empty (FP), TP, duplicate (FP): rec 0, 1, 1; prec 0, 1/2, 1/3 -> AP 1/2
    assert vcoco_role_ap(gt, dets, scenario=1).ap[0, 0] == pytest.approx(0.5)
    assert vcoco_agent_ap(gt, dets).ap[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scenario"):
        vcoco_role_ap(gt, dets, scenario=3)
