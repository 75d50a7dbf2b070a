"""HICO-DET evaluation in the three conventions in use: official Matlab, UPT/pocket, QPIC/CDN/GEN-VLKT.

All three rank detections by score, match each detection to one ground-truth (GT) human-object pair, count a GT pair
at most once and average an 11-point interpolated precision over the classes. They differ in the details (see
``docs/hoi_eval.md``), and the published numbers depend on them:

* **Matlab** (ywchao/ho-rcnn ``evaluation/eval_one.m`` + ``VOCevaldet_bboxpair.m``, commit a9789e6): per HOI class,
  detections of all images are ranked together; each takes the GT pair of its image with the largest
  ``min(IoU_h, IoU_o)`` (+1 pixel IoU, first index on ties); TP if that value is ``>= 0.5`` and that GT is still
  free, else FP (an already-taken best GT makes an FP even if another free GT overlaps). Known-object setting: only
  detections in images whose image-level labels contain the object. :func:`matlab_evaluate`; the GT rows and
  training counts of ``anno_bbox.mat``-style entries: :func:`matlab_gt_rows`, :func:`matlab_train_counts`.
* **UPT / pocket** (fredzzhang/upt ``utils.py`` ``test_hico`` with fredzzhang/pocket ``BoxPairAssociation`` and
  ``DetectionAPMeter(algorithm='11P')``, commits 1927430 / bff2870): per image and class each detection is assigned
  to the GT with the highest min-IoU (torchvision IoU, no +1); a match needs ``> 0.5`` (strict); of the detections
  assigned to one GT only the highest-scoring is TP. :func:`upt_evaluate`.
* **QPIC / CDN / GEN-VLKT** (hitachi-rd-cv/qpic ``datasets/hico_eval.py`` commit 257f314; YueLiao/CDN
  ``datasets/hico_eval.py`` commit 71c5702 for the triplet NMS): per image the (pair, verb) scores are masked by
  ``correct_mat``, the top 100 kept, optionally filtered by triplet NMS, then matched greedily; box IoU is +1 and
  category-gated; classes are the (subject, object, verb) triplets present in the GT. :func:`qpic_evaluate`.

The matching of each convention reduces to "best GT per detection, then the first detection in rank order per
GT", which is computed for all images and classes at once with sorting and segment reductions: no Python loop over
detections (9,658 images x 600 classes take 2-3 s, ``benchmarks/bench_hico_eval.py``).

Ties in score: every function here breaks them by input position (stable sort). The official codes use stable
sorts where noted (Matlab ``sort``, Python ``list.sort``) and numpy/torch unstable sorts elsewhere (QPIC's
``np.argsort(-score)`` over pooled detections, pocket's ``argsort(descending=True)``); results with exactly equal
scores across detections of one class can then differ from the official ones by the order their sort happens to pick.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: 11 recall thresholds as ``np.arange(0, 1.1, 0.1)`` (QPIC/CDN): 0.6 and 0.7 are one ulp above 0.6 and 0.7.
ARANGE_THRESHOLDS = np.arange(0.0, 1.1, 0.1)
#: 11 recall thresholds as ``torch.linspace(0, 1, 11)`` (pocket) and Matlab's ``0:0.1:1``: both fill the first half
#: as ``0.1 * i`` and the second half as ``1 - 0.1 * (10 - i)``, so 0.6 and 0.7 are the doubles nearest 0.6 and 0.7.
LINSPACE_THRESHOLDS = np.array([0.1 * i if i < 5 else 1.0 - 0.1 * (10 - i) for i in range(11)])

_CONVENTIONS = ("matlab", "qpic", "torchvision")


@dataclass(frozen=True)
class HOIMetrics:
    """Per-class AP and the Full / Rare / Non-rare means of one evaluation.

    Attributes:
        ap: (K,) float64 AP of each class, in [0, 1].
        max_recall: (K,) recall after the last ranked detection of each class (0 without detections).
        classes: (K,) HOI class ids, or (K, 3) (subject_cat, object_cat, verb) triplets for the QPIC convention.
        rare: (K,) bool, classes counted in ``mAP_rare``.
        non_rare: (K,) bool, classes counted in ``mAP_non_rare`` (QPIC: classes in neither set count only in Full).
    """

    ap: np.ndarray
    max_recall: np.ndarray
    classes: np.ndarray
    rare: np.ndarray
    non_rare: np.ndarray

    @property
    def mAP(self) -> float:  # noqa: N802 - the name every HOI paper uses
        """Mean AP over all K classes (Full)."""
        return float(self.ap.mean()) if self.ap.size else float("nan")

    @property
    def mAP_rare(self) -> float:  # noqa: N802
        """Mean AP over the rare classes (NaN if there are none)."""
        return float(self.ap[self.rare].mean()) if self.rare.any() else float("nan")

    @property
    def mAP_non_rare(self) -> float:  # noqa: N802
        """Mean AP over the non-rare classes (NaN if there are none)."""
        return float(self.ap[self.non_rare].mean()) if self.non_rare.any() else float("nan")


def voc_ap_11(rec: np.ndarray, prec: np.ndarray, thresholds: np.ndarray = ARANGE_THRESHOLDS) -> float:
    """VOC2007 11-point interpolated AP: ``sum_t max{prec : rec >= t} / 11`` (0 where no point reaches ``t``).

    Args:
        rec: (N,) recall after each ranked detection (non-decreasing).
        prec: (N,) precision after each ranked detection.
        thresholds: the 11 recall thresholds, :data:`ARANGE_THRESHOLDS` (QPIC) or :data:`LINSPACE_THRESHOLDS`
            (pocket, Matlab); they differ in the last bit at 0.6 and 0.7, which matters when a recall equals them.

    Returns:
        The AP.

    Raises:
        ValueError: if ``rec`` and ``prec`` are not 1-D arrays of equal length.
    """
    rec, prec = np.asarray(rec, dtype=np.float64), np.asarray(prec, dtype=np.float64)
    if rec.shape != prec.shape or rec.ndim != 1:
        raise ValueError(f"rec and prec must be 1-D of equal length, got {rec.shape} and {prec.shape}")
    return float(_segment_ap11(rec, prec, np.array([0]), np.array([rec.size]), thresholds)[0])


def _segment_ap11(
    rec: np.ndarray, prec: np.ndarray, starts: np.ndarray, counts: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """11-point AP of consecutive segments ``[starts[k], starts[k] + counts[k])`` of (rec, prec); 0 when empty."""
    ap = np.zeros(len(starts))
    nonempty = counts > 0
    if not nonempty.any():
        return ap
    s = starts[nonempty]
    for t in thresholds:
        best = np.maximum.reduceat(np.where(rec >= t, prec, -1.0), s)
        ap[nonempty] += np.where(best >= 0, best, 0.0) / 11.0
    return ap


def _iou_aligned(a: np.ndarray, b: np.ndarray, convention: str) -> np.ndarray:
    """IoU of box ``a[k]`` with box ``b[k]`` for (P, 4) xyxy arrays; (P,).

    ``matlab``: +1 pixel widths, zero unless both intersection sides are positive (ho-rcnn, also CDN's pair NMS).
    ``qpic``: +1 pixel widths, zero when ``max(y1) >= min(y2)`` or ``max(x1) >= min(x2)`` (QPIC ``compute_IOU``).
    ``torchvision``: continuous coordinates, no +1 (``torchvision.ops.box_iou``, used by pocket).
    """
    x1, y1 = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    x2, y2 = np.minimum(a[:, 2], b[:, 2]), np.minimum(a[:, 3], b[:, 3])
    one = 0.0 if convention == "torchvision" else 1.0
    iw, ih = x2 - x1 + one, y2 - y1 + one
    if convention == "matlab":
        inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    elif convention == "qpic":
        inter = np.where((x1 >= x2) | (y1 >= y2), 0.0, iw * ih)
    else:
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    return inter / (area_a + area_b - inter)


def _pairs_by_key(det_key: np.ndarray, gt_key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (detection, GT) index pairs with equal keys, GT indices ascending within each detection.

    Returns:
        di: (P,) detection index of each pair, non-decreasing.
        gi: (P,) GT index of each pair.
        counts: (D,) number of pairs of each detection.
    """
    gorder = np.argsort(gt_key, kind="stable")
    gsorted = gt_key[gorder]
    lo = np.searchsorted(gsorted, det_key, side="left")
    counts = np.searchsorted(gsorted, det_key, side="right") - lo
    di = np.repeat(np.arange(len(det_key)), counts)
    offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return di, gorder[np.repeat(lo, counts) + offset], counts


def _best_pair(ov: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per detection, the largest overlap of its pairs and the index (into the pair list) of its first maximum.

    Detections without pairs get overlap ``-inf`` and index -1.
    """
    best_ov = np.full(len(counts), -np.inf)
    best = np.full(len(counts), -1, dtype=np.int64)
    has = counts > 0
    if has.any():
        starts = (np.cumsum(counts) - counts)[has]
        m = np.maximum.reduceat(ov, starts)
        pos = np.where(ov == np.repeat(m, counts[has]), np.arange(len(ov)), len(ov))
        best_ov[has], best[has] = m, np.minimum.reduceat(pos, starts)
    return best_ov, best


def _first_in_group(group: np.ndarray, valid: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Bool mask: the valid entries that come first, in ``order``, among valid entries of the same group."""
    tp = np.zeros(len(group), dtype=bool)
    o = order[valid[order]]
    _, first = np.unique(group[o], return_index=True)
    tp[o[first]] = True
    return tp


def _class_ap(
    cls: np.ndarray,
    score: np.ndarray,
    tp: np.ndarray,
    tiebreak: np.ndarray,
    npos: np.ndarray,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class AP and max recall of detections with class index ``cls`` in ``[0, len(npos))``.

    Detections are ranked per class by descending score, ties by ascending ``tiebreak``; rec = cumTP / npos (0 where
    npos is 0), prec = cumTP / rank.
    """
    k = len(npos)
    order = np.lexsort((tiebreak, -score, cls))
    c, t = cls[order], tp[order].astype(np.float64)
    counts = np.bincount(c, minlength=k)
    starts = np.cumsum(counts) - counts
    seg_start = np.repeat(starts, counts)
    ctp_all = np.cumsum(t)
    base = np.concatenate([[0.0], ctp_all])[seg_start]
    ctp = ctp_all - base
    rank = np.arange(len(c)) - seg_start + 1
    denom = np.asarray(npos, dtype=np.float64)[c]
    rec = np.divide(ctp, denom, out=np.zeros_like(ctp), where=denom > 0)
    prec = ctp / rank
    ap = _segment_ap11(rec, prec, starts, counts, thresholds)
    max_rec = np.zeros(k)
    last = starts + counts - 1
    max_rec[counts > 0] = rec[last[counts > 0]]
    return ap, max_rec


def _flat_best_gt(
    det_image: np.ndarray,
    det_class: np.ndarray,
    det_boxes: np.ndarray,
    gt_image: np.ndarray,
    gt_class: np.ndarray,
    gt_boxes: np.ndarray,
    convention: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Per detection, the GT row of its image and class with the largest ``min(IoU_h, IoU_o)`` (first on ties).

    Returns:
        best_ov: (D,) that overlap (``-inf`` without GT of the image and class).
        group: (D,) index of that GT row (-1 without GT).
    """
    n_img_key = int(max(det_image.max(initial=0), gt_image.max(initial=0))) + 1
    di, gi, counts = _pairs_by_key(det_class * n_img_key + det_image, gt_class * n_img_key + gt_image)
    ov = np.minimum(
        _iou_aligned(det_boxes[di, :4], gt_boxes[gi, :4], convention),
        _iou_aligned(det_boxes[di, 4:], gt_boxes[gi, 4:], convention),
    )
    best_ov, best = _best_pair(ov, counts)
    if len(gi) == 0:  # no detection shares an image and class with a GT row
        return best_ov, best
    return best_ov, np.where(best >= 0, gi[np.maximum(best, 0)], -1)


def _metrics(
    cls: np.ndarray,
    score: np.ndarray,
    tp: np.ndarray,
    tiebreak: np.ndarray,
    npos: np.ndarray,
    thresholds: np.ndarray,
    classes: np.ndarray,
    rare: np.ndarray,
    non_rare: np.ndarray,
) -> HOIMetrics:
    """Rank, accumulate and average each class (:func:`_class_ap`) and assemble the :class:`HOIMetrics`."""
    ap, max_rec = _class_ap(cls, score, tp, tiebreak, npos, thresholds)
    return HOIMetrics(ap, max_rec, classes, rare, non_rare)


def _flat_inputs(
    det_image: np.ndarray,
    det_class: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_image: np.ndarray,
    gt_class: np.ndarray,
    gt_boxes: np.ndarray,
    num_classes: int,
) -> tuple[np.ndarray, ...]:
    """Validate and convert the flat detection / GT arrays of the Matlab and UPT conventions."""
    det_boxes = np.asarray(det_boxes, dtype=np.float64)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64)
    det_image, det_class = np.asarray(det_image, dtype=np.int64), np.asarray(det_class, dtype=np.int64)
    gt_image, gt_class = np.asarray(gt_image, dtype=np.int64), np.asarray(gt_class, dtype=np.int64)
    det_scores = np.asarray(det_scores, dtype=np.float64)
    det_boxes = det_boxes.reshape(0, 8) if det_boxes.size == 0 else det_boxes
    gt_boxes = gt_boxes.reshape(0, 8) if gt_boxes.size == 0 else gt_boxes
    if det_boxes.ndim != 2 or det_boxes.shape[1] != 8 or gt_boxes.ndim != 2 or gt_boxes.shape[1] != 8:
        raise ValueError(
            f"det_boxes and gt_boxes must be (N, 8) human xyxy + object xyxy, got {det_boxes.shape} and "
            f"{gt_boxes.shape}"
        )
    if not (det_image.shape == det_class.shape == det_scores.shape == (len(det_boxes),)):
        raise ValueError(
            f"detection arrays have inconsistent lengths: det_image {det_image.shape}, det_class "
            f"{det_class.shape}, det_scores {det_scores.shape}, det_boxes {det_boxes.shape}"
        )
    if not (gt_image.shape == gt_class.shape == (len(gt_boxes),)):
        raise ValueError(
            f"GT arrays have inconsistent lengths: gt_image {gt_image.shape}, gt_class {gt_class.shape}, "
            f"gt_boxes {gt_boxes.shape}"
        )
    for name, c in (("det_class", det_class), ("gt_class", gt_class)):
        if c.size and (c.min() < 0 or c.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got values in [{c.min()}, {c.max()}]")
    return det_image, det_class, det_boxes, det_scores, gt_image, gt_class, gt_boxes


def _rare_masks(train_counts: np.ndarray | None, num_classes: int, rare_threshold: int) -> tuple[np.ndarray, ...]:
    """Rare (< ``rare_threshold`` training instances) and non-rare masks; all False without counts."""
    if train_counts is None:
        return np.zeros(num_classes, dtype=bool), np.zeros(num_classes, dtype=bool)
    counts = np.asarray(train_counts)
    if counts.shape != (num_classes,):
        raise ValueError(f"train_counts must have shape ({num_classes},), got {counts.shape}")
    return counts < rare_threshold, counts >= rare_threshold


def matlab_evaluate(
    det_image: np.ndarray,
    det_class: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_image: np.ndarray,
    gt_class: np.ndarray,
    gt_boxes: np.ndarray,
    *,
    num_classes: int = 600,
    train_counts: np.ndarray | None = None,
    known_object: tuple[np.ndarray, np.ndarray] | None = None,
    det_zero_based: bool = True,
    min_overlap: float = 0.5,
    rare_threshold: int = 10,
) -> HOIMetrics:
    """HICO-DET mAP, official Matlab protocol (ho-rcnn ``eval_one.m`` / ``VOCevaldet_bboxpair.m``).

    Per class c, the detections of class c of all images are ranked by descending score (stable: ties keep image
    order, then input order). A detection takes the GT pair of class c in its image with the largest
    ``min(IoU_h, IoU_o)`` (+1 pixel IoU; first GT on ties); it is TP if that value is ``>= min_overlap`` and the GT
    is unused, else FP. ``npos`` = number of GT rows of class c (each ``connection`` row of ``anno_bbox.mat``,
    ``invis`` entries removed). AP = 11-point interpolation with Matlab's ``0:0.1:1``; no GT -> AP 0.

    Args:
        det_image: (D,) image index of each detection.
        det_class: (D,) HOI class in [0, num_classes).
        det_boxes: (D, 8) human xyxy then object xyxy, in the cached-detection convention (zero-based pixel
            indices, as UPT's ``cache_hico`` writes them) unless ``det_zero_based=False``.
        det_scores: (D,) scores.
        gt_image: (G,) image index of each GT pair row.
        gt_class: (G,) HOI class of each GT row.
        gt_boxes: (G, 8) one-based pixel boxes, as stored in ``anno_bbox.mat``.
        num_classes: number of HOI classes (600).
        train_counts: (num_classes,) training instances per class; rare = ``< rare_threshold``.
        known_object: ``(image_labels, class_object)`` for the Known-Object setting: ``image_labels`` (num_classes,
            num_images) HICO image-level labels (``anno_test``: 1 positive, 0 ambiguous, -1 negative, NaN unknown);
            ``class_object`` (num_classes,) object index of each class. A detection of class c is kept only in
            images where some class with the same object has label 1.
        det_zero_based: add 1 to the detection boxes first (what ``eval_one.m`` does).
        min_overlap: inclusive min-IoU threshold.
        rare_threshold: training-count limit of the rare classes.

    Returns:
        :class:`HOIMetrics` over the ``num_classes`` classes. ``max_recall`` is 0 for a class without GT (Matlab's
        ``REC`` is 0/0 = NaN there when the class has detections); AP is 0 in both.

    Raises:
        ValueError: on inconsistent array shapes, class ids out of range, or (Known-Object) a GT pair in an image
            whose labels do not contain its object (the Matlab code asserts this).
    """
    det_image, det_class, det_boxes, det_scores, gt_image, gt_class, gt_boxes = _flat_inputs(
        det_image, det_class, det_boxes, det_scores, gt_image, gt_class, gt_boxes, num_classes
    )
    if det_zero_based:
        det_boxes = det_boxes + 1.0
    position = np.arange(len(det_image))
    if known_object is not None:
        labels, class_object = (np.asarray(x) for x in known_object)
        if labels.ndim != 2 or labels.shape[0] != num_classes or class_object.shape != (num_classes,):
            raise ValueError(
                f"known_object must be (image_labels ({num_classes}, num_images), class_object ({num_classes},)), "
                f"got {labels.shape} and {class_object.shape}"
            )
        n_img = labels.shape[1]
        for name, im in (("det_image", det_image), ("gt_image", gt_image)):
            if im.size and (im.min() < 0 or im.max() >= n_img):
                raise ValueError(f"{name} must lie in [0, {n_img}) (columns of image_labels), got max {im.max()}")
        n_obj = int(class_object.max()) + 1
        present = np.zeros((n_obj, n_img), dtype=bool)
        np.logical_or.at(present, class_object, labels == 1)
        gt_ok = present[class_object[gt_class], gt_image]
        if not gt_ok.all():
            k = int(np.flatnonzero(~gt_ok)[0])
            raise ValueError(
                f"known-object setting: GT row {k} (class {gt_class[k]}, image {gt_image[k]}) lies in an image whose "
                "image-level labels do not contain its object"
            )
        keep = present[class_object[det_class], det_image]
        det_image, det_class, det_boxes = det_image[keep], det_class[keep], det_boxes[keep]
        det_scores, position = det_scores[keep], position[keep]
    best_ov, group = _flat_best_gt(det_image, det_class, det_boxes, gt_image, gt_class, gt_boxes, "matlab")
    order = np.lexsort((position, det_image, -det_scores, det_class))
    tp = _first_in_group(group, best_ov >= min_overlap, order)
    npos = np.bincount(gt_class, minlength=num_classes)
    # Matlab concatenates each class's detections image by image before its stable sort
    tiebreak = np.empty(len(position), dtype=np.int64)
    tiebreak[np.lexsort((position, det_image))] = np.arange(len(position))
    rare, non_rare = _rare_masks(train_counts, num_classes, rare_threshold)
    return _metrics(
        det_class, det_scores, tp, tiebreak, npos, LINSPACE_THRESHOLDS, np.arange(num_classes), rare, non_rare
    )


def _mat_box(b: object) -> list[float]:
    """A box of ``anno_bbox.mat`` as [x1, y1, x2, y2]: a mapping with those keys or a 4-sequence."""
    if isinstance(b, Mapping):
        return [float(b[k]) for k in ("x1", "y1", "x2", "y2")]
    v = [float(x) for x in b]  # type: ignore[union-attr]
    if len(v) != 4:
        raise ValueError(f"a box must have 4 coordinates, got {b!r}")
    return v


def matlab_gt_rows(
    images: Sequence[Sequence[Mapping]], num_classes: int = 600
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat GT rows for :func:`matlab_evaluate` from ``anno_bbox.mat``-style entries, as ``eval_one.m`` builds them.

    Each image is a list of HOI entries ``{"id": 1-based HOI id, "bboxhuman": [box], "bboxobject": [box],
    "connection": [[h, o], ...] (1-based), "invis": 0/1}`` (boxes as ``{"x1", "y1", "x2", "y2"}`` or 4-sequences).
    Invisible entries are skipped; one row per ``connection`` row (duplicated rows stay duplicated); when an image
    has two entries with the same id, the later one replaces the earlier (``gt_all{hoi_id, i} = boxes``).

    Args:
        images: the entries of each image (``bbox_test(i).hoi``).
        num_classes: number of HOI classes.

    Returns:
        ``(gt_image, gt_class, gt_boxes)``: (G,), (G,) zero-based class, (G, 8) one-based pixel boxes.

    Raises:
        ValueError: naming the image and entry with an id out of range or a connection outside its boxes.
    """
    img, cls, boxes = [], [], []
    for i, entries in enumerate(images):
        by_id: dict[int, np.ndarray] = {}
        for j, e in enumerate(entries):
            if e.get("invis", 0):
                continue
            hid = int(e["id"])
            if not 1 <= hid <= num_classes:
                raise ValueError(f"image {i}, entry {j}: HOI id {hid} outside 1..{num_classes}")
            bh = [_mat_box(b) for b in e["bboxhuman"]]
            bo = [_mat_box(b) for b in e["bboxobject"]]
            rows = []
            for h, o in np.asarray(e["connection"], dtype=np.int64).reshape(-1, 2):
                if not (1 <= h <= len(bh) and 1 <= o <= len(bo)):
                    raise ValueError(f"image {i}, entry {j}: connection ({h}, {o}) outside its boxes")
                rows.append(bh[h - 1] + bo[o - 1])
            by_id.pop(hid, None)  # a repeated id replaces the earlier entry
            by_id[hid] = np.array(rows, dtype=np.float64).reshape(-1, 8)
        for hid in sorted(by_id):
            b = by_id[hid]
            img.append(np.full(len(b), i))
            cls.append(np.full(len(b), hid - 1))
            boxes.append(b)
    if not img:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, 8))
    return np.concatenate(img).astype(np.int64), np.concatenate(cls).astype(np.int64), np.concatenate(boxes)


def matlab_train_counts(images: Sequence[Sequence[Mapping]], num_classes: int = 600) -> np.ndarray:
    """(num_classes,) training instances per class as ``eval_one.m`` counts them (rare = ``< 10``).

    Every visible entry adds its number of ``connection`` rows (repeated ids and duplicated rows included).

    Raises:
        ValueError: on an id out of range.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    for i, entries in enumerate(images):
        for j, e in enumerate(entries):
            if e.get("invis", 0):
                continue
            hid = int(e["id"])
            if not 1 <= hid <= num_classes:
                raise ValueError(f"image {i}, entry {j}: HOI id {hid} outside 1..{num_classes}")
            counts[hid - 1] += len(np.asarray(e["connection"]).reshape(-1, 2))
    return counts


def upt_evaluate(
    det_image: np.ndarray,
    det_class: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_image: np.ndarray,
    gt_class: np.ndarray,
    gt_boxes: np.ndarray,
    *,
    num_classes: int = 600,
    num_gt: np.ndarray | None = None,
    train_counts: np.ndarray | None = None,
    min_iou: float = 0.5,
    rare_threshold: int = 10,
) -> HOIMetrics:
    """HICO-DET mAP, UPT's evaluation path (pocket ``BoxPairAssociation`` + ``DetectionAPMeter(algorithm='11P')``).

    Per image and HOI class, each detection is assigned to the GT pair with the highest ``min(IoU_h, IoU_o)``
    (torchvision IoU, no +1; first GT on ties); it matches if that value is ``> min_iou`` (strict); of the
    detections matched to one GT only the highest-scoring (first in input order on ties) is TP. Then per class over
    all images: rec = cumTP / num_gt, prec = cumTP / rank, 11-point AP with ``torch.linspace(0, 1, 11)``; classes
    without detections get AP 0. mAP = mean over all ``num_classes``.

    Args:
        det_image: (D,) image index of each detection.
        det_class: (D,) HOI class in [0, num_classes).
        det_boxes: (D, 8) human xyxy then object xyxy, same coordinates as the GT (UPT: original image pixels).
        det_scores: (D,) scores.
        gt_image: (G,) image index of each GT pair.
        gt_class: (G,) HOI class of each GT pair.
        gt_boxes: (G, 8) GT boxes.
        num_classes: number of HOI classes (600).
        num_gt: (num_classes,) GT count per class (UPT: ``dataset.anno_interaction``); default: count of GT rows.
        train_counts: (num_classes,) training instances per class; rare = ``< rare_threshold``.
        min_iou: strict min-IoU threshold.
        rare_threshold: training-count limit of the rare classes.

    Returns:
        :class:`HOIMetrics` over the ``num_classes`` classes.

    Raises:
        ValueError: on inconsistent shapes, class ids out of range, or more TP than ``num_gt`` in a class (pocket's
            sanity check).
    """
    det_image, det_class, det_boxes, det_scores, gt_image, gt_class, gt_boxes = _flat_inputs(
        det_image, det_class, det_boxes, det_scores, gt_image, gt_class, gt_boxes, num_classes
    )
    best_ov, group = _flat_best_gt(det_image, det_class, det_boxes, gt_image, gt_class, gt_boxes, "torchvision")
    position = np.arange(len(det_image))
    tp = _first_in_group(group, best_ov > min_iou, np.lexsort((position, -det_scores)))
    npos = np.bincount(gt_class, minlength=num_classes) if num_gt is None else np.asarray(num_gt, dtype=np.float64)
    if npos.shape != (num_classes,):
        raise ValueError(f"num_gt must have shape ({num_classes},), got {npos.shape}")
    n_tp = np.bincount(det_class[tp], minlength=num_classes)
    if (n_tp > npos).any():
        bad = np.flatnonzero(n_tp > npos).tolist()
        raise ValueError(f"classes {bad}: more true positives than num_gt")
    rare, non_rare = _rare_masks(train_counts, num_classes, rare_threshold)
    return _metrics(
        det_class, det_scores, tp, position, npos, LINSPACE_THRESHOLDS, np.arange(num_classes), rare, non_rare
    )


def _triplet_nms(
    group: np.ndarray,
    score: np.ndarray,
    position: np.ndarray,
    boxes_s: np.ndarray,
    boxes_o: np.ndarray,
    thresh: float,
    alpha: float,
    beta: float,
) -> np.ndarray:
    """Greedy pair NMS inside each group (CDN ``pairwise_nms``); bool keep mask.

    Within a group the highest score is kept and every remaining entry with ``IoU_s^alpha * IoU_o^beta > thresh``
    (+1 IoU) is suppressed, repeatedly. Ties: the later position first (the reversed ascending sort of the official
    code). Groups of equal size are processed together as (G, m, m) overlap blocks.
    """
    n = len(group)
    keep = np.zeros(n, dtype=bool)
    order = np.lexsort((-position, -score, group))
    g = group[order]
    starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]])) if n else np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.concatenate([starts, [n]]))
    for m in np.unique(sizes):
        rows = starts[sizes == m]
        chunk = max(1, 2_000_000 // int(m * m))
        for c in range(0, len(rows), chunk):
            idx = order[rows[c : c + chunk, None] + np.arange(m)]  # (Gm, m) in NMS order
            gm = idx.shape[0]
            a, b = np.repeat(idx, m, axis=1).ravel(), np.tile(idx, (1, m)).ravel()
            ovr = np.power(_iou_aligned(boxes_s[a], boxes_s[b], "matlab"), alpha) * np.power(
                _iou_aligned(boxes_o[a], boxes_o[b], "matlab"), beta
            )
            ovr = ovr.reshape(gm, m, m)
            alive = np.ones((gm, m), dtype=bool)
            later = np.arange(m)
            for k in range(m - 1):
                sup = (ovr[:, k, :] > thresh) & (later > k) & alive[:, k : k + 1]
                alive &= ~sup
            keep[idx[alive]] = True
    return keep


def qpic_evaluate(
    preds: Sequence[Mapping[str, np.ndarray]],
    gts: Sequence[Mapping[str, np.ndarray]],
    correct_mat: np.ndarray,
    rare_triplets: set[tuple[int, int, int]],
    non_rare_triplets: set[tuple[int, int, int]] | None = None,
    *,
    max_hois: int | None = 100,
    triplet_nms: bool = False,
    nms_thresh: float = 0.7,
    nms_alpha: float = 1.0,
    nms_beta: float = 0.5,
    overlap_iou: float = 0.5,
) -> HOIMetrics:
    """HICO-DET mAP, QPIC / CDN / GEN-VLKT Python convention (``HICOEvaluator``), with CDN's optional triplet NMS.

    Per image: every (pair, verb) is a candidate with score ``verb_score * correct_mat[verb, object_label]``; the
    candidates are sorted by score (stable) and the first ``max_hois`` kept; with ``triplet_nms`` a greedy NMS runs
    inside each (subject_cat, object_cat, verb) triplet with overlap ``IoU_s^alpha * IoU_o^beta`` and suppression
    above ``nms_thresh`` (CDN ``--use_nms_filter --thres_nms 0.7 --nms_alpha 1 --nms_beta 0.5``). Matching in score
    order: a prediction matches the GT hois of its verb whose subject and object boxes both have IoU
    ``>= overlap_iou`` with its own (+1 IoU, 0 across categories); the one of largest min-IoU (first on ties, and
    duplicated GT rows count as their first copy) is taken if still free (TP), else FP. Predictions whose triplet is
    not in the GT are ignored. AP = 11-point with ``np.arange(0, 1.1, 0.1)`` per GT triplet.

    Args:
        preds: per image ``boxes`` (N, 4), ``labels`` (N,), ``verb_scores`` (P, V), ``sub_ids`` (P,), ``obj_ids`` (P,)
            (QPIC's ``PostProcessHOI`` output, boxes in original image pixels).
        gts: per image ``boxes`` (M, 4), ``labels`` (M,), ``hois`` (H, 3) rows (subject id, object id, verb).
        correct_mat: (V, num_objects) 0/1 validity of verb for object (``corre_hico.npy``).
        rare_triplets: triplets counted in ``mAP_rare``.
        non_rare_triplets: triplets counted in ``mAP_non_rare``; default: every GT triplet not in ``rare_triplets``.
            CDN passes both lists from the training counts, so a GT triplet absent from training is in neither.
        max_hois: predictions kept per image (None: all).
        triplet_nms: apply CDN's triplet NMS after the top-``max_hois`` cut.
        nms_thresh: NMS suppression threshold.
        nms_alpha: exponent of the subject IoU in the NMS overlap.
        nms_beta: exponent of the object IoU in the NMS overlap.
        overlap_iou: inclusive IoU threshold of each box.

    Returns:
        :class:`HOIMetrics` over the GT triplets, sorted; ``classes`` is (K, 3).

    Raises:
        ValueError: on mismatched image counts, missing keys or inconsistent per-image shapes.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction images but {len(gts)} GT images")
    correct_mat = np.asarray(correct_mat, dtype=np.float64)
    if correct_mat.ndim != 2:
        raise ValueError(f"correct_mat must be (num_verbs, num_objects), got shape {correct_mat.shape}")
    p_img, p_sub, p_obj, p_verb, p_score, p_pos = [], [], [], [], [], []
    pboxes, plabels, gboxes, glabels, g_img, g_sub, g_obj, g_verb = [], [], [], [], [], [], [], []
    n_pbox = n_gbox = 0
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        for name, d, keys in (("preds", p, ("boxes", "labels", "verb_scores", "sub_ids", "obj_ids")),
                              ("gts", g, ("boxes", "labels", "hois"))):  # fmt: skip
            missing = [k for k in keys if k not in d]
            if missing:
                raise ValueError(f"{name}[{i}] lacks keys {missing}")
        boxes = np.asarray(p["boxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(p["labels"], dtype=np.int64).reshape(-1)
        vs = np.asarray(p["verb_scores"], dtype=np.float64)
        sub, obj = np.asarray(p["sub_ids"], dtype=np.int64), np.asarray(p["obj_ids"], dtype=np.int64)
        vs = np.zeros((len(sub), 0)) if vs.size == 0 and vs.ndim != 2 else vs
        if len(labels) != len(boxes) or vs.ndim != 2 or not (len(vs) == len(sub) == len(obj)):
            raise ValueError(
                f"preds[{i}]: boxes {boxes.shape}, labels {labels.shape}, verb_scores {vs.shape}, sub_ids "
                f"{sub.shape}, obj_ids {obj.shape} are inconsistent"
            )
        if len(sub) and (max(sub.max(), obj.max()) >= len(boxes) or min(sub.min(), obj.min()) < 0):
            raise ValueError(f"preds[{i}]: sub_ids/obj_ids index outside the {len(boxes)} boxes")
        nv = vs.shape[1]
        s, o = np.repeat(sub, nv), np.repeat(obj, nv)
        v = np.tile(np.arange(nv), len(sub))
        sc = vs.ravel() * correct_mat[v, labels[o]]
        p_img.append(np.full(len(sc), i))
        p_sub.append(s + n_pbox)
        p_obj.append(o + n_pbox)
        p_verb.append(v)
        p_score.append(sc)
        p_pos.append(np.arange(len(sc)))
        pboxes.append(boxes)
        plabels.append(labels)
        n_pbox += len(boxes)
        gb = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)
        gl = np.asarray(g["labels"], dtype=np.int64).reshape(-1)
        gh = np.asarray(g["hois"], dtype=np.int64).reshape(-1, 3)
        if len(gl) != len(gb) or (len(gh) and (gh[:, :2].max() >= len(gb) or gh[:, :2].min() < 0)):
            raise ValueError(f"gts[{i}]: {len(gb)} boxes, {len(gl)} labels, hois index up to {gh[:, :2].max()}")
        g_img.append(np.full(len(gh), i))
        g_sub.append(gh[:, 0] + n_gbox)
        g_obj.append(gh[:, 1] + n_gbox)
        g_verb.append(gh[:, 2])
        gboxes.append(gb)
        glabels.append(gl)
        n_gbox += len(gb)

    def cat(xs: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype=dtype)

    img, sub, obj, verb = (cat(x, np.int64) for x in (p_img, p_sub, p_obj, p_verb))
    score, pos = cat(p_score, np.float64), cat(p_pos, np.int64)
    pb = np.concatenate(pboxes) if pboxes else np.zeros((0, 4))
    pl = cat(plabels, np.int64)
    gimg, gsub, gobj, gverb = (cat(x, np.int64) for x in (g_img, g_sub, g_obj, g_verb))
    gb = np.concatenate(gboxes) if gboxes else np.zeros((0, 4))
    gl = cat(glabels, np.int64)

    # per-image stable descending sort by score, first max_hois
    order = np.lexsort((pos, -score, img))
    img_o = img[order]
    starts = np.searchsorted(img_o, img_o, side="left")
    rank = np.arange(len(order)) - starts
    sel = order if max_hois is None else order[rank < max_hois]
    img, sub, obj, verb, score, pos = img[sel], sub[sel], obj[sel], verb[sel], score[sel], pos[sel]
    pos = np.arange(len(sel)) - np.searchsorted(img, img, side="left")  # position in the top-k list

    n_lab = int(max(pl.max(initial=0), gl.max(initial=0))) + 1
    n_verb = int(max(verb.max(initial=0), gverb.max(initial=0))) + 1

    def code(s_lab: np.ndarray, o_lab: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (s_lab * n_lab + o_lab) * n_verb + v

    p_code = code(pl[sub], pl[obj], verb)
    if triplet_nms:
        keep = _triplet_nms(
            img * (n_lab * n_lab * n_verb) + p_code, score, pos, pb[sub], pb[obj], nms_thresh, nms_alpha, nms_beta
        )
        img, sub, obj, verb, score, pos, p_code = (x[keep] for x in (img, sub, obj, verb, score, pos, p_code))

    g_code = code(gl[gsub], gl[gobj], gverb)
    trip_codes, npos = np.unique(g_code, return_counts=True)
    t_idx = np.searchsorted(trip_codes, p_code)
    in_gt = (t_idx < len(trip_codes)) & (trip_codes[np.minimum(t_idx, len(trip_codes) - 1)] == p_code)
    img, sub, obj, score, pos, t_idx = (x[in_gt] for x in (img, sub, obj, score, pos, t_idx))
    gt_t = np.searchsorted(trip_codes, g_code)

    # duplicated GT rows (same image, subject, object, verb) count as their first copy (``list.index``)
    _, first_idx, inv = np.unique(
        np.stack([gimg, gsub, gobj, gverb], axis=1), axis=0, return_index=True, return_inverse=True
    )
    canonical = first_idx[inv.reshape(-1)]
    n_t = len(trip_codes)
    di, gi, counts = _pairs_by_key(img * n_t + t_idx, gimg * n_t + gt_t)
    iou_s = _iou_aligned(pb[sub[di]], gb[gsub[gi]], "qpic")
    iou_o = _iou_aligned(pb[obj[di]], gb[gobj[gi]], "qpic")
    ov = np.where((iou_s >= overlap_iou) & (iou_o >= overlap_iou), np.minimum(iou_s, iou_o), -1.0)
    best_ov, best = _best_pair(ov, counts)
    group = np.where(best >= 0, canonical[gi[np.maximum(best, 0)]], -1)
    tp = _first_in_group(group, best_ov >= 0, np.lexsort((pos, -score, img)))

    labels_of = np.stack([trip_codes // n_verb // n_lab, trip_codes // n_verb % n_lab, trip_codes % n_verb], axis=1)
    trips = [tuple(int(x) for x in t) for t in labels_of]
    rare = np.array([t in rare_triplets for t in trips], dtype=bool)
    if non_rare_triplets is None:
        non_rare = ~rare
    else:
        non_rare = np.array([t in non_rare_triplets and t not in rare_triplets for t in trips], dtype=bool)
    return _metrics(t_idx, score, tp, img * (len(pos) + 1) + pos, npos, ARANGE_THRESHOLDS, labels_of, rare, non_rare)
