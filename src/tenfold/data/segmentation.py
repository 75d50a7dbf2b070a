"""Semantic-segmentation data: built-in scenes, Pascal VOC 2012 (+ SBD ``train_aug``) and Cityscapes, never downloaded.

Items are ``(image, label)``: a float32 (3, h, w) normalised image and an int64 (h, w) label map with classes in
``[0, num_classes)`` and ``ignore_index`` (255) for pixels that are not evaluated.

Training augmentation (:class:`JointTransform`) follows CIRKD's ``CSTrainValSet`` (the DIST/MasKD Cityscapes
pipeline) and mmseg: a random rescale of image (bilinear) and label (nearest), normalisation, padding to the crop
size at the bottom/right (image 0 after normalisation, i.e. the mean colour; label 255), a random crop and a random
horizontal flip. Its randomness is drawn from ``(shuffle_seed, epoch, sample index)`` only, so a sample's
augmentation does not depend on the number of processes, workers or on an interruption: DDP runs and resumed runs
see the same crops as one uninterrupted process (the loaders come from :mod:`tenfold.data.sampling`).

Evaluation loaders shard the set over processes without padding, so every image is counted exactly once and the
DDP mIoU equals the single-process one (PRCL's ``DistributedSampler`` counts a few images twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from tenfold.data.sampling import ResumableDataLoader, UnpaddedEvalLoaders

__all__ = [
    "CITYSCAPES_CLASSES",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "JointTransform",
    "SegmentationData",
    "SegmentationFiles",
    "cityscapes_files",
    "cityscapes_label_lut",
    "pad_collate",
    "read_label",
    "voc_files",
]

IGNORE_INDEX = 255

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _cityscapes_classes() -> tuple[str, ...]:
    from torchvision.datasets import Cityscapes

    train = sorted((c.train_id, c.name) for c in Cityscapes.classes if 0 <= c.train_id < 255)
    return tuple(name for _, name in train)


#: The 19 evaluated Cityscapes classes in trainId order (road, sidewalk, ..., bicycle).
CITYSCAPES_CLASSES = _cityscapes_classes()

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_STATS = {"builtin": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), "voc": _IMAGENET, "cityscapes": _IMAGENET}
_CROP = {"voc": (512, 512), "cityscapes": (512, 1024)}

_VOC_LAYOUT = (
    "expected the Pascal VOC 2012 layout <root>/VOCdevkit/VOC2012/ with JPEGImages/<id>.jpg, "
    "SegmentationClass/<id>.png and ImageSets/Segmentation/{train,val,trainval}.txt; the SBD-augmented set adds "
    "SegmentationClassAug/<id>.png and ImageSets/Segmentation/train_aug.txt"
)
_CITYSCAPES_LAYOUT = (
    "expected the Cityscapes layout <root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and "
    "<root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png"
)


# --------------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------------


def cityscapes_label_lut() -> Tensor:
    """(256,) int64 table from Cityscapes ``labelIds`` (0..33) to trainIds (0..18, 255 = ignore); -1 marks invalid ids.

    Built from torchvision's ``Cityscapes.classes`` (the official ``labels.py`` table): 19 ids map to trainIds, the
    other 15 ids (void classes and rarely labelled ones such as ``parking``, ``rail track``) to 255.
    """
    from torchvision.datasets import Cityscapes

    lut = torch.full((256,), -1, dtype=torch.long)
    for c in Cityscapes.classes:
        if c.id >= 0:
            lut[c.id] = c.train_id if 0 <= c.train_id < 255 else IGNORE_INDEX
    return lut


def read_image(path: str | Path) -> Tensor:
    """An image file as uint8 RGB (3, H, W)."""
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_label(path: str | Path, num_classes: int, lut: Tensor | None = None) -> Tensor:
    """A single-channel label PNG (palette or grayscale indices) as int64 (H, W), checked.

    Args:
        path: the label file.
        num_classes: valid labels are ``[0, num_classes)`` and 255.
        lut: optional (256,) table applied to the raw values first (Cityscapes ids -> trainIds; -1 = invalid).

    Raises:
        ValueError: a colour (RGB) label image, or values outside ``[0, num_classes)`` other than 255.
    """
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(
                f"label {str(path)!r} is a {img.mode} image; expected a single-channel index PNG (palette or "
                f"grayscale) with class ids"
            )
        raw = torch.from_numpy(np.asarray(img).astype(np.int64))
    if lut is not None:
        if int(raw.min()) < 0 or int(raw.max()) >= lut.numel() or bool((lut[raw] < 0).any()):
            bad = sorted(set(raw.unique().tolist()) - set((lut >= 0).nonzero().flatten().tolist()))
            raise ValueError(f"label {str(path)!r} holds ids {bad[:10]} that the dataset's id table does not know")
        raw = lut[raw]
    bad = (raw >= num_classes) & (raw != IGNORE_INDEX)
    if bool((raw < 0).any()) or bool(bad.any()):
        values = sorted(raw[(raw < 0) | bad].unique().tolist())
        raise ValueError(
            f"label {str(path)!r} holds values {values[:10]} outside [0, {num_classes}) and other than "
            f"{IGNORE_INDEX} (ignore)"
        )
    return raw


class SegmentationFiles(Dataset):
    """Image/label file pairs as ``(uint8 (3, H, W) image, int64 (H, W) label)``.

    Args:
        pairs: (image path, label path) per sample.
        num_classes: number of classes (labels are checked against it).
        lut: optional table from raw label values to classes (see :func:`read_label`).

    Raises:
        FileNotFoundError: (at construction) a listed file does not exist.
        ValueError: (when an item is read) a bad label (see :func:`read_label`) or an image and label of different
            sizes.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], num_classes: int, lut: Tensor | None = None) -> None:
        if not pairs:
            raise FileNotFoundError("the split lists no images")
        missing = [p for pair in pairs for p in pair if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} listed file(s) do not exist, e.g. {missing[:3]}")
        self.pairs = list(pairs)
        self.num_classes = num_classes
        self.lut = lut

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = read_label(label_path, self.num_classes, self.lut)
        if tuple(image.shape[1:]) != tuple(label.shape):
            raise ValueError(
                f"label {label_path!r} is {tuple(label.shape)} (H, W) but its image {image_path!r} is "
                f"{tuple(image.shape[1:])}"
            )
        return image, label


