"""Speech metrics: an independent float64 reference of LLR / WSS / segSNR / CSIG / CBAK / COVL, STOI against
pystoi, the argument order (reference first), known cases (identity, white noise at set SNRs, scale invariance),
errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pesq import pesq as pesq_reference
from pystoi import stoi as pystoi_stoi
from scipy.linalg import toeplitz

from tenfold.data.synthetic import make_speech
from tenfold.speech.metrics import (
    SpeechMetrics,
    _llr_frames,
    _nearest_peaks,
    composite,
    pesq_nb,
    pesq_wb,
    segmental_snr,
    si_sdr,
    speech_metrics,
    stoi,
)


@pytest.fixture(scope="module")
def speech():
    clean, _ = make_speech(2, seed=3, split="test", seconds=3.0)
    return clean


def _white(clean: torch.Tensor, snr_db: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ratio = clean.double().pow(2).sum(1, keepdim=True) / noise.pow(2).sum(1, keepdim=True)
    scale = (ratio / 10 ** (snr_db / 10)).sqrt()
    return (clean.double() + scale * noise).float()


def test_identical_signals_score_the_maximum(speech):
    m = speech_metrics(speech, speech)
    torch.testing.assert_close(m["pesq"], torch.full((2,), 4.644, dtype=torch.float64), atol=2e-3, rtol=0)
    torch.testing.assert_close(m["stoi"], torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(m["estoi"], torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (m["si_sdr"] > 100).all()
    assert m["csig"].tolist() == m["cbak"].tolist() == m["covl"].tolist() == [5.0, 5.0]
    comp = composite(speech, speech)
    assert comp["llr"].abs().max() < 1e-9 and comp["wss"].abs().max() < 1e-9
    # PESQ does not depend on the level of the estimate
    torch.testing.assert_close(pesq_wb(speech, 0.5 * speech), m["pesq"], atol=2e-3, rtol=0)


def test_white_noise_at_set_snrs(speech):
    names = ("pesq", "nb_pesq", "stoi", "estoi", "si_sdr", "ssnr", "csig", "cbak", "covl")
    scores = {snr: speech_metrics(speech, _white(speech, snr), metrics=names) for snr in (0.0, 5.0, 10.0)}
    for snr, m in scores.items():
        # uncorrelated noise: SI-SDR equals the mixing SNR up to the chance correlation of 3 s of noise
        torch.testing.assert_close(m["si_sdr"], torch.full((2,), snr, dtype=torch.float64), atol=0.15, rtol=0)
        assert (m["pesq"] < 1.5).all() and (m["nb_pesq"] < 2.0).all() and (m["stoi"] < 0.95).all()
        # STOI / ESTOI as pystoi computes them on the same float64 samples. The spec's 0.765 / 0.858 / 0.926 belong
        # to the spec author's own synthetic utterance (STOI depends on the spectrum), so pystoi is the reference.
        # Same package and samples, so only float64 rounding separates the two; a wrong rate, a swapped pair or
        # STOI for ESTOI moves the score by > 0.01.
        pairs = list(zip(speech.double().numpy(), _white(speech, snr).double().numpy(), strict=True))
        for name, extended in (("stoi", False), ("estoi", True)):
            expected = [pystoi_stoi(c, e, 16000, extended=extended) for c, e in pairs]
            np.testing.assert_allclose(m[name].numpy(), expected, rtol=0, atol=1e-9, err_msg=f"{name} at {snr} dB")
    for name in ("pesq", "nb_pesq", "stoi", "estoi", "ssnr", "cbak"):
        assert (scores[0.0][name] < scores[5.0][name]).all() and (scores[5.0][name] < scores[10.0][name]).all(), name


def test_narrow_band_pesq_of_identical_signals_is_the_p862_1_maximum(speech):
    # P.862's raw maximum 4.5 mapped to MOS-LQO by P.862.1: 0.999 + 4 / (1 + exp(-1.4945 * 4.5 + 4.6607))
    top = 0.999 + 4 / (1 + np.exp(-1.4945 * 4.5 + 4.6607))
    torch.testing.assert_close(pesq_nb(speech, speech), torch.full((2,), top, dtype=torch.float64), atol=2e-3,
                               rtol=0)  # fmt: skip
    torch.testing.assert_close(speech_metrics(speech, speech, metrics=("nb_pesq",))["nb_pesq"], pesq_nb(speech, speech))
    # other rates are resampled to 8 kHz (P.862 takes 8 or 16 kHz)
    from tenfold.speech.data import resample

    up = resample(speech, 16000, 48000)
    torch.testing.assert_close(pesq_nb(up, up, fs=48000), torch.full((2,), top, dtype=torch.float64), atol=2e-3,
                               rtol=0)  # fmt: skip
    assert (pesq_nb(speech, _white(speech, 5.0)) < 2.0).all()


def test_silent_estimates_and_references_raise_in_every_metric(speech):
    zeros = torch.zeros_like(speech)
    mixed = torch.stack([speech[0], zeros[1]])
    for fn in (si_sdr, stoi, segmental_snr, pesq_wb, pesq_nb, composite):
        with pytest.raises(ValueError, match=r"estimate utterance\(s\) \[0, 1\] are silent"):
            fn(speech, zeros)
        with pytest.raises(ValueError, match=r"estimate utterance\(s\) \[1\] are silent"):
            fn(speech, mixed)
        with pytest.raises(ValueError, match=r"clean utterance\(s\) \[1\] are silent"):
            fn(mixed, speech)
    with pytest.raises(ValueError, match="silent"):
        speech_metrics(speech, 1e-9 * speech, metrics=("si_sdr",))  # -180 dBFS counts as silence


def test_pesq_no_utterance_branch_and_what_does_not_raise(speech, monkeypatch):
    t = np.arange(48000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    # a steady 3-s tone is scored (PESQ's VAD finds it), against itself the maximum
    assert abs(float(pesq_wb(tone, tone)[0]) - 4.644) < 2e-3
    # a lone 0.1-s burst in 3 s of silence: no utterance detected
    burst = np.zeros(48000)
    burst[16000:17600] = tone[:1600]
    with pytest.raises(ValueError, match="found no utterance in item 0"):
        pesq_wb(burst, burst)
    import pesq

    def no_utterance(*args, **kwargs):
        raise pesq.NoUtterancesError(b"No utterances detected")

    monkeypatch.setattr(pesq, "pesq", no_utterance)
    for fn in (pesq_wb, pesq_nb):
        with pytest.raises(ValueError, match=r"found no utterance in item 0 .*voice-activity detection"):
            fn(speech, speech)


def test_si_sdr_is_scale_invariant_and_segmental_snr_known_case():
    x = torch.randn(3, 8000, generator=torch.Generator().manual_seed(1))
    est = x + 0.3 * torch.randn(3, 8000, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(si_sdr(x, est), si_sdr(x, 7.5 * est))
    torch.testing.assert_close(si_sdr(x, est), si_sdr(x, 0.01 * est))
    # half-amplitude copy: every frame's SNR is 10 log10(1 / 0.25) = 6.02 dB
    torch.testing.assert_close(segmental_snr(x, 0.5 * x), torch.full((3,), 10 * np.log10(4.0), dtype=torch.float64))
    assert segmental_snr(x, x).tolist() == [35.0] * 3  # clipped at the top
    assert segmental_snr(x, -9 * x).tolist() == [-10.0] * 3  # clipped at the bottom


def test_llr_is_zero_for_a_scaled_copy_and_positive_for_a_filtered_one():
    x = np.random.default_rng(0).standard_normal((1, 4000))
    assert np.abs(_llr_frames(x, 3.0 * x, 16000)).max() < 1e-9
    filtered = x.copy()
    filtered[:, 1:] += 0.9 * x[:, :-1]
    assert _llr_frames(x, filtered, 16000).mean() > 0.05


def _peaks_reference(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Direct 1-based transcription of the peak search loops of Loizou's wss.m."""
    k = len(energy)
    out = np.zeros(k - 1)
    for i in range(1, k):
        if slope[i - 1] > 0:
            n = i
            while n < k and slope[n - 1] > 0:
                n += 1
            out[i - 1] = energy[n - 2]
        else:
            n = i
            while n > 0 and slope[n - 1] <= 0:
                n -= 1
            out[i - 1] = energy[n]
    return out


