"""HOI detection data for :class:`tenfold.hoi.task.HOITask`: built-in scenes, HICO-DET and V-COCO from disk.

An item is one image with its ground truth and, when the detector stage is precomputed, its detections:

* ``image``: float32 (3, H, W) RGB in [0, 1] (the task normalises it for its backbone; a torchvision detector
  takes it as is);
* ``target``: ``boxes`` (M, 4) float32 xyxy pixels of ``image``, ``labels`` (M,) int64 (0 = person, else the object
  label; UPT's 80-class COCO space on real data), ``hoi`` (P, 3) int64 rows ``(human_idx, object_idx, verb)``;
* ``detections``: :class:`~tenfold.hoi.upt.Detections` in pixels of ``image``, or None (the task runs a detector).

:func:`hoi_collate` pads images to the batch's largest size (bottom/right, zeros) and keeps targets and detections
per image (:class:`HOIBatch`). The built-in split draws :func:`~tenfold.data.synthetic.hoi.make_hoi` scenes and
simulates the frozen detector with :func:`~tenfold.hoi.detections.noisy_gt_detections` once per split (seeded, so
every epoch and every process sees the same detections, like a detection file). On disk, annotations are read with
``tenfold.hoi.datasets.read_hicodet`` / ``read_vcoco`` (records of ``file_name``, ``size``, ``target``), images from
an image folder, detections from a :func:`~tenfold.hoi.detections.load_detections` file whose ``images[i]`` belongs
to annotation record ``i`` (boxes in original image pixels).

Training images on disk are resized (shorter side drawn from ``train_scales``, longer side at most ``max_size``)
and flipped horizontally with probability 0.5; boxes and detections follow. The draws depend on
``(shuffle_seed, epoch, index)`` only, so DDP and resumed runs see the same images. UPT's ColorJitter and random
crops are not applied (see ``docs/hoi.md``). Built-in scenes are never flipped: their verbs are the side on which the
object touches the person, which a flip changes. Evaluation images are resized to ``test_size`` (800) / ``max_size``.
Boxes are evaluated in the resized frame: uniform scaling leaves every IoU (torchvision convention) unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from tenfold.data.sampling import TrainerPositionMixin
from tenfold.hoi.detections import load_detections, noisy_gt_detections
from tenfold.hoi.text import HOIVocabulary
from tenfold.hoi.upt import Detections

__all__ = [
    "BUILTIN_VERBS",
    "HOIBatch",
    "HOIData",
    "HOIDataset",
    "HOIItem",
    "HOIVocabularyInfo",
    "hoi_collate",
    "vocabulary_from_file",
]

#: Verb names of the built-in scenes, in verb order (verb v: the object touches the person at angle
#: -90 deg + 360 deg v / K, v = 0 above the head, clockwise); only the first ``num_verbs`` are used.
BUILTIN_VERBS = (
    "lift", "push", "kick", "pull", "carry", "throw", "catch", "hold", "swing", "drag", "hug", "wave", "touch",
    "inspect", "point_at", "ride",
)  # fmt: skip

_BUILTIN_STATS = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: UPT's training scales: shorter side 480..800 step 32.
UPT_TRAIN_SCALES = tuple(range(480, 801, 32))


class HOIItem(NamedTuple):
    """One image: ``image`` (3, H, W) in [0, 1], ``target`` dict, ``detections`` or None, dataset ``index``."""

    image: Tensor
    target: dict[str, Tensor]
    detections: Detections | None
    index: int


class HOIBatch(NamedTuple):
    """A collated batch.

    Attributes:
        images: (B, 3, H, W) images in [0, 1], zero-padded at the bottom/right.
        image_sizes: (B, 2) float (height, width) of each image before padding.
        targets: per-image target dicts.
        detections: per-image detections, or None when the task runs its detector.
        indices: (B,) dataset indices (the image ids of the evaluation).
    """

    images: Tensor
    image_sizes: Tensor
    targets: list[dict[str, Tensor]]
    detections: list[Detections] | None
    indices: Tensor


def hoi_collate(items: Sequence[HOIItem]) -> HOIBatch:
    """Pad images to the largest height and width of the batch; keep targets and detections per image.

    Raises:
        ValueError: If some items have detections and others do not.
    """
    h = max(it.image.shape[-2] for it in items)
    w = max(it.image.shape[-1] for it in items)
    images = torch.stack([F.pad(it.image, (0, w - it.image.shape[-1], 0, h - it.image.shape[-2])) for it in items])
    sizes = torch.tensor([[it.image.shape[-2], it.image.shape[-1]] for it in items], dtype=torch.float32)
    has = [it.detections is not None for it in items]
    if any(has) and not all(has):
        raise ValueError("a batch mixes images with and without detections")
    dets = [it.detections for it in items] if all(has) else None
    return HOIBatch(images, sizes, [it.target for it in items], dets, torch.tensor([it.index for it in items]))


@dataclass(frozen=True)
class HOIVocabularyInfo:
    """Class structure of an HOI dataset.

    Attributes:
        vocabulary: verbs, object labels (index = detector label, person = 0) and the HOI classes (verb, object).
        correspondence: per object label, the valid verbs (UPT's ``object_class_to_target_class``).
    """

    vocabulary: HOIVocabulary

    @property
    def num_verbs(self) -> int:
        """K."""
        return len(self.vocabulary.verbs)

    @property
    def num_objects(self) -> int:
        """Number of object labels (person included)."""
        return len(self.vocabulary.objects)

    @property
    def num_hois(self) -> int:
        """Number of HOI classes C."""
        return len(self.vocabulary.hois)

    @property
    def correspondence(self) -> list[list[int]]:
        """Per object label, the sorted verbs of its HOI classes."""
        out: list[set[int]] = [set() for _ in range(self.num_objects)]
        for v, o in self.vocabulary.hois:
            out[o].add(v)
        return [sorted(s) for s in out]

    def hoi_index(self) -> Tensor:
        """(num_objects, K) int64 table: HOI class of (object label, verb), -1 where none."""
        table = torch.full((self.num_objects, self.num_verbs), -1, dtype=torch.long)
        for c, (v, o) in enumerate(self.vocabulary.hois):
            table[o, v] = c
        return table

    def hoi_counts(self, targets: Sequence[dict[str, Tensor]]) -> Tensor:
        """(C,) number of GT pairs of each HOI class in ``targets`` (rare classes: fewer than 10 in training).

        Raises:
            ValueError: If a GT pair has a (verb, object) combination outside the vocabulary.
        """
        table = self.hoi_index()
        counts = torch.zeros(self.num_hois, dtype=torch.long)
        for t in targets:
            if len(t["hoi"]) == 0:
                continue
            c = table[t["labels"][t["hoi"][:, 1]], t["hoi"][:, 2]]
            if bool((c < 0).any()):
                raise ValueError("a GT pair's (object, verb) is not an HOI class of the vocabulary")
            counts += torch.bincount(c, minlength=self.num_hois)
        return counts


def builtin_vocabulary(num_objects: int, num_verbs: int) -> HOIVocabularyInfo:
    """Vocabulary of the built-in scenes: labels ``person, object0, ...``; every verb with every object class.

    Raises:
        ValueError: If ``num_verbs`` exceeds the named verbs.
    """
    if not 1 <= num_verbs <= len(BUILTIN_VERBS):
        raise ValueError(f"num_verbs={num_verbs} must lie in [1, {len(BUILTIN_VERBS)}]")
    objects = ("person", *(f"object{k}" for k in range(num_objects)))
    hois = [(v, o) for o in range(1, num_objects + 1) for v in range(num_verbs)]
    return HOIVocabularyInfo(HOIVocabulary.from_lists(BUILTIN_VERBS[:num_verbs], objects, hois))


def vocabulary_from_file(path: str | Path) -> HOIVocabularyInfo:
    """Read the verb names, object names and HOI classes from a json file.

    Accepted layouts: ``{"verbs": [...], "objects": [...], "hois": [[verb, object], ...]}``, or UPT's annotation
    files, whose ``correspondence`` rows are ``[hoi, object, verb]``.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If the keys are missing or malformed.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"vocabulary file {str(p)!r} does not exist")
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or "verbs" not in data or "objects" not in data:
        raise ValueError(f"{p}: expected a json object with 'verbs', 'objects' and 'hois' (or 'correspondence')")
    if "hois" in data:
        hois = [(int(v), int(o)) for v, o in data["hois"]]
    elif "correspondence" in data:
        rows = sorted((int(c), int(o), int(v)) for c, o, v in data["correspondence"])
        hois = [(v, o) for _, o, v in rows]
    else:
        raise ValueError(f"{p}: has neither 'hois' nor 'correspondence'")
    try:
        vocab = HOIVocabulary.from_lists(data["verbs"], data["objects"], hois)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{p}: {e}") from None
    return HOIVocabularyInfo(vocab)


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------


