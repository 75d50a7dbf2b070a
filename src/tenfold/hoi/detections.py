"""Detector stage of the two-stage HOI pipeline: simulated detections on built-in scenes, and detection files.

The interaction head (:mod:`tenfold.hoi.upt`) consumes, per image, :class:`~tenfold.hoi.upt.Detections`: boxes,
scores, labels and per-detection features. They come from a frozen detector; this module supplies them without one:

* :func:`noisy_gt_detections`: on built-in scenes (:func:`tenfold.data.synthetic.hoi.make_hoi` targets), the
  ground-truth boxes jittered with seeded noise, with scores, optional false positives and class-embedding features.
* :func:`load_detections` / :func:`save_detections`: any detector's outputs as a ``.json`` or ``.pt`` file.
* :class:`TorchvisionDetector`: torchvision's Faster R-CNN ResNet-50 FPN with weights from a local file, its labels
  mapped to UPT's 80-class space (person = 0) and the RoI box head's 1024-d representation of each final box as
  its feature.

File layout (both formats hold the same structure)::

    {"images": [
        {"boxes": [[x1, y1, x2, y2], ...],      # N x 4, pixels of the image the pairs are built on
         "scores": [s, ...],                    # N, in [0, 1]
         "labels": [c, ...],                    # N, integer classes (human = 0 in UPT's 80-class space)
         "hidden_states": [[...], ...]},        # N x D, optional (see ``hidden_size``)
        ...]}

In ``.pt`` files the values are tensors (or lists) and the file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from tenfold.hoi.upt import Detections
from tenfold.utils.checkpoint import atomic_write

__all__ = [
    "COCO_CATEGORY_IDS",
    "TorchvisionDetector",
    "coco_category_to_label",
    "load_detections",
    "noisy_gt_detections",
    "save_detections",
]

#: The 80 COCO category ids (of 1..90) in order: label ``k`` of UPT's 80-class space is ``COCO_CATEGORY_IDS[k]``
#: (person = 1 -> 0). torchvision's COCO detectors predict these ids (91 outputs, 0 = background, 11 unused ids).
COCO_CATEGORY_IDS = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91),
)  # fmt: skip

_REQUIRED = ("boxes", "scores", "labels")


def noisy_gt_detections(
    targets: Sequence[Mapping[str, Tensor]],
    *,
    image_size: float | tuple[float, float],
    seed: int = 0,
    box_noise: float = 0.05,
    score_range: tuple[float, float] = (0.6, 1.0),
    num_false_positives: int = 2,
    false_positive_score_range: tuple[float, float] = (0.0, 0.4),
    hidden_size: int = 256,
    feature_noise: float = 0.5,
    num_labels: int | None = None,
) -> list[Detections]:
    """Simulated detector outputs: jittered ground-truth boxes plus low-scoring false positives (seeded).

    Each GT box moves by Gaussian noise of std ``box_noise`` x its width (x coordinates) or height (y); boxes are
    clipped to the image and kept at least 1 pixel wide. True detections keep their GT label and get a score
    uniform in ``score_range``; ``num_false_positives`` random boxes per image get a random label and a score in
    ``false_positive_score_range``. Features are a fixed random embedding of the label (unit-variance entries, the
    same table for every image, drawn from ``seed``) plus Gaussian noise of std ``feature_noise``. The GT
    detections come first, in target order, so GT index ``k`` is detection ``k``.

    Args:
        targets: Per image a mapping with ``"boxes"`` (M, 4) xyxy pixels and ``"labels"`` (M,) (as produced by
            :func:`tenfold.data.synthetic.hoi.make_hoi`).
        image_size: Image side, or (height, width), in pixels.
        seed: Seed of every random draw; equal seeds give equal detections.
        box_noise: Relative std of the box jitter.
        score_range: Score interval of true detections, within [0, 1].
        num_false_positives: False positives per image.
        false_positive_score_range: Score interval of false positives, within [0, 1].
        hidden_size: Size D of the per-detection features.
        feature_noise: Std of the noise added to the label embedding.
        num_labels: Number of labels (human included) for the embedding table and false-positive labels;
            default: 1 + the largest label in ``targets``.

    Returns:
        One :class:`~tenfold.hoi.upt.Detections` per image (float32).

    Raises:
        ValueError: On a negative noise or count, a score interval outside [0, 1] or a label >= ``num_labels``.
    """
    for name, v in (("box_noise", box_noise), ("feature_noise", feature_noise)):
        if v < 0:
            raise ValueError(f"{name}={v!r} must be >= 0")
    if num_false_positives < 0:
        raise ValueError(f"num_false_positives={num_false_positives!r} must be >= 0")
    for name, (lo, hi) in (("score_range", score_range), ("false_positive_score_range", false_positive_score_range)):
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"{name}={(lo, hi)!r} must satisfy 0 <= low <= high <= 1")
    h_img, w_img = (float(image_size), float(image_size)) if isinstance(image_size, (int, float)) else image_size
    max_label = max((int(t["labels"].max()) for t in targets if len(t["labels"])), default=0)
    n_labels = max_label + 1 if num_labels is None else num_labels
    if max_label >= n_labels:
        raise ValueError(f"label {max_label} in targets is >= num_labels={n_labels}")
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(n_labels, hidden_size, generator=g)
    scale = torch.tensor([w_img, h_img, w_img, h_img])
    out = []
    for t in targets:
        gt = t["boxes"].float()
        m = len(gt)
        wh = (gt[:, 2:] - gt[:, :2]).repeat(1, 2)
        boxes = gt + torch.randn(m, 4, generator=g) * box_noise * wh
        fp_xy = torch.rand(num_false_positives, 2, 2, generator=g) * scale[:2]
        fp = torch.cat([fp_xy.amin(1), fp_xy.amax(1)], dim=1)
        boxes = torch.cat([boxes, fp])
        boxes = torch.minimum(boxes.clamp_min(0), scale)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = torch.cat([t["labels"].long(), torch.randint(n_labels, (num_false_positives,), generator=g)])
        scores = torch.cat(
            [
                torch.empty(m).uniform_(*score_range, generator=g),
                torch.empty(num_false_positives).uniform_(*false_positive_score_range, generator=g),
            ]
        )
        feats = table[labels] + feature_noise * torch.randn(len(labels), hidden_size, generator=g)
        out.append(Detections(boxes, scores, labels, feats))
    return out


def _as_tensor(value: object, dtype: torch.dtype, where: str) -> Tensor:
    try:
        return torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{where}: cannot be read as a {dtype} array ({e})") from None


def _parse(data: object, source: str, hidden_size: int | None) -> list[Detections]:
    images = data.get("images") if isinstance(data, Mapping) else None
    if not isinstance(images, (list, tuple)):
        raise ValueError(f"{source}: expected a mapping with an 'images' list, got {type(data).__name__}")
    out = []
    for i, rec in enumerate(images):
        where = f"{source}: images[{i}]"
        if not isinstance(rec, Mapping):
            raise ValueError(f"{where} is a {type(rec).__name__}, expected a mapping")
        missing = [k for k in _REQUIRED if k not in rec]
        if missing:
            raise ValueError(f"{where} lacks {missing}; expected keys {list(_REQUIRED)} and optionally 'hidden_states'")
        boxes = _as_tensor(rec["boxes"], torch.float32, f"{where}.boxes")
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        scores = _as_tensor(rec["scores"], torch.float32, f"{where}.scores")
        labels = _as_tensor(rec["labels"], torch.float64, f"{where}.labels")
        if labels.numel() and not bool((labels == labels.round()).all()):
            raise ValueError(f"{where}.labels must be integers, got {labels.tolist()}")
        if "hidden_states" in rec:
            hidden = _as_tensor(rec["hidden_states"], torch.float32, f"{where}.hidden_states")
            if hidden.numel() == 0:
                hidden = hidden.reshape(0, hidden_size or 0)
        elif hidden_size is not None:
            hidden = torch.zeros(len(boxes), hidden_size)
        else:
            raise ValueError(f"{where} has no 'hidden_states'; store them or pass hidden_size to use zero features")
        if scores.numel() and not bool(((scores >= 0) & (scores <= 1)).all()):
            raise ValueError(f"{where}.scores must lie in [0, 1], got min {scores.min():.4g}, max {scores.max():.4g}")
        try:
            det = Detections(boxes, scores, labels.long(), hidden)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if len(det) and bool((det.boxes[:, 2:] < det.boxes[:, :2]).any()):
            raise ValueError(f"{where}.boxes must be xyxy with x2 >= x1 and y2 >= y1")
        out.append(det)
    return out


def load_detections(path: str | os.PathLike, *, hidden_size: int | None = None) -> list[Detections]:
    """Read detector outputs from a ``.json`` or ``.pt`` file in the layout of this module's docstring.

    Args:
        path: The file.
        hidden_size: Feature size used (zero features) for images without ``hidden_states``; None: they are
            required.

    Returns:
        One :class:`~tenfold.hoi.upt.Detections` per image, in file order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: On an unknown suffix, unparsable content, a missing key or inconsistent shapes (the message
            names the image index and field).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"detection file {str(p)!r} does not exist")
    if p.suffix == ".json":
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
    elif p.suffix == ".pt":
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several unrelated types for corrupt files
            raise ValueError(f"{p}: cannot be read with torch.load(weights_only=True) ({e})") from None
    else:
        raise ValueError(f"{p}: unknown suffix {p.suffix!r}; expected '.json' or '.pt'")
    return _parse(data, str(p), hidden_size)