class _TensorSegmentation(Dataset):
    def __init__(self, images: Tensor, masks: Tensor) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.masks[index]


def _read_ids(list_file: Path) -> list[str]:
    ids = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if line:  # "<id>" or "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
            ids.append(Path(line.split()[0]).stem)
    return ids


def voc_files(root: str | Path, split: str = "train", aug_dir: str = "SegmentationClassAug") -> list[tuple[str, str]]:
    """Image/label paths of a Pascal VOC 2012 split.

    Args:
        root: the folder holding ``VOCdevkit/VOC2012`` (torchvision's ``root``).
        split: ``train``/``val``/``trainval`` (torchvision's ``VOCSegmentation``, labels in ``SegmentationClass``),
            ``train_aug`` (SBD-augmented 10,582 images: ``ImageSets/Segmentation/train_aug.txt``, labels in
            ``SegmentationClassAug``), or the path of a list file of ids (one per line, or
            ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` pairs) whose labels are in ``aug_dir``.
        aug_dir: folder of the augmented labels inside ``VOC2012``.

    Raises:
        FileNotFoundError: the layout or a split file is missing (the message names the expected layout).
    """
    voc_root = Path(root) / "VOCdevkit" / "VOC2012"
    if not voc_root.is_dir():
        raise FileNotFoundError(f"{str(voc_root)!r} does not exist; {_VOC_LAYOUT}")
    if split in ("train", "val", "trainval"):
        split_file = voc_root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"split file {str(split_file)!r} does not exist; {_VOC_LAYOUT}")
        from torchvision.datasets import VOCSegmentation

        ds = VOCSegmentation(str(root), year="2012", image_set=split)
        return list(zip(ds.images, ds.targets, strict=True))
    split_file = voc_root / "ImageSets" / "Segmentation" / "train_aug.txt" if split == "train_aug" else Path(split)
    if not split_file.is_file():
        raise FileNotFoundError(
            f"split {split!r}: list file {str(split_file)!r} does not exist; use train, val, trainval, train_aug or "
            f"the path of a list of image ids; {_VOC_LAYOUT}"
        )
    label_dir = voc_root / aug_dir
    if not label_dir.is_dir():
        raise FileNotFoundError(f"augmented label folder {str(label_dir)!r} does not exist; {_VOC_LAYOUT}")
    return [(str(voc_root / "JPEGImages" / f"{i}.jpg"), str(label_dir / f"{i}.png")) for i in _read_ids(split_file)]


