"""Object-detection data for torchvision detectors: built-in scenes, or COCO 2017 from disk (never downloaded).

Items are ``(image, target)``: a float32 (3, H, W) image in [0, 1] (torchvision's detectors normalise and resize
inside the model, in their ``GeneralizedRCNNTransform``) and a dict with ``boxes`` (M, 4) float32 xyxy in pixels,
``labels`` (M,) int64 and ``image_id`` (int64 scalar). Batches are lists (:func:`list_collate`), the form
``model(images, targets)`` takes.

Label 0 is never an object: torchvision's Faster R-CNN reserves it for the background, and its COCO convention
keeps the raw category ids (1..90, ``num_classes=91``) for every detector. The built-in scenes follow the same
rule: persons are label 1 and object class k is label k + 2 (:func:`tenfold.data.synthetic.make_hoi` uses 0 and
k + 1).

Training images are flipped horizontally with probability 1/2 (mmdet's ``RandomFlip(flip_ratio=0.5)``, the only
augmentation of the MasKD/DIST COCO recipes). The flip of sample i in epoch e is drawn from ``(shuffle_seed, e, i)``
only, and the loaders are rank-sharded and resumable (:mod:`tenfold.data.sampling`), so DDP and resumed runs see the
same batches as one uninterrupted process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import Dataset

from tenfold.data.sampling import ResumableDataLoader, UnpaddedEvalLoaders

__all__ = ["COCO_LAYOUT", "DetectionData", "coco_target", "hflip_detection", "list_collate"]

COCO_LAYOUT = (
    "expected the COCO 2017 layout <root>/train2017/*.jpg, <root>/val2017/*.jpg, "
    "<root>/annotations/instances_train2017.json and <root>/annotations/instances_val2017.json"
)

Target = dict[str, Tensor]


def list_collate(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """``[(image, target), ...]`` as ``([images], [targets])``, the input of ``model(images, targets)``."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def hflip_detection(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Flip an image (3, H, W) and its xyxy boxes horizontally (pixel-edge coordinates: x -> W - x)."""
    width = image.shape[-1]
    boxes = target["boxes"]
    flipped = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    return image.flip(-1), {**target, "boxes": flipped}


