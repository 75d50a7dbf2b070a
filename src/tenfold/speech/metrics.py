"""Speech enhancement metrics: WB-PESQ, NB-PESQ, STOI, SI-SDR, segmental SNR and the composite CSIG/CBAK/COVL.

Every function takes a clean reference and an estimate as (L,) or (B, L) tensors or arrays at ``fs`` Hz and returns
one value per utterance, a (B,) float64 tensor.

Argument order: **reference first**, ``(clean, estimate)``, in every function and in :meth:`SpeechMetrics.update`
(and in :func:`tenfold.speech.task.si_snr`). It is the order of the tools these numbers are compared with: ``pesq``'s
``pesq(fs, ref, deg)``, ``pystoi``'s ``stoi(clean, denoised, fs)`` and Loizou's ``composite(cleanFile,
enhancedFile)``, in which published PESQ/STOI/CSIG/CBAK/COVL tables are computed. torchmetrics' own convention is
``(preds, target)``, the reverse; the wrappers here swap for it internally, and :class:`SpeechMetrics` follows this
module rather than torchmetrics, so one order holds across the speech package (call it with keywords,
``update(clean=..., estimate=...)``, when it sits next to torchmetrics' own metrics). The order matters: PESQ, STOI,
segSNR, LLR and the composite measures are not symmetric (SI-SDR and WSS are). The training loss is a torch
criterion and keeps torch's ``(input, target)`` order (:class:`tenfold.speech.loss.ComMagEuclideanLoss`, whose value
is symmetric in its two arguments). PESQ uses the ``pesq`` package (ITU-T P.862.2 wide band, and P.862
narrow band mapped to MOS-LQO by P.862.1); STOI and SI-SDR come from torchmetrics (STOI wraps ``pystoi``). A silent
(all-zero) reference or estimate raises ``ValueError``: every metric here is undefined or meaningless for it.

The composite measures follow Hu & Loizou, "Evaluation of objective quality measures for speech enhancement" (IEEE
TASLP 2008), as in Loizou's ``composite.m``:

* LLR: log-likelihood ratio of LPC models (order 16 at 16 kHz) on 30-ms Hann frames with 75 % overlap;
* WSS: Klatt's weighted spectral slope over 25 critical bands;
* segSNR: frame SNRs clipped to [-10, 35] dB, averaged;
* LLR and WSS average the best 95 % of frames; then

  CSIG = 3.093 - 1.029 LLR + 0.603 PESQ - 0.009 WSS,
  CBAK = 1.634 + 0.478 PESQ - 0.007 WSS + 0.063 segSNR,
  COVL = 1.594 + 0.805 PESQ - 0.512 LLR - 0.007 WSS, each clipped to [1, 5].

An exactly silent stretch of the reference (digital zeros, such as the pauses of the built-in generator) makes the
LPC normal equations singular (``composite.m``'s eps offset leaves a condition number near 1e15): the LLR of those
frames is a large rounding artefact that differs between correct implementations (the built-in utterances reach a
mean LLR of 12-14), and CSIG / COVL then clip at 1. Recordings have a noise floor, on which the measures are well
defined (``tests/speech/test_speech_metrics.py`` checks them against an independent float64 reference there).

PESQ here is wide-band PESQ, as in the VoiceBank+DEMAND tables of recent papers (the original used raw narrow-band
PESQ). The DNS-Challenge tables of the paper also report NB-PESQ (:func:`pesq_nb`). PESQ raises "no utterances
detected" when its voice-activity detection finds no utterance in the audio, e.g. a lone 0.1-s burst in 3 s of
silence; steady signals such as a 3-s 440 Hz tone are scored normally (4.644 against themselves).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "METRICS",
    "SpeechMetrics",
    "composite",
    "pesq_nb",
    "pesq_wb",
    "segmental_snr",
    "si_sdr",
    "speech_metrics",
    "stoi",
]

#: Names accepted by :func:`speech_metrics` and :class:`SpeechMetrics`.
METRICS = ("pesq", "nb_pesq", "stoi", "estoi", "si_sdr", "ssnr", "csig", "cbak", "covl")

#: Peak amplitude at or below which a signal counts as silent (-160 dBFS, far below 24-bit quantisation).
SILENCE_PEAK = 1e-8


def _as_batch(x: Any, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (L,) or (B, L), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or Inf samples")
    return arr


def _pair(clean: Any, estimate: Any, min_len: int = 1) -> tuple[np.ndarray, np.ndarray]:
    ref, est = _as_batch(clean, "clean"), _as_batch(estimate, "estimate")
    if ref.shape != est.shape:
        raise ValueError(f"clean and estimate must have the same shape, got {ref.shape} and {est.shape}")
    if ref.shape[1] < min_len:
        raise ValueError(f"utterances of {ref.shape[1]} samples are too short; need at least {min_len}")
    for name, arr in (("clean", ref), ("estimate", est)):
        silent = np.flatnonzero(np.abs(arr).max(axis=1) <= SILENCE_PEAK)
        if silent.size:
            raise ValueError(
                f"{name} utterance(s) {silent.tolist()} are silent (all zeros, peak <= {SILENCE_PEAK:g}): the "
                "metric is undefined for silence"
            )
    return ref, est


def _check_rate(fs: int, allowed: Sequence[int], metric: str) -> None:
    if fs not in allowed:
        raise ValueError(
            f"{metric} needs audio at {' or '.join(map(str, allowed))} Hz, got fs={fs}; resample first "
            "(tenfold.speech.data.resample)"
        )


def pesq_wb(clean: Any, estimate: Any, fs: int = 16000) -> Tensor:
    """Wide-band PESQ (P.862.2, MOS-LQO in about [1.04, 4.64]) per utterance.

    Raises:
        ValueError: ``fs`` is not 16 kHz, shapes differ, a reference or estimate is silent, or PESQ's
            voice-activity detection finds no utterance in a signal (e.g. a lone short burst in silence).
    """
    _check_rate(fs, (16000,), "wide-band PESQ")
    ref, est = _pair(clean, estimate, min_len=fs // 4)
    return _pesq(ref, est, fs, "wb")


def _pesq(ref: np.ndarray, est: np.ndarray, fs: int, mode: str) -> Tensor:
    from pesq import NoUtterancesError, PesqError, pesq

    scores = []
    for i, (r, e) in enumerate(zip(ref, est, strict=True)):
        try:
            scores.append(pesq(fs, r, e, mode, on_error=PesqError.RAISE_EXCEPTION))
        except NoUtterancesError as err:
            raise ValueError(
                f"PESQ found no utterance in item {i} ({err}): its voice-activity detection needs enough active "
                "speech-like signal (a lone short burst in silence is not enough)"
            ) from None
    return torch.tensor(scores, dtype=torch.float64)


def pesq_nb(clean: Any, estimate: Any, fs: int = 16000) -> Tensor:
    """Narrow-band PESQ (P.862 mapped to MOS-LQO by P.862.1, in about [1.02, 4.55]) per utterance.

    The DNS-Challenge tables of the paper report it next to WB-PESQ. P.862 takes 8 or 16 kHz audio directly (the
    official ``cal_pesq`` scores 16-kHz audio with pypesq); other rates are resampled to 8 kHz first.

    Raises:
        ValueError: shapes differ, a reference or estimate is silent, or PESQ finds no utterance (as
            :func:`pesq_wb`).
    """
    ref, est = _pair(clean, estimate, min_len=fs // 4)
    if fs not in (8000, 16000):
        from tenfold.speech.data import resample

        ref, est = (resample(x, fs, 8000).double().numpy() for x in (ref, est))
        fs = 8000
    return _pesq(ref, est, fs, "nb")


def stoi(clean: Any, estimate: Any, fs: int = 16000, extended: bool = False) -> Tensor:
    """STOI (or extended STOI) in [0, 1] per utterance (``pystoi`` through torchmetrics; resamples to 10 kHz).

    Raises:
        ValueError: ``fs`` below 8 kHz, shapes differ, or a reference or estimate is silent (pystoi would return a
            meaningless score instead of failing).
    """
    from torchmetrics.functional.audio import short_time_objective_intelligibility

    if fs < 8000:
        raise ValueError(f"STOI needs fs >= 8000 Hz, got {fs}")
    ref, est = _pair(clean, estimate, min_len=fs // 4)
    out = short_time_objective_intelligibility(torch.from_numpy(est), torch.from_numpy(ref), fs, extended=extended)
    return out.double().reshape(-1)


def si_sdr(clean: Any, estimate: Any) -> Tensor:
    """Scale-invariant SDR in dB (zero-mean, Le Roux et al. 2019) per utterance; invariant to scaling ``estimate``.

    Raises:
        ValueError: shapes differ, or a reference or estimate is silent (the ratio is undefined; torchmetrics'
            epsilons would return a meaningless finite number).
    """
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

    ref, est = _pair(clean, estimate)
    return scale_invariant_signal_distortion_ratio(torch.from_numpy(est), torch.from_numpy(ref), zero_mean=True)


def _frames(x: np.ndarray, fs: int) -> np.ndarray:
    """(B, N, W) Hann-windowed 30-ms frames with a quarter-window hop, as Loizou's measures cut them."""
    win = round(30 * fs / 1000)
    hop = win // 4
    n = (x.shape[1] - win) // hop  # MATLAB's "for 1:(L/hop - win/hop)"
    if n < 1:
        raise ValueError(f"utterances of {x.shape[1]} samples are shorter than two 30-ms frames at {fs} Hz")
    idx = np.arange(n)[:, None] * hop + np.arange(win)[None]
    window = 0.5 * (1 - np.cos(2 * np.pi * np.arange(1, win + 1) / (win + 1)))
    return x[:, idx] * window