def _resize_flip(
    image: Tensor, target: dict[str, Tensor], dets: Detections | None, scale: float, flip: bool
) -> tuple[Tensor, dict[str, Tensor], Detections | None]:
    """Resize (bilinear, factor ``scale``) and optionally flip an image with its boxes and detections."""
    h, w = image.shape[-2:]
    if scale != 1.0:
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        sx, sy = nw / w, nh / h
    else:
        sx = sy = 1.0
    width = image.shape[-1]
    factor = torch.tensor([sx, sy, sx, sy])

    def boxes(b: Tensor) -> Tensor:
        b = b.float() * factor
        if flip:
            b = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
        return b

    if flip:
        image = image.flip(-1)
    target = {**target, "boxes": boxes(target["boxes"])}
    if dets is not None:
        dets = Detections(boxes(dets.boxes), dets.scores, dets.labels, dets.hidden_states)
    return image, target, dets


class HOIDataset(Dataset):
    """Images, targets and optional detections; training items are keyed by ``(index, epoch)``.

    Args:
        load_image: returns the uint8 or float (3, H, W) image of an index.
        targets: per-image targets (layout of the module docstring).
        detections: per-image detections, or None.
        train: apply the random resize and flip (keys ``(index, epoch)``).
        scales: shorter-side sizes of the resize (training: drawn uniformly; eval: the first); None: no resize.
        max_size: limit of the longer side after resizing.
        flip: random horizontal flip in training.
        seed: seed of the draws.

    Raises:
        ValueError: If the number of detections differs from the number of targets.
    """

    def __init__(
        self,
        load_image: Any,
        targets: Sequence[dict[str, Tensor]],
        detections: Sequence[Detections] | None = None,
        *,
        train: bool = False,
        scales: Sequence[int] | None = None,
        max_size: int = 1333,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        if detections is not None and len(detections) != len(targets):
            raise ValueError(f"got {len(detections)} detections for {len(targets)} images: one entry per image")
        self.load_image = load_image
        self.targets = list(targets)
        self.detections = None if detections is None else list(detections)
        self.train, self.scales, self.max_size, self.flip, self.seed = train, scales, max_size, flip, seed

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: int | tuple[int, int]) -> HOIItem:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image = self.load_image(index)
        image = image.float().div(255) if image.dtype == torch.uint8 else image.float()
        target = self.targets[index]
        dets = None if self.detections is None else self.detections[index]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + index)
        draw = torch.rand(2, generator=g).tolist()
        scale = 1.0
        if self.scales:
            side = self.scales[int(draw[0] * len(self.scales))] if self.train else self.scales[0]
            h, w = image.shape[-2:]
            scale = min(side / min(h, w), self.max_size / max(h, w))
        flip = self.train and self.flip and draw[1] < 0.5
        if scale != 1.0 or flip:
            image, target, dets = _resize_flip(image, target, dets, scale, flip)
        return HOIItem(image, target, dets, index)