def coco_target(annotations: list[dict[str, Any]], image_id: int) -> Target:
    """COCO annotations of one image as a torchvision detection target.

    Boxes go from ``[x, y, w, h]`` to xyxy. As mmdet's ``CocoDataset._parse_ann_info`` does, crowd regions
    (``iscrowd=1``) and boxes with ``w < 1``, ``h < 1`` or ``area <= 0`` are dropped; labels are the raw
    ``category_id`` (torchvision's COCO convention, ``num_classes=91``).

    Args:
        annotations: the image's annotation dicts (``bbox``, ``category_id``, ``iscrowd``, ``area``).
        image_id: the COCO image id.

    Returns:
        ``{"boxes": (M, 4) float32, "labels": (M,) int64, "image_id": int64 scalar}``.
    """
    kept = [
        a
        for a in annotations
        if not a.get("iscrowd", 0) and a["bbox"][2] >= 1 and a["bbox"][3] >= 1 and a.get("area", 1.0) > 0
    ]
    boxes = torch.tensor([a["bbox"] for a in kept], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    labels = torch.tensor([a["category_id"] for a in kept], dtype=torch.int64)
    return {"boxes": boxes, "labels": labels, "image_id": torch.tensor(image_id, dtype=torch.int64)}


class _BuiltinDetection(Dataset):
    def __init__(self, images: Tensor, targets: list[dict[str, Tensor]]) -> None:
        self.images = images
        # persons 0 -> 1, object class k (label k + 1) -> k + 2: label 0 stays the background
        self.targets = [
            {"boxes": t["boxes"].float(), "labels": t["labels"] + 1, "image_id": torch.tensor(i, dtype=torch.int64)}
            for i, t in enumerate(targets)
        ]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        return self.images[index].float().div(255), self.targets[index]


class _CocoFiles(Dataset):
    """torchvision's ``CocoDetection`` with targets converted by :func:`coco_target`."""

    def __init__(self, root: Path, split: str, drop_empty: bool) -> None:
        image_dir = root / f"{split}2017"
        ann_file = root / "annotations" / f"instances_{split}2017.json"
        for path, kind in ((image_dir, "folder"), (ann_file, "file")):
            if not path.exists():
                raise FileNotFoundError(f"COCO {kind} {str(path)!r} does not exist; {COCO_LAYOUT}")
        try:
            import pycocotools  # noqa: F401
        except ImportError as err:  # a ValueError: the command line reports it in one line
            raise ValueError(
                "dataset 'coco' reads annotations through torchvision's CocoDetection, which needs pycocotools: "
                "pip install pycocotools"
            ) from err
        from torchvision.datasets import CocoDetection

        self.coco = CocoDetection(str(image_dir), str(ann_file))
        if drop_empty:  # mmdet's filter_empty_gt for training: images without a usable box teach nothing
            self.coco.ids = [i for i in self.coco.ids if coco_target(self.coco._load_target(i), i)["labels"].numel()]

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        from torchvision.transforms.functional import pil_to_tensor

        image, annotations = self.coco[index]
        return pil_to_tensor(image).float().div_(255), coco_target(annotations, self.coco.ids[index])


class _Flipped(Dataset):
    """Random horizontal flip drawn from ``(seed, epoch, index)``; items are requested as ``(index, epoch)``."""

    def __init__(self, dataset: Dataset, seed: int, flip: bool) -> None:
        self.dataset, self.seed, self.flip = dataset, seed, flip

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Target]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, target = self.dataset[index]
        if self.flip:
            mixed = ((self.seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2**63 - 1)
            if bool(torch.rand((), generator=torch.Generator().manual_seed(mixed)) < 0.5):
                image, target = hflip_detection(image, target)
        return image, target


#: Built-in datasets already generated in this process.
_BUILTIN_CACHE: dict[tuple, Dataset] = {}


class DetectionData(UnpaddedEvalLoaders, pl.LightningDataModule):
    """Detection data: built-in scenes (default, no download) or COCO 2017 from disk, as torchvision targets.

    Args:
        dataset: ``builtin`` (:func:`tenfold.data.synthetic.make_hoi` scenes: persons and ``num_objects`` object
            classes, labels 1 and 2..num_objects+1) or ``coco`` (``root`` in the COCO 2017 layout, read with
            torchvision's ``CocoDetection``, which needs ``pycocotools``; raw category ids as labels).
        root: the COCO folder (holding ``train2017``, ``val2017`` and ``annotations``).
        num_objects: ``builtin`` object classes (1 to 100).
        image_size: ``builtin`` image side in pixels (48 to 1024).
        train_size: ``builtin`` training images.
        val_size: ``builtin`` validation images.
        test_size: ``builtin`` test images.
        difficulty: ``builtin`` nuisance strength in [0, 3].
        flip: random horizontal flip of training images (probability 1/2).
        batch_size: training images per step and process (the COCO recipes: 2 per GPU, 8 GPUs).
        eval_batch_size: images per evaluation step (default ``batch_size``).
        num_workers: data-loader worker processes.
        data_seed: seed of the built-in generator (which task).
        shuffle_seed: seed of the training order and flips.

    Raises:
        ValueError: an unknown dataset, ``coco`` without ``root``, or an invalid size; (in :meth:`setup`) ``coco``
            without pycocotools installed.
        FileNotFoundError: (in :meth:`setup`) the COCO layout is missing (the message names it).
    """

    _eval_collate = staticmethod(list_collate)

    def __init__(
        self,
        dataset: Literal["builtin", "coco"] = "builtin",
        root: str | None = None,
        num_objects: int = 10,
        image_size: int = 64,
        train_size: int = 256,
        val_size: int = 64,
        test_size: int = 64,
        difficulty: float = 1.0,
        flip: bool = True,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        data_seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in ("builtin", "coco"):
            raise ValueError(f"unknown dataset {dataset!r}; expected 'builtin' or 'coco'")
        if dataset == "coco" and not root:
            raise ValueError("dataset 'coco' reads from disk: set data.init_args.root to the COCO folder")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.dataset_name = dataset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_seed = shuffle_seed
        self._splits: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        """The detectors' ``num_classes`` (label 0 included): ``num_objects + 2`` built-in, 91 for COCO."""
        return 91 if self.dataset_name == "coco" else self.hparams.num_objects + 2

    def _build(self, split: str) -> Dataset:
        hp = self.hparams
        if self.dataset_name == "coco":
            # COCO's test-dev labels are not public: test reads val2017, as mmdet's configs do
            return _CocoFiles(Path(hp.root), "train" if split == "train" else "val", drop_empty=split == "train")
        size = {"train": hp.train_size, "val": hp.val_size, "test": hp.test_size}[split]
        key = (split, size, hp.num_objects, hp.image_size, hp.difficulty, hp.data_seed)
        if key not in _BUILTIN_CACHE:  # deterministic: runs in one process (tests, demos) share it
            if len(_BUILTIN_CACHE) >= 8:
                _BUILTIN_CACHE.clear()
            from tenfold.data.synthetic import make_hoi

            images, targets = make_hoi(
                size, hp.num_objects, seed=hp.data_seed, split=split, image_size=hp.image_size,
                difficulty=hp.difficulty,
            )  # fmt: skip
            _BUILTIN_CACHE[key] = _BuiltinDetection(images, targets)
        return _BUILTIN_CACHE[key]

    def setup(self, stage: str | None = None) -> None:
        """Build the splits a stage needs (cached, so repeated calls are free)."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "fit", ("train", "val", "test")):
            if split not in self._splits:
                train = split == "train"
                self._splits[split] = _Flipped(self._build(split), self.shuffle_seed, self.hparams.flip and train)

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled, rank-sharded, resumable loader of (flipped) training images, as lists."""
        return self._epoch_indexed_train_loader(
            self._splits["train"],
            self.batch_size,
            self.shuffle_seed,
            num_workers=self.num_workers,
            collate_fn=list_collate,
        )
