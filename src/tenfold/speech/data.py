"""Speech enhancement data: built-in noisy speech, VoiceBank+DEMAND and DNS-style wav folders, chunking, batching.

Items follow the official ``dataset/data.py`` of TaylorSENet: each utterance is variance-normalised (noisy and
clean multiplied by ``c = sqrt(L / sum(noisy^2))`` computed on the whole utterance), then, for training, a random
chunk of ``chunk_seconds`` is cut when the utterance is longer (validation too with ``val_chunk_seconds``, as the
official solver; the test set always uses whole utterances). A batch is
``(noisy, clean, lengths, c)``: zero-padded (B, L) waveforms, (B,) valid lengths and (B,) float64 scales.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tenfold.data.sampling import EpochSampler, ResumableDataLoader, TrainerPositionMixin
from tenfold.speech.stft import apply_scale, variance_norm_scale

__all__ = [
    "BuiltinSpeech",
    "DNSFolder",
    "PairedWavFolder",
    "SpeechData",
    "collate_pairs",
    "read_wav",
    "resample",
    "voicebank_split",
]


def resample(wave: Tensor | np.ndarray, orig_sr: int, target_sr: int) -> Tensor:
    """Band-limited polyphase resampling along the last axis (``scipy.signal.resample_poly``), float32 out.

    Raises:
        ValueError: a non-positive rate.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    x = wave.detach().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave)
    if orig_sr == target_sr:
        return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    from scipy.signal import resample_poly

    ratio = Fraction(target_sr, orig_sr)
    y = resample_poly(x.astype(np.float64), ratio.numerator, ratio.denominator, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(y)).float()


def read_wav(path: str | Path, sample_rate: int | None = 16000) -> tuple[Tensor, int]:
    """Read a wav (or any libsndfile format) as a mono float32 (L,) tensor, resampled to ``sample_rate``.

    Multi-channel files are averaged to mono. Returns the waveform and its original sample rate.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be decoded.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {str(path)!r} does not exist")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as err:
        raise ValueError(f"cannot decode audio file {str(path)!r}: {err}") from err
    wave = torch.from_numpy(data.mean(axis=1))
    if sample_rate is not None and sr != sample_rate:
        wave = resample(wave, sr, sample_rate)
    return wave, sr


class _Pairs(Dataset):
    """Shared item logic: variance normalisation, then an optional random chunk (python ``random``, as official)."""

    def __init__(self, chunk_seconds: float | None, sample_rate: int, variance_norm: bool) -> None:
        if chunk_seconds is not None and chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be > 0 or None, got {chunk_seconds}")
        self.chunk = None if chunk_seconds is None else round(chunk_seconds * sample_rate)
        self.sample_rate = sample_rate
        self.variance_norm = variance_norm

    def _load(self, index: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        noisy, clean = self._load(index)
        if noisy.shape != clean.shape:
            raise ValueError(f"item {index}: noisy and clean lengths differ ({noisy.numel()} vs {clean.numel()})")
        c = variance_norm_scale(noisy[None])[0] if self.variance_norm else torch.ones((), dtype=torch.float64)
        noisy, clean = apply_scale(noisy[None], c[None])[0], apply_scale(clean[None], c[None])[0]
        if self.chunk is not None and noisy.numel() > self.chunk:
            start = random.randint(0, noisy.numel() - self.chunk)  # seeded by seed_everything, like the official
            noisy, clean = noisy[start : start + self.chunk], clean[start : start + self.chunk]
        return noisy, clean, c


class BuiltinSpeech(_Pairs):
    """Noisy/clean pairs from :func:`tenfold.data.synthetic.make_speech` (generated once, kept in memory).

    Args:
        n: utterances.
        seed: data seed.
        split: ``train``, ``val`` or ``test`` (disjoint draws).
        seconds: duration of each utterance.
        snr_db: SNR range in dB.
        chunk_seconds: random training chunk (None: whole utterances).
        variance_norm: apply the official variance normalisation.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        split: str = "train",
        seconds: float = 2.0,
        snr_db: tuple[float, float] = (-5.0, 10.0),
        chunk_seconds: float | None = None,
        variance_norm: bool = True,
    ) -> None:
        from tenfold.data.synthetic import make_speech

        super().__init__(chunk_seconds, 16000, variance_norm)
        self.clean, self.noisy = make_speech(n, seed=seed, split=split, seconds=seconds, snr_db=tuple(snr_db))

    def __len__(self) -> int:
        return self.clean.shape[0]

    def _load(self, index: int) -> tuple[Tensor, Tensor]:
        return self.noisy[index], self.clean[index]


