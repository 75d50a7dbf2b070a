"""Readers of the HICO-DET and V-COCO annotation files, and the class metadata the evaluators and models need.

HICO-DET comes in two json layouts, both read by :func:`read_hicodet` (the layout is detected from the content):

* **QPIC / CDN / GEN-VLKT** (``trainval_hico.json``, ``test_hico.json``): a list of images ``{"file_name",
  "annotations": [{"bbox": [x1, y1, x2, y2], "category_id": COCO id}], "hoi_annotation": [{"subject_id",
  "object_id", "category_id": verb id (1-based), "hoi_category_id": HOI id (1-based, optional)}]}``.
* **fredzzhang/hicodet** (``instances_train2015.json``, used by UPT / pocket): ``{"annotation": [{"boxes_h",
  "boxes_o", "hoi", "object", "verb"}], "filenames", "size": [[w, h]], "objects", "verbs", "correspondence",
  ...}`` with one row per box pair and objects in HICO's alphabetical 80-object order. The map from that order to
  COCO's is read from ``coco80tohico80.json``, which the same repository ships next to the annotation files.

Every record uses the target layout of :func:`tenfold.data.synthetic.hoi.make_hoi`: ``"boxes"`` (M, 4) float32
xyxy pixels (as stored in the file; HICO's are one-based pixel indices), ``"labels"`` (M,) int64 with 0 = person
and otherwise the COCO 80-class index (UPT's convention: class k in 0..79 in COCO order, person = 0), ``"hoi"``
(P, 3) int64 rows ``(human_idx, object_idx, verb)`` with verb in 0..116, humans first.

The class metadata (:class:`HICODetClasses`, :func:`hicodet_classes`) is derived from the annotation file: names
(fredzzhang layout only; the QPIC json carries none), the 600 HOI classes as (verb, object) pairs, the object ->
valid verbs correspondence and per-class pair counts (rare = ``< 10`` in the training file). The only embedded table
is the list of the 10 COCO category ids that the 80-class index skips (12, 26, 29, 30, 45, 66, 68, 69, 71, 83),
i.e. COCO id -> 80-class index = rank among the other 80 ids.

V-COCO: :func:`read_vcoco` reads the s-gupta/v-coco action file (``vcoco_{split}.json``) with the COCO instances
file and builds, per image, what the official ``vsrl_eval.py`` builds in ``_get_vcocodb`` (same box cleaning, same
ignore rule), the input of :func:`tenfold.hoi.vcoco_eval.vcoco_role_ap`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "COCO_SKIPPED_IDS",
    "HICODetClasses",
    "HOIRecord",
    "VCOCOData",
    "VCOCOImage",
    "coco_id_to_index",
    "gt_pairs",
    "hicodet_classes",
    "hoi_classes",
    "read_hicodet",
    "read_vcoco",
]

#: COCO category ids in 1..90 that have no class (the 80-class index is the rank among the remaining ids).
COCO_SKIPPED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
_COCO_VALID_IDS = np.array([i for i in range(1, 91) if i not in COCO_SKIPPED_IDS])
NUM_VERBS, NUM_OBJECTS = 117, 80


def coco_id_to_index(cat_id: int) -> int:
    """COCO category id (1..90) -> 80-class index (0..79, person = 0).

    Raises:
        ValueError: if ``cat_id`` is not one of the 80 COCO ids.
    """
    k = int(np.searchsorted(_COCO_VALID_IDS, cat_id))
    if k >= len(_COCO_VALID_IDS) or _COCO_VALID_IDS[k] != cat_id:
        raise ValueError(f"{cat_id!r} is not a COCO category id (1..90 without {COCO_SKIPPED_IDS})")
    return k


@dataclass(frozen=True)
class HOIRecord:
    """One annotated image.

    Attributes:
        file_name: image file name as stored in the annotation file.
        size: (width, height) in pixels, or None when the file does not store it (QPIC layout).
        target: ``boxes`` (M, 4) float32, ``labels`` (M,) int64, ``hoi`` (P, 3) int64 (see the module docstring).
    """

    file_name: str
    size: tuple[int, int] | None
    target: dict[str, torch.Tensor]


@dataclass(frozen=True)
class HICODetClasses:
    """Class metadata of HICO-DET, derived from an annotation file.

    Attributes:
        hoi: (C, 2) int64 rows ``(verb, object)`` of HOI class c (object = COCO 80-class index); C = 600 on the
            official files. Row order = the file's HOI ids when it stores them (fredzzhang ``hoi``, QPIC
            ``hoi_category_id``), else sorted by (object, verb).
        counts: (C,) int64 box pairs of each class in the file (train file: rare = ``counts < 10``).
        verbs: the 117 verb names (None for the QPIC layout).
        objects: the 80 object names in COCO 80-class order (None for the QPIC layout).
        official_ids: True if the row order follows HOI ids stored in the file.
    """

    hoi: np.ndarray
    counts: np.ndarray
    verbs: tuple[str, ...] | None = None
    objects: tuple[str, ...] | None = None
    official_ids: bool = False
    _lookup: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lookup = np.full((NUM_VERBS, NUM_OBJECTS), -1, dtype=np.int64)
        lookup[self.hoi[:, 0], self.hoi[:, 1]] = np.arange(len(self.hoi))
        object.__setattr__(self, "_lookup", lookup)

    @property
    def num_classes(self) -> int:
        """Number of HOI classes."""
        return len(self.hoi)

    @property
    def correct_mat(self) -> np.ndarray:
        """(117, 80) bool: verb v is valid for object o (QPIC's ``corre_hico.npy`` in COCO object order)."""
        return self._lookup >= 0

    @property
    def object_to_verbs(self) -> list[list[int]]:
        """For each of the 80 objects, its valid verbs (ascending)."""
        return [np.flatnonzero(self.correct_mat[:, o]).tolist() for o in range(NUM_OBJECTS)]

    @property
    def rare(self) -> np.ndarray:
        """(C,) bool: fewer than 10 pairs (meaningful for the training file)."""
        return self.counts < 10

    def hoi_id(self, verb: np.ndarray, obj: np.ndarray) -> np.ndarray:
        """HOI class of (verb, object) pairs; -1 where the combination is not a class."""
        return self._lookup[np.asarray(verb), np.asarray(obj)]


def _bad(path: Path, idx: int | None, fld: str, why: str) -> ValueError:
    where = f"{path}" if idx is None else f"{path}, record {idx}"
    return ValueError(f"{where}, field {fld!r}: {why}")


def _boxes(path: Path, idx: int, fld: str, value: Any) -> np.ndarray:
    try:
        b = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise _bad(path, idx, fld, f"not numeric ({err})") from None
    b = b.reshape(0, 4) if b.size == 0 else b
    if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all():
        raise _bad(path, idx, fld, f"expected finite (N, 4) boxes, got shape {b.shape}")
    return b


def _ints(path: Path, idx: int, fld: str, value: Any, n: int | None = None) -> np.ndarray:
    a = np.asarray(value)
    if a.size == 0:
        a = a.reshape(0).astype(np.int64)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or (a.dtype.kind == "f" and (a == a.round()).all())):
        raise _bad(path, idx, fld, f"expected a list of integers, got {value!r:.80}")
    if n is not None and len(a) != n:
        raise _bad(path, idx, fld, f"expected {n} entries, got {len(a)}")
    return a.astype(np.int64)


