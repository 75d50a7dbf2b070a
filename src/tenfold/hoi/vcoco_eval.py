"""V-COCO agent and role AP, equal to the official s-gupta/v-coco ``vsrl_eval.py`` (``VCOCOeval``), vectorised.

Protocol (``_do_role_eval``, commit 489cc4d): for every action a with roles and every role r, per image, the
detections are ranked by their role score; each is matched to the GT person with the largest IoU with its agent box
(+1 pixel IoU, first on ties); detections matched to a person not annotated in V-COCO (``actions == -1``) are
dropped; it is TP if the person does a, the agent IoU is ``>= 0.5``, the role IoU with that person's role object is
``>= 0.5`` and the person is not yet covered for (a, r) in this image, else FP. When the person has no object for
the role, **scenario 1** counts the role as correct only if the predicted role box is all zeros or all NaN,
**scenario 2** always. npos(a) = persons doing a (also those without a role object). AP is the VOC area under the
interpolated precision envelope (not 11-point). Agent AP (``_do_agent_eval``) is the same without the role test.

Numerics follow the official code: it stores detections and GT boxes as float32, so the IoUs are computed in float32
with its operation order, and recall is ``float32(cumTP) / npos`` in float32; precision is float64 (numpy >= 2,
NEP 50; numpy 1 computed it in float32, a difference below 1e-7). The AP itself is float64 (the official code then
stores it in a float32 array; we do not).

Where the official code fails we return a value: an image without GT persons (``argmax`` of an empty array) makes
its detections FP; an action-role without detections (``amax`` of an empty array) gets AP 0, and one without
positives (``rec > 1`` assertion) gets AP NaN (excluded from the mean). Score ties: the official ``argsort()[::-1]``
is not stable; here ties rank the later detection (and the later image) first, which is what the official code does
on short lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tenfold.hoi.datasets import VCOCOData

__all__ = [
    "VCOCODetections",
    "VCOCOMetrics",
    "pairs_to_vcoco_detections",
    "vcoco_agent_ap",
    "vcoco_detections",
    "vcoco_role_ap",
]


@dataclass(frozen=True)
class VCOCODetections:
    """Detections of person-centric action/role predictions (the official pickle, as arrays).

    Attributes:
        image_id: (D,) COCO image id of each detected person.
        agent_boxes: (D, 4) person box xyxy.
        agent_scores: (D, A) agent score of each action (NaN = not predicted).
        role_boxes: (D, A, 2, 4) predicted object box of each action and role (NaN or zeros = no object).
        role_scores: (D, A, 2) role score (NaN = not predicted; such entries are skipped).
    """

    image_id: np.ndarray
    agent_boxes: np.ndarray
    agent_scores: np.ndarray
    role_boxes: np.ndarray
    role_scores: np.ndarray

    def __post_init__(self) -> None:
        d = len(self.image_id)
        a = self.agent_scores.shape[1] if self.agent_scores.ndim == 2 else -1
        want = {"agent_boxes": (d, 4), "agent_scores": (d, a), "role_boxes": (d, a, 2, 4), "role_scores": (d, a, 2)}
        for k, shape in want.items():
            if getattr(self, k).shape != shape or a < 0:
                raise ValueError(f"VCOCODetections.{k} must have shape {shape} for {d} detections, got "
                                 f"{getattr(self, k).shape}")  # fmt: skip


@dataclass(frozen=True)
class VCOCOMetrics:
    """Per action (and role) AP of one V-COCO evaluation.

    Attributes:
        ap: (A, 2) role AP (NaN where the action has no such role) or (A,) agent AP.
        npos: (A,) positives of each action.
        names: ``"action-role"`` name of each finite entry of ``ap``, row-major (agent AP: the action names).
    """

    ap: np.ndarray
    npos: np.ndarray
    names: tuple[str, ...]

    @property
    def mAP(self) -> float:  # noqa: N802
        """Mean over the finite APs (the official ``np.nanmean`` of the role AP table)."""
        finite = self.ap[np.isfinite(self.ap)]
        return float(finite.mean()) if finite.size else float("nan")


def vcoco_detections(
    dets: Sequence[Mapping], actions: Sequence[str], roles: Sequence[Sequence[str]]
) -> VCOCODetections:
    """Convert the official detection list to :class:`VCOCODetections` (float32, as the official code stores it).

    Each dict has ``image_id``, ``person_box``, the ``{action}_agent`` score and ``{action}_{role}`` =
    [x1, y1, x2, y2, score] (``_collect_detections_for_image``).

    Raises:
        ValueError: naming the detection and key that is missing or malformed.
    """
    n, na = len(dets), len(actions)
    img = np.zeros(n, dtype=np.int64)
    ab = np.zeros((n, 4), dtype=np.float32)
    ags = np.zeros((n, na), dtype=np.float32)
    rb = np.zeros((n, na, 2, 4), dtype=np.float32)
    rs = np.zeros((n, na, 2), dtype=np.float32)
    for i, det in enumerate(dets):
        try:
            img[i] = det["image_id"]
            ab[i] = det["person_box"]
            for a, act in enumerate(actions):
                for j, role in enumerate(roles[a]):
                    if role == "agent":
                        ags[i, a] = det[f"{act}_{role}"]
                    else:
                        v = np.asarray(det[f"{act}_{role}"], dtype=np.float32)
                        rb[i, a, j - 1], rs[i, a, j - 1] = v[:4], v[4]
        except (KeyError, ValueError, TypeError, IndexError) as err:
            raise ValueError(f"detection {i}: missing or malformed entry ({err!r})") from None
    return VCOCODetections(img, ab, ags, rb, rs)


def _overlap32(boxes: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Official ``get_overlap`` in float32, broadcast over leading axes: IoU (+1 pixel) of ``boxes`` with ``ref``."""
    one, zero = np.float32(1.0), np.float32(0.0)
    iw = np.maximum(np.minimum(boxes[..., 2], ref[..., 2]) - np.maximum(boxes[..., 0], ref[..., 0]) + one, zero)
    ih = np.maximum(np.minimum(boxes[..., 3], ref[..., 3]) - np.maximum(boxes[..., 1], ref[..., 1]) + one, zero)
    inters = iw * ih
    uni = (
        (ref[..., 2] - ref[..., 0] + one) * (ref[..., 3] - ref[..., 1] + one)
        + (boxes[..., 2] - boxes[..., 0] + one) * (boxes[..., 3] - boxes[..., 1] + one)
        - inters
    )
    return inters / uni


