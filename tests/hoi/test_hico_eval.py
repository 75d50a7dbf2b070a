"""Hand-computed checks of the Matlab-convention HICO-DET AP."""

import numpy as np
import pytest

from tenfold.hoi import matlab_class_ap, voc_ap_11

BOX = [1, 1, 10, 10, 21, 21, 30, 30]


def test_voc_ap_11_hand():
    # ranks: TP, FP, TP with npos 2 -> rec 0.5, 0.5, 1.0; prec 1, 0.5, 2/3
    # t <= 0.5 (6 thresholds) -> max prec 1; t in 0.6..1.0 (5) -> 2/3
    ap = voc_ap_11(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11, abs=1e-12)


def test_duplicate_detection_and_duplicate_gt():
    # Two identical GT rows in image 0 (duplicated annotation), one GT in image 1 (missed).
    gt_boxes = np.array([BOX, BOX, BOX])
    gt_image = np.array([0, 0, 1])
    # Three detections in image 0: all match (first-max tie -> GT 0 each time for identical GTs).
    # Matlab rule: best GT is GT row 0 for every detection -> only the first is TP, the other two FP.
    det = np.array([BOX, BOX, BOX])
    ap, rec = matlab_class_ap(np.array([0, 0, 0]), det, np.array([0.9, 0.8, 0.7]), gt_image, gt_boxes)
    # rec: 1/3, 1/3, 1/3; prec 1, .5, 1/3 -> thresholds 0, .1, .2, .3 reach (rec 1/3 >= .3) -> 4 x 1.0
    assert rec == pytest.approx(1 / 3)
    assert ap == pytest.approx(4 / 11, abs=1e-12)


def test_plus_one_iou_threshold():
    # Human box 1..10 (area 100) vs 1..5 x 1..10 (area 50): +1 IoU = 50/100 = 0.5 -> TP (inclusive).
    gt = np.array([BOX])
    det = np.array([[1, 1, 5, 10, 21, 21, 30, 30]])
    ap, _ = matlab_class_ap(np.array([0]), det, np.array([1.0]), np.array([0]), gt)
    assert ap == pytest.approx(1.0)
    det2 = np.array([[1, 1, 4, 10, 21, 21, 30, 30]])  # IoU 0.4 -> FP
    ap2, _ = matlab_class_ap(np.array([0]), det2, np.array([1.0]), np.array([0]), gt)
    assert ap2 == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="inconsistent"):
        matlab_class_ap(np.array([0, 1]), np.array([BOX]), np.array([1.0]), np.array([0]), np.array([BOX]))
