"""TaylorSENet's signal front end: variance normalisation, STFT with power-law compression, and its exact inverse.

Follows ``solver.py`` and ``dataset/data.py`` of Andong-Li-speech/TaylorSENet (commit a79e979 / 2c0fa15): 16 kHz,
a periodic Hann window of 320 samples (20 ms), hop 160 (10 ms), ``n_fft = 320`` (161 bins), ``torch.stft``'s
defaults (``center=True``, reflect padding, one-sided, not normalised), so an utterance of L samples has
``L // 160 + 1`` frames. Complex spectra are stored as a real/imaginary channel pair ``(B, 2, T, F)``.

Fidelity: the official code calls the pre-2.0 real-valued ``torch.stft``/``torch.istft``; ``view_as_real`` of the
complex transform is the same array, so the numbers are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "STFTConfig",
    "apply_scale",
    "compress",
    "frame_counts",
    "istft_decompress",
    "stft_compress",
    "variance_norm_scale",
]


@dataclass(frozen=True)
class STFTConfig:
    """Analysis settings of the official recipe.

    Attributes:
        sample_rate: samples per second the network is trained at (16 kHz).
        win_length: Hann window length in samples (20 ms).
        hop_length: frame shift in samples (10 ms).
        n_fft: FFT size; ``n_fft // 2 + 1`` frequency bins (161).
        power: power-law compression exponent applied to the magnitude (0.5; 1.0 disables compression).
    """

    sample_rate: int = 16000
    win_length: int = 320
    hop_length: int = 160
    n_fft: int = 320
    power: float = 0.5

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft or self.hop_length <= 0 or self.hop_length > self.win_length:
            raise ValueError(
                f"need 0 < hop_length <= win_length <= n_fft, got hop {self.hop_length}, win {self.win_length}, "
                f"n_fft {self.n_fft}"
            )
        if not self.power > 0:
            raise ValueError(f"power must be > 0, got {self.power}")

    @property
    def num_bins(self) -> int:
        """Frequency bins ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1


def frame_counts(lengths: Tensor, hop_length: int = 160) -> Tensor:
    """Valid STFT frames of utterances of ``lengths`` samples (centred STFT): ``L // hop + 1``."""
    return torch.div(lengths, hop_length, rounding_mode="floor") + 1


def variance_norm_scale(noisy: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Per-utterance scale ``c = sqrt(L / sum(noisy^2))`` of the official variance normalisation.

    The mixture and the target are multiplied by ``c`` before the STFT (:func:`apply_scale`); the enhanced waveform
    is divided by it.

    Args:
        noisy: (B, L) waveforms, zero-padded after each utterance's end.
        lengths: (B,) valid samples per utterance (default: all L).

    Returns:
        (B,) float64 scales (the official code computes them in numpy float64). A silent utterance (zero energy)
        gets ``c = 1``; the official code would divide by zero.
    """
    if noisy.dim() != 2:
        raise ValueError(f"noisy must be (B, L), got shape {tuple(noisy.shape)}")
    if lengths is None:
        lengths = torch.full((noisy.shape[0],), noisy.shape[1], device=noisy.device)
    energy = noisy.double().pow(2).sum(dim=1)
    c = torch.sqrt(lengths.double() / energy.clamp_min(1e-300))
    return torch.where(energy > 0, c, torch.ones_like(c))


def apply_scale(wave: Tensor, c: Tensor, inverse: bool = False) -> Tensor:
    """``wave * c`` (or ``wave / c``) per utterance, computed in float64 and cast back, as the official pipeline.

    Args:
        wave: (B, L) waveforms.
        c: (B,) scales from :func:`variance_norm_scale`.
        inverse: divide instead of multiply (undo the normalisation of an enhanced waveform).
    """
    c = c.to(device=wave.device, dtype=torch.float64)[:, None]
    out = wave.double() / c if inverse else wave.double() * c
    return out.to(wave.dtype)


def compress(spec: Tensor, power: float, dim: int = 1) -> Tensor:
    """Raise the magnitude of a real/imag pair to ``power`` and keep its phase ``atan2(imag, real)``.

    Args:
        spec: tensor with the real part at index 0 and the imaginary part at index 1 of ``dim``.
        power: exponent (0.5 compresses, 2.0 undoes a 0.5 compression).
        dim: the real/imag dimension.
    """
    real, imag = spec.select(dim, 0), spec.select(dim, 1)
    mag = torch.linalg.vector_norm(spec, dim=dim) ** power  # the official torch.norm; its gradient at 0 is 0
    phase = torch.atan2(imag, real)
    return torch.stack((mag * torch.cos(phase), mag * torch.sin(phase)), dim=dim)


def stft_compress(wave: Tensor, cfg: STFTConfig = STFTConfig()) -> Tensor:
    """Compressed complex spectrum (B, 2, T, F) of waveforms (B, L), ``T = L // hop + 1``, ``F = n_fft // 2 + 1``.

    Raises:
        ValueError: ``wave`` is not (B, L), or L <= ``n_fft // 2`` (the centred STFT's reflect padding needs more).
    """
    if wave.dim() != 2:
        raise ValueError(f"wave must be (B, L), got shape {tuple(wave.shape)}")
    if wave.shape[1] <= cfg.n_fft // 2:
        raise ValueError(
            f"waveforms of {wave.shape[1]} samples are too short for the centred STFT (reflect padding of "
            f"{cfg.n_fft // 2}); need at least {cfg.n_fft // 2 + 1} samples (zero-pad them first)"
        )
    window = torch.hann_window(cfg.win_length, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, cfg.n_fft, cfg.hop_length, cfg.win_length, window=window, return_complex=True)
    spec = torch.view_as_real(spec).permute(0, 3, 2, 1)  # (B, F, T, 2) -> (B, 2, T, F)
    if cfg.power != 1.0:
        spec = compress(spec, cfg.power)
    return spec.contiguous()


def istft_decompress(spec: Tensor, length: int, cfg: STFTConfig = STFTConfig()) -> Tensor:
    """Exact inverse of :func:`stft_compress`: waveforms (B, length) of compressed spectra (B, 2, T, F)."""
    if spec.dim() != 4 or spec.shape[1] != 2:
        raise ValueError(f"spec must be (B, 2, T, F), got shape {tuple(spec.shape)}")
    if cfg.power != 1.0:
        spec = compress(spec, 1.0 / cfg.power)
    complex_spec = torch.view_as_complex(spec.permute(0, 3, 2, 1).contiguous())  # (B, F, T)
    window = torch.hann_window(cfg.win_length, device=spec.device, dtype=spec.dtype)
    return torch.istft(complex_spec, cfg.n_fft, cfg.hop_length, cfg.win_length, window=window, length=length)