class PairedWavFolder(_Pairs):
    """Noisy and clean wav folders paired by file name (the VoiceBank+DEMAND layout).

    Args:
        noisy_dir: folder of noisy files.
        clean_dir: folder of clean files with the same names.
        files: optional subset of file names (stems or names) to keep.
        sample_rate: rate the network works at; files at other rates (VoiceBank is 48 kHz) are resampled.
        chunk_seconds: random training chunk (None: whole utterances).
        variance_norm: apply the official variance normalisation.

    Raises:
        FileNotFoundError: a folder is missing or holds no audio, or a noisy file has no clean partner.
    """

    def __init__(
        self,
        noisy_dir: str | Path,
        clean_dir: str | Path,
        files: list[str] | None = None,
        sample_rate: int = 16000,
        chunk_seconds: float | None = None,
        variance_norm: bool = True,
    ) -> None:
        super().__init__(chunk_seconds, sample_rate, variance_norm)
        noisy = _audio_files(noisy_dir)
        if files is not None:
            keep = {Path(f).stem for f in files}
            noisy = [p for p in noisy if p.stem in keep]
        clean_dir = Path(clean_dir)
        self.pairs = [(p, clean_dir / p.name) for p in noisy]
        missing = [str(c) for _, c in self.pairs if not c.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} noisy file(s) have no clean partner, e.g. {missing[:3]}")

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index: int) -> tuple[Tensor, Tensor]:
        noisy, clean = self.pairs[index]
        return read_wav(noisy, self.sample_rate)[0], read_wav(clean, self.sample_rate)[0]


_FILEID = re.compile(r"fileid_(\d+)$")


class DNSFolder(PairedWavFolder):
    """DNS-Challenge synthetic layout: noisy ``<anything>_fileid_<N>.wav`` paired with clean ``clean_fileid_<N>.wav``.

    Args:
        noisy_dir: folder of mixtures (``noisy`` or ``mix`` in the DNS scripts).
        clean_dir: folder of clean files.
        sample_rate: network rate (16 kHz).
        chunk_seconds: random training chunk (8 s in the official recipe; None: whole utterances).
        variance_norm: apply the official variance normalisation.

    Raises:
        FileNotFoundError: a folder is missing, or a noisy file has no ``fileid`` or no clean partner.
    """

    def __init__(
        self,
        noisy_dir: str | Path,
        clean_dir: str | Path,
        sample_rate: int = 16000,
        chunk_seconds: float | None = None,
        variance_norm: bool = True,
    ) -> None:
        _Pairs.__init__(self, chunk_seconds, sample_rate, variance_norm)
        clean_dir = Path(clean_dir)
        self.pairs = []
        for p in _audio_files(noisy_dir):
            match = _FILEID.search(p.stem)
            if match is None:
                raise FileNotFoundError(f"noisy file {p.name!r} has no '_fileid_<N>' suffix (DNS naming)")
            clean = clean_dir / f"clean_fileid_{match.group(1)}{p.suffix}"
            if not clean.is_file():
                raise FileNotFoundError(f"noisy file {p.name!r} has no clean partner {str(clean)!r}")
            self.pairs.append((p, clean))


def _audio_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".wav", ".flac"))
    if not files:
        raise FileNotFoundError(f"audio folder {str(folder)!r} holds no .wav/.flac files")
    return files


def voicebank_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """(noisy, clean) folders of a VoiceBank+DEMAND split under ``root``.

    ``train`` and ``val`` read ``noisy_trainset_28spk_wav``/``clean_trainset_28spk_wav`` (or ``*_trainset_wav``),
    ``test`` reads ``noisy_testset_wav``/``clean_testset_wav``.

    Raises:
        FileNotFoundError: the folders are not there.
    """
    root = Path(root)
    kind = "testset" if split == "test" else "trainset"
    for suffix in ("_28spk_wav", "_56spk_wav", "_wav"):
        noisy, clean = root / f"noisy_{kind}{suffix}", root / f"clean_{kind}{suffix}"
        if noisy.is_dir() and clean.is_dir():
            return noisy, clean
    raise FileNotFoundError(
        f"{str(root)!r} does not hold the VoiceBank+DEMAND folders noisy_{kind}_wav and clean_{kind}_wav "
        f"(or noisy_{kind}_28spk_wav ...)"
    )