def _voc_ap_area(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC area under the precision envelope with sentinels (0, 0) and (1, 0) (official ``voc_ap``)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _match_persons(gt: VCOCOData, dets: VCOCODetections) -> dict[str, np.ndarray]:
    """Per detection of a GT image: its best GT person (global index), agent IoU, and the flat GT person tables."""
    ims = gt.images
    ids = np.array([im.image_id for im in ims], dtype=np.int64)
    pos = np.searchsorted(ids, dets.image_id)
    known = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == dets.image_id) if len(ids) else pos < 0
    person = [im.labels == 0 for im in ims]
    n_p = np.array([int(p.sum()) for p in person], dtype=np.int64)
    start = np.cumsum(n_p) - n_p
    na = len(gt.actions)
    p_box = np.concatenate([im.boxes[p] for im, p in zip(ims, person, strict=True)] + [np.zeros((0, 4))])
    p_act = np.concatenate([im.actions[p] for im, p in zip(ims, person, strict=True)] + [np.zeros((0, na), int)])
    p_role = -np.ones((len(p_box), na, 2, 4), dtype=np.float32)
    k = 0
    for im, p in zip(ims, person, strict=True):
        r = im.roles[p]
        has = r >= 0
        boxes32 = im.boxes.astype(np.float32)
        p_role[k : k + len(r)][has] = boxes32[r[has]]
        k += len(r)
    p_box32 = p_box.astype(np.float32)
    d_idx = np.flatnonzero(known)
    img_of = pos[d_idx]
    cnt = n_p[img_of]
    jmax = np.full(len(d_idx), -1, dtype=np.int64)
    ovmax = np.full(len(d_idx), -np.inf, dtype=np.float32)
    has = cnt > 0
    if has.any():
        dh, ch = d_idx[has], cnt[has]
        rep = np.repeat(np.arange(len(dh)), ch)
        g = np.repeat(start[img_of[has]], ch) + (np.arange(int(ch.sum())) - np.repeat(np.cumsum(ch) - ch, ch))
        ov = _overlap32(p_box32[g], dets.agent_boxes.astype(np.float32)[dh[rep]])
        seg = np.cumsum(ch) - ch
        m = np.maximum.reduceat(np.where(np.isnan(ov), -np.inf, ov), seg)
        first = np.minimum.reduceat(np.where(ov == np.repeat(m, ch), np.arange(len(ov)), len(ov)), seg)
        # all-NaN overlaps: numpy's argmax returns the first NaN (index 0 of the image) with max NaN
        nan_all = ~np.isfinite(m)
        first = np.where(nan_all, seg, first)
        jmax[has], ovmax[has] = g[first], np.where(nan_all, np.float32(np.nan), m).astype(np.float32)
    return {"det": d_idx, "img": img_of, "jmax": jmax, "ovmax": ovmax, "p_act": p_act, "p_role": p_role}