def save_detections(path: str | os.PathLike, detections: Sequence[Detections]) -> None:
    """Write detections to ``.json`` (lists) or ``.pt`` (tensors) atomically (write, then rename).

    Raises:
        ValueError: On an unknown suffix.
        FileExistsError: If ``path`` exists (nothing is overwritten).
    """
    p = Path(path)
    if p.suffix not in (".json", ".pt"):
        raise ValueError(f"{p}: unknown suffix {p.suffix!r}; expected '.json' or '.pt'")
    if p.exists():
        raise FileExistsError(f"{p} exists; refusing to overwrite it")
    images = [
        {"boxes": d.boxes, "scores": d.scores, "labels": d.labels, "hidden_states": d.hidden_states} for d in detections
    ]
    with atomic_write(p) as tmp:
        if p.suffix == ".json":
            rows = [{k: v.tolist() for k, v in r.items()} for r in images]
            tmp.write_text(json.dumps({"images": rows}))
        else:
            torch.save({"images": images}, tmp)


def coco_category_to_label(num_outputs: int = 91) -> Tensor:
    """(num_outputs,) int64 table from torchvision's COCO category ids to UPT's 80 labels; -1 for unused ids."""
    table = torch.full((num_outputs,), -1, dtype=torch.long)
    for k, cid in enumerate(COCO_CATEGORY_IDS):
        if cid < num_outputs:
            table[cid] = k
    return table


