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

__all__ = ["EnhanceStats", "chunk_plan", "enhance_file", "enhance_waveform"]

SAMPLE_RATE = 16000


def chunk_plan(length: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) sample ranges of overlapping chunks that cover ``length`` samples.

    Consecutive chunks overlap by exactly ``overlap`` samples; the last chunk is shortened to end at ``length``.

    Raises:
        ValueError: ``overlap`` not in [0, chunk).
    """
    if chunk <= 0 or not 0 <= overlap < chunk:
        raise ValueError(f"need chunk > 0 and 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    if length <= chunk:
        return [(0, length)]
    hop = chunk - overlap
    n = math.ceil((length - overlap) / hop)
    return [(k * hop, min(k * hop + chunk, length)) for k in range(n)]


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

    Args:
        model: the network (its own device; the waveform is moved there).
        wave: mono waveform at 16 kHz.
        chunk_seconds: chunk length (the memory bound); a shorter recording is enhanced whole.
        overlap_seconds: overlap of consecutive chunks, cross-faded with sin^2/cos^2 ramps (they sum to 1).
        power: compression exponent the model was trained with.

    Raises:
        ValueError: ``wave`` is not 1-D or the chunking arguments are inconsistent.
    """
    if wave.dim() != 1:
        raise ValueError(f"wave must be a mono (L,) waveform, got shape {tuple(wave.shape)}")
    device = next(model.parameters()).device
    cfg = STFTConfig(power=power)
    chunk, overlap = round(chunk_seconds * SAMPLE_RATE), round(overlap_seconds * SAMPLE_RATE)
    plan = chunk_plan(wave.numel(), chunk, overlap)
    c = variance_norm_scale(wave[None].to(device))
    normed = apply_scale(wave[None].to(device), c)[0]
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

    The output is written atomically and never replaces an existing file.

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
