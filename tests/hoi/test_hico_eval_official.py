"""Parity of the QPIC-convention evaluator with the official QPIC ``HICOEvaluator`` recording."""

from pathlib import Path

import numpy as np
import torch

from tenfold.hoi import qpic_evaluate

FIX = Path(__file__).parents[1] / "fixtures" / "hico_eval" / "qpic_case1.pt"


def test_qpic_matches_official():
    fx = torch.load(FIX, weights_only=True)
    n = sum(1 for k in fx if k.startswith("gt") and k.endswith("_hois"))
    preds = [
        {k: fx[f"pred{i}_{k}"].numpy() for k in ("boxes", "labels", "verb_scores", "sub_ids", "obj_ids")}
        for i in range(n)
    ]
    gts = [{k: fx[f"gt{i}_{k}"].numpy() for k in ("boxes", "labels", "hois")} for i in range(n)]
    rare = {tuple(int(x) for x in r) for r in fx["rare"]}
    out = qpic_evaluate(preds, gts, fx["correct_mat"].numpy(), rare)
    ref = fx["ref_map"].numpy()
    np.testing.assert_allclose([out["mAP"], out["mAP rare"], out["mAP non-rare"]], ref, rtol=0, atol=1e-9)
    keys = [",".join(str(int(x)) for x in k) for k in fx["ref_ap_keys"]]
    np.testing.assert_allclose([out["ap"][k] for k in keys], fx["ref_ap"].numpy(), rtol=0, atol=1e-9)