class TorchvisionDetector(nn.Module):
    """Frozen Faster R-CNN ResNet-50 FPN (torchvision) as the detector stage: :class:`Detections` per image.

    The network is torchvision's ``fasterrcnn_resnet50_fpn`` (91 COCO outputs) built without any download; its
    weights come from a local state dict (``torch.load(weights_only=True)``, strict). Per image: torchvision's own
    resize, RPN and box head with its post-processing (score threshold, per-class NMS, top ``detections_per_img``);
    labels are mapped to UPT's 80-class space (person = 0; ids outside the 80 classes are dropped); each final box is
    RoI-pooled again from the FPN maps and passed through the box head, whose 1024-d output is the detection's
    feature (the counterpart of DETR's decoder state). Boxes are in pixels of the input images.

    Args:
        weights: local state dict of ``fasterrcnn_resnet50_fpn`` (e.g. torchvision's
            ``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`` already on disk); None: random weights (tests only).
        min_size: torchvision's resize, shorter side (800).
        max_size: longer-side limit (1333).
        box_score_thresh: score threshold of the box head's post-processing (torchvision 0.05; UPT's proposal filter
            applies its own 0.2 later).
        detections_per_img: detections kept per image (100).

    Raises:
        FileNotFoundError: If ``weights`` does not exist.
        ValueError: If the weights do not fit the network.
    """

    feature_size = 1024

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        min_size: int = 800,
        max_size: int = 1333,
        box_score_thresh: float = 0.05,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        self.net = fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=91, min_size=min_size, max_size=max_size,
            box_score_thresh=box_score_thresh, box_detections_per_img=detections_per_img,
        )  # fmt: skip
        if weights is not None:
            p = Path(weights).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"detector weights {str(p)!r} do not exist")
            state = torch.load(p, map_location="cpu", weights_only=True)
            try:
                self.net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ValueError(f"{p}: not a fasterrcnn_resnet50_fpn state dict ({e})") from None
        self.register_buffer("label_map", coco_category_to_label(91), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images: Sequence[Tensor]) -> list[Detections]:
        """Detect in a list of (3, H, W) RGB images in [0, 1] (sizes may differ).

        Returns:
            One :class:`Detections` per image: boxes in input pixels, scores, labels in UPT's 80-class space and
            1024-d features.
        """
        net = self.net
        original = [tuple(img.shape[-2:]) for img in images]
        batch, _ = net.transform(list(images))
        feats = net.backbone(batch.tensors)
        proposals, _ = net.rpn(batch, feats)
        dets, _ = net.roi_heads(feats, proposals, batch.image_sizes)
        boxes = [d["boxes"] for d in dets]
        hidden = net.roi_heads.box_head(net.roi_heads.box_roi_pool(feats, boxes, batch.image_sizes))
        hidden = hidden.split([len(b) for b in boxes])
        dets = net.transform.postprocess(dets, batch.image_sizes, original)
        out = []
        for d, h in zip(dets, hidden, strict=True):
            labels = self.label_map[d["labels"]]
            keep = labels >= 0
            out.append(Detections(d["boxes"][keep], d["scores"][keep], labels[keep], h[keep]))
        return out
