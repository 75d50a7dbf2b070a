"""Speech-like utterances (source-filter synthesis) and noisy mixtures at exact signal-to-noise ratios."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tenfold.data.synthetic.seeding import _KIND_SPEECH, _check_int, _check_split, _generator, _uniform


def _speech_like(n: int, length: int, sample_rate: int, gen: torch.Generator) -> Tensor:
    """Voiced, syllable-structured signals, (n, T) float32 with RMS drawn in [-26, -16] dBFS.

    Source-filter synthesis, vectorised over the batch: a glottal pulse train (a smooth periodic pulse whose
    width is a fixed number of samples, so it is nearly band-limited) follows a pitch contour in 80-300 Hz
    (a per-speaker base, a per-syllable glide, declination and a slight vibrato). Each syllable has its own three
    formants; the source is shaped by them frame by frame in the STFT domain. Short noise bursts at some
    syllable onsets stand in for consonants. Syllables of 120-300 ms alternate with pauses of 30-250 ms.
    """
    sr = float(sample_rate)
    seconds = length / sr
    k = math.ceil(seconds / 0.15) + 1  # enough syllables to fill the utterance
    t = torch.arange(length, dtype=torch.float32) / sr
    dur = _uniform((n, k), 0.12, 0.3, gen)
    gap = _uniform((n, k), 0.03, 0.25, gen)
    onset = _uniform((n, 1), 0.0, 0.15, gen) + torch.cumsum(dur + gap, dim=1) - (dur + gap)
    syl = torch.searchsorted(onset, t.expand(n, length).contiguous(), right=True) - 1  # (n, T), -1 before first
    sylc = syl.clamp_min(0)
    on_t, dur_t = onset.gather(1, sylc), dur.gather(1, sylc)
    since = t - on_t
    active = (syl >= 0) & (since < dur_t)
    tau = (since / dur_t).clamp(0, 1)
    amp = _uniform((n, k), 0.5, 1.0, gen).gather(1, sylc)
    env = torch.sin(math.pi * tau).clamp_min(0).pow(0.7) * amp * active

    # Pitch: per-speaker base, per-syllable glide, declination over the utterance, vibrato.
    base = _uniform((n, 1), 95.0, 230.0, gen)
    f_start = base * _uniform((n, k), 0.85, 1.25, gen)
    f_end = f_start * _uniform((n, k), 0.75, 1.15, gen)
    f0 = torch.lerp(f_start.gather(1, sylc), f_end.gather(1, sylc), tau)
    f0 = f0 * (1 - 0.12 * t / seconds) * (1 + 0.01 * torch.sin(2 * math.pi * 5.5 * t))
    f0 = f0.clamp(80.0, 300.0)
    phase = torch.remainder(torch.cumsum(f0.double(), dim=1) * (2 * math.pi / sr), 2 * math.pi).float()
    width = 2 * math.pi * 2.5 * f0 / sr  # pulse width of ~2.5 samples, in radians of the period
    pulse = torch.exp((torch.cos(phase) - 1) / (width * width))
    voiced = (pulse - pulse.mean(dim=1, keepdim=True)) * env
    burst_len = _uniform((n, k), 0.015, 0.05, gen).gather(1, sylc)
    has_burst = (torch.rand((n, k), generator=gen) < 0.5).gather(1, sylc)
    burst = torch.randn((n, length), generator=gen) * (active & has_burst & (since < burst_len))

    # Formant shaping, frame by frame.
    n_fft = 1 << max(8, round(math.log2(0.032 * sr)))
    hop = n_fft // 4
    window = torch.hann_window(n_fft)
    spec_v = torch.stft(voiced, n_fft, hop, window=window, return_complex=True)  # (n, bins, frames)
    spec_u = torch.stft(burst, n_fft, hop, window=window, return_complex=True)
    frames = spec_v.shape[-1]
    frame_syl = sylc[:, (torch.arange(frames) * hop).clamp_max(length - 1)]  # (n, frames)
    formant = torch.stack(
        [_uniform((n, k), 300, 850, gen), _uniform((n, k), 900, 2300, gen), _uniform((n, k), 2400, 3300, gen)], -1
    )
    bandwidth = torch.tensor([90.0, 120.0, 180.0]) * _uniform((n, k, 3), 0.8, 1.3, gen)
    fq = torch.fft.rfftfreq(n_fft, 1 / sr).view(1, -1, 1, 1)  # (1, bins, 1, 1)
    fm = formant.gather(1, frame_syl.unsqueeze(-1).expand(-1, -1, 3)).unsqueeze(1)  # (n, 1, frames, 3)
    bw = bandwidth.gather(1, frame_syl.unsqueeze(-1).expand(-1, -1, 3)).unsqueeze(1)
    gain_v = (1 / (1 + ((fq - fm) / (bw / 2)) ** 2)).sum(-1) * (fq[..., 0] > 60)  # (n, bins, frames)
    gain_u = (fq[..., 0] / (fq[..., 0] + 2500.0)) ** 2
    voiced = _unit_rms(torch.istft(spec_v * gain_v, n_fft, hop, window=window, length=length))
    # Consonant bursts about 20 dB below the vowels overall (they occupy a small fraction of the time).
    unvoiced = _unit_rms(torch.istft(spec_u * gain_u, n_fft, hop, window=window, length=length))
    audio = voiced + _uniform((n, 1), 0.05, 0.15, gen) * unvoiced * has_burst.any(dim=1, keepdim=True)
    rms = audio.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-8)
    level = 10 ** (_uniform((n, 1), -26.0, -16.0, gen) / 20)
    audio = audio * (level / rms)
    peak = audio.abs().amax(dim=1, keepdim=True)
    return audio / torch.clamp(peak / 0.99, min=1.0)


def _unit_rms(x: Tensor) -> Tensor:
    return x / x.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)


def make_speech(
    n: int,
    *,
    seed: int = 0,
    split: str = "train",
    sample_rate: int = 16000,
    seconds: float = 1.0,
    snr_db: tuple[float, float] = (-5.0, 15.0),
    return_snr: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Speech-like utterances and noisy mixtures at exact signal-to-noise ratios.

    Clean signals are voiced "syllables" (see ``_speech_like``: pitch contour 80-300 Hz, three formants per
    syllable, consonant-like bursts, pauses). The noise of each utterance is a random convex mix of white
    noise, pink (1/f) noise and babble (the sum of three other utterances, each circularly shifted in time),
    then scaled so that ``10 log10(sum(clean^2) / sum(noise^2))`` equals an SNR drawn uniformly from
    ``snr_db``; the scale is computed in float64, so the SNR measured on the float32 outputs matches the drawn
    value to about 1e-5 dB.

    Args:
        n: Number of utterances (>= 1).
        seed: Task seed.
        split: ``"train"``, ``"val"`` or ``"test"``.
        sample_rate: Samples per second, 8000 to 96000.
        seconds: Duration of each utterance, 0.25 to 60 s; T = round(sample_rate * seconds).
        snr_db: (low, high) range of the SNR in dB, low <= high.
        return_snr: Also return the drawn SNRs.

    Returns:
        clean: (n, T) float32.
        noisy: (n, T) float32, ``clean + noise``.
        snr: (n,) float64 drawn SNR in dB, only when ``return_snr``.

    Raises:
        ValueError: On an unknown split or an out-of-range argument.
    """
    _check_int("n", n, 1)
    _check_int("sample_rate", sample_rate, 8000, 96000)
    split_code = _check_split(split)
    if not (isinstance(seconds, int | float) and 0.25 <= seconds <= 60):
        raise ValueError(f"seconds={seconds!r} is out of range; expected a duration in [0.25, 60] seconds")
    try:
        lo, hi = (float(v) for v in snr_db)
    except (TypeError, ValueError):
        raise ValueError(f"snr_db={snr_db!r} must be a (low, high) pair of numbers in dB") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"snr_db={snr_db!r} must be a finite (low, high) pair with low <= high")
    length = round(sample_rate * seconds)
    g = _generator(seed, _KIND_SPEECH, split_code, sample_rate, length)
    clean = _speech_like(n, length, sample_rate, g)
    # Babble sources: the batch itself plus four extra utterances, so every utterance has others to draw from.
    pool = torch.cat([clean, _speech_like(4, length, sample_rate, g)])
    size = pool.shape[0]
    babble = torch.zeros(n, length)
    ar = torch.arange(length)
    for _ in range(3):  # three talkers
        src = (torch.arange(n) + torch.randint(1, size, (n,), generator=g)) % size  # never the utterance itself
        shift = torch.randint(length, (n, 1), generator=g)
        babble += _unit_rms(pool[src].gather(1, (ar + shift) % length))
    white = torch.randn((n, length), generator=g)
    freqs = torch.fft.rfftfreq(length, 1 / sample_rate).clamp_min(20.0)
    pink = torch.fft.irfft(torch.fft.rfft(torch.randn((n, length), generator=g)) / freqs.sqrt(), n=length)
    weights = -torch.log(torch.rand((n, 3), generator=g).clamp_min(1e-12))  # Dirichlet(1, 1, 1) mixing weights
    weights = weights / weights.sum(dim=1, keepdim=True)
    noise = weights[:, 0:1] * _unit_rms(white) + weights[:, 1:2] * _unit_rms(pink) + weights[:, 2:3] * _unit_rms(babble)
    snr = _uniform(n, lo, hi, g).double()
    clean64, noise64 = clean.double(), noise.double()
    p_clean = clean64.pow(2).sum(dim=1)
    p_noise = noise64.pow(2).sum(dim=1)
    scale = torch.sqrt(p_clean / (p_noise * 10 ** (snr / 10)))
    noisy = (clean64 + noise64 * scale.unsqueeze(1)).float()
    if return_snr:
        return clean, noisy, snr
    return clean, noisy