def test_vectorised_peak_search_matches_the_loops():
    rng = np.random.default_rng(0)
    energy = rng.standard_normal((50, 25)).cumsum(-1)
    slope = np.diff(energy, axis=-1)
    expected = np.stack([_peaks_reference(e, s) for e, s in zip(energy, slope, strict=True)])
    np.testing.assert_array_equal(_nearest_peaks(energy, slope), expected)


def test_errors_name_the_problem(speech):
    with pytest.raises(ValueError, match="16000 Hz, got fs=8000"):
        pesq_wb(speech, speech, fs=8000)
    with pytest.raises(ValueError, match="fs=44100"):
        composite(speech, speech, fs=44100)
    with pytest.raises(ValueError, match=r"utterance\(s\) \[1\] are silent"):
        stoi(torch.stack([speech[0], torch.zeros_like(speech[1])]), speech)
    with pytest.raises(ValueError, match="silent"):
        pesq_wb(speech, torch.zeros_like(speech))
    with pytest.raises(ValueError, match="same shape"):
        si_sdr(speech, speech[:, :100])
    with pytest.raises(ValueError, match="unknown metric"):
        speech_metrics(speech, speech, metrics=("mos",))


def test_metric_class_accumulates_means(speech):
    metric = SpeechMetrics(metrics=("si_sdr", "ssnr"))
    a, b = _white(speech, 0.0), _white(speech, 10.0, seed=1)
    metric.update(speech[:1], a[:1])
    metric.update(clean=torch.cat([speech[1:], speech]), estimate=torch.cat([a[1:], b]))
    values = speech_metrics(torch.cat([speech, speech]), torch.cat([a, b]), metrics=("si_sdr", "ssnr"))
    out = metric.compute()
    torch.testing.assert_close(out["si_sdr"], values["si_sdr"].mean())
    torch.testing.assert_close(out["ssnr"], values["ssnr"].mean())