def cityscapes_files(root: str | Path, split: str = "train") -> list[tuple[str, str]]:
    """Image/label (``gtFine_labelIds``) paths of a Cityscapes split, sorted by file name.

    Args:
        root: the Cityscapes folder (torchvision's ``root``).
        split: ``train``, ``val`` or ``test`` (the test labels are not public).

    Raises:
        FileNotFoundError: the layout is missing (torchvision would otherwise try to extract zip files into
            ``root``; here nothing is written).
    """
    root = Path(root)
    for folder in (root / "leftImg8bit" / split, root / "gtFine" / split):
        if not folder.is_dir():
            raise FileNotFoundError(f"{str(folder)!r} does not exist; {_CITYSCAPES_LAYOUT}")
    from torchvision.datasets import Cityscapes

    ds = Cityscapes(str(root), split=split, mode="fine", target_type="semantic")
    # torchvision lists files in os.listdir order, which differs between file systems: sort for reproducibility
    return sorted((img, tgt[0]) for img, tgt in zip(ds.images, ds.targets, strict=True))


# --------------------------------------------------------------------------------------------------------------
# Joint augmentation
# --------------------------------------------------------------------------------------------------------------


def _sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    mixed = ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


class JointTransform:
    """Random scale, normalisation, pad-and-crop and flip of an image and its label map (see the module docstring).

    Args:
        crop_size: (height, width) of the output, or None for no crop (whole images).
        scale_range: (low, high) of the random rescale factor; (1, 1) for none.
        scale_step: draw the factor from ``low, low + step, ..., high`` (CIRKD: 0.5 + randint(0, 15) / 10 is
            ``(0.5, 2.0)`` with step 0.1) instead of uniformly.
        flip: random horizontal flip with probability 1/2.
        mean: per-channel mean of [0, 1] RGB images.
        std: per-channel standard deviation.
        bgr: reverse the channels after normalising (Caffe-style BGR input of CIRKD's backbones).
        seed: base seed; sample ``i`` of epoch ``e`` draws from ``(seed, e, i)``.

    Raises:
        ValueError: an invalid range, step or crop size.
    """

    def __init__(
        self,
        crop_size: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (1.0, 1.0),
        scale_step: float | None = None,
        flip: bool = False,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        bgr: bool = False,
        seed: int = 0,
    ) -> None:
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        if scale_step is not None and scale_step <= 0:
            raise ValueError(f"scale_step must be > 0 or None, got {scale_step}")
        if crop_size is not None and (len(crop_size) != 2 or min(crop_size) < 1):
            raise ValueError(f"crop_size must be (height, width) >= 1, got {crop_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got {mean}, {std}")
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.scale_range = (float(low), float(high))
        self.scale_step = scale_step
        self.flip = flip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.bgr = bgr
        self.seed = seed

    def _scale(self, g: torch.Generator) -> float:
        low, high = self.scale_range
        if low == high:
            return low
        if self.scale_step is not None:
            steps = int(round((high - low) / self.scale_step))
            return low + int(torch.randint(steps + 1, (1,), generator=g)) * self.scale_step
        return low + float(torch.rand((), generator=g)) * (high - low)

    def __call__(self, image: Tensor, label: Tensor, index: int = 0, epoch: int = 0) -> tuple[Tensor, Tensor]:
        """Transform one sample.

        Args:
            image: uint8 (3, H, W).
            label: int64 (H, W).
            index: the sample's dataset index.
            epoch: the epoch (evaluation: 0).

        Returns:
            float32 (3, h, w) image and int64 (h, w) label.
        """
        g = _sample_generator(self.seed, epoch, index)
        x = image.float().div_(255)
        y = label
        scale = self._scale(g)
        if scale != 1.0:
            h, w = y.shape
            size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
            y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
        x = (x - self.mean) / self.std
        if self.crop_size is not None:
            ch, cw = self.crop_size
            h, w = y.shape
            pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
                y = F.pad(y, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
                h, w = y.shape
            top = int(torch.randint(h - ch + 1, (1,), generator=g))
            left = int(torch.randint(w - cw + 1, (1,), generator=g))
            x, y = x[:, top : top + ch, left : left + cw], y[top : top + ch, left : left + cw]
        if self.flip and bool(torch.rand((), generator=g) < 0.5):
            x, y = x.flip(-1), y.flip(-1)
        if self.bgr:
            x = x.flip(0)
        return x.contiguous(), y.contiguous()


class _Transformed(Dataset):
    """Apply a :class:`JointTransform`; items are requested as ``index`` or ``(index, epoch)``."""

    def __init__(self, dataset: Dataset, transform: JointTransform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, label = self.dataset[index]
        return self.transform(image, label, index, epoch)


def pad_collate(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack ``(image, label)`` items, padding smaller ones at the bottom/right (image 0, label 255)."""
    h = max(img.shape[-2] for img, _ in batch)
    w = max(img.shape[-1] for img, _ in batch)
    images = torch.stack([F.pad(img, (0, w - img.shape[-1], 0, h - img.shape[-2])) for img, _ in batch])
    labels = torch.stack(
        [F.pad(lab, (0, w - lab.shape[-1], 0, h - lab.shape[-2]), value=IGNORE_INDEX) for _, lab in batch]
    )
    return images, labels


#: Built-in datasets already generated in this process.
_BUILTIN_CACHE: dict[tuple, Dataset] = {}


class SegmentationData(UnpaddedEvalLoaders, pl.LightningDataModule):
    """Semantic-segmentation data: built-in scenes (default, no download), Pascal VOC 2012 or Cityscapes from disk.

    Args:
        dataset: ``builtin`` (:func:`tenfold.data.synthetic.make_segmentation` scenes: label 0 background, 1..C-1
            the objects), ``voc`` (21 classes) or ``cityscapes`` (19 classes, fine annotations, labelIds mapped to
            trainIds, other ids ignored).
        root: folder of a real dataset (see :func:`voc_files`, :func:`cityscapes_files`).
        num_classes: classes including background (``builtin`` only, 3 to 101; fixed for the others).
        train_size: ``builtin`` training images.
        val_size: ``builtin`` validation images.
        test_size: ``builtin`` test images.
        image_size: ``builtin`` image side.
        difficulty: ``builtin`` nuisance strength in [0, 3].
        max_objects: ``builtin`` objects per image (1 to 8).
        train_split: ``voc``: ``train``, ``trainval``, ``train_aug`` or a list file; ``cityscapes``: ``train``.
        val_split: split validated during training (``val``).
        test_split: split of ``tenfold test`` (default ``val`` for real datasets, whose test labels are not public).
        crop_size: training crop (height, width); default the image size (builtin), 512x512 (VOC), 512x1024
            (Cityscapes).
        scale_range: random rescale range of training images (CIRKD/mmseg (0.5, 2.0); (1, 1) for none).
        scale_step: draw the scale on a grid of this step (CIRKD 0.1); None: uniformly.
        flip: random horizontal flip of training images.
        mean: normalisation mean of [0, 1] RGB values (default: ImageNet's for real data, 0.5 for builtin).
        std: normalisation standard deviation (ImageNet's / 0.25).
        bgr: feed BGR channels (CIRKD's Caffe-style backbones: set mean to (122.68, 116.67, 104.01) / 255 and std
            to 1 / 255).
        eval_crop: evaluate on a crop of this size per image instead of the whole image (PRCL evaluates on random
            crops of the training size; the crop of an image is fixed by its index). None: whole images.
        batch_size: training images per step and process.
        eval_batch_size: images per evaluation step (default 1 for VOC, whose images differ in size; otherwise
            ``batch_size``; smaller images in a batch are padded with ignored pixels).
        num_workers: data-loader worker processes.
        data_seed: seed of the built-in generator (which task).
        shuffle_seed: seed of the training order and augmentation.

    Raises:
        ValueError: an unknown dataset, a missing ``root`` or an invalid setting.
        FileNotFoundError: (in :meth:`setup`) the dataset's layout is missing.
    """

    _eval_collate = staticmethod(pad_collate)

    def __init__(
        self,
        dataset: Literal["builtin", "voc", "cityscapes"] = "builtin",
        root: str | None = None,
        num_classes: int = 5,
        train_size: int = 512,
        val_size: int = 128,
        test_size: int = 128,
        image_size: int = 64,
        difficulty: float = 1.0,
        max_objects: int = 3,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        crop_size: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        scale_step: float | None = None,
        flip: bool = True,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        bgr: bool = False,
        eval_crop: tuple[int, int] | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        data_seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in _STATS:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_STATS)}")
        if dataset != "builtin" and not root:
            raise ValueError(f"dataset {dataset!r} reads from disk: set data.init_args.root to its folder")
        if dataset == "builtin" and not 3 <= num_classes <= 101:
            raise ValueError(f"builtin num_classes (background included) must be in [3, 101], got {num_classes}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.dataset_name = dataset
        self.root = root
        self._num_classes = {"voc": 21, "cityscapes": 19}.get(dataset, num_classes)
        self.hparams["num_classes"] = self._num_classes
        self.batch_size = batch_size
        default_eval = 1 if dataset == "voc" else batch_size
        self.eval_batch_size = eval_batch_size or default_eval
        self.num_workers = num_workers
        self.shuffle_seed = shuffle_seed
        default_mean, default_std = _STATS[dataset]
        mean, std = tuple(mean or default_mean), tuple(std or default_std)
        crop = tuple(crop_size) if crop_size is not None else _CROP.get(dataset, (image_size, image_size))
        self.train_transform = JointTransform(
            crop, tuple(scale_range), scale_step, flip, mean, std, bgr, seed=shuffle_seed
        )  # type: ignore[arg-type]
        self.eval_transform = JointTransform(
            tuple(eval_crop) if eval_crop is not None else None, mean=mean, std=std, bgr=bgr, seed=shuffle_seed + 1
        )  # type: ignore[arg-type]
        self._splits: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        """Classes of the selected dataset, background included."""
        return self._num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in label order (built-in: ``background``, ``class0``, ... for object class k at label k+1)."""
        if self.dataset_name == "voc":
            return VOC_CLASSES
        if self.dataset_name == "cityscapes":
            return CITYSCAPES_CLASSES
        return ("background", *(f"class{k}" for k in range(self._num_classes - 1)))

    def _split_name(self, split: str) -> str:
        hp = self.hparams
        if split == "train":
            return hp.train_split
        if split == "val":
            return hp.val_split
        return hp.test_split or ("test" if self.dataset_name == "builtin" else hp.val_split)

    def _build(self, split: str) -> Dataset:
        hp = self.hparams
        if self.dataset_name == "builtin":
            size = {"train": hp.train_size, "val": hp.val_size, "test": hp.test_size}[split]
            key = (split, self._num_classes, size, hp.data_seed, hp.image_size, hp.difficulty, hp.max_objects)
            if key not in _BUILTIN_CACHE:  # deterministic: runs in one process (tests, demos) share it
                if len(_BUILTIN_CACHE) >= 8:
                    _BUILTIN_CACHE.clear()
                from tenfold.data.synthetic import make_segmentation

                images, masks = make_segmentation(
                    size,
                    self._num_classes - 1,
                    seed=hp.data_seed,
                    split=split,
                    image_size=hp.image_size,
                    difficulty=hp.difficulty,
                    max_objects=hp.max_objects,
                )
                _BUILTIN_CACHE[key] = _TensorSegmentation(images, masks)
            return _BUILTIN_CACHE[key]
        name = self._split_name(split)
        if self.dataset_name == "voc":
            return SegmentationFiles(voc_files(self.root, name), self._num_classes)  # type: ignore[arg-type]
        return SegmentationFiles(
            cityscapes_files(self.root, name),
            self._num_classes,
            cityscapes_label_lut(),  # type: ignore[arg-type]
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the splits a stage needs (cached, so repeated calls are free)."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "fit", ("train", "val", "test")):
            if split not in self._splits:
                transform = self.train_transform if split == "train" else self.eval_transform
                self._splits[split] = _Transformed(self._build(split), transform)

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled, rank-sharded, resumable loader of augmented training crops."""
        return self._epoch_indexed_train_loader(
            self._splits["train"], self.batch_size, self.shuffle_seed, num_workers=self.num_workers
        )
