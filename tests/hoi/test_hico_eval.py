"""Hand-computed checks of the HICO-DET evaluators (Matlab rule, thresholds, strictness, bad input)."""

import numpy as np
import pytest
import torch

from tenfold.hoi import ARANGE_THRESHOLDS, LINSPACE_THRESHOLDS, matlab_evaluate, upt_evaluate, voc_ap_11

BOX = [1, 1, 10, 10, 21, 21, 30, 30]


def test_voc_ap_11_hand():
    # ranks: TP, FP, TP with npos 2 -> rec 0.5, 0.5, 1.0; prec 1, 0.5, 2/3
    ap = voc_ap_11(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11, abs=1e-12)


def test_thresholds_differ_at_point_seven():
    assert np.array_equal(LINSPACE_THRESHOLDS, torch.linspace(0, 1, 11, dtype=torch.float64).numpy())
    # recall exactly 0.7 reaches the linspace threshold 0.7 but not np.arange's 0.7000000000000001
    rec, prec = np.array([0.7]), np.array([1.0])
    assert voc_ap_11(rec, prec, LINSPACE_THRESHOLDS) == pytest.approx(8 / 11)
    assert voc_ap_11(rec, prec, ARANGE_THRESHOLDS) == pytest.approx(7 / 11)


def _one_class(det_boxes, scores, gt_boxes, det_img=None, gt_img=None, **kw):
    det_boxes, gt_boxes = np.asarray(det_boxes, float), np.asarray(gt_boxes, float)
    det_img = np.zeros(len(det_boxes), int) if det_img is None else np.asarray(det_img)
    gt_img = np.zeros(len(gt_boxes), int) if gt_img is None else np.asarray(gt_img)
    return (
        det_img,
        np.zeros(len(det_boxes), int),
        det_boxes,
        np.asarray(scores, float),
        gt_img,
        np.zeros(len(gt_boxes), int),
        gt_boxes,
    )


def test_matlab_duplicate_detection_and_duplicate_gt():
    # two identical GT rows in image 0 (duplicated annotation), one GT in image 1 (missed); three detections in
    # image 0 all take GT row 0 (first max) -> TP, FP, FP; rec 1/3 -> thresholds 0..0.3 give 1.0
    args = _one_class([BOX] * 3, [0.9, 0.8, 0.7], [BOX] * 3, gt_img=[0, 0, 1])
    m = matlab_evaluate(*args, num_classes=1, det_zero_based=False)
    assert m.max_recall[0] == pytest.approx(1 / 3)
    assert m.ap[0] == pytest.approx(4 / 11, abs=1e-12)


def test_matlab_plus_one_iou_is_inclusive_and_upt_strict():
    # human 1..5 x 1..10 vs 1..10 x 1..10: +1 IoU = 50/100 = 0.5 -> TP for Matlab (>=)
    args = _one_class([[1, 1, 5, 10, 21, 21, 30, 30]], [1.0], [BOX])
    assert matlab_evaluate(*args, num_classes=1, det_zero_based=False).ap[0] == pytest.approx(1.0)
    args2 = _one_class([[1, 1, 4, 10, 21, 21, 30, 30]], [1.0], [BOX])
    assert matlab_evaluate(*args2, num_classes=1, det_zero_based=False).ap[0] == 0.0
    # continuous IoU exactly 0.5: (0,0,5,10) vs (0,0,10,10) -> pocket needs > 0.5 -> FP
    args3 = _one_class([[0, 0, 5, 10, 0, 0, 10, 10]], [1.0], [[0, 0, 10, 10, 0, 0, 10, 10]])
    assert upt_evaluate(*args3, num_classes=1).ap[0] == 0.0


def test_known_object_drops_detections_in_images_without_the_object():
    # class 0 (object 0); image 1 has no label for object 0 -> its FP detection is dropped
    args = _one_class([BOX, BOX], [0.5, 0.9], [BOX], det_img=[0, 1], gt_img=[0])
    labels = np.array([[1.0, -1.0]])
    default = matlab_evaluate(*args, num_classes=1, det_zero_based=False)
    ko = matlab_evaluate(*args, num_classes=1, det_zero_based=False, known_object=(labels, np.array([0])))
    assert default.ap[0] == pytest.approx(0.5)  # FP first then TP: prec 0.5 at rec 1 for all 11 thresholds
    assert ko.ap[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="known-object"):
        matlab_evaluate(*args, num_classes=1, known_object=(np.array([[-1.0, 1.0]]), np.array([0])))


def test_bad_input():
    with pytest.raises(ValueError, match="inconsistent lengths"):
        matlab_evaluate([0, 1], [0], [BOX], [1.0], [0], [0], [BOX], num_classes=1)
    with pytest.raises(ValueError, match="det_class must lie"):
        upt_evaluate([0], [3], [BOX], [1.0], [0], [0], [BOX], num_classes=2)


@pytest.mark.parametrize("evaluate", [matlab_evaluate, upt_evaluate])
def test_no_detection_matches_any_gt_image_and_class(evaluate):
    box = [0, 0, 10, 10, 20, 20, 30, 30]
    # class 0 detected in image 0, but the only GT is class 1 in image 1: every AP is 0, nothing raises
    m = evaluate([0, 0], [0, 0], [box, box], [0.9, 0.8], [1], [1], [box], num_classes=2)
    assert m.ap.tolist() == [0.0, 0.0]
