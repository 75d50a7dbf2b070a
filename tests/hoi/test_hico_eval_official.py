"""Parity of the HICO-DET evaluators with the official QPIC, CDN (triplet NMS) and UPT/pocket code."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tenfold.hoi import qpic_evaluate, upt_evaluate

FIX = Path(__file__).parents[1] / "fixtures" / "hico_eval"
FLAT = ("det_image", "det_class", "det_boxes", "det_scores", "gt_image", "gt_class", "gt_boxes")


def _unpack(z, name: str, keys: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    n = len(z[f"{name}_{keys[0]}_len"])
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    for k in keys:
        off = np.concatenate([[0], np.cumsum(z[f"{name}_{k}_len"])])
        for i in range(n):
            out[i][k] = z[f"{name}_{k}"][off[i] : off[i + 1]]
    return out


def test_qpic_case1_matches_official():
    fx = torch.load(FIX / "qpic_case1.pt", weights_only=True)
    n = sum(1 for k in fx if k.startswith("gt") and k.endswith("_hois"))
    preds = [
        {k: fx[f"pred{i}_{k}"].numpy() for k in ("boxes", "labels", "verb_scores", "sub_ids", "obj_ids")}
        for i in range(n)
    ]
    gts = [{k: fx[f"gt{i}_{k}"].numpy() for k in ("boxes", "labels", "hois")} for i in range(n)]
    rare = {tuple(int(x) for x in r) for r in fx["rare"]}
    out = qpic_evaluate(preds, gts, fx["correct_mat"].numpy(), rare)
    np.testing.assert_allclose([out.mAP, out.mAP_rare, out.mAP_non_rare], fx["ref_map"].numpy(), rtol=0, atol=1e-9)
    mine = {tuple(int(x) for x in t): a for t, a in zip(out.classes, out.ap, strict=True)}
    ref = {tuple(int(x) for x in k): a for k, a in zip(fx["ref_ap_keys"], fx["ref_ap"].numpy(), strict=True)}
    assert set(mine) == set(ref)
    np.testing.assert_allclose([mine[k] for k in ref], list(ref.values()), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("name", "nms"), [("qpic", False), ("cdn", False), ("cdn_nms", True)])
def test_qpic_family_matches_official(seed: int, name: str, nms: bool):
    z = np.load(FIX / f"official_case{seed}.npz")
    preds = _unpack(z, "pred", ("boxes", "labels", "verb_scores", "sub_ids", "obj_ids"))
    gts = _unpack(z, "gt", ("boxes", "labels", "hois"))
    rare = {tuple(map(int, t)) for t in z["rare"]}
    non_rare = {tuple(map(int, t)) for t in z["non_rare"]}
    m = qpic_evaluate(preds, gts, z["correct_mat"], rare, non_rare, triplet_nms=nms)
    ref = {tuple(map(int, k)): i for i, k in enumerate(z[f"{name}_ref_keys"])}
    mine = {tuple(map(int, k)): i for i, k in enumerate(m.classes)}
    assert set(ref) == set(mine)
    idx = [mine[k] for k in ref]
    np.testing.assert_allclose(m.ap[idx], z[f"{name}_ref_ap"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(m.max_recall[idx], z[f"{name}_ref_max_recall"], rtol=0, atol=1e-9)
    np.testing.assert_allclose([m.mAP, m.mAP_rare, m.mAP_non_rare], z[f"{name}_ref_map"], rtol=0, atol=1e-9)


def test_triplet_nms_changes_result():
    z = np.load(FIX / "official_case0.npz")
    assert abs(z["cdn_nms_ref_map"][0] - z["cdn_ref_map"][0]) > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_upt_matches_pocket(seed: int):
    z = np.load(FIX / f"official_case{seed}.npz")
    m = upt_evaluate(*[z["flat_" + k] for k in FLAT], num_classes=len(z["valid"]))
    np.testing.assert_allclose(m.ap, z["upt_ref_ap"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(m.max_recall, z["upt_ref_max_recall"], rtol=0, atol=1e-9)
    rare = z["train_counts"] < 10
    m2 = upt_evaluate(*[z["flat_" + k] for k in FLAT], num_classes=len(z["valid"]), train_counts=z["train_counts"])
    assert m2.mAP_rare == pytest.approx(z["upt_ref_ap"][rare].mean(), abs=1e-9)
    assert m2.mAP_non_rare == pytest.approx(z["upt_ref_ap"][~rare].mean(), abs=1e-9)