def _record(file_name: str, size: tuple[int, int] | None, boxes: np.ndarray, labels: np.ndarray, hoi: np.ndarray):
    return HOIRecord(
        file_name,
        size,
        {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
            "hoi": torch.as_tensor(hoi, dtype=torch.int64).reshape(-1, 3),
        },
    )


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such annotation file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid json ({err})") from None


def _layout(path: Path, data: Any) -> str:
    if isinstance(data, list) and all(isinstance(r, dict) for r in data[:1]):
        if data and not {"file_name", "annotations", "hoi_annotation"} <= set(data[0]):
            missing = sorted({"file_name", "annotations", "hoi_annotation"} - set(data[0]))
            raise _bad(path, 0, missing[0], "missing (QPIC layout: file_name, annotations, hoi_annotation)")
        return "qpic"
    if isinstance(data, dict) and "annotation" in data:
        for k in ("filenames",):
            if k not in data:
                raise _bad(path, None, k, "missing (fredzzhang/hicodet layout)")
        return "fredzzhang"
    raise ValueError(
        f"{path}: unknown HICO-DET layout (expected a list of images with 'hoi_annotation' (QPIC) or a dict with "
        "'annotation' and 'filenames' (fredzzhang/hicodet))"
    )


def _hico_to_coco(path: Path, object_map: str | os.PathLike | Mapping | None) -> np.ndarray:
    """(80,) HICO object index -> COCO 80-class index, from ``coco80tohico80.json`` (keys 1-based COCO-80)."""
    if object_map is None:
        object_map = path.parent / "coco80tohico80.json"
        if not Path(object_map).exists():
            raise ValueError(
                f"{path}: the fredzzhang/hicodet layout stores objects in HICO order; its map to COCO order, "
                f"coco80tohico80.json (shipped with fredzzhang/hicodet), is not next to it; pass object_map="
            )
    src = object_map if isinstance(object_map, Mapping) else _load_json(Path(object_map))
    where = "object_map" if isinstance(object_map, Mapping) else str(object_map)
    try:
        pairs = sorted((int(k), int(v)) for k, v in src.items())
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{where}: expected a mapping COCO-80 index (1-based) -> HICO object index") from None
    if [k for k, _ in pairs] != list(range(1, 81)) or sorted(v for _, v in pairs) != list(range(80)):
        raise ValueError(f"{where}: expected a permutation between 1..80 (COCO-80) and 0..79 (HICO objects)")
    out = np.empty(80, dtype=np.int64)
    for k, v in pairs:
        out[v] = k - 1
    return out