def _read_image(path: Path) -> Tensor:
    from PIL import Image

    with Image.open(path) as img:
        array = torch.from_numpy(np.asarray(img.convert("RGB")).copy())
    return array.permute(2, 0, 1).contiguous()


class _ImageFolderLoader:
    """Loads ``root / file_name`` of each record (picklable for worker processes)."""

    def __init__(self, root: Path, names: Sequence[str]) -> None:
        self.root, self.names = root, list(names)

    def __call__(self, index: int) -> Tensor:
        path = self.root / self.names[index]
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} of record {index} does not exist")
        return _read_image(path)


class _TensorLoader:
    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __call__(self, index: int) -> Tensor:
        return self.images[index]


#: Built-in splits already generated in this process (deterministic; tests and demo runs share them).
_BUILTIN_CACHE: dict[tuple, dict[str, tuple[Tensor, list[dict[str, Tensor]], list[Detections]]]] = {}


class HOIData(TrainerPositionMixin, pl.LightningDataModule):
    """HOI detection data: built-in scenes (default, offline), HICO-DET or V-COCO from disk.

    Args:
        dataset: ``builtin`` (:func:`~tenfold.data.synthetic.hoi.make_hoi`), ``hicodet`` or ``vcoco``.
        num_objects: ``builtin`` object classes (labels 1..num_objects; 0 = person).
        num_verbs: ``builtin`` verbs.
        train_size: ``builtin`` training images.
        val_size: ``builtin`` validation images.
        test_size: ``builtin`` test images.
        image_size: ``builtin`` image side.
        difficulty: ``builtin`` nuisance strength in [0, 3].
        interact_prob: ``builtin`` probability that an object interacts.
        data_seed: ``builtin`` task seed (object classes and scenes).
        detection_seed: seed of the simulated detector (``builtin``).
        box_noise: relative box jitter of the simulated detections.
        num_false_positives: false positives per image of the simulated detector.
        detection_hidden_size: feature size D of the simulated detections (the head's ``hidden_state_size``).
        feature_noise: std of the noise on the simulated detection features.
        train_annotations: annotation file of the training split (disk).
        test_annotations: annotation file of the test split (disk; HICO-DET ``test2015``, V-COCO ``test``).
        train_images: image folder of the training split.
        test_images: image folder of the test split.
        train_detections: detection file of the training split (:func:`~tenfold.hoi.detections.load_detections`;
            ``images[i]`` belongs to annotation record ``i``); None: the task runs its detector.
        test_detections: detection file of the test split.
        vocabulary_file: json with ``verbs``, ``objects`` and ``hois`` (or UPT's ``correspondence``); default the
            training annotation file.
        coco_instances: ``vcoco``: the COCO instances json that V-COCO's files index (``read_vcoco``).
        val_split: split validated during training (disk: ``test``, HICO-DET has no validation split).
        train_scales: shorter-side sizes drawn in training (disk; UPT 480..800 step 32).
        test_scale: shorter side in evaluation (disk; 800).
        max_size: longer-side limit (1333).
        flip: random horizontal flip in training (disk only).
        batch_size: training images per step and process.
        eval_batch_size: images per evaluation step (default ``batch_size``).
        num_workers: data-loader workers.
        shuffle_seed: seed of the training order and augmentation.

    Raises:
        ValueError: On an unknown dataset, a missing annotation/image setting or an invalid size.
    """

    def __init__(
        self,
        dataset: Literal["builtin", "hicodet", "vcoco"] = "builtin",
        num_objects: int = 6,
        num_verbs: int = 4,
        train_size: int = 512,
        val_size: int = 128,
        test_size: int = 128,
        image_size: int = 64,
        difficulty: float = 0.5,
        interact_prob: float = 0.8,
        data_seed: int = 0,
        detection_seed: int = 0,
        box_noise: float = 0.05,
        num_false_positives: int = 2,
        detection_hidden_size: int = 32,
        feature_noise: float = 0.5,
        train_annotations: str | None = None,
        test_annotations: str | None = None,
        train_images: str | None = None,
        test_images: str | None = None,
        train_detections: str | None = None,
        test_detections: str | None = None,
        vocabulary_file: str | None = None,
        coco_instances: str | None = None,
        val_split: str = "test",
        train_scales: Sequence[int] = UPT_TRAIN_SCALES,
        test_scale: int = 800,
        max_size: int = 1333,
        flip: bool = True,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in ("builtin", "hicodet", "vcoco"):
            raise ValueError(f"unknown dataset {dataset!r}; expected 'builtin', 'hicodet' or 'vcoco'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dataset != "builtin":
            missing = [
                n
                for n, v in (
                    ("train_annotations", train_annotations),
                    ("test_annotations", test_annotations),
                    ("train_images", train_images),
                    ("test_images", test_images),
                )
                if not v
            ]
            if missing:
                raise ValueError(f"dataset {dataset!r} reads from disk: set data.init_args.{', '.join(missing)}")
        self.save_hyperparameters()
        self.dataset_name = dataset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_seed = shuffle_seed
        self.mean, self.std = _BUILTIN_STATS if dataset == "builtin" else _IMAGENET
        self._splits: dict[str, HOIDataset] = {}
        self._info: HOIVocabularyInfo | None = None
        self._train_counts: Tensor | None = None

    # -- class structure --------------------------------------------------------------------------------------
    @property
    def info(self) -> HOIVocabularyInfo:
        """Vocabulary and correspondence of the dataset."""
        if self._info is None:
            hp = self.hparams
            if self.dataset_name == "builtin":
                self._info = builtin_vocabulary(hp.num_objects, hp.num_verbs)
            else:
                self._info = vocabulary_from_file(hp.vocabulary_file or hp.train_annotations)
        return self._info

    @property
    def train_counts(self) -> Tensor:
        """(C,) GT pairs per HOI class in the training split (rare: < 10, as on HICO-DET)."""
        if self._train_counts is None:
            self._train_counts = self.info.hoi_counts(self._targets("train"))
        return self._train_counts

    # -- splits -----------------------------------------------------------------------------------------------
    def _builtin(self, split: str) -> tuple[Tensor, list[dict[str, Tensor]], list[Detections]]:
        hp = self.hparams
        key = (hp.train_size, hp.val_size, hp.test_size, hp.num_objects, hp.num_verbs, hp.image_size, hp.difficulty,
               hp.interact_prob, hp.data_seed, hp.detection_seed, hp.box_noise, hp.num_false_positives,
               hp.detection_hidden_size, hp.feature_noise)  # fmt: skip
        if key not in _BUILTIN_CACHE:
            from tenfold.data.synthetic.hoi import make_hoi

            if len(_BUILTIN_CACHE) >= 4:
                _BUILTIN_CACHE.clear()
            sizes = {"train": hp.train_size, "val": hp.val_size, "test": hp.test_size}
            scenes = {
                s: make_hoi(
                    n, hp.num_objects, hp.num_verbs, seed=hp.data_seed, split=s, image_size=hp.image_size,
                    difficulty=hp.difficulty, interact_prob=hp.interact_prob,
                )
                for s, n in sizes.items()
            }  # fmt: skip
            # one call over the three splits: one label-embedding table (a detector's features do not change
            # between splits) and independent noise
            dets = noisy_gt_detections(
                [t for s in sizes for t in scenes[s][1]], image_size=hp.image_size, seed=hp.detection_seed,
                box_noise=hp.box_noise, num_false_positives=hp.num_false_positives,
                hidden_size=hp.detection_hidden_size, feature_noise=hp.feature_noise,
                num_labels=hp.num_objects + 1,
            )  # fmt: skip
            out, start = {}, 0
            for s, n in sizes.items():
                out[s] = (scenes[s][0], scenes[s][1], dets[start : start + n])
                start += n
            _BUILTIN_CACHE[key] = out
        return _BUILTIN_CACHE[key][split]

    def _records(self, split: str) -> list[Any]:
        import importlib

        datasets = importlib.import_module("tenfold.hoi.datasets")  # helper readers (records in make_hoi's layout)
        hp = self.hparams
        anno = hp.train_annotations if split == "train" else hp.test_annotations
        name = "read_hicodet" if self.dataset_name == "hicodet" else "read_vcoco"
        reader = getattr(datasets, name, None)
        if reader is None:
            raise ValueError(f"tenfold.hoi.datasets has no {name}: the {self.dataset_name} reader is not available")
        if self.dataset_name == "hicodet":
            return list(reader(anno))
        if not hp.coco_instances:
            raise ValueError("dataset 'vcoco' needs data.init_args.coco_instances (the COCO instances json)")
        return list(reader(anno, hp.coco_instances, split="trainval" if split == "train" else "test").records())

    def vcoco_ground_truth(self, split: str = "test") -> Any:
        """The :class:`~tenfold.hoi.datasets.VCOCOData` of an evaluation split (V-COCO only; read once).

        Every split other than ``train`` is the ``test`` annotation file (as :meth:`_build`); its images are in
        the order of the split's records, so dataset index ``i`` is ``images[i]``.

        Raises:
            ValueError: If the dataset is not ``vcoco`` or ``coco_instances`` is not set.
        """
        if self.dataset_name != "vcoco":
            raise ValueError(f"vcoco_ground_truth needs dataset 'vcoco', got {self.dataset_name!r}")
        hp = self.hparams
        if not hp.coco_instances:
            raise ValueError("dataset 'vcoco' needs data.init_args.coco_instances (the COCO instances json)")
        name = "train" if split == "train" else "test"
        cache = self.__dict__.setdefault("_vcoco_gt", {})
        if name not in cache:
            from tenfold.hoi.datasets import read_vcoco

            anno = hp.train_annotations if name == "train" else hp.test_annotations
            cache[name] = read_vcoco(anno, hp.coco_instances, split="trainval" if name == "train" else "test")
        return cache[name]

    def _targets(self, split: str) -> list[dict[str, Tensor]]:
        if self.dataset_name == "builtin":
            return self._builtin(split)[1]
        self.setup("fit" if split == "train" else "test")
        return self._splits[split if split in self._splits else "test"].targets

    def _build(self, split: str) -> HOIDataset:
        hp = self.hparams
        train = split == "train"
        if self.dataset_name == "builtin":
            images, targets, dets = self._builtin(split)
            return HOIDataset(_TensorLoader(images), targets, dets, train=train, seed=self.shuffle_seed)
        name = "train" if train else "test"
        records = self._records(name)
        folder = Path(hp.train_images if train else hp.test_images)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {str(folder)!r} of the {name} split does not exist")
        det_file = hp.train_detections if train else hp.test_detections
        dets = None
        if det_file:
            dets = load_detections(det_file, hidden_size=None)
            if len(dets) != len(records):
                raise ValueError(
                    f"{det_file}: {len(dets)} images of detections for {len(records)} annotation records; "
                    "images[i] must belong to record i"
                )
        return HOIDataset(
            _ImageFolderLoader(folder, [r.file_name for r in records]), [r.target for r in records], dets,
            train=train, scales=tuple(hp.train_scales) if train else (hp.test_scale,), max_size=hp.max_size,
            flip=hp.flip, seed=self.shuffle_seed,
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        """Build the splits a stage needs (cached)."""
        val = "val" if self.dataset_name == "builtin" else self.hparams.val_split
        wanted = {"fit": ("train", val), "validate": (val,), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "fit", ("train", val, "test")):
            if split not in self._splits:
                self._splits[split] = self._build(split)

    def dataset(self, split: str) -> HOIDataset:
        """The dataset of a split (built on first use)."""
        if split not in self._splits:
            self._splits[split] = self._build(split)
        return self._splits[split]

    # -- loaders ----------------------------------------------------------------------------------------------
    def train_dataloader(self) -> Any:
        """Shuffled, rank-sharded, resumable training loader (drop_last)."""
        return self._epoch_indexed_train_loader(
            self.dataset("train"), self.batch_size, self.shuffle_seed, self.num_workers, hoi_collate
        )

    def _eval(self, split: str) -> Any:
        return self._unpadded_eval_loader(self.dataset(split), self.eval_batch_size, self.num_workers, hoi_collate)

    def val_dataloader(self) -> Any:
        """This process's unpadded shard of the validation split (built-in ``val``; disk ``val_split``)."""
        return self._eval("val" if self.dataset_name == "builtin" else self.hparams.val_split)

    def test_dataloader(self) -> Any:
        """This process's unpadded shard of the test split."""
        return self._eval("test")
