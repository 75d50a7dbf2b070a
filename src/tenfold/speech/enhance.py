"""Enhance recordings with a trained TaylorSENet: any sample rate, any length, bounded memory.

The official inference (``taylorsenet_decode_vb.py`` of the survey repository the spec cites): variance-normalise
the utterance, compressed STFT, network, decompress, inverse STFT, divide by ``c``. Here a recording at another rate
is resampled to 16 kHz and the result back to the original rate; a long recording is cut into overlapping chunks
that are enhanced one at a time and cross-faded with complementary raised-cosine ramps, so the memory used by the
network is that of one chunk whatever the file's length, and the output has exactly the input's length.

The variance normalisation scale ``c`` is computed on the whole recording, as the official code does for a whole
utterance; the network's instance norms see one chunk at a time (the only difference from whole-file inference).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tenfold.speech.data import read_wav, resample
from tenfold.speech.stft import STFTConfig, apply_scale, istft_decompress, stft_compress, variance_norm_scale
from tenfold.speech.taylorsenet import TaylorSENet

__all__ = ["MIN_CHUNK_SAMPLES", "EnhanceStats", "chunk_plan", "enhance_file", "enhance_waveform"]

SAMPLE_RATE = 16000
#: Shortest last chunk (0.1 s, 11 frames): a shorter tail is merged into the previous chunk, because the STFT needs
#: more than 160 samples and instance norms over a handful of frames are unreliable.
MIN_CHUNK_SAMPLES = SAMPLE_RATE // 10


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
def _enhance_normalised(model: TaylorSENet, wave: Tensor, cfg: STFTConfig) -> Tensor:
    spec = stft_compress(wave[None], cfg)
    return istft_decompress(model(spec), wave.numel(), cfg)[0]


@torch.no_grad()
def enhance_waveform(
    model: TaylorSENet,
    wave: Tensor,
    *,
    chunk_seconds: float = 10.0,
    overlap_seconds: float = 1.0,
    power: float = 0.5,
) -> Tensor:
    """Enhance one 16-kHz waveform (L,) in overlapping chunks; returns (L,).

    A last chunk shorter than :data:`MIN_CHUNK_SAMPLES` is merged into the previous one, and a recording shorter
    than the STFT's reflect padding allows (``n_fft // 2 + 1`` = 161 samples) is zero-padded to that length after
    the variance normalisation, enhanced, and trimmed back, so any non-empty input works.

    Args:
        model: the network (its own device; the waveform is moved there).
        wave: mono waveform at 16 kHz.
        chunk_seconds: chunk length (the memory bound); a shorter recording is enhanced whole.
        overlap_seconds: overlap of consecutive chunks, cross-faded with sin^2/cos^2 ramps (they sum to 1).
        power: compression exponent the model was trained with (a tenfold checkpoint's ``power``
            hyper-parameter; 0.5 for the official recipe).

    Raises:
        ValueError: ``wave`` is not 1-D or empty, or the chunking arguments are inconsistent.
    """
    if wave.dim() != 1 or wave.numel() == 0:
        raise ValueError(f"wave must be a non-empty mono (L,) waveform, got shape {tuple(wave.shape)}")
    device = next(model.parameters()).device
    cfg = STFTConfig(power=power)
    chunk, overlap = round(chunk_seconds * SAMPLE_RATE), round(overlap_seconds * SAMPLE_RATE)
    if chunk < MIN_CHUNK_SAMPLES:
        raise ValueError(f"chunk_seconds must be >= {MIN_CHUNK_SAMPLES / SAMPLE_RATE} s, got {chunk_seconds}")
    length = wave.numel()
    plan = chunk_plan(length, chunk, overlap, min_last=MIN_CHUNK_SAMPLES)
    c = variance_norm_scale(wave[None].to(device))
    normed = apply_scale(wave[None].to(device), c)[0]
    shortest = cfg.n_fft // 2 + 1  # centred STFT: reflect padding of n_fft // 2 needs a longer signal
    if length < shortest:
        padded = torch.nn.functional.pad(normed, (0, shortest - length))
        out = _enhance_normalised(model, padded, cfg)[:length]
        return apply_scale(out[None], c, inverse=True)[0].cpu()
    out = torch.zeros_like(normed)
    ramp = torch.sin(0.5 * math.pi * (torch.arange(overlap, device=device) + 0.5) / max(overlap, 1)) ** 2
    for i, (start, end) in enumerate(plan):
        piece = _enhance_normalised(model, normed[start:end], cfg)
        weight = torch.ones_like(piece)
        if i > 0 and overlap:
            weight[:overlap] = ramp
        if i < len(plan) - 1 and overlap:
            weight[-overlap:] = 1 - ramp
        out[start:end] += weight * piece
    return apply_scale(out[None], c, inverse=True)[0].cpu()


@dataclass
class EnhanceStats:
    """What :func:`enhance_file` measured: audio seconds, processing seconds and their ratio (real-time factor)."""

    audio_s: float
    process_s: float

    @property
    def rtf(self) -> float:
        """Real-time factor: processing time / audio duration (below 1 is faster than real time)."""
        return self.process_s / max(self.audio_s, 1e-9)


def enhance_file(
    model: TaylorSENet,
    noisy_path: str | Path,
    out_path: str | Path,
    *,
    chunk_seconds: float = 10.0,
    overlap_seconds: float = 1.0,
    power: float = 0.5,
) -> EnhanceStats:
    """Enhance an audio file at any sample rate into ``out_path`` (same rate, channels averaged, same subtype).

    The output is written atomically and never replaces an existing file. ``power`` is the compression exponent
    the model was trained with (see :func:`enhance_waveform`).

    Raises:
        FileNotFoundError: the input does not exist.
        FileExistsError: ``out_path`` exists already.
        ValueError: the input cannot be decoded.
    """
    import soundfile as sf

    from tenfold.utils.checkpoint import atomic_write

    out_path = Path(out_path)
    if out_path.exists():
        raise FileExistsError(f"output {str(out_path)!r} exists already; tenfold does not overwrite files")
    start = time.perf_counter()
    wave, sr = read_wav(noisy_path, SAMPLE_RATE)
    info = sf.info(str(noisy_path))
    enhanced = enhance_waveform(model, wave, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, power=power)
    if sr != SAMPLE_RATE:
        enhanced = resample(enhanced, SAMPLE_RATE, sr)[: info.frames]
        if enhanced.numel() < info.frames:  # rounding of the two resamplings: pad the last sample or two
            enhanced = torch.nn.functional.pad(enhanced, (0, info.frames - enhanced.numel()))
    data = enhanced.numpy()
    if info.subtype.startswith("PCM"):
        data = data.clip(-1.0, 1.0 - 2.0**-15)
    with atomic_write(out_path) as tmp:
        sf.write(str(tmp), data, sr, subtype=info.subtype, format=info.format)
    return EnhanceStats(audio_s=info.frames / sr, process_s=time.perf_counter() - start)