def _dedupe(boxes: np.ndarray, keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows in first-appearance order and the index of each input row into them."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4), np.zeros(0, dtype=np.int64)
    rows = boxes if keys is None else np.concatenate([boxes, keys[:, None].astype(np.float64)], axis=1)
    _, first, inv = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(first, kind="stable")  # unique ids in appearance order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return boxes[np.sort(first)], rank[inv]


def _read_qpic(path: Path, data: list) -> tuple[list[HOIRecord], list[np.ndarray]]:
    records, hoi_ids = [], []
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise _bad(path, i, "<record>", f"expected an object, got {type(r).__name__}")
        for k in ("file_name", "annotations", "hoi_annotation"):
            if k not in r:
                raise _bad(path, i, k, "missing")
        anns, hois = r["annotations"], r["hoi_annotation"]
        if not isinstance(anns, list) or not isinstance(hois, list):
            raise _bad(path, i, "annotations" if not isinstance(anns, list) else "hoi_annotation", "not a list")
        for j, a in enumerate(anns):
            if not isinstance(a, dict) or "bbox" not in a or "category_id" not in a:
                raise _bad(path, i, f"annotations[{j}]", "needs 'bbox' and 'category_id'")
        boxes = _boxes(path, i, "annotations.bbox", [a["bbox"] for a in anns])
        cats = _ints(path, i, "annotations.category_id", [a["category_id"] for a in anns])
        try:
            labels = np.array([coco_id_to_index(int(c)) for c in cats], dtype=np.int64)
        except ValueError as err:
            raise _bad(path, i, "annotations.category_id", str(err)) from None
        rows, hid = [], []
        for j, h in enumerate(hois):
            if not isinstance(h, dict) or not {"subject_id", "object_id", "category_id"} <= set(h):
                raise _bad(path, i, f"hoi_annotation[{j}]", "needs 'subject_id', 'object_id' and 'category_id'")
            s, o, v = (h["subject_id"], h["object_id"], h["category_id"])
            if not all(isinstance(x, int) for x in (s, o, v)):
                raise _bad(path, i, f"hoi_annotation[{j}]", f"ids must be integers, got {(s, o, v)}")
            if not (0 <= s < len(boxes) and 0 <= o < len(boxes)):
                raise _bad(path, i, f"hoi_annotation[{j}].subject_id/object_id", f"outside the {len(boxes)} boxes")
            if labels[s] != 0:
                raise _bad(path, i, f"hoi_annotation[{j}].subject_id", f"box {s} is not a person")
            if not 1 <= v <= NUM_VERBS:
                raise _bad(path, i, f"hoi_annotation[{j}].category_id", f"verb id {v} outside 1..{NUM_VERBS}")
            rows.append((s, o, v - 1))
            hid.append(int(h.get("hoi_category_id", 0)) - 1)
        rows_a = np.array(rows, dtype=np.int64).reshape(-1, 3)
        # humans first: persons referenced as subjects, then the remaining boxes, in file order
        is_h = np.zeros(len(boxes), dtype=bool)
        is_h[rows_a[:, 0]] = True
        perm = np.concatenate([np.flatnonzero(is_h), np.flatnonzero(~is_h)]).astype(np.int64)
        new = np.empty_like(perm)
        new[perm] = np.arange(len(perm))
        rows_a[:, :2] = new[rows_a[:, :2]]
        records.append(_record(str(r["file_name"]), None, boxes[perm], labels[perm], rows_a))
        hoi_ids.append(np.array(hid, dtype=np.int64))
    return records, hoi_ids


def _read_fredzzhang(path: Path, data: dict, object_map) -> tuple[list[HOIRecord], list[np.ndarray], dict]:
    anns, names = data["annotation"], data["filenames"]
    sizes = data.get("size")
    if not isinstance(anns, list) or not isinstance(names, list) or len(anns) != len(names):
        raise _bad(path, None, "annotation", "must be a list with one entry per 'filenames' entry")
    if sizes is not None and (not isinstance(sizes, list) or len(sizes) != len(names)):
        raise _bad(path, None, "size", "must hold one [width, height] per image")
    to_coco = _hico_to_coco(path, object_map)
    corr = None
    if "correspondence" in data:
        c = np.asarray(data["correspondence"])
        if c.ndim != 2 or c.shape[1] != 3:
            raise _bad(path, None, "correspondence", f"expected rows [hoi, object, verb], got shape {c.shape}")
        corr = np.full((NUM_OBJECTS, NUM_VERBS), -1, dtype=np.int64)
        corr[c[:, 1], c[:, 2]] = c[:, 0]
    records, hoi_ids = [], []
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise _bad(path, i, "annotation", f"expected an object, got {type(a).__name__}")
        for k in ("boxes_h", "boxes_o", "hoi", "object", "verb"):
            if k not in a:
                raise _bad(path, i, k, "missing")
        bh, bo = _boxes(path, i, "boxes_h", a["boxes_h"]), _boxes(path, i, "boxes_o", a["boxes_o"])
        n = len(bh)
        if len(bo) != n:
            raise _bad(path, i, "boxes_o", f"{len(bo)} object boxes for {n} human boxes")
        hoi, obj, verb = (_ints(path, i, k, a[k], n) for k in ("hoi", "object", "verb"))
        if n and (obj.min() < 0 or obj.max() >= NUM_OBJECTS):
            raise _bad(path, i, "object", f"object index outside 0..{NUM_OBJECTS - 1}")
        if n and (verb.min() < 0 or verb.max() >= NUM_VERBS):
            raise _bad(path, i, "verb", f"verb index outside 0..{NUM_VERBS - 1}")
        if corr is not None and n and (corr[obj, verb] != hoi).any():
            j = int(np.flatnonzero(corr[obj, verb] != hoi)[0])
            raise _bad(path, i, f"hoi[{j}]", f"{hoi[j]} is not the class of (object {obj[j]}, verb {verb[j]})")
        lab_o = to_coco[obj]
        hb, hidx = _dedupe(bh)
        ob, oidx = _dedupe(bo, lab_o)
        olab = np.zeros(len(ob), dtype=np.int64)
        olab[oidx] = lab_o
        boxes = np.concatenate([hb, ob]) if n else np.zeros((0, 4))
        labels = np.concatenate([np.zeros(len(hb), dtype=np.int64), olab])
        rows = np.stack([hidx, oidx + len(hb), verb], axis=1) if n else np.zeros((0, 3), dtype=np.int64)
        size = None
        if sizes is not None:
            s = sizes[i]
            if not (isinstance(s, list) and len(s) == 2 and all(isinstance(x, int | float) for x in s)):
                raise _bad(path, i, "size", f"expected [width, height], got {s!r}")
            size = (int(s[0]), int(s[1]))
        name = names[i]
        if not isinstance(name, str):
            raise _bad(path, i, "filenames", f"expected a string, got {name!r}")
        records.append(_record(name, size, boxes, labels, rows))
        hoi_ids.append(hoi)
    meta = {}
    for k, n in (("verbs", NUM_VERBS), ("objects", NUM_OBJECTS)):
        v = data.get(k)
        if v is not None:
            if not (isinstance(v, list) and len(v) == n and all(isinstance(x, str) for x in v)):
                raise _bad(path, None, k, f"expected {n} names")
            meta[k] = v
    if "objects" in meta:  # to COCO order
        objs = [""] * NUM_OBJECTS
        for h, c in enumerate(to_coco):
            objs[c] = meta["objects"][h]
        meta["objects"] = objs
    return records, hoi_ids, meta


def _read(anno_file: str | os.PathLike, object_map) -> tuple[list[HOIRecord], list[np.ndarray], dict]:
    path = Path(anno_file)
    data = _load_json(path)
    if _layout(path, data) == "qpic":
        records, ids = _read_qpic(path, data)
        return records, ids, {}
    return _read_fredzzhang(path, data, object_map)


def read_hicodet(
    anno_file: str | os.PathLike, *, object_map: str | os.PathLike | Mapping | None = None
) -> list[HOIRecord]:
    """Read a HICO-DET annotation file in the QPIC or the fredzzhang/hicodet layout (detected from the content).

    All images are returned, also those without annotations (pocket's ``HICODet`` skips them when indexing).
    QPIC layout: box order is persons used as subjects first, then the other boxes in file order. fredzzhang layout:
    the per-pair boxes are merged into unique boxes (humans by coordinates, objects by coordinates and class).

    Args:
        anno_file: path of the json file.
        object_map: fredzzhang layout only: ``coco80tohico80.json`` (path or its dict); default: that file next to
            ``anno_file``.

    Returns:
        One :class:`HOIRecord` per image, in file order.

    Raises:
        ValueError: naming the file, the record index and the field, on an unknown layout or malformed content.
    """
    return _read(anno_file, object_map)[0]


def hicodet_classes(
    anno_file: str | os.PathLike, *, object_map: str | os.PathLike | Mapping | None = None
) -> HICODetClasses:
    """Class metadata (HOI classes, counts, names) derived from a HICO-DET annotation file.

    With HOI ids stored in the file (fredzzhang ``hoi``; QPIC ``hoi_category_id`` on every row) they define the row
    order of :attr:`HICODetClasses.hoi`; the official 600 ids then need every class to occur, as in
    ``trainval_hico.json`` / ``instances_train2015.json``. Without ids, the classes are the (verb, object) pairs
    that occur, sorted by (object, verb) (not the official order).

    Args:
        anno_file: path of the json file.
        object_map: see :func:`read_hicodet`.

    Returns:
        The :class:`HICODetClasses`.

    Raises:
        ValueError: on malformed files, or stored HOI ids that disagree with the (verb, object) pairs.
    """
    path = Path(anno_file)
    records, ids, meta = _read(path, object_map)
    vo = [
        np.stack([r.target["hoi"][:, 2].numpy(), r.target["labels"][r.target["hoi"][:, 1]].numpy()], axis=1)
        for r in records
    ]
    pairs = np.concatenate(vo) if vo else np.zeros((0, 2), dtype=np.int64)
    hid = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    official = len(hid) > 0 and bool((hid >= 0).all())
    if official:
        n = int(hid.max()) + 1
        hoi = np.full((n, 2), -1, dtype=np.int64)
        hoi[hid] = pairs
        again = np.full(n, False)
        np.logical_or.at(again, hid, (hoi[hid] != pairs).any(axis=1))
        if again.any():
            raise _bad(path, None, "hoi ids", f"class {int(np.flatnonzero(again)[0])} has several (verb, object)")
        if (hoi < 0).any():
            raise _bad(path, None, "hoi ids", f"classes {np.flatnonzero(hoi[:, 0] < 0).tolist()[:10]} never occur")
        counts = np.bincount(hid, minlength=n)
    else:
        uniq, inv = np.unique(pairs[:, ::-1], axis=0, return_inverse=True)
        hoi = uniq[:, ::-1].copy()
        counts = np.bincount(inv.reshape(-1), minlength=len(hoi))
    v, o = meta.get("verbs"), meta.get("objects")
    return HICODetClasses(hoi, counts, tuple(v) if v else None, tuple(o) if o else None, official)


def hoi_classes(record: HOIRecord, classes: HICODetClasses) -> torch.Tensor:
    """(P,) int64 HOI class of each ``record.target["hoi"]`` row (-1 if (verb, object) is not a class)."""
    t = record.target
    return torch.as_tensor(classes.hoi_id(t["hoi"][:, 2].numpy(), t["labels"][t["hoi"][:, 1]].numpy()))


def gt_pairs(records: Sequence[HOIRecord], classes: HICODetClasses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat GT rows ``(gt_image, gt_class, gt_boxes (G, 8))`` for :func:`~tenfold.hoi.hico_eval.matlab_evaluate`.

    Raises:
        ValueError: if some row's (verb, object) is not one of the classes.
    """
    img, cls, boxes = [], [], []
    for i, r in enumerate(records):
        c = hoi_classes(r, classes).numpy()
        if (c < 0).any():
            raise ValueError(f"record {i} ({r.file_name}): a (verb, object) pair is not a HOI class")
        h = r.target["hoi"]
        b = r.target["boxes"].double().numpy()
        img.append(np.full(len(c), i))
        cls.append(c)
        boxes.append(np.concatenate([b[h[:, 0].numpy()], b[h[:, 1].numpy()]], axis=1).reshape(-1, 8))
    if not img:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, 8))
    return np.concatenate(img).astype(np.int64), np.concatenate(cls), np.concatenate(boxes)


# ---------------------------------------------------------------------------------------------------------- V-COCO


@dataclass(frozen=True)
class VCOCOImage:
    """Ground truth of one V-COCO image, as ``vsrl_eval.py`` ``_get_vcocodb`` builds it.

    Attributes:
        image_id: COCO image id.
        file_name: COCO file name.
        size: (width, height).
        boxes: (N, 4) float64 cleaned boxes ``[x1, y1, x1 + max(0, w - 1), y1 + max(0, h - 1)]`` clipped to the
            image (inclusive pixel coordinates), only annotations with positive area and x2 > x1, y2 > y1.
        labels: (N,) int64 COCO 80-class index (person = 0).
        is_crowd: (N,) bool.
        actions: (N, A) int64: 1 = does action a, 0 = annotated in V-COCO but not doing it, -1 = not in V-COCO
            (such persons are ignored by the evaluator).
        roles: (N, A, 2) int64 index into ``boxes`` of the object of role r (``roles[a][r + 1]``), -1 for none.
    """

    image_id: int
    file_name: str
    size: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    is_crowd: np.ndarray
    actions: np.ndarray
    roles: np.ndarray


@dataclass(frozen=True)
class VCOCOData:
    """V-COCO ground truth: action and role names and the images (sorted by image id)."""

    actions: tuple[str, ...]
    roles: tuple[tuple[str, ...], ...]
    images: tuple[VCOCOImage, ...]

    def records(self) -> list[HOIRecord]:
        """The images as :class:`HOIRecord` (``make_hoi`` layout) for training: persons first, then the other boxes.

        ``hoi`` rows are ``(person, object, action)`` for every person doing an action with an object in one of its
        roles (one row per distinct object); actions without a role object (agent-only actions, missing or occluded
        objects) give no pair. ``labels`` use the COCO 80-class index (person = 0).
        """
        out = []
        for im in self.images:
            perm = np.concatenate([np.flatnonzero(im.labels == 0), np.flatnonzero(im.labels != 0)]).astype(np.int64)
            new = np.empty_like(perm)
            new[perm] = np.arange(len(perm))
            p, a, _ = np.nonzero((im.roles >= 0) & (im.actions[:, :, None] == 1))
            r = im.roles[(im.roles >= 0) & (im.actions[:, :, None] == 1)]
            rows = np.stack([new[p], new[r], a], axis=1) if len(p) else np.zeros((0, 3), dtype=np.int64)
            rows = np.unique(rows, axis=0) if len(rows) else rows
            out.append(_record(im.file_name, im.size, im.boxes[perm], im.labels[perm], rows))
        return out


def read_vcoco(
    vcoco_json_or_dir: str | os.PathLike, coco_instances_json: str | os.PathLike, *, split: str = "test"
) -> VCOCOData:
    """Read V-COCO (s-gupta/v-coco ``vcoco_{split}.json`` + COCO instances, e.g. ``instances_vcoco_all_2014.json``).

    Images are those of the V-COCO file (the official evaluator asserts they equal its split file), sorted by id.
    Box cleaning, the ``ignore`` flag and the action / role construction follow ``vsrl_eval.py``
    (``_add_gt_annotations``, ``_get_vsrl_data``).

    Args:
        vcoco_json_or_dir: the action file, or a folder holding ``vcoco_{split}.json`` or
            ``vcoco/vcoco_{split}.json``.
        coco_instances_json: COCO instances file containing those images.
        split: split name used when a folder is given.

    Returns:
        The :class:`VCOCOData`.

    Raises:
        ValueError: naming the file, entry and field on malformed input (unknown images, annotations or roles).
    """
    p = Path(vcoco_json_or_dir)
    if p.is_dir():
        cands = [p / f"vcoco_{split}.json", p / "vcoco" / f"vcoco_{split}.json"]
        found = [c for c in cands if c.exists()]
        if not found:
            raise ValueError(f"{p}: contains neither {cands[0].name} nor vcoco/{cands[0].name}")
        p = found[0]
    vs = _load_json(p)
    if not isinstance(vs, list) or not vs:
        raise ValueError(f"{p}: expected a non-empty list of actions")
    actions, roles, tables = [], [], []
    for a, x in enumerate(vs):
        for k in ("action_name", "role_name", "ann_id", "image_id", "label", "role_object_id"):
            if not isinstance(x, dict) or k not in x:
                raise _bad(p, a, k, "missing")
        rn = x["role_name"]
        if not (isinstance(rn, list) and rn and rn[0] == "agent" and len(rn) <= 3):
            raise _bad(p, a, "role_name", f"expected ['agent', ...] with at most 2 roles, got {rn!r}")
        ann = _ints(p, a, "ann_id", x["ann_id"])
        lab = _ints(p, a, "label", x["label"], len(ann))
        img = _ints(p, a, "image_id", x["image_id"], len(ann))
        rid = _ints(p, a, "role_object_id", x["role_object_id"], len(ann) * len(rn))
        rid = rid.reshape(len(rn), -1).T
        if a and not np.array_equal(ann, tables[0][0]):
            raise _bad(p, a, "ann_id", "differs from the first action's list (the evaluator assumes one list)")
        if (rid[:, 0] != ann).any():
            raise _bad(p, a, "role_object_id", "first column must equal ann_id")
        actions.append(str(x["action_name"]))
        roles.append(tuple(str(r) for r in rn))
        tables.append((ann, lab, img, rid))
    coco = _load_json(Path(coco_instances_json))
    cp = Path(coco_instances_json)
    if not isinstance(coco, dict) or "images" not in coco or "annotations" not in coco:
        raise ValueError(f"{cp}: expected COCO instances with 'images' and 'annotations'")
    imgs = {}
    for j, im in enumerate(coco["images"]):
        if not all(k in im for k in ("id", "width", "height")):
            raise _bad(cp, j, "images", "needs id, width, height")
        imgs[int(im["id"])] = im
    per_img: dict[int, list[dict]] = {}
    for j, an in enumerate(coco["annotations"]):
        if not all(k in an for k in ("id", "image_id", "bbox", "category_id", "area")):
            raise _bad(cp, j, "annotations", "needs id, image_id, bbox, category_id, area")
        per_img.setdefault(int(an["image_id"]), []).append(an)
    ann0, *_ = tables[0]
    in_vcoco = set(ann0.tolist())
    num_a = len(actions)
    out = []
    for image_id in np.unique(tables[0][2]).tolist():
        if image_id not in imgs:
            raise ValueError(f"{p}: image {image_id} is not in {cp}")
        im = imgs[image_id]
        w, h = float(im["width"]), float(im["height"])
        valid = []
        for an in per_img.get(image_id, []):
            if an.get("ignore", 0) == 1:
                continue
            x1, y1, bw, bh = (float(v) for v in an["bbox"])
            x2, y2 = x1 + max(0.0, bw - 1.0), y1 + max(0.0, bh - 1.0)
            x1, y1, x2, y2 = (min(lim - 1.0, max(0.0, v)) for v, lim in ((x1, w), (y1, h), (x2, w), (y2, h)))
            if an["area"] > 0 and x2 > x1 and y2 > y1:
                valid.append((an, [x1, y1, x2, y2]))
        ids = np.array([int(an["id"]) for an, _ in valid], dtype=np.int64)
        n = len(valid)
        act = -np.ones((n, num_a), dtype=np.int64)
        rol = -np.ones((n, num_a, 2), dtype=np.int64)
        for k, (an, _) in enumerate(valid):
            if int(an["id"]) not in in_vcoco:
                continue
            act[k] = 0
            for a, (ann, lab, _img, rid) in enumerate(tables):
                hit = np.flatnonzero((ann == an["id"]) & (lab == 1))
                if hit.size == 0:
                    continue
                if hit.size > 1:
                    raise _bad(p, a, "label", f"annotation {an['id']} is labelled {hit.size} times")
                act[k, a] = 1
                for r in range(1, rid.shape[1]):
                    if rid[hit[0], r] == 0:
                        continue
                    where = np.flatnonzero(ids == rid[hit[0], r])
                    if where.size == 0:
                        raise _bad(p, a, "role_object_id", f"annotation {rid[hit[0], r]} is not a valid box of "
                                   f"image {image_id}")  # fmt: skip
                    rol[k, a, r - 1] = where[0]
        try:
            labels = np.array([coco_id_to_index(int(an["category_id"])) for an, _ in valid], dtype=np.int64)
        except ValueError as err:
            raise ValueError(f"{cp}: image {image_id}: {err}") from None
        out.append(
            VCOCOImage(
                int(image_id),
                str(im.get("file_name", "")),
                (int(w), int(h)),
                np.array([b for _, b in valid], dtype=np.float64).reshape(-1, 4),
                labels,
                np.array([bool(an.get("iscrowd", 0)) for an, _ in valid], dtype=bool),
                act,
                rol,
            )
        )
    return VCOCOData(tuple(actions), tuple(roles), tuple(out))
