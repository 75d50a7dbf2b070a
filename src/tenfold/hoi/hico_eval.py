"""HICO-DET evaluation, official Matlab convention (ho-rcnn ``eval_one.m`` / ``VOCevaldet_bboxpair.m``).

Partial implementation (issue 17 item 1): the Matlab per-class core and the QPIC/CDN convention. The UPT/pocket
convention, Matlab mAP driver and known-object setting, json readers and V-COCO are not written yet.
"""

from __future__ import annotations

import numpy as np


def voc_ap_11(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP: mean over t in {0, 0.1, ..., 1} of max precision with recall >= t.

    Args:
        rec: (N,) recall after each ranked detection.
        prec: (N,) precision after each ranked detection.

    Returns:
        The AP; a threshold with no point of recall >= t contributes 0.
    """
    rec, prec = np.asarray(rec, dtype=np.float64), np.asarray(prec, dtype=np.float64)
    if rec.shape != prec.shape or rec.ndim != 1:
        raise ValueError(f"rec and prec must be 1-D of equal length, got {rec.shape} and {prec.shape}")
    if rec.size == 0:
        return 0.0
    # suffix max of precision, indexed by the first point reaching each threshold (rec is non-decreasing)
    suffix = np.maximum.accumulate(prec[::-1])[::-1]
    thresholds = np.arange(0.0, 1.1, 0.1)
    first = np.searchsorted(rec, thresholds, side="left")
    ok = first < rec.size
    return float(np.where(ok, suffix[np.minimum(first, rec.size - 1)], 0.0).sum() / 11.0)


def _iou_plus1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU with the +1 pixel convention between (N, 4) and (M, 4) xyxy boxes; (N, M)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def matlab_class_ap(
    det_image: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_image: np.ndarray,
    gt_boxes: np.ndarray,
    min_overlap: float = 0.5,
) -> tuple[float, float]:
    """AP of one HOI class, official Matlab rule (``VOCevaldet_bboxpair``).

    Detections of all images are ranked by score (stable, descending); each takes the GT pair of its image with the
    largest min(IoU_h, IoU_o) (+1 convention); TP if that value >= ``min_overlap`` and that GT is unused, else FP.
    ``npos`` = number of GT rows. Boxes are one-based pixel coordinates as in the Matlab code.

    Args:
        det_image: (D,) image index of each detection.
        det_boxes: (D, 8) human xyxy then object xyxy.
        det_scores: (D,) scores.
        gt_image: (G,) image index of each GT pair row.
        gt_boxes: (G, 8) human xyxy then object xyxy.
        min_overlap: overlap threshold (inclusive).

    Returns:
        (AP, max recall).
    """
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 8)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 8)
    det_image, gt_image = np.asarray(det_image).reshape(-1), np.asarray(gt_image).reshape(-1)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    if not (len(det_image) == len(det_boxes) == len(det_scores)) or len(gt_image) != len(gt_boxes):
        raise ValueError("detection / GT arrays have inconsistent lengths")
    npos = len(gt_image)
    if npos == 0 or len(det_scores) == 0:
        return 0.0, 0.0
    order = np.argsort(-det_scores, kind="stable")
    used = np.zeros(npos, dtype=bool)
    tp = np.zeros(len(order))
    ov = np.minimum(_iou_plus1(det_boxes[:, :4], gt_boxes[:, :4]), _iou_plus1(det_boxes[:, 4:], gt_boxes[:, 4:]))
    ov = np.where(det_image[:, None] == gt_image[None, :], ov, -np.inf)
    for rank, d in enumerate(order):
        j = int(np.argmax(ov[d]))
        if ov[d, j] >= min_overlap and not used[j]:
            used[j] = True
            tp[rank] = 1.0
    ctp = np.cumsum(tp)
    rec = ctp / npos
    prec = ctp / np.arange(1, len(tp) + 1)
    return voc_ap_11(rec, prec), float(rec[-1])


def qpic_evaluate(
    preds: list[dict[str, np.ndarray]],
    gts: list[dict[str, np.ndarray]],
    correct_mat: np.ndarray,
    rare_triplets: set[tuple[int, int, int]],
    max_hois: int = 100,
) -> dict[str, float]:
    """QPIC / CDN Python convention (``datasets/hico_eval.py``): top-``max_hois`` per image, category-gated +1 IoU.

    Args:
        preds: per image ``boxes`` (N, 4), ``labels`` (N,), ``verb_scores`` (P, V), ``sub_ids`` (P,), ``obj_ids`` (P,).
        gts: per image ``boxes`` (M, 4), ``labels`` (M,), ``hois`` (H, 3) rows (subject id, object id, verb).
        correct_mat: (V, num_objects) 0/1 validity of verb for object.
        rare_triplets: (subject_cat, object_cat, verb) triplets counted as rare; the rest of the GT triplets non-rare.
        max_hois: predictions kept per image after sorting by score.

    Returns:
        ``mAP``, ``mAP rare``, ``mAP non-rare`` and per-triplet ``ap`` keyed ``"s,o,v"``.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction images but {len(gts)} GT images")
    sum_gts: dict[tuple[int, int, int], int] = {}
    for g in gts:
        for s, o, v in np.asarray(g["hois"], dtype=np.int64).reshape(-1, 3):
            t = (int(g["labels"][s]), int(g["labels"][o]), int(v))
            sum_gts[t] = sum_gts.get(t, 0) + 1
    tps: dict[tuple[int, int, int], list[float]] = {t: [] for t in sum_gts}
    scores: dict[tuple[int, int, int], list[float]] = {t: [] for t in sum_gts}
    for p, g in zip(preds, gts, strict=True):
        vs = np.asarray(p["verb_scores"], dtype=np.float64)
        num_v = vs.shape[1]
        sub = np.repeat(np.asarray(p["sub_ids"]), num_v)
        obj = np.repeat(np.asarray(p["obj_ids"]), num_v)
        verb = np.tile(np.arange(num_v), vs.shape[0])
        plab = np.asarray(p["labels"])
        sc = vs.ravel() * (correct_mat[verb, plab[obj]] if len(obj) else 0)
        order = np.argsort(-sc, kind="stable")[:max_hois]  # Python sort(reverse=True) is stable
        sub, obj, verb, sc = sub[order], obj[order], verb[order], sc[order]
        gboxes, glab = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4), np.asarray(g["labels"])
        ghois = np.asarray(g["hois"], dtype=np.int64).reshape(-1, 3)
        # first occurrence index of each GT hoi row (the official ``list.index`` returns the first equal entry)
        first = np.array(
            [next(k for k in range(len(ghois)) if (ghois[k] == ghois[i]).all()) for i in range(len(ghois))]
        )
        used = np.zeros(len(ghois), dtype=bool)
        if len(gboxes):
            iou = _iou_plus1(gboxes, np.asarray(p["boxes"], dtype=np.float64).reshape(-1, 4))
            iou = np.where(glab[:, None] == plab[None, :], iou, 0.0)
            iou = np.where(iou >= 0.5, iou, 0.0)
        for k in range(len(sc)):
            t = (int(plab[sub[k]]), int(plab[obj[k]]), int(verb[k]))
            if t not in sum_gts:
                continue
            hit = 0.0
            if len(gboxes) and len(ghois):
                mo = np.minimum(iou[ghois[:, 0], sub[k]], iou[ghois[:, 1], obj[k]])
                mo = np.where(ghois[:, 2] == verb[k], mo, 0.0)
                if mo.max() > 0:
                    j = first[int(np.argmax(mo))]
                    if not used[j]:
                        used[j] = True
                        hit = 1.0
            tps[t].append(hit)
            scores[t].append(float(sc[k]))
    ap: dict[str, float] = {}
    rare, non_rare = [], []
    for t, n in sum_gts.items():
        tp = np.asarray(tps[t])
        if tp.size:
            o = np.argsort(-np.asarray(scores[t]), kind="stable")
            ctp = np.cumsum(tp[o])
            a = voc_ap_11(ctp / n, ctp / np.arange(1, tp.size + 1))
        else:
            a = 0.0
        ap[",".join(map(str, t))] = a
        (rare if t in rare_triplets else non_rare).append(a)
    return {
        "mAP": float(np.mean(list(ap.values()))),
        "mAP rare": float(np.mean(rare)) if rare else float("nan"),
        "mAP non-rare": float(np.mean(non_rare)) if non_rare else float("nan"),
        "ap": ap,
    }
