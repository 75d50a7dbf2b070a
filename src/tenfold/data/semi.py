"""Semi-supervised segmentation data (PRCL/ReCo): a labelled and an unlabelled loader in one training loader.

Training batches are dicts::

    {"labelled": (images float32 (B, 3, H, W) in [0, 1], UN-normalised, labels int64 (B, H, W), 255 = ignore),
     "unlabelled": images float32 (B, 3, H, W) in [0, 1], UN-normalised}

(H, W) is the training crop. Labelled images get the official labelled augmentation: random rescale
``U(scale_range)``, pad (reflect; label 255) and random crop (:func:`tenfold.seg.mixing.rescale_crop`), then colour
jitter, blur and flip (:func:`tenfold.seg.mixing.strong_augment`). Unlabelled images are the weak view: pad and random
crop only (scale 1, no colour). The task normalises with :attr:`SemiSegmentationData.mean` / ``std``. Validation and
test batches are ``(normalised images (B, 3, H, W), labels (B, H, W))`` of whole images (or ``eval_crop`` crops).

Epochs: one epoch is ``iter_num = max(1, int(epoch_images / batch_size / world / n_l))`` passes over the labelled
loader of ``n_l`` batches per process (official: 2000 images). The unlabelled loader cycles independently: global
training batch ``t`` (counted from the start of training) takes unlabelled batch ``t % n_u`` of unlabelled epoch
``t // n_u``. Pass ``p`` of epoch ``e`` uses labelled sampler epoch ``e * iter_num + p``. All orders come from
:class:`tenfold.data.sampling.EpochIndexSampler` (shuffled, sharded over ranks) and every augmentation is drawn
from ``(seed, sampler epoch, index)``, so a run resumed from a checkpoint (the loader's ``state_dict`` holds the
epoch and the batches done, read from the trainer) yields exactly the batches of the uninterrupted run.

Labelled splits: ``labelled`` is a count or the path of a split file (one image id per line). A count draws that
many ids from the train pool with ``random.Random(split_seed).sample(sorted ids, count)`` (default seed 3407 as the
official scripts; the official lists themselves are not reproduced, give them as files). Pools: VOC ``train``
(1,464 fine images; counts 92/183/366/732/1464) or ``train_aug`` (10,582; 662 = 1/16, 1323 = 1/8, 2646 = 1/4,
5291 = 1/2); Cityscapes ``train`` (2,975; 150, 186 = 1/16, 372 = 1/8, 744 = 1/4, 1488 = 1/2). Unlabelled = the rest of
the pool. ``builtin``: :func:`tenfold.data.synthetic.make_segmentation` scenes, ``labelled`` of ``train_size``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tenfold.data.sampling import EpochIndexSampler, UnpaddedEvalLoaders
from tenfold.data.segmentation import (
    _STATS,
    IGNORE_INDEX,
    JointTransform,
    SegmentationFiles,
    _sample_generator,
    _TensorSegmentation,
    _Transformed,
    cityscapes_files,
    cityscapes_label_lut,
    pad_collate,
    voc_files,
)
from tenfold.seg.mixing import rescale_crop, strong_augment

__all__ = ["SemiSegmentationData", "draw_labelled_ids"]

_CROP = {"voc": (321, 321), "cityscapes": (512, 512)}
_SCALE = {"voc": (0.5, 1.5), "cityscapes": (1.0, 1.0), "builtin": (0.5, 1.5)}


def draw_labelled_ids(pool: list[str], labelled: int | str, seed: int = 3407) -> list[str]:
    """The labelled ids of a train pool: ``labelled`` ids drawn by ``random.Random(seed)``, or a split file's ids.

    Args:
        pool: ids of the train pool.
        labelled: a count (1..len(pool)) or the path of a file with one id per line.
        seed: seed of the draw.

    Raises:
        ValueError: a count out of range, or split-file ids that are not in the pool (named).
        FileNotFoundError: the split file does not exist.
    """
    if isinstance(labelled, int) or str(labelled).isdigit():
        count = int(labelled)
        if not 1 <= count <= len(pool):
            raise ValueError(f"labelled count must be in [1, {len(pool)}] (the train pool), got {count}")
        return random.Random(seed).sample(sorted(pool), count)
    path = Path(labelled)
    if not path.is_file():
        raise FileNotFoundError(f"labelled split file {str(path)!r} does not exist (expected one image id per line)")
    ids = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    known = set(pool)
    missing = [i for i in ids if i not in known]
    if missing:
        raise ValueError(
            f"labelled split file {str(path)!r} lists {len(missing)} id(s) not in the train pool, e.g. {missing[:5]}"
        )
    if not ids:
        raise ValueError(f"labelled split file {str(path)!r} lists no ids")
    return list(dict.fromkeys(ids))


class _TrainView(Dataset):
    """Items ``(index, epoch)`` -> augmented [0, 1] ``(image, label)`` (labelled) or image (unlabelled)."""

    def __init__(self, base: Dataset, crop: tuple[int, int], scale: tuple[float, float], strong: bool, seed: int):
        self.base, self.crop, self.scale, self.strong, self.seed = base, crop, scale, strong, seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        image, label = self.base[index]
        g = _sample_generator(self.seed, epoch, index)
        x = image.float().div(255)[None]
        y = label[None]
        c = torch.ones(y.shape)
        x, y, c = rescale_crop(x, y, c, self.scale, self.crop, generator=g, ignore_index=IGNORE_INDEX)
        if not self.strong:
            return x[0]
        x, y, _ = strong_augment(x, y, c, generator=g, quantize_confidence=False)
        return x[0], y[0]


class _SemiTrainLoader:
    """Labelled + cycling unlabelled batches as dicts; epoch = ``iter_num`` labelled passes; resumable.

    Lightning saves :meth:`state_dict` in checkpoints and hands it back to :meth:`load_state_dict`; it calls
    ``sampler.set_epoch`` (this object is its own ``sampler``) before every epoch.
    """

    def __init__(
        self,
        labelled: Dataset,
        unlabelled: Dataset,
        batch_size: int,
        unlabelled_batch_size: int,
        seed: int,
        rank: int,
        world: int,
        epoch_images: int,
        progress: Any,
        num_workers: int = 0,
    ) -> None:
        self.l_sampler = EpochIndexSampler(
            len(labelled), shuffle=True, seed=seed, rank=rank, world_size=world, drop_last=True
        )  # type: ignore[arg-type]
        self.u_sampler = EpochIndexSampler(
            len(unlabelled), shuffle=True, seed=seed + 1, rank=rank, world_size=world, drop_last=True
        )  # type: ignore[arg-type]
        for name, sampler, bs in (
            ("labelled", self.l_sampler, batch_size),
            ("unlabelled", self.u_sampler, unlabelled_batch_size),
        ):
            if len(sampler) < bs:
                raise ValueError(
                    f"the {name} split has {sampler.num_samples} images: fewer than one batch of {bs} per process"
                )
        self.labelled, self.unlabelled = labelled, unlabelled
        self.batch_size, self.unlabelled_batch_size = batch_size, unlabelled_batch_size
        self.n_l = len(self.l_sampler) // batch_size
        self.n_u = len(self.u_sampler) // unlabelled_batch_size
        self.iter_num = max(1, int(epoch_images / batch_size / world / self.n_l))
        self.num_workers = num_workers
        self._progress = progress
        self.sampler = self
        self.epoch = 0
        self._skip = 0

    def __len__(self) -> int:
        return self.iter_num * self.n_l

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration (a pending resume skip belongs to its own epoch)."""
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """The epoch and the number of batches already trained in it."""
        epoch, batches = self._progress()
        return {"epoch": int(epoch), "batches_done": int(batches)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Make the next iteration continue where the saved run stopped."""
        self.epoch = int(state_dict["epoch"])
        self._skip = int(state_dict["batches_done"])

    def _batches(self, dataset: Dataset, sampler: EpochIndexSampler, bs: int, epoch: int, skip: int) -> Iterator:
        sampler.resume(epoch, skip * bs)
        loader = DataLoader(dataset, batch_size=bs, sampler=sampler, drop_last=True, num_workers=self.num_workers)
        return iter(loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skip, self._skip = self._skip, 0
        epoch, total = self.epoch, len(self)
        start = epoch * total + skip  # global batch index
        u_epoch, u_pos = divmod(start, self.n_u)
        u_iter = self._batches(self.unlabelled, self.u_sampler, self.unlabelled_batch_size, u_epoch, u_pos)
        t = skip
        while t < total:
            p, j = divmod(t, self.n_l)
            l_iter = self._batches(self.labelled, self.l_sampler, self.batch_size, epoch * self.iter_num + p, j)
            for _ in range(j, self.n_l):
                if u_pos == self.n_u:
                    u_epoch, u_pos = u_epoch + 1, 0
                    u_iter = self._batches(self.unlabelled, self.u_sampler, self.unlabelled_batch_size, u_epoch, 0)
                images, labels = next(l_iter)
                yield {"labelled": (images, labels), "unlabelled": next(u_iter)}
                u_pos += 1
                t += 1


class SemiSegmentationData(UnpaddedEvalLoaders, pl.LightningDataModule):
    """Labelled + unlabelled segmentation data for PRCL-style training (see the module docstring).

    Args:
        dataset: ``builtin``, ``voc`` (21 classes) or ``cityscapes`` (19 classes).
        root: folder of a real dataset (see :func:`tenfold.data.segmentation.voc_files` / ``cityscapes_files``).
        labelled: a count drawn from the pool (see module docstring) or the path of a split file of ids.
        train_pool: VOC pool ``train`` (1,464) or ``train_aug`` (10,582, default); Cityscapes ``train``.
        split_seed: seed of the labelled draw (3407 official).
        epoch_images: images of an "epoch" (official 2000).
        num_classes: ``builtin`` classes including background.
        train_size: ``builtin`` train pool size.
        val_size: ``builtin`` validation images.
        test_size: ``builtin`` test images.
        image_size: ``builtin`` image side.
        difficulty: ``builtin`` nuisance strength.
        max_objects: ``builtin`` objects per image.
        crop_size: training crop (default 321 VOC, 512 Cityscapes, the image size builtin).
        scale_range: labelled rescale range (default VOC (0.5, 1.5), Cityscapes (1, 1)).
        eval_crop: evaluate on a random crop of this size per image (official, non-standard); None: whole images.
        batch_size: labelled images per step and process.
        unlabelled_batch_size: unlabelled images per step and process (default ``batch_size``).
        eval_batch_size: images per evaluation step (default 1 for VOC, else ``batch_size``).
        num_workers: data-loader workers.
        data_seed: ``builtin`` generator seed.
        shuffle_seed: seed of the training orders and augmentation.

    Raises:
        ValueError: an unknown dataset, missing root or bad setting.
    """

    _eval_collate = staticmethod(pad_collate)

    def __init__(
        self,
        dataset: Literal["builtin", "voc", "cityscapes"] = "builtin",
        root: str | None = None,
        labelled: int | str = 64,
        train_pool: str | None = None,
        split_seed: int = 3407,
        epoch_images: int = 2000,
        num_classes: int = 5,
        train_size: int = 512,
        val_size: int = 128,
        test_size: int = 128,
        image_size: int = 64,
        difficulty: float = 1.0,
        max_objects: int = 3,
        crop_size: tuple[int, int] | None = None,
        scale_range: tuple[float, float] | None = None,
        eval_crop: tuple[int, int] | None = None,
        batch_size: int = 8,
        unlabelled_batch_size: int | None = None,
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
        if batch_size < 1 or epoch_images < 1:
            raise ValueError(f"batch_size and epoch_images must be >= 1, got {batch_size}, {epoch_images}")
        self.save_hyperparameters()
        self.dataset_name = dataset
        self.root = root
        self._num_classes = {"voc": 21, "cityscapes": 19}.get(dataset, num_classes)
        self.batch_size = batch_size
        self.unlabelled_batch_size = unlabelled_batch_size or batch_size
        self.eval_batch_size = eval_batch_size or (1 if dataset == "voc" else batch_size)
        self.num_workers = num_workers
        self.shuffle_seed = shuffle_seed
        self._mean, self._std = _STATS[dataset]
        self.crop_size = tuple(crop_size) if crop_size else _CROP.get(dataset, (image_size, image_size))
        self.scale_range = tuple(scale_range) if scale_range else _SCALE[dataset]
        self.train_pool = train_pool or {"voc": "train_aug", "cityscapes": "train"}.get(dataset, "train")
        self.eval_transform = JointTransform(
            tuple(eval_crop) if eval_crop else None, mean=self._mean, std=self._std, seed=shuffle_seed + 1
        )  # type: ignore[arg-type]
        self.labelled_ids: list[str] = []
        self.unlabelled_ids: list[str] = []
        self._splits: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return self._num_classes

    @property
    def mean(self) -> tuple[float, float, float]:
        """Normalisation mean of [0, 1] RGB images."""
        return self._mean

    @property
    def std(self) -> tuple[float, float, float]:
        """Normalisation standard deviation."""
        return self._std

    @property
    def ignore_index(self) -> int:
        """Label of ignored pixels (255)."""
        return IGNORE_INDEX

    def _files(self, split: str) -> tuple[list[tuple[str, str]], Any]:
        if self.dataset_name == "voc":
            return voc_files(self.root, split), None  # type: ignore[arg-type]
        return cityscapes_files(self.root, split), cityscapes_label_lut()  # type: ignore[arg-type]

    def _builtin(self, split: str, size: int) -> Dataset:
        from tenfold.data.synthetic import make_segmentation

        hp = self.hparams
        images, masks = make_segmentation(
            size,
            self._num_classes - 1,
            seed=hp.data_seed,
            split=split,
            image_size=hp.image_size,
            difficulty=hp.difficulty,
            max_objects=hp.max_objects,
        )
        return _TensorSegmentation(images, masks)

    def _train_sets(self) -> tuple[Dataset, Dataset]:
        hp = self.hparams
        if self.dataset_name == "builtin":
            pool = self._builtin("train", hp.train_size)
            ids = [str(i) for i in range(len(pool))]
            chosen = draw_labelled_ids(ids, hp.labelled, hp.split_seed)
            rest = [i for i in ids if i not in set(chosen)]
            self.labelled_ids, self.unlabelled_ids = chosen, rest
            images, masks = pool.images, pool.masks  # type: ignore[attr-defined]
            li, ui = [int(i) for i in chosen], [int(i) for i in rest]
            return _TensorSegmentation(images[li], masks[li]), _TensorSegmentation(images[ui], masks[ui])
        pairs, lut = self._files(self.train_pool)
        by_id = {Path(img).name.removesuffix("_leftImg8bit.png").removesuffix(".jpg"): (img, lab) for img, lab in pairs}
        chosen = draw_labelled_ids(list(by_id), hp.labelled, hp.split_seed)
        chosen_set = set(chosen)
        rest = [i for i in sorted(by_id) if i not in chosen_set]
        if not rest:
            raise ValueError(f"no unlabelled images left: all {len(by_id)} images of the pool are labelled")
        self.labelled_ids, self.unlabelled_ids = chosen, rest
        return (
            SegmentationFiles([by_id[i] for i in chosen], self._num_classes, lut),
            SegmentationFiles([by_id[i] for i in rest], self._num_classes, lut),
        )

    def _eval_set(self, split: str) -> Dataset:
        hp = self.hparams
        if self.dataset_name == "builtin":
            return self._builtin(split, hp.val_size if split == "val" else hp.test_size)
        pairs, lut = self._files("val")
        return SegmentationFiles(pairs, self._num_classes, lut)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits a stage needs (cached)."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "fit", ("train", "val", "test")):
            if split in self._splits:
                continue
            if split == "train":
                lab, unl = self._train_sets()
                seed = self.shuffle_seed
                self._splits["labelled"] = _TrainView(lab, self.crop_size, self.scale_range, True, seed)
                self._splits["unlabelled"] = _TrainView(unl, self.crop_size, (1.0, 1.0), False, seed + 7)
                self._splits["train"] = lab
            else:
                self._splits[split] = _Transformed(self._eval_set(split), self.eval_transform)

    def unlabelled_dataset(self) -> Dataset:
        """The unlabelled pool before augmentation: items ``(image uint8 (3, H, W), label (H, W))``.

        Its labels are never used by training; they are there to analyse pseudo-labels (built-in data, or a real
        dataset whose unlabelled part is annotated). Call after ``setup("fit")``.

        Raises:
            RuntimeError: called before ``setup("fit")``.
        """
        if "unlabelled" not in self._splits:
            raise RuntimeError("call setup('fit') before unlabelled_dataset()")
        return self._splits["unlabelled"].base  # type: ignore[attr-defined]

    def train_dataloader(self) -> _SemiTrainLoader:
        """Dict batches of labelled and (cycling) unlabelled crops; resumable, rank-sharded."""
        rank, world = self._rank_world()
        return _SemiTrainLoader(
            self._splits["labelled"],
            self._splits["unlabelled"],
            self.batch_size,
            self.unlabelled_batch_size,
            self.shuffle_seed,
            rank,
            world,
            self.hparams.epoch_images,
            self._progress,
            self.num_workers,
        )