def segmental_snr(clean: Any, estimate: Any, fs: int = 16000) -> Tensor:
    """Segmental SNR in dB: mean over 30-ms frames of the frame SNR clipped to [-10, 35] dB."""
    ref, est = _pair(clean, estimate)
    return torch.from_numpy(_segsnr_frames(ref, est, fs).mean(axis=1))


def _segsnr_frames(ref: np.ndarray, est: np.ndarray, fs: int) -> np.ndarray:
    cf, pf = _frames(ref, fs), _frames(est, fs)
    eps = np.finfo(np.float64).eps
    snr = 10 * np.log10((cf**2).sum(-1) / (((cf - pf) ** 2).sum(-1) + eps) + eps)
    return np.clip(snr, -10.0, 35.0)


def _llr_frames(ref: np.ndarray, est: np.ndarray, fs: int) -> np.ndarray:
    order = 10 if fs < 10000 else 16
    cf, pf = _frames(ref, fs), _frames(est, fs)

    def autocorr(f: np.ndarray) -> np.ndarray:  # (B, N, order + 1)
        w = f.shape[-1]
        return np.stack([(f[..., : w - k] * f[..., k:]).sum(-1) for k in range(order + 1)], -1)

    def lpc(r: np.ndarray) -> np.ndarray:
        """Levinson-Durbin, vectorised over frames: [1, -a_1, ..., -a_P] per frame."""
        a = np.zeros(r.shape[:-1] + (order,))
        err = r[..., 0].copy()
        for i in range(order):
            acc = (a[..., :i] * r[..., i:0:-1]).sum(-1) if i else 0.0
            k = (r[..., i + 1] - acc) / err
            prev = a[..., :i].copy()
            a[..., i] = k
            a[..., :i] = prev - k[..., None] * prev[..., ::-1]
            err = (1 - k * k) * err
        return np.concatenate([np.ones(r.shape[:-1] + (1,)), -a], -1)

    rc, rp = autocorr(cf), autocorr(pf)
    ac, ap = lpc(rc), lpc(rp)
    lags = np.abs(np.arange(order + 1)[:, None] - np.arange(order + 1)[None])
    toeplitz = rc[..., lags]  # (B, N, P + 1, P + 1)
    num = np.einsum("bni,bnij,bnj->bn", ap, toeplitz, ap)
    den = np.einsum("bni,bnij,bnj->bn", ac, toeplitz, ac)
    return np.log(num / den)