def _evaluate(
    gt: VCOCOData, dets: VCOCODetections, ar: list[tuple[int, int]], use_role: bool, scenario: int, thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """AP of each (action, role) in ``ar`` and the per-action npos."""
    na = len(gt.actions)
    if dets.agent_scores.shape[1] != na:
        raise ValueError(f"detections have {dets.agent_scores.shape[1]} actions, the ground truth {na}")
    mt = _match_persons(gt, dets)
    d, jmax, ovmax = mt["det"], mt["jmax"], mt["ovmax"]
    p_act = mt["p_act"]
    npos = (p_act == 1).sum(axis=0).astype(np.float32)
    ignored = np.zeros(len(d), dtype=bool)
    ok = jmax >= 0
    ignored[ok] = (p_act[jmax[ok]] == -1).any(axis=1)
    aps = np.zeros(len(ar))
    for k, (a, r) in enumerate(ar):
        score = (dets.role_scores[d, a, r] if use_role else dets.agent_scores[d, a]).astype(np.float32)
        keep = ~np.isnan(score) & ~ignored
        dk, jk, ok_k, sk = d[keep], jmax[keep], ovmax[keep], score[keep]
        ik = mt["img"][keep]
        has_p = jk >= 0
        true_act = np.zeros(len(dk), dtype=bool)
        true_act[has_p] = p_act[jk[has_p], a] == 1
        if use_role:
            gt_role = np.full((len(dk), 4), -1.0, dtype=np.float32)
            gt_role[has_p] = mt["p_role"][jk[has_p], a, r]
            pred = dets.role_boxes[dk, a, r].astype(np.float32)
            no_gt = (gt_role == -1).all(axis=1)
            empty = (pred == 0).all(axis=1) | np.isnan(pred).all(axis=1)
            none_ov = empty.astype(np.float32) if scenario == 1 else np.ones(len(dk), dtype=np.float32)
            with np.errstate(invalid="ignore"):
                ov_role = np.where(no_gt, none_ov, _overlap32(gt_role, pred))
                role_ok = ov_role >= thresh
        else:
            role_ok = np.ones(len(dk), dtype=bool)
        with np.errstate(invalid="ignore"):
            cand = true_act & (ok_k >= thresh) & role_ok
        # per image: descending score, ties later detection first; the first candidate of each person is TP
        order = np.lexsort((-dk, -sk.astype(np.float64), ik))
        tp = np.zeros(len(dk), dtype=bool)
        oc = order[cand[order]]
        _, first = np.unique(jk[oc], return_index=True)
        tp[oc[first]] = True
        if len(dk) == 0 or npos[a] == 0:
            aps[k] = 0.0 if npos[a] > 0 else np.nan
            continue
        # pooled ranking over the per-image lists: descending score, ties later entry of the concatenation first
        concat = np.empty(len(dk), dtype=np.int64)
        concat[order] = np.arange(len(dk))
        rank = np.lexsort((-concat, -sk.astype(np.float64)))
        t = tp[rank].astype(np.float32)
        ctp, cfp = np.cumsum(t), np.cumsum(np.float32(1.0) - t)
        rec = (ctp / np.float32(npos[a])).astype(np.float64)
        prec = ctp.astype(np.float64) / np.maximum(ctp.astype(np.float64) + cfp, np.finfo(np.float64).eps)
        aps[k] = _voc_ap_area(rec, prec)
    return aps, npos


def vcoco_role_ap(gt: VCOCOData, dets: VCOCODetections, *, scenario: int = 1, ovr_thresh: float = 0.5) -> VCOCOMetrics:
    """V-COCO role AP (AP_role), scenario 1 or 2, equal to the official ``_do_role_eval``.

    Args:
        gt: ground truth from :func:`tenfold.hoi.datasets.read_vcoco`.
        dets: detections (:func:`vcoco_detections` converts the official pickle); detections of images not in
            ``gt`` are ignored.
        scenario: 1 (a missing role object must be predicted as an empty box) or 2 (any prediction is correct).
        ovr_thresh: inclusive IoU threshold of the agent and the role box.

    Returns:
        :class:`VCOCOMetrics` with ``ap`` (A, 2), NaN for actions without that role.

    Raises:
        ValueError: on an unknown scenario or detections whose action count differs from the ground truth.
    """
    if scenario not in (1, 2):
        raise ValueError(f"scenario must be 1 or 2, got {scenario!r}")
    ar = [(a, r) for a, rn in enumerate(gt.roles) for r in range(len(rn) - 1)]
    aps, npos = _evaluate(gt, dets, ar, True, scenario, ovr_thresh)
    table = np.full((len(gt.actions), 2), np.nan)
    for (a, r), v in zip(ar, aps, strict=True):
        table[a, r] = v
    names = tuple(f"{gt.actions[a]}-{gt.roles[a][r + 1]}" for a, r in ar)
    return VCOCOMetrics(table, npos.astype(np.int64), names)


def vcoco_agent_ap(gt: VCOCOData, dets: VCOCODetections, *, ovr_thresh: float = 0.5) -> VCOCOMetrics:
    """V-COCO agent AP of every action, equal to the official ``_do_agent_eval``.

    Note that the official "Average Agent AP" divides the NaN-free sum by the number of actions, which equals
    :attr:`VCOCOMetrics.mAP` unless some action has no positives.

    Raises:
        ValueError: on detections whose action count differs from the ground truth.
    """
    ar = [(a, 0) for a in range(len(gt.actions))]
    aps, npos = _evaluate(gt, dets, ar, False, 1, ovr_thresh)
    return VCOCOMetrics(aps, npos.astype(np.int64), tuple(gt.actions))


def pairs_to_vcoco_detections(
    image_ids: Sequence[int],
    human_boxes: Sequence[np.ndarray],
    pair_humans: Sequence[np.ndarray],
    object_boxes: Sequence[np.ndarray],
    pair_scores: Sequence[np.ndarray],
    roles: Sequence[Sequence[str]],
) -> VCOCODetections:
    """Turn per-image pairwise action scores into person-centric :class:`VCOCODetections`.

    The rule (the common two-stage practice, e.g. iCAN / VSG-Net; UPT's ``cache_vcoco`` instead writes one entry
    per (pair, action)): one detection per detected human that has at least one pair; for every action a,

    * agent score = the maximum over the human's pairs of the pair's score of a (NaN if no pair scores a);
    * for every role r of a (``roles[a][1:]``): role box = the object box of the pair with that maximum (the first
      such pair on ties), role score = that maximum. A pair predicts an action, not a role, so every role of a
      two-role action (e.g. ``eat``: obj, instr) gets the same best pair;
    * actions without a role object (``roles[a] == ("agent",)``) get only the agent score (role scores NaN).

    NaN pair scores mean "not predicted". Humans are identified by ``pair_humans`` (an index into the image's
    ``human_boxes``), not by box equality.

    Args:
        image_ids: COCO image id of each image.
        human_boxes: per image (H, 4) detected human boxes xyxy (the pixels of the ground truth).
        pair_humans: per image (P,) index of each pair's human into ``human_boxes``.
        object_boxes: per image (P, 4) object box of each pair.
        pair_scores: per image (P, A) score of each pair and action (NaN = not scored).
        roles: role names of each action, ``("agent", ...)`` as :class:`~tenfold.hoi.datasets.VCOCOData.roles`.

    Returns:
        :class:`VCOCODetections` (float64), detections ordered by image then human index.

    Raises:
        ValueError: on lists of different lengths, or arrays of the wrong shape or out-of-range human indices
            (naming the image).
    """
    n = len(image_ids)
    if not (len(human_boxes) == len(pair_humans) == len(object_boxes) == len(pair_scores) == n):
        raise ValueError("image_ids, human_boxes, pair_humans, object_boxes and pair_scores must have equal lengths")
    na = len(roles)
    has_role = np.array([len(r) > 1 for r in roles], dtype=bool)
    img, ab, ags, rb, rs = [], [], [], [], []
    for i in range(n):
        hb = np.asarray(human_boxes[i], dtype=np.float64).reshape(-1, 4)
        ph = np.asarray(pair_humans[i], dtype=np.int64).reshape(-1)
        ob = np.asarray(object_boxes[i], dtype=np.float64)
        sc = np.asarray(pair_scores[i], dtype=np.float64)
        p = len(ph)
        if ob.shape != (p, 4) or sc.shape != (p, na):
            raise ValueError(
                f"image {i}: object_boxes must be ({p}, 4) and pair_scores ({p}, {na}), got {ob.shape}, {sc.shape}"
            )
        if p and (ph.min() < 0 or ph.max() >= len(hb)):
            raise ValueError(f"image {i}: pair_humans must index the {len(hb)} human boxes")
        for h in np.unique(ph):
            rows = np.flatnonzero(ph == h)
            s = sc[rows]
            finite = np.isfinite(s)
            best = np.argmax(np.where(finite, s, -np.inf), axis=0)  # first maximum on ties
            top = s[best, np.arange(na)]
            top = np.where(finite.any(axis=0), top, np.nan)
            box = ob[rows[best]]  # (A, 4)
            role_ok = has_role & np.isfinite(top)
            r_s = np.full((na, 2), np.nan)
            r_b = np.full((na, 2, 4), np.nan)
            for j in range(2):
                on = role_ok & np.array([len(r) > j + 1 for r in roles], dtype=bool)
                r_s[on, j] = top[on]
                r_b[on, j] = box[on]
            img.append(int(image_ids[i]))
            ab.append(hb[h])
            ags.append(top)
            rb.append(r_b)
            rs.append(r_s)
    if not img:
        return VCOCODetections(
            np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros((0, na)), np.zeros((0, na, 2, 4)), np.zeros((0, na, 2))
        )
    return VCOCODetections(np.array(img, np.int64), np.stack(ab), np.stack(ags), np.stack(rb), np.stack(rs))
