"""``matlab_evaluate`` against a line-by-line port of the official ho-rcnn Matlab evaluation (default and KO)."""

import json
from pathlib import Path

import numpy as np
import pytest

from tenfold.hoi.hico_eval import matlab_evaluate, matlab_gt_rows, matlab_train_counts

FIX = Path(__file__).parents[1] / "fixtures" / "hico_eval"


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mode", ["def", "ko"])
def test_matches_matlab_port(seed: int, mode: str):
    z = np.load(FIX / f"matlab_case{seed}.npz")
    nc = len(z["class_object"])
    gi, gc, gb = matlab_gt_rows(json.loads(str(z["test_json"])), nc)
    counts = matlab_train_counts(json.loads(str(z["train_json"])), nc)
    np.testing.assert_array_equal(counts, z["ref_num_inst"])
    ko = (z["image_labels"], z["class_object"]) if mode == "ko" else None
    m = matlab_evaluate(
        z["det_image"], z["det_class"], z["det_boxes"], z["det_scores"], gi, gc, gb,
        num_classes=nc, train_counts=counts, known_object=ko,
    )  # fmt: skip
    np.testing.assert_allclose(m.ap, z[f"{mode}_ref_ap"], rtol=0, atol=1e-9)
    has_gt = np.bincount(gc, minlength=nc) > 0  # Matlab's recall is 0/0 = NaN without GT; ours is 0
    np.testing.assert_allclose(m.max_recall[has_gt], z[f"{mode}_ref_rec"][has_gt], rtol=0, atol=1e-9)
    np.testing.assert_allclose([m.mAP, m.mAP_rare, m.mAP_non_rare], z[f"{mode}_ref_map"], rtol=0, atol=1e-9)


def test_gt_rows_rules():
    box = {"x1": 1, "y1": 2, "x2": 3, "y2": 4}
    other = [5, 6, 7, 8]
    images = [
        [
            {"id": 2, "bboxhuman": [box], "bboxobject": [other], "connection": [[1, 1], [1, 1]], "invis": 0},
            {"id": 3, "bboxhuman": [box], "bboxobject": [other], "connection": [[1, 1]], "invis": 1},
            {"id": 2, "bboxhuman": [other], "bboxobject": [box], "connection": [[1, 1]], "invis": 0},
        ]
    ]
    gi, gc, gb = matlab_gt_rows(images, 4)
    assert gi.tolist() == [0] and gc.tolist() == [1]  # the later id-2 entry replaced the earlier one
    np.testing.assert_array_equal(gb, [[5, 6, 7, 8, 1, 2, 3, 4]])
    assert matlab_train_counts(images, 4).tolist() == [0, 3, 0, 0]
    with pytest.raises(ValueError, match="connection"):
        matlab_gt_rows([[{"id": 1, "bboxhuman": [box], "bboxobject": [box], "connection": [[2, 1]]}]], 4)
    with pytest.raises(ValueError, match="HOI id 9"):
        matlab_train_counts([[{"id": 9, "connection": [[1, 1]]}]], 4)