_CENT_FREQ = np.array([50.0, 120, 190, 260, 330, 400, 470, 540, 617.372, 703.378, 798.717, 904.128, 1020.38, 1148.30,
                       1288.72, 1442.54, 1610.70, 1794.16, 1993.93, 2211.08, 2446.71, 2701.97, 2978.04, 3276.17,
                       3597.63])  # fmt: skip
_BANDWIDTH = np.array([70.0, 70, 70, 70, 70, 70, 70, 77.3724, 86.0056, 95.3398, 105.411, 116.256, 127.914, 140.423,
                       153.823, 168.154, 183.457, 199.776, 217.153, 235.631, 255.255, 276.072, 298.126, 321.465,
                       346.136])  # fmt: skip


def _nearest_peaks(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Loizou's per-band "nearest peak": for a rising slope walk right, else walk left (indices kept as in MATLAB).

    energy (..., K), slope (..., K - 1) -> (..., K - 1). Vectorised with running maxima of run boundaries.
    """
    k = slope.shape[-1]
    idx = np.broadcast_to(np.arange(k), slope.shape)
    rising = slope > 0
    # right walk from i: first m >= i with slope[m] <= 0 (or K-1 past the end, 0-based), peak at energy[m - 1]
    stop = np.where(~rising, idx, k)
    first_stop = np.flip(np.minimum.accumulate(np.flip(stop, -1), -1), -1)
    right = np.take_along_axis(energy, first_stop - 1, -1)
    # left walk from i: last m <= i with slope[m] > 0 (or -1), peak at energy[m + 1]
    start = np.where(rising, idx, -1)
    last_rise = np.maximum.accumulate(start, -1)
    left = np.take_along_axis(energy, last_rise + 1, -1)
    return np.where(rising, right, left)


def _wss_frames(ref: np.ndarray, est: np.ndarray, fs: int) -> np.ndarray:
    cf, pf = _frames(ref, fs), _frames(est, fs)
    win = cf.shape[-1]
    n_fft = 2 ** int(np.ceil(np.log2(2 * win)))
    half = n_fft // 2
    max_freq = fs / 2
    j = np.arange(half)
    f0 = np.floor(_CENT_FREQ / max_freq * half)[:, None]
    bw = (_BANDWIDTH / max_freq * half)[:, None]
    norm = (np.log(_BANDWIDTH[0]) - np.log(_BANDWIDTH))[:, None]
    filters = np.exp(-11 * ((j - f0) / bw) ** 2 + norm)
    filters = filters * (filters > np.exp(-30.0 / (2.0 * 2.303)))  # drop the filter below its -30 dB points

    def band_db(frames: np.ndarray) -> np.ndarray:
        spec = np.abs(np.fft.fft(frames, n_fft, axis=-1)[..., :half]) ** 2
        return 10 * np.log10(np.maximum(spec @ filters.T, 1e-10))

    ec, ep = band_db(cf), band_db(pf)
    sc, sp = np.diff(ec, axis=-1), np.diff(ep, axis=-1)
    kmax, klocmax = 20.0, 1.0

    def weights(e: np.ndarray, s: np.ndarray) -> np.ndarray:
        w_max = kmax / (kmax + e.max(-1, keepdims=True) - e[..., :-1])
        w_loc = klocmax / (klocmax + _nearest_peaks(e, s) - e[..., :-1])
        return w_max * w_loc

    w = (weights(ec, sc) + weights(ep, sp)) / 2
    return (w * (sc - sp) ** 2).sum(-1) / w.sum(-1)


def _best_mean(values: np.ndarray, alpha: float = 0.95) -> np.ndarray:
    """Mean of the smallest ``round(alpha * N)`` values per row (``composite.m`` keeps the best 95 % of frames)."""
    keep = max(1, int(np.floor(values.shape[1] * alpha + 0.5)))
    return np.sort(values, axis=1)[:, :keep].mean(axis=1)


def composite(clean: Any, estimate: Any, fs: int = 16000) -> dict[str, Tensor]:
    """Composite measures of Hu & Loizou: CSIG, CBAK, COVL (in [1, 5]) and their inputs, per utterance.

    Returns:
        dict with ``csig``, ``cbak``, ``covl``, ``pesq`` (wide band), ``llr``, ``wss`` and ``ssnr``, each (B,).

    Raises:
        ValueError: ``fs`` is not 16 kHz (PESQ), or as :func:`pesq_wb`.
    """
    _check_rate(fs, (16000,), "the composite measures (wide-band PESQ)")
    ref, est = _pair(clean, estimate, min_len=fs // 4)
    eps = np.finfo(np.float64).eps
    r, e = ref + eps, est + eps  # as composite.m, so exact zeros do not break the logarithms
    wss = _best_mean(_wss_frames(r, e, fs))
    llr = _best_mean(_llr_frames(r, e, fs))
    ssnr = _segsnr_frames(r, e, fs).mean(axis=1)
    pesq = pesq_wb(ref, est, fs).numpy()
    csig = np.clip(3.093 - 1.029 * llr + 0.603 * pesq - 0.009 * wss, 1, 5)
    cbak = np.clip(1.634 + 0.478 * pesq - 0.007 * wss + 0.063 * ssnr, 1, 5)
    covl = np.clip(1.594 + 0.805 * pesq - 0.512 * llr - 0.007 * wss, 1, 5)
    values = {"csig": csig, "cbak": cbak, "covl": covl, "pesq": pesq, "llr": llr, "wss": wss, "ssnr": ssnr}
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in values.items()}


def speech_metrics(clean: Any, estimate: Any, fs: int = 16000, metrics: Sequence[str] = METRICS) -> dict[str, Tensor]:
    """Several metrics at once, (B,) each; names from :data:`METRICS` (the composite ones share one PESQ run).

    Raises:
        ValueError: an unknown metric name, or as the individual metrics.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    out: dict[str, Tensor] = {}
    if {"csig", "cbak", "covl"} & set(metrics):
        comp = composite(clean, estimate, fs)
        out.update({k: comp[k] for k in ("csig", "cbak", "covl", "pesq", "ssnr") if k in metrics})
    if "pesq" in metrics and "pesq" not in out:
        out["pesq"] = pesq_wb(clean, estimate, fs)
    if "nb_pesq" in metrics:
        out["nb_pesq"] = pesq_nb(clean, estimate, fs)
    if "stoi" in metrics:
        out["stoi"] = stoi(clean, estimate, fs)
    if "estoi" in metrics:
        out["estoi"] = stoi(clean, estimate, fs, extended=True)
    if "si_sdr" in metrics:
        out["si_sdr"] = si_sdr(clean, estimate)
    if "ssnr" in metrics and "ssnr" not in out:
        out["ssnr"] = segmental_snr(clean, estimate, fs)
    return {m: out[m] for m in metrics}


class SpeechMetrics(Metric):
    """Running means of :func:`speech_metrics` over batches; exact across processes (sum and count states).

    ``update(clean, estimate)`` takes the reference first, like the functions (the reverse of torchmetrics'
    ``(preds, target)``): pass keywords when mixing it with torchmetrics' own metrics.

    Args:
        fs: sample rate of the audio passed to :meth:`update`.
        metrics: names from :data:`METRICS`.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, fs: int = 16000, metrics: Sequence[str] = ("pesq", "stoi", "si_sdr"), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
        self.fs = fs
        self.names = tuple(metrics)
        self.add_state("sums", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, clean: Tensor, estimate: Tensor) -> None:
        """Add a batch of references and estimates (B, L).

        Reference first, as every function of this module (not torchmetrics' ``(preds, target)``; see the module
        docstring).
        """
        values = speech_metrics(clean, estimate, self.fs, self.names)
        self.sums += torch.stack([values[m].sum() for m in self.names]).to(self.sums)
        self.count += values[self.names[0]].numel()

    def compute(self) -> dict[str, Tensor]:
        """Means over every utterance seen."""
        return {m: self.sums[i] / self.count.clamp_min(1) for i, m in enumerate(self.names)}
