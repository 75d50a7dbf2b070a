"""Enhance recordings with a trained TaylorSENet: any sample rate, any length, bounded memory.

The official inference (``taylorsenet_decode_vb.py`` of the survey repository the spec cites): variance-normalise
the utterance, compressed STFT, network, decompress, inverse STFT, divide by ``c``. Here a recording at another rate
is resampled to 16 kHz and the result back to the original rate; a long recording is cut into overlapping chunks
that are enhanced one at a time and cross-faded with complementary raised-cosine ramps, so the memory used by the
network is that of one chunk whatever the file's length, and the output has exactly the input's length.

The variance normalisation scale ``c`` is computed on the whole recording, as the official code does for a whole
utterance; the network's instance norms see one chunk at a time (the only difference from whole-file inference).

A multi-channel recording keeps its layout: its channels go through the network together as one batch, each
enhanced on its own (its own scale ``c``; instance norms work per item), and the output has the input's channels.

:func:`load_enhancement_model` reads what ``tenfold enhance --ckpt`` accepts: a self-describing model file (the
demo's ``model.pt``, see :func:`tenfold.utils.checkpoint.save_model`), a tenfold training checkpoint, or an
official state dict, whose architecture is one of :data:`NAMED_CONFIGS`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tenfold.speech.data import resample
from tenfold.speech.stft import STFTConfig, apply_scale, istft_decompress, stft_compress, variance_norm_scale
from tenfold.speech.stream import TaylorSEStream
from tenfold.speech.taylorsenet import PAPER_CONFIG, SMALL_CONFIG, TaylorSENet, checkpoint_filter_fn

__all__ = [
    "MIN_CHUNK_SAMPLES",
    "NAMED_CONFIGS",
    "EnhanceStats",
    "chunk_plan",
    "enhance_file",
    "enhance_waveform",
    "keep_freed_memory",
    "load_enhancement_model",
    "stream_waveform",
]

#: Architectures of official state dicts, which carry none: the names ``tenfold enhance --config`` accepts.
NAMED_CONFIGS: dict[str, dict[str, Any]] = {"paper": PAPER_CONFIG, "small": SMALL_CONFIG}

SAMPLE_RATE = 16000
#: Shortest last chunk (0.1 s, 11 frames): a shorter tail is merged into the previous chunk, because the STFT needs
#: more than 160 samples and instance norms over a handful of frames are unreliable.
MIN_CHUNK_SAMPLES = SAMPLE_RATE // 10


logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# what they are restored to: glibc's dynamic mmap threshold tops out at 32 MiB (64-bit), the trim threshold at twice it
_RESTORE = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 64 << 20), (_M_TOP_PAD, 128 << 10))


def _glibc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


@contextmanager
def keep_freed_memory(mmap_threshold: int = 1 << 30, top_pad: int = 256 << 20) -> Iterator[bool]:
    """Let glibc's allocator keep freed memory for reuse instead of returning it to the system (CPU inference).

    A 10-s utterance through the paper model allocates activations of 40-50 MB (64 channels x 1001 frames x
    79-161 bins); glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages and
    unmaps them on free, so every pass pays their page faults again: about 15 % of the paper model's offline time
    on one thread here. Inside this context large blocks come from the heap, which is neither trimmed nor
    unmapped. Outputs are unchanged (only where memory comes from); the process keeps its peak heap until the
    context ends (then the thresholds are set to glibc's largest dynamic values and the heap is trimmed).

    Args:
        mmap_threshold: blocks below this many bytes come from the heap.
        top_pad: extra bytes requested from the system whenever the heap grows.

    Yields:
        Whether the settings apply (``False`` without glibc, e.g. on macOS, Windows or musl: then nothing changes).
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    applied = all(libc.mallopt(k, v) == 1 for k, v in ((_M_MMAP_THRESHOLD, mmap_threshold),
                  (_M_TRIM_THRESHOLD, min(4 * mmap_threshold, 2**31 - 1)), (_M_TOP_PAD, top_pad)))  # fmt: skip
    if not applied:
        logger.debug("mallopt refused the settings; the allocator may be partly changed until the context ends")
    try:
        yield applied
    finally:
        for k, v in _RESTORE:
            libc.mallopt(k, v)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def chunk_plan(length: int, chunk: int, overlap: int, min_last: int = 1) -> list[tuple[int, int]]:
    """(start, end) sample ranges of overlapping chunks that cover ``length`` samples.

    Consecutive chunks overlap by exactly ``overlap`` samples; the last chunk is shortened to end at ``length``.
    A last chunk shorter than ``min_last`` samples is merged into the previous one (which then ends at
    ``length``, at most ``min_last - 1`` samples longer than ``chunk``), so no chunk is too short to enhance.

    Args:
        length: samples to cover.
        chunk: chunk length in samples (the memory bound).
        overlap: samples shared by consecutive chunks, in [0, chunk).
        min_last: shortest acceptable last chunk in samples.

    Raises:
        ValueError: ``overlap`` not in [0, chunk).
    """
    if chunk <= 0 or not 0 <= overlap < chunk:
        raise ValueError(f"need chunk > 0 and 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    if length <= chunk:
        return [(0, length)]
    hop = chunk - overlap
    n = math.ceil((length - overlap) / hop)
    plan = [(k * hop, min(k * hop + chunk, length)) for k in range(n)]
    if len(plan) > 1 and plan[-1][1] - plan[-1][0] < min_last:
        plan = [*plan[:-2], (plan[-2][0], length)]
    return plan


@torch.no_grad()
def _enhance_normalised(model: torch.nn.Module, wave: Tensor, cfg: STFTConfig) -> Tensor:
    """Network on normalised (C, L) waveforms, the channels as one batch; returns (C, L)."""
    spec = stft_compress(wave, cfg)
    return istft_decompress(model(spec), wave.shape[-1], cfg)


@torch.no_grad()
def enhance_waveform(
    model: torch.nn.Module,
    wave: Tensor,
    *,
    chunk_seconds: float = 10.0,
    overlap_seconds: float = 1.0,
    power: float = 0.5,
    reuse_memory: bool = True,
) -> Tensor:
    """Enhance a 16-kHz waveform, mono (L,) or multi-channel (C, L), in overlapping chunks; returns its shape.

    The channels of a (C, L) input are enhanced independently but together, as one batch of C through the
    network (memory: one chunk of every channel); each has its own variance normalisation scale.

    A last chunk shorter than :data:`MIN_CHUNK_SAMPLES` is merged into the previous one, and a recording shorter
    than the STFT's reflect padding allows (``n_fft // 2 + 1`` = 161 samples) is zero-padded to that length after
    the variance normalisation, enhanced, and trimmed back, so any non-empty input works.

    Args:
        model: the network (its own device; the waveform is moved there): a TaylorSENet or its runner from
            :func:`tenfold.speech.backends.inference_network`.
        wave: (L,) or (C, L) waveform at 16 kHz.
        chunk_seconds: chunk length (the memory bound); a shorter recording is enhanced whole.
        overlap_seconds: overlap of consecutive chunks, cross-faded with sin^2/cos^2 ramps (they sum to 1).
        power: compression exponent the model was trained with (a tenfold checkpoint's ``power``
            hyper-parameter; 0.5 for the official recipe).
        reuse_memory: on the CPU, run inside :func:`keep_freed_memory` (same output, about 1.2x faster for the
            paper model on 10-s chunks on one thread: no page faults on the large activations).

    Raises:
        ValueError: ``wave`` is not 1-D or 2-D, or empty, or the chunking arguments are inconsistent.
    """
    if wave.dim() not in (1, 2) or wave.numel() == 0:
        raise ValueError(f"wave must be a non-empty (L,) or (C, L) waveform, got shape {tuple(wave.shape)}")
    mono = wave.dim() == 1
    device = next(model.parameters()).device
    cfg = STFTConfig(power=power)
    chunk, overlap = round(chunk_seconds * SAMPLE_RATE), round(overlap_seconds * SAMPLE_RATE)
    if chunk < MIN_CHUNK_SAMPLES:
        raise ValueError(f"chunk_seconds must be >= {MIN_CHUNK_SAMPLES / SAMPLE_RATE} s, got {chunk_seconds}")
    waves = wave.reshape(-1, wave.shape[-1]).to(device)  # (C, L)
    length = waves.shape[1]
    plan = chunk_plan(length, chunk, overlap, min_last=MIN_CHUNK_SAMPLES)
    c = variance_norm_scale(waves)  # (C,): one scale per channel, as per utterance officially
    normed = apply_scale(waves, c)
    shortest = cfg.n_fft // 2 + 1  # centred STFT: reflect padding of n_fft // 2 needs a longer signal
    with keep_freed_memory() if reuse_memory and device.type == "cpu" else nullcontext():
        out = _enhance_chunks(model, normed, plan, overlap, shortest, cfg)
    out = apply_scale(out, c, inverse=True).cpu()
    return out[0] if mono else out


def _enhance_chunks(
    model: torch.nn.Module, normed: Tensor, plan: list[tuple[int, int]], overlap: int, shortest: int, cfg: STFTConfig
) -> Tensor:
    """The cross-faded chunks of :func:`enhance_waveform`, still variance-normalised (C, L)."""
    length, device = normed.shape[1], normed.device
    if length < shortest:
        padded = torch.nn.functional.pad(normed, (0, shortest - length))
        out = _enhance_normalised(model, padded, cfg)[:, :length]
    else:
        out = torch.zeros_like(normed)
        ramp = torch.sin(0.5 * math.pi * (torch.arange(overlap, device=device) + 0.5) / max(overlap, 1)) ** 2
        for i, (start, end) in enumerate(plan):
            piece = _enhance_normalised(model, normed[:, start:end], cfg)
            weight = torch.ones(end - start, device=device, dtype=piece.dtype)
            if i > 0 and overlap:
                weight[:overlap] = ramp
            if i < len(plan) - 1 and overlap:
                weight[-overlap:] = 1 - ramp
            out[:, start:end] += weight * piece
    return out


@torch.no_grad()
def stream_waveform(
    model: TaylorSENet, wave: Tensor, *, power: float = 0.5, scale: float | None = None
) -> tuple[Tensor, TaylorSEStream]:
    """Enhance a 16-kHz waveform (L,) or (C, L) frame by frame, one 10-ms hop per call, as a real-time stream.

    The output equals the offline pipeline on the whole recording (no chunks) with the same variance scale, to
    float rounding; see :class:`tenfold.speech.stream.TaylorSEStream`. A recording shorter than 161 samples is
    zero-padded to that length and trimmed back, as in :func:`enhance_waveform`.

    Args:
        model: a causal TaylorSENet (``norm_type='cLN'`` or ``'BN'``, ``is_causal=True``).
        wave: (L,) or (C, L) waveform at 16 kHz; the channels stream together as a batch.
        power: compression exponent the model was trained with.
        scale: fixed variance normalisation scale; None: each channel's ``sqrt(L / sum x^2)`` of the whole
            recording, as offline (the one step that looks at the whole file: a live stream fixes it).

    Returns:
        The enhanced waveform (same shape, on the CPU) and the stream (its ``stats`` hold the per-frame time).

    Raises:
        ValueError: ``wave`` is not 1-D or 2-D or is empty, or the model cannot stream (its non-causal layers named).
    """
    if wave.dim() not in (1, 2) or wave.numel() == 0:
        raise ValueError(f"wave must be a non-empty (L,) or (C, L) waveform, got shape {tuple(wave.shape)}")
    device = next(model.parameters()).device
    waves = wave.reshape(-1, wave.shape[-1]).to(device)
    length = waves.shape[1]
    c = variance_norm_scale(waves) if scale is None else torch.full((waves.shape[0],), float(scale))
    stream = TaylorSEStream(model, scale=c, power=power)
    shortest = stream.cfg.n_fft // 2 + 1
    if length < shortest:
        waves = torch.nn.functional.pad(waves, (0, shortest - length))
    out = stream.enhance(waves)[:, :length].cpu()
    return (out[0] if wave.dim() == 1 else out), stream


@dataclass
class EnhanceStats:
    """What :func:`enhance_file` measured: audio seconds, processing seconds and their ratio (real-time factor).

    ``frame_ms`` is the mean compute time per 10-ms frame of a streamed file (None offline).
    """

    audio_s: float
    process_s: float
    frame_ms: float | None = None

    @property
    def rtf(self) -> float:
        """Real-time factor: processing time / audio duration (below 1 is faster than real time)."""
        return self.process_s / max(self.audio_s, 1e-9)


def enhance_file(
    model: torch.nn.Module,
    noisy_path: str | Path,
    out_path: str | Path,
    *,
    chunk_seconds: float = 10.0,
    overlap_seconds: float = 1.0,
    power: float = 0.5,
    stream: bool = False,
    stream_scale: float | None = None,
) -> EnhanceStats:
    """Enhance an audio file at any sample rate into ``out_path``: same rate, channels, length, format and subtype.

    Every channel is enhanced independently (together, as one batch; see :func:`enhance_waveform`). The output is
    written atomically and never replaces an existing file. ``power`` is the compression exponent the model was
    trained with. ``stream`` enhances frame by frame with :func:`stream_waveform` (a causal model; the chunking
    arguments are then unused) with the fixed variance scale ``stream_scale`` (None: the file's own).

    Raises:
        FileNotFoundError: the input does not exist.
        FileExistsError: ``out_path`` exists already.
        ValueError: the input cannot be decoded.
    """
    import soundfile as sf

    from tenfold.utils.checkpoint import atomic_write

    noisy_path, out_path = Path(noisy_path), Path(out_path)
    if out_path.exists():
        raise FileExistsError(f"output {str(out_path)!r} exists already; tenfold does not overwrite files")
    if not noisy_path.is_file():
        raise FileNotFoundError(f"audio file {str(noisy_path)!r} does not exist")
    start = time.perf_counter()
    try:
        with sf.SoundFile(str(noisy_path)) as f:
            data = f.read(dtype="float32", always_2d=True)  # (L, C)
            sr, frames, subtype, fmt = f.samplerate, f.frames, f.subtype, f.format
    except RuntimeError as err:  # soundfile's LibsndfileError
        raise ValueError(f"cannot decode audio file {str(noisy_path)!r}: {err}") from err
    waves = torch.from_numpy(data.T.copy())  # (C, L)
    if sr != SAMPLE_RATE:
        waves = resample(waves, sr, SAMPLE_RATE)
    frame_ms = None
    if stream:
        enhanced, streamer = stream_waveform(model, waves, power=power, scale=stream_scale)
        frame_ms = streamer.stats.mean_ms
    else:
        enhanced = enhance_waveform(
            model, waves, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, power=power
        )
    if sr != SAMPLE_RATE:
        enhanced = resample(enhanced, SAMPLE_RATE, sr)[:, :frames]
        if enhanced.shape[1] < frames:  # rounding of the two resamplings: pad the last sample or two
            enhanced = torch.nn.functional.pad(enhanced, (0, frames - enhanced.shape[1]))
    out = enhanced.numpy().T  # (L, C)
    if subtype.startswith("PCM"):
        out = out.clip(-1.0, 1.0 - 2.0**-15)
    with atomic_write(out_path) as tmp:
        sf.write(str(tmp), out, sr, subtype=subtype, format=fmt)
    return EnhanceStats(audio_s=frames / sr, process_s=time.perf_counter() - start, frame_ms=frame_ms)


def _build(**kwargs: Any) -> TaylorSENet:
    return TaylorSENet(**{**PAPER_CONFIG, **kwargs})


def _known_configs(state: dict[str, Tensor]) -> dict[str, dict[str, Any]]:
    """The ``--config`` choices to compare a mismatched state dict with: as they are, and at the order its keys show.

    The high-order blocks are numbered ``highorderblock_list.<k>``, so their count is the order ``Q`` (unless the
    blocks are shared, which these configurations are not); ``Q = 0`` leaves none.
    """
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("highorderblock_list.") and k.split(".")[1].isdigit()}
    order = max(blocks) + 1 if blocks else 0
    out = {}
    for name, config in NAMED_CONFIGS.items():
        out[f"configuration {name!r}: pass --config {name}"] = config
        if order != config["order_num"]:
            out[f"configuration {name!r} with order_num={order}: pass --config {name} --order-num {order}"] = {
                **config, "order_num": order
            }  # fmt: skip
    return out


def load_enhancement_model(
    path: str | Path, config: str | None = None, order_num: int | None = None
) -> tuple[TaylorSENet, dict[str, Any], str]:
    """The TaylorSENet of a checkpoint, its hyper-parameters, and a line saying where its architecture came from.

    A self-describing file (a demo's ``model.pt``, written by :func:`tenfold.utils.checkpoint.save_model`) or a
    tenfold training checkpoint carries its architecture, which is used as it is (``config`` and ``order_num`` are
    then ignored). An official state dict carries none: ``config`` (one of :data:`NAMED_CONFIGS`, default
    ``paper``) and ``order_num`` give it; weights that fit another named configuration, or the same at another
    order, say so in the error.

    Args:
        path: the checkpoint file.
        config: a name of :data:`NAMED_CONFIGS` for a plain state dict.
        order_num: the order Q for a plain state dict (default: the configuration's, 3).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown ``config``, an unreadable file, or weights that do not fit (with the named
            configuration they fit, if one does).
    """
    from tenfold.utils.checkpoint import load_model

    if config is not None and config not in NAMED_CONFIGS:
        raise ValueError(f"unknown configuration {config!r}; expected one of {sorted(NAMED_CONFIGS)}")
    arch = dict(NAMED_CONFIGS[config or "paper"])
    if order_num is not None:
        arch["order_num"] = order_num
    loaded = load_model(path, _build, config=arch, filter_fn=checkpoint_filter_fn, known_configs=_known_configs)
    if loaded.self_described:
        given = [flag for flag, value in (("--config", config), ("--order-num", order_num)) if value is not None]
        about = "the checkpoint's own" + (f" ({' and '.join(given)} ignored)" if given else "")
    else:
        about = f"configuration {config or 'paper'!r}" + ("" if config else " (default for a state dict without one)")
        about += f", order_num={arch['order_num']}"
    return loaded.model, loaded.hparams, about
