"""A seeded, shardable, resumable sampler.

Lightning's default replaces samplers with ``DistributedSampler`` and cannot resume mid-epoch with a plain
``DataLoader``. :class:`EpochSampler` does both jobs itself: the order of epoch ``e`` is a permutation drawn from
``seed + e`` (the same on every rank), rank ``r`` of ``w`` takes every ``w``-th index starting at ``r`` (as
``DistributedSampler`` does), and a resumed run skips the samples the interrupted run had already consumed in that
epoch. A 2-process run with per-process batch ``B/2`` therefore sees exactly the global batches of a 1-process run
with batch ``B``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["EpochIndexSampler", "EpochSampler", "ResumableDataLoader", "TrainerPositionMixin", "UnpaddedEvalLoaders"]


class EpochSampler(Sampler[int]):
    """Sample indices of one rank's shard, in a per-epoch seeded order.

    Args:
        num_samples: size of the dataset.
        shuffle: draw a new permutation every epoch (otherwise ``0..n-1``).
        seed: base seed of the permutations; epoch ``e`` uses ``seed + e``.
        rank: this process's rank.
        world_size: number of processes.
        drop_last: drop the tail that does not divide evenly between ranks (otherwise pad by repeating the first
            indices, like ``DistributedSampler``).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self._skip = 0  # samples of the current epoch to skip once, set when resuming

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (Lightning calls this every epoch)."""
        if epoch != self.epoch:
            self._skip = 0  # a pending skip belongs to the epoch it was recorded in
        self.epoch = epoch

    def resume(self, epoch: int, samples_done: int) -> None:
        """Continue epoch ``epoch`` after ``samples_done`` of this rank's samples were already consumed."""
        self.epoch = epoch
        self._skip = max(0, samples_done)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        total = len(self) * self.world_size
        if total > self.num_samples:
            order = torch.cat([order, order[: total - self.num_samples]])
        own = order[:total][self.rank :: self.world_size]
        skip, self._skip = self._skip, 0
        return iter(own[skip:].tolist())


class EpochIndexSampler(EpochSampler):
    """:class:`EpochSampler` that yields ``(index, epoch)``: datasets seed a sample's augmentation with the epoch."""

    def __iter__(self):  # noqa: D105
        epoch = self.epoch
        return ((i, epoch) for i in super().__iter__())


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose :class:`EpochSampler` position is saved in Lightning checkpoints.

    Lightning stores ``state_dict()`` of every loader that has one and hands it back to ``load_state_dict`` when a
    run resumes, before iterating. The number of batches already trained in the epoch is read from the trainer at
    save time through ``progress`` (the loader itself runs one batch ahead because of prefetching).

    Args:
        *args: passed to ``DataLoader``; the ``sampler`` keyword must be an :class:`EpochSampler`.
        progress: returns ``(epoch, batches_trained_in_epoch)`` at checkpoint time.
        **kwargs: passed to ``DataLoader``. Without a ``generator``, a private one seeded with the sampler's seed
            is used: each new iterator draws its worker base seed from it, and would otherwise draw from the global
            torch RNG. A resumed run creates its iterator after the RNG state was restored, so that extra draw would
            shift every later dropout mask against the uninterrupted run.
    """

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int]], **kwargs: Any) -> None:
        sampler = kwargs.get("sampler")
        if not isinstance(sampler, EpochSampler):
            raise ValueError(f"ResumableDataLoader needs an EpochSampler, got {type(sampler).__name__}")
        kwargs.setdefault("generator", torch.Generator().manual_seed(sampler.seed))
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        """The epoch and the number of batches already trained in it."""
        epoch, batches = self._progress()
        return {"epoch": int(epoch), "batches_done": int(batches)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Make the next iteration continue where the saved run stopped."""
        assert self.batch_size is not None
        self.sampler.resume(state_dict["epoch"], state_dict["batches_done"] * self.batch_size)


class TrainerPositionMixin:
    """For data modules: this process's rank and world size, and the training position a resumable loader needs.

    Mixed into a ``LightningDataModule`` (which provides ``self.trainer``); :class:`EpochSampler` shards with
    :meth:`_rank_world`, and :class:`ResumableDataLoader` takes :meth:`_progress` to resume inside an epoch.
    """

    trainer: Any

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _epoch_indexed_train_loader(
        self, dataset: Any, batch_size: int, seed: int, num_workers: int = 0, collate_fn: Callable | None = None
    ) -> ResumableDataLoader:
        """Shuffled, rank-sharded, resumable training loader over ``(index, epoch)`` items (drop_last).

        Raises:
            ValueError: fewer images than one batch per process.
        """
        rank, world = self._rank_world()
        sampler = EpochIndexSampler(len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world, drop_last=True)
        if len(sampler) < batch_size:
            raise ValueError(
                f"the training split has {len(dataset)} images: fewer than one batch of {batch_size} per process"
            )
        return ResumableDataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            collate_fn=collate_fn,
            progress=self._progress,  # type: ignore[attr-defined]
        )

    def _unpadded_eval_loader(
        self, dataset: Any, batch_size: int, num_workers: int = 0, collate_fn: Callable | None = None
    ) -> DataLoader:
        """This process's shard of ``dataset`` (every ``world``-th item from its rank), not padded to equal shards.

        Unlike ``DistributedSampler`` (and :class:`EpochSampler`), no item is repeated to even out the shards, so a
        metric that sums over items (a confusion matrix, detection matches) scores each item exactly once and
        reduces across processes to the single-process value.
        """
        rank, world = self._rank_world()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=list(range(rank, len(dataset), world)),
            num_workers=num_workers,
            collate_fn=collate_fn,
        )

    def _progress(self) -> tuple[int, int]:
        trainer = self.trainer
        assert trainer is not None
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed


class UnpaddedEvalLoaders(TrainerPositionMixin):
    """``val_dataloader`` / ``test_dataloader`` of a data module that scores every item exactly once under DDP.

    The data module provides ``self._splits`` (split name -> dataset), ``eval_batch_size``, ``num_workers`` and,
    as a class attribute, ``_eval_collate = staticmethod(<collate function>)``.
    """

    _splits: dict[str, Any]
    eval_batch_size: int
    num_workers: int
    _eval_collate: Callable | None = None

    def _eval_loader(self, split: str) -> DataLoader:
        return self._unpadded_eval_loader(
            self._splits[split], self.eval_batch_size, num_workers=self.num_workers, collate_fn=self._eval_collate
        )

    def val_dataloader(self) -> DataLoader:
        """Loader of the validation split, this process's unpadded shard."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Loader of the test split, this process's unpadded shard."""
        return self._eval_loader("test")