def collate_pairs(items: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Zero-pad items to the longest: (noisy (B, L), clean (B, L), lengths (B,), c (B,) float64)."""
    noisy = torch.nn.utils.rnn.pad_sequence([i[0] for i in items], batch_first=True)
    clean = torch.nn.utils.rnn.pad_sequence([i[1] for i in items], batch_first=True)
    lengths = torch.tensor([i[0].numel() for i in items])
    return noisy, clean, lengths, torch.stack([i[2] for i in items])


class _Reorder(Dataset):
    """A dataset viewed through a fixed index order (the official once-shuffled, fixed minibatches)."""

    def __init__(self, dataset: Dataset, order: list[int]) -> None:
        self.dataset, self.order = dataset, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.order[index]]


class SpeechData(TrainerPositionMixin, pl.LightningDataModule):
    """Speech enhancement data module: built-in noisy speech, VoiceBank+DEMAND or a DNS-style folder tree.

    Args:
        dataset: ``builtin`` (no download), ``voicebank`` (``root`` with the standard VB+DEMAND folders) or ``dns``
            (``root/<train_dir|val_dir|test_dir>/{noisy|mix, clean}``).
        root: dataset folder (real datasets only).
        train_size: built-in training utterances.
        val_size: built-in validation utterances.
        test_size: built-in test utterances.
        seconds: built-in utterance length.
        snr_db: built-in SNR range (dB).
        chunk_seconds: random training chunk (official: 8 s); the test set always uses whole utterances.
        val_chunk_seconds: random chunk of validation utterances (the official solver validates with the same
            ``is_chunk``/8-s setting as training, a new random chunk each epoch); None: whole utterances.
        batch_size: utterances per training step (official: 24).
        eval_batch_size: utterances per test step (padded; the metrics use the valid lengths).
        val_batch_size: utterances per validation step (official: 24, as training); None: ``eval_batch_size``.
        drop_last: drop the last, partial training minibatch. Default False, as the official loader
            (``drop_last = false``: the partial minibatch of the once-shuffled list is trained on every epoch).
        fixed_batches: the official batching: the sorted training list is shuffled once with python
            ``random.seed(1234)`` and cut into minibatches that stay the same every epoch. False: a new seeded
            order every epoch.
        val_speakers: VoiceBank speakers held out of the training folder for validation (VB has no dev set);
            ``[]`` trains on all 28 speakers and validates on the test set when ``val_on_test``, else not at all.
        val_on_test: validate on the test split (VoiceBank with ``val_speakers: []``, or any dataset without a
            dev set). Best-checkpoint selection then sees the test set: report that with the numbers.
        train_dir: DNS training folder under ``root``.
        val_dir: DNS validation folder under ``root``.
        test_dir: DNS test folder under ``root``.
        data_seed: built-in generator seed.
        shuffle_seed: seed of per-epoch shuffling (``fixed_batches=False``).
        num_workers: loader workers.

    Raises:
        ValueError: an unknown dataset, a missing ``root``, or ``val_on_test`` with VoiceBank held-out speakers.
        FileNotFoundError: ``root`` lacks the expected layout (raised in :meth:`setup`).
    """

    def __init__(
        self,
        dataset: str = "builtin",
        root: str | None = None,
        train_size: int = 64,
        val_size: int = 8,
        test_size: int = 8,
        seconds: float = 2.0,
        snr_db: tuple[float, float] = (-5.0, 10.0),
        chunk_seconds: float | None = 8.0,
        val_chunk_seconds: float | None = None,
        batch_size: int = 24,
        eval_batch_size: int = 8,
        val_batch_size: int | None = None,
        drop_last: bool = False,
        fixed_batches: bool = True,
        val_speakers: tuple[str, ...] = ("p226", "p287"),
        val_on_test: bool = False,
        train_dir: str = "train",
        val_dir: str = "dev",
        test_dir: str = "test",
        data_seed: int = 0,
        shuffle_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in ("builtin", "voicebank", "dns"):
            raise ValueError(f"dataset must be 'builtin', 'voicebank' or 'dns', got {dataset!r}")
        if dataset != "builtin" and not root:
            raise ValueError(f"dataset {dataset!r} needs data.init_args.root (the folder that holds it)")
        if dataset == "voicebank" and val_on_test and val_speakers:
            raise ValueError(
                f"val_on_test validates on the VoiceBank test set, but val_speakers={list(val_speakers)} also holds "
                "speakers out for validation; set val_speakers: [] to train on all 28 speakers"
            )
        self.save_hyperparameters()
        self._splits: dict[str, Dataset | None] = {}

    def _build(self, split: str) -> Dataset | None:
        hp = self.hparams
        chunk = {"train": hp.chunk_seconds, "val": hp.val_chunk_seconds}.get(split)
        if split == "val" and hp.val_on_test:
            split = "test"  # the test files, read like validation ones (chunked when val_chunk_seconds is set)
        elif split == "val" and hp.dataset == "voicebank" and not hp.val_speakers:
            return None  # all speakers train and nothing is held out: no validation
        if hp.dataset == "builtin":
            n = {"train": hp.train_size, "val": hp.val_size, "test": hp.test_size}[split]
            return BuiltinSpeech(n, hp.data_seed, split, hp.seconds, tuple(hp.snr_db), chunk)
        if hp.dataset == "voicebank":
            noisy, clean = voicebank_split(hp.root, split)
            files = None
            if split in ("train", "val"):
                names = [p.name for p in _audio_files(noisy)]
                held = tuple(f"{s}_" for s in hp.val_speakers)
                files = [n for n in names if n.startswith(held) == (split == "val")]
                if not files:
                    raise FileNotFoundError(f"VoiceBank {split} split is empty (val_speakers={list(hp.val_speakers)})")
            return PairedWavFolder(noisy, clean, files, 16000, chunk)
        folder = Path(hp.root) / {"train": hp.train_dir, "val": hp.val_dir, "test": hp.test_dir}[split]
        noisy = folder / "noisy" if (folder / "noisy").is_dir() else folder / "mix"
        return DNSFolder(noisy, folder / "clean", 16000, chunk)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits a stage needs (once)."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "fit", ("train", "val", "test")):
            if split not in self._splits:
                data = self._build(split)
                if split == "train" and self.hparams.fixed_batches and data is not None:
                    order = list(range(len(data)))  # the sorted file list
                    random.Random(1234).shuffle(order)
                    data = _Reorder(data, order)
                self._splits[split] = data

    def train_dataloader(self) -> ResumableDataLoader:
        """Training loader: fixed official minibatches, or a seeded new order each epoch; rank-sharded, resumable."""
        rank, world = self._rank_world()
        data = self._splits["train"]
        sampler = EpochSampler(len(data), shuffle=not self.hparams.fixed_batches, seed=self.hparams.shuffle_seed,
                               rank=rank, world_size=world, drop_last=True)  # fmt: skip
        return ResumableDataLoader(
            data, batch_size=self.hparams.batch_size, sampler=sampler, collate_fn=collate_pairs,
            num_workers=self.hparams.num_workers, progress=self._progress, drop_last=self.hparams.drop_last,
        )  # fmt: skip

    def _eval_loader(self, split: str, batch_size: int) -> DataLoader:
        rank, world = self._rank_world()
        data = self._splits[split]
        sampler = EpochSampler(len(data), shuffle=False, rank=rank, world_size=world)
        return DataLoader(data, batch_size=batch_size, sampler=sampler, collate_fn=collate_pairs,
                          num_workers=self.hparams.num_workers)  # fmt: skip

    def val_dataloader(self) -> DataLoader | list:
        """Validation utterances (whole, or ``val_chunk_seconds`` chunks); ``[]`` when there is no validation set."""
        if self._splits.get("val") is None:
            return []
        return self._eval_loader("val", self.hparams.val_batch_size or self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Whole test utterances."""
        return self._eval_loader("test", self.hparams.eval_batch_size)