# ----------------------------------------------------------------------------------------------------------------
# An independent float64 reference of Hu & Loizou's measures
# ----------------------------------------------------------------------------------------------------------------
# Written from the published definitions (Hu & Loizou, "Evaluation of objective quality measures for speech
# enhancement", IEEE TASLP 16(1), 2008: segSNR, LLR, WSS with Klatt's weights, and the composite regressions) plus
# the details that only Loizou's composite.m fixes, which the spec makes the definition: 30-ms frames with a
# quarter-frame hop; MATLAB's hanning(W) window (no zero end points); floor(L / hop - W / hop) frames (one fewer
# than would fit); eps added to both signals; the critical-band filterbank of its wss(); its nearest-peak search,
# which on a rising slope reads the band *below* the local maximum; no range limit on the LLR; the best
# round(0.95 N) frames (MATLAB's round, half away from zero) for LLR and WSS. One documented departure of ours, kept
# here: PESQ is wide band (the `pesq` package's P.862.2) where composite.m used raw narrow-band P.862.
#
# It shares no code with tenfold.speech.metrics and takes other routes on purpose: per-frame loops instead of batched
# arrays, the LPC normal equations solved by a dense LU solve instead of the Levinson-Durbin recursion, rfft instead
# of fft, np.hanning instead of the cosine formula, and a list search for the spectral peaks instead of running
# maxima.

_EPS = np.finfo(np.float64).eps

#: composite.m's 25 critical bands for WSS, (centre, bandwidth) in Hz: 70 Hz wide up to 470 Hz, then each centre
#: is the previous one plus its own bandwidth.
_REF_BANDS_HZ = [
    (50.0, 70.0), (120.0, 70.0), (190.0, 70.0), (260.0, 70.0), (330.0, 70.0), (400.0, 70.0), (470.0, 70.0),
    (540.0, 77.3724), (617.372, 86.0056), (703.378, 95.3398), (798.717, 105.411), (904.128, 116.256),
    (1020.38, 127.914), (1148.30, 140.423), (1288.72, 153.823), (1442.54, 168.154), (1610.70, 183.457),
    (1794.16, 199.776), (1993.93, 217.153), (2211.08, 235.631), (2446.71, 255.255), (2701.97, 276.072),
    (2978.04, 298.126), (3276.17, 321.465), (3597.63, 346.136),
]  # fmt: skip


def _ref_frames(x: np.ndarray, fs: int) -> list[np.ndarray]:
    width = round(30 * fs / 1000)
    hop = width // 4
    count = int(np.floor(len(x) / hop - width / hop))
    window = np.hanning(width + 2)[1:-1]  # MATLAB's hanning(W): 0.5 (1 - cos(2 pi n / (W + 1))), n = 1..W
    return [window * x[m * hop : m * hop + width] for m in range(count)]


