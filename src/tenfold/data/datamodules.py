"""Lightning data modules: the glue between datasets and the trainer.

A data module picks a dataset by name (built-in generators, scikit-learn digits, or real data from disk), builds
seeded resumable samplers sharded by rank (:mod:`tenfold.data.sampling`), and augments and normalises whole batches
on the device (:mod:`tenfold.data.augment`).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset

from tenfold.data.augment import CropFlip
from tenfold.data.sampling import EpochSampler, ResumableDataLoader, TrainerPositionMixin

__all__ = ["ClassificationData", "IndexedDataset"]

_STATS = {
    "builtin": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "digits": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


#: Built-in datasets already generated in this process, by (split, classes, size, seed, image size).
_BUILTIN_CACHE: dict[tuple[str, int, int, int, int], Dataset] = {}


class IndexedDataset(Dataset):
    """Wrap a ``(image, label)`` dataset so that items are ``(image, label, index)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        image, label = self.dataset[index]
        return image, label, index


class ClassificationData(TrainerPositionMixin, pl.LightningDataModule):
    """Image classification data: built-in scenes, digits, CIFAR-10/100 or an ImageFolder tree.

    Args:
        dataset: ``builtin`` (procedural 32x32 scenes, no download), ``digits`` (scikit-learn's bundled digits),
            ``cifar10``/``cifar100`` (the python-pickle layout under ``root``), or ``imagefolder``
            (``root/<split>/<class>/<image>``).
        root: folder of the real dataset; required for ``cifar10``, ``cifar100`` and ``imagefolder``.
        num_classes: classes of the built-in generator (10 to 100); read from the data for the others.
        train_size: training images generated (``builtin`` only).
        val_size: validation images generated (``builtin`` only).
        test_size: test images generated (``builtin`` only).
        image_size: side of the (square) images fed to the model.
        batch_size: images per step and per process.
        eval_batch_size: images per validation/test step (default: ``batch_size``).
        num_workers: data-loader worker processes.
        augment: training augmentation. ``crop_flip``: random crop after 4-pixel zero padding and horizontal flip
            (the CIFAR recipe; batch-level, deterministic per sample and epoch, exact on resume). ``timm``:
            timm's ImageNet training transform (RandomResizedCrop, flip, optional RandAugment and random erasing),
            applied per image in the loader (``imagefolder`` only). ``none``: no augmentation.
        auto_augment: timm auto-augment policy for ``augment="timm"``, e.g. ``rand-m9-mstd0.5``.
        re_prob: random-erasing probability for ``augment="timm"``.
        re_mode: random-erasing fill for ``augment="timm"``: ``const`` (zeros), ``rand`` (one random colour) or
            ``pixel`` (per-pixel normal noise, the DeiT/LightViT recipes).
        interpolation: resize interpolation of the ``timm`` transforms (train and eval): ``bilinear`` or
            ``bicubic`` (the LightViT/DeiT recipes).
        crop_scale: area range of the ``timm`` RandomResizedCrop (timm's default (0.08, 1); MAE-style pre-training
            uses (0.2, 1)).
        color_jitter: colour-jitter strength of the ``timm`` train transform when no ``auto_augment`` is set (timm's
            default 0.4; 0 for none, e.g. GreenMIM/MAE pre-training: crop and flip only).
        data_seed: seed of the built-in generators (which task is generated).
        shuffle_seed: seed of the per-epoch training order and augmentation.

    Raises:
        ValueError: an unknown dataset name or a missing ``root``.
        FileNotFoundError: ``root`` does not hold the expected layout (raised in :meth:`setup`).
    """

    def __init__(
        self,
        dataset: Literal["builtin", "digits", "cifar10", "cifar100", "imagefolder"] = "builtin",
        root: str | None = None,
        num_classes: int = 10,
        train_size: int = 5000,
        val_size: int = 1000,
        test_size: int = 1000,
        image_size: int = 32,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: Literal["none", "crop_flip", "timm"] = "crop_flip",
        auto_augment: str | None = None,
        re_prob: float = 0.0,
        re_mode: Literal["const", "rand", "pixel"] = "const",
        interpolation: Literal["bilinear", "bicubic"] = "bilinear",
        crop_scale: tuple[float, float] = (0.08, 1.0),
        color_jitter: float = 0.4,
        data_seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in _STATS:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_STATS)}")
        if dataset in ("cifar10", "cifar100", "imagefolder") and not root:
            raise ValueError(f"dataset {dataset!r} reads from disk: set data.root to its folder")
        if augment == "timm" and dataset != "imagefolder":
            raise ValueError(f"augment='timm' applies to full-size images (dataset 'imagefolder'), not {dataset!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not (len(crop_scale) == 2 and 0 < crop_scale[0] <= crop_scale[1] <= 1):
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {crop_scale}")
        # num_classes is recorded only where it is known now: for an ImageFolder it is read from disk in setup(),
        # and a placeholder would clash with the model's value when Lightning merges the two into the logs
        self.save_hyperparameters(ignore=["num_classes"])
        self.dataset_name = dataset
        self.root = root
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.shuffle_seed = shuffle_seed
        self._num_classes = {"cifar10": 10, "cifar100": 100, "digits": 10}.get(dataset, num_classes)
        self._builtin_classes = num_classes
        if dataset != "imagefolder":
            self.hparams["num_classes"] = self._num_classes
        mean, std = _STATS[dataset]
        self.register_mean_std(mean, std)
        self._splits: dict[str, Dataset] = {}
        self._crop_flip: CropFlip | None = None

    def register_mean_std(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Set the per-channel normalisation applied to every batch."""
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    @property
    def num_classes(self) -> int:
        """Number of classes of the selected dataset."""
        return self._num_classes

    def _build(self, split: str) -> Dataset:
        hp = self.hparams
        if self.dataset_name == "builtin":
            from tenfold.data.synthetic import BuiltinClassification

            size = {"train": hp.train_size, "val": hp.val_size, "test": hp.test_size}[split]
            key = (split, self._builtin_classes, size, hp.data_seed, hp.image_size)
            if key not in _BUILTIN_CACHE:  # generated data is deterministic: repeated runs in one process share it
                if len(_BUILTIN_CACHE) >= 8:
                    _BUILTIN_CACHE.clear()
                _BUILTIN_CACHE[key] = BuiltinClassification(
                    split=split,
                    num_classes=self._builtin_classes,
                    size=size,
                    seed=hp.data_seed,
                    image_size=hp.image_size,
                )
            return _BUILTIN_CACHE[key]
        if self.dataset_name == "digits":
            from tenfold.data.synthetic import DigitsClassification

            return DigitsClassification(split=split, seed=hp.data_seed, image_size=hp.image_size)
        from tenfold.data import readers

        if self.dataset_name in ("cifar10", "cifar100"):
            return readers.cifar(self.root, split=split, num_classes=self.num_classes)
        dataset = readers.image_folder(self.root, split=split, transform=self._image_transform(split))
        self._num_classes = len(dataset.classes)  # type: ignore[attr-defined]
        return dataset

    def _image_transform(self, split: str) -> Any:
        """Per-image transform of full-size images: timm's train/eval transforms, without normalisation.

        Normalisation happens on the device in :meth:`on_after_batch_transfer`, so mean 0 / std 1 here.
        """
        from timm.data import create_transform

        hp = self.hparams
        is_training = split == "train" and self.augment == "timm"
        return create_transform(
            self.image_size,
            is_training=is_training,
            auto_augment=hp.auto_augment if is_training else None,
            re_prob=hp.re_prob if is_training else 0.0,
            re_mode=hp.re_mode,
            interpolation=hp.interpolation,
            scale=tuple(hp.crop_scale),
            color_jitter=hp.color_jitter if hp.color_jitter > 0 else None,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            crop_pct=0.875,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the splits a stage needs (cached, so repeated calls are free)."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "fit", ("train", "val", "test")):
            if split not in self._splits:
                self._splits[split] = IndexedDataset(self._build(split))
        if "train" in self._splits and self.augment == "crop_flip" and self._crop_flip is None:
            self._crop_flip = CropFlip(len(self._splits["train"]), padding=4, seed=self.shuffle_seed)

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled, rank-sharded, resumable loader of the training split."""
        rank, world = self._rank_world()
        dataset = self._splits["train"]
        sampler = EpochSampler(
            len(dataset), shuffle=True, seed=self.shuffle_seed, rank=rank, world_size=world, drop_last=True
        )
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            progress=self._progress,
        )

    def _eval_loader(self, split: str) -> torch.utils.data.DataLoader:
        rank, world = self._rank_world()
        dataset = self._splits[split]
        sampler = EpochSampler(len(dataset), shuffle=False, rank=rank, world_size=world)
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.eval_batch_size, sampler=sampler, num_workers=self.num_workers
        )

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        """Loader of the validation split, sharded by rank (padded to equal shards like ``DistributedSampler``)."""
        return self._eval_loader("val")

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        """Loader of the test split, sharded by rank."""
        return self._eval_loader("test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment (training only) and normalise a batch on its device; drop the sample indices."""
        images, labels, index = batch
        trainer = self.trainer
        if trainer is not None and trainer.training and self._crop_flip is not None:
            images = self._crop_flip(images, index, trainer.current_epoch)
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images - mean) / std, labels