def _ref_segsnr(clean: np.ndarray, est: np.ndarray, fs: int = 16000) -> np.ndarray:
    """Frame SNRs 10 log10(sum x^2 / sum (x - y)^2) in dB, each clipped to [-10, 35] (composite.m adds eps twice)."""
    out = []
    for x, y in zip(_ref_frames(clean, fs), _ref_frames(est, fs), strict=True):
        snr = 10 * np.log10(np.dot(x, x) / (np.dot(x - y, x - y) + _EPS) + _EPS)
        out.append(min(max(snr, -10.0), 35.0))
    return np.array(out)


def _ref_lpc(frame: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation r_0..r_P and the inverse filter [1, -a_1, ..., -a_P] of the normal equations R a = r."""
    r = np.correlate(frame, frame, "full")[len(frame) - 1 : len(frame) + order]
    a = np.linalg.solve(toeplitz(r[:order]), r[1:])
    return r, np.concatenate([[1.0], -a])


def _ref_llr(clean: np.ndarray, est: np.ndarray, fs: int = 16000) -> np.ndarray:
    """Frame LLRs log(a_p R_c a_p' / a_c R_c a_c'), R_c the clean frame's autocorrelation matrix, LPC order P.

    P = 16 at 16 kHz (composite.m: 10 below 10 kHz, else 16).
    """
    order = 10 if fs < 10000 else 16
    out = []
    for x, y in zip(_ref_frames(clean, fs), _ref_frames(est, fs), strict=True):
        r_clean, a_clean = _ref_lpc(x, order)
        a_est = _ref_lpc(y, order)[1]
        big_r = toeplitz(r_clean)
        out.append(np.log((a_est @ big_r @ a_est) / (a_clean @ big_r @ a_clean)))
    return np.array(out)


def _ref_nearest_peak(energy: np.ndarray, slope: np.ndarray, band: int) -> float:
    """composite.m's "nearest peak" of a band: the local maximum to the right on a rising slope, else to the left.

    To the right, composite.m stops at the maximum's band m and reads energy[m - 1], one band below it: kept.
    """
    last = len(energy) - 1
    if slope[band] > 0:
        top = next((j for j in range(band, last) if slope[j] <= 0), last)
        return energy[top - 1]
    return energy[max((j + 1 for j in range(band + 1) if slope[j] > 0), default=0)]


def _ref_wss(clean: np.ndarray, est: np.ndarray, fs: int = 16000) -> np.ndarray:
    """Frame WSS: sum_j W_j (S_clean,j - S_est,j)^2 / sum_j W_j over the 24 slopes of 25 critical-band dB levels.

    Klatt's weights W = K_max / (K_max + E_max - E_j) * K_locmax / (K_locmax + E_peak,j - E_j) with K_max = 20 and
    K_locmax = 1 dB, averaged over the clean and the estimated frame.
    """
    n_fft = 2 ** int(np.ceil(np.log2(2 * round(30 * fs / 1000))))
    half, nyquist = n_fft // 2, fs / 2
    bins = np.arange(half)
    bank = []
    for centre, width in _REF_BANDS_HZ:
        # a Gaussian over the FFT bins around floor(centre bin), scaled by 70 Hz / bandwidth so that every band
        # has the same area; taps at or below composite.m's "-30 dB point" exp(-30 / (2 * 2.303)) are dropped
        gain = (
            70.0 / width * np.exp(-11.0 * ((bins - np.floor(centre / nyquist * half)) / (width / nyquist * half)) ** 2)
        )
        bank.append(np.where(gain > np.exp(-30.0 / 4.606), gain, 0.0))
    bank = np.array(bank)
    out = []
    for frames in zip(_ref_frames(clean, fs), _ref_frames(est, fs), strict=True):
        slopes, weights = [], []
        for frame in frames:
            power = np.abs(np.fft.rfft(frame, n_fft)[:half]) ** 2
            energy = 10 * np.log10(np.maximum(bank @ power, 1e-10))
            slope = np.diff(energy)
            peaks = np.array([_ref_nearest_peak(energy, slope, j) for j in range(len(slope))])
            below = energy[:-1]
            weights.append(20.0 / (20.0 + energy.max() - below) * (1.0 / (1.0 + peaks - below)))
            slopes.append(slope)
        w = (weights[0] + weights[1]) / 2
        out.append(np.sum(w * (slopes[0] - slopes[1]) ** 2) / np.sum(w))
    return np.array(out)


def _ref_best_mean(values: np.ndarray, keep: float = 0.95) -> float:
    count = int(np.floor(len(values) * keep + 0.5))  # MATLAB's round (half away from zero), not Python's
    return float(np.mean(np.sort(values)[:count]))


def _ref_composite(clean: np.ndarray, est: np.ndarray, fs: int = 16000) -> tuple[dict[str, float], dict[str, float]]:
    """Composite.m's measures of one utterance, and the CSIG / CBAK / COVL regressions before the [1, 5] clip."""
    x, y = clean + _EPS, est + _EPS
    llr, wss = _ref_best_mean(_ref_llr(x, y, fs)), _ref_best_mean(_ref_wss(x, y, fs))
    ssnr = float(np.mean(_ref_segsnr(x, y, fs)))
    pesq = pesq_reference(fs, clean, est, "wb")
    raw = {
        "csig": 3.093 - 1.029 * llr + 0.603 * pesq - 0.009 * wss,
        "cbak": 1.634 + 0.478 * pesq - 0.007 * wss + 0.063 * ssnr,
        "covl": 1.594 + 0.805 * pesq - 0.512 * llr - 0.007 * wss,
    }
    clipped = {k: min(max(v, 1.0), 5.0) for k, v in raw.items()}
    return {"llr": llr, "wss": wss, "ssnr": ssnr, "pesq": pesq, **clipped}, raw


@pytest.fixture(scope="module")
def recorded() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Two built-in utterances with a recording's noise floor (float64), and four estimates of them.

    The generator's pauses are digital zeros (30 % of the samples). There the LPC normal equations are singular
    (condition number 1e15 even after composite.m's eps), so a frame's LLR is a rounding artefact in any
    implementation: ours and the reference differ by up to 3e-2 in such frames, and the mean LLR reaches 12-14, which
    clips CSIG and COVL at 1. Recordings have a noise floor; white noise of 1e-4 (a few 16-bit steps, about 70 dB
    below the 0.3 peak) keeps the condition number below 1e8.
    """
    clean, noisy = make_speech(2, seed=3, split="test", seconds=3.0)
    x = clean.double().numpy()
    rng = np.random.default_rng(7)
    ref = x + 1e-4 * rng.standard_normal(x.shape)
    noise = noisy.double().numpy() - x  # the generator's white / pink / babble mixture at its drawn SNR
    white = rng.standard_normal(x.shape)
    white *= np.sqrt((ref**2).sum(1, keepdims=True) / (white**2).sum(1, keepdims=True) / 10**2.5)  # 25 dB
    shaped = ref.copy()
    shaped[:, 1:] += 0.9 * ref[:, :-1]  # spectral tilt, no noise
    estimates = {"noisy": ref + noise, "residual noise": ref + 0.1 * noise, "white 25 dB": ref + white,
                 "filtered": 0.8 * shaped}  # fmt: skip
    return ref, estimates


@pytest.fixture(scope="module")
def reference(recorded) -> dict[str, list[tuple[dict[str, float], dict[str, float]]]]:
    ref, estimates = recorded
    return {case: [_ref_composite(c, e) for c, e in zip(ref, est, strict=True)] for case, est in estimates.items()}


#: Both sides are float64 evaluations of one definition, so only rounding separates them. The LLR solves order-16
#: normal equations whose condition number reaches 1e8 on these frames (the harmonic spectra span 60 dB and more):
#: Levinson-Durbin and an LU solve then differ by up to 1e-6 in one frame and 6e-9 in the mean of the best 95 %.
#: WSS and segSNR involve no solve and agree to 1e-13. Every definitional change moves the values by 40 times the
#: tolerance or more (smallest change over the eight utterances): LPC order 15 / 17 instead of 16 by 7e-3 / 4e-5
#: (LLR); one frame more by 2e-4 (LLR), 3e-5 (WSS), 3e-3 dB (segSNR); keeping 94 % / 100 % of the frames by
#: 2e-3 / 2e-2 (LLR), 1.5e-4 / 9e-4 (WSS); a Hann window with zero end points by 5e-5 (LLR), 5e-6 (WSS), 4e-4 dB
#: (segSNR); the -10 dB segSNR floor at -15 dB by 2 dB where frames reach it ("noisy"). The composite measures
#: inherit 1.03 x the LLR tolerance; PESQ is the same package call on the same samples.
TOLERANCE = {"llr": 1e-6, "wss": 1e-8, "ssnr": 1e-8, "pesq": 1e-12, "csig": 2e-6, "cbak": 1e-7, "covl": 2e-6}

#: Cases where a composite regression falls below 1, so the [1, 5] clip (not the formula) is what gets compared.
CLIPPED = {"noisy": {"csig", "covl"}}


@pytest.mark.parametrize("case", ["noisy", "residual noise", "white 25 dB", "filtered"])
def test_composite_measures_match_the_independent_reference(recorded, reference, case):
    ref, estimates = recorded
    ours = composite(ref, estimates[case])
    expected = [values for values, _ in reference[case]]
    for name, tol in TOLERANCE.items():
        np.testing.assert_allclose(ours[name].numpy(), [e[name] for e in expected], rtol=0, atol=tol,
                                   err_msg=f"{case}: {name}")  # fmt: skip
    for name in ("csig", "cbak", "covl"):  # the cases exercise the regressions themselves, not only the clip
        raw = np.array([r[name] for _, r in reference[case]])
        assert ((raw < 1) if name in CLIPPED.get(case, ()) else ((raw > 1) & (raw < 5))).all(), (case, name, raw)
    # the public segmental_snr is the same mean of clipped frame SNRs, without composite.m's eps offset
    expected_ssnr = [_ref_segsnr(c, e).mean() for c, e in zip(ref, estimates[case], strict=True)]
    np.testing.assert_allclose(segmental_snr(ref, estimates[case]).numpy(), expected_ssnr, rtol=0, atol=1e-8)


def test_reference_first_everywhere_and_a_swap_is_caught(recorded, reference):
    """Every metric takes (clean, estimate); the values are those of the reference tools called with the clean
    signal as their reference, and the swapped call gives different numbers, so the order is pinned."""
    ref, estimates = recorded
    est = estimates["white 25 dB"]
    pairs = list(zip(ref, est, strict=True))
    expected = {
        "pesq": [pesq_reference(16000, c, e, "wb") for c, e in pairs],
        "nb_pesq": [pesq_reference(16000, c, e, "nb") for c, e in pairs],
        "stoi": [pystoi_stoi(c, e, 16000) for c, e in pairs],
        "estoi": [pystoi_stoi(c, e, 16000, extended=True) for c, e in pairs],
        "ssnr": [_ref_segsnr(c + _EPS, e + _EPS).mean() for c, e in pairs],  # as composite.m (eps offset)
        **{k: [values[k] for values, _ in reference["white 25 dB"]] for k in ("csig", "cbak", "covl")},
    }
    tol = {"pesq": 1e-12, "nb_pesq": 1e-12, "stoi": 1e-9, "estoi": 1e-9, "ssnr": 1e-8, **TOLERANCE}
    names = tuple(expected)
    ours = speech_metrics(ref, est, metrics=names)
    swapped = speech_metrics(est, ref, metrics=names)
    for name in names:
        np.testing.assert_allclose(ours[name].numpy(), expected[name], rtol=0, atol=tol[name], err_msg=name)
        # this pair tells the two orders apart: every metric here moves by >= 0.038 when swapped
        assert (np.abs(swapped[name].numpy() - expected[name]) > 0.01).all(), name
    metric = SpeechMetrics(metrics=("pesq", "stoi", "ssnr"))
    metric.update(ref[:1], est[:1])
    metric.update(clean=ref[1:], estimate=est[1:])
    for name, value in metric.compute().items():
        assert abs(float(value) - np.mean(expected[name])) < 1e-8, name
    # SI-SDR = 10 log10(rho^2 / (1 - rho^2)) (rho the correlation) and WSS (weights averaged over both signals) are
    # symmetric, so they cannot pin the order; the official SI-SNR of the task is symmetric too.
    torch.testing.assert_close(si_sdr(ref, est), si_sdr(est, ref), rtol=0, atol=1e-9)
    torch.testing.assert_close(composite(ref, est)["wss"], composite(est, ref)["wss"], rtol=0, atol=1e-9)
