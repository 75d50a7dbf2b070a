"""``tenfold enhance``: chunked inference in bounded memory, exact length, no seams, resampling, folders, channels,
checkpoint formats and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from tenfold.data.synthetic import make_speech
from tenfold.speech.cli import enhance_main
from tenfold.speech.data import resample
from tenfold.speech.enhance import chunk_plan, enhance_waveform
from tenfold.speech.stft import stft_compress
from tenfold.speech.taylorsenet import SMALL_CONFIG, TaylorSENet

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {**SMALL_CONFIG, "c": 4, "cd1": 4, "dilations": [1], "order_num": 1}


def identity_model(**arch) -> TaylorSENet:
    """A TaylorSENet whose output is its input: gain sigmoid(30) ~ 1 and zero high-order heads."""
    model = TaylorSENet(**arch).eval()
    with torch.no_grad():
        head = model.zeroorderblock.de.last_conv[3]
        head.weight.zero_()
        head.bias.fill_(30.0)
        for block in model.highorderblock_list:
            for conv in (block.real_resi, block.imag_resi):
                conv.weight.zero_()
                conv.bias.zero_()
    return model


def save_ckpt(model: TaylorSENet, arch: dict, path) -> None:
    """The layout of a tenfold training checkpoint (model weights under ``model.``, architecture in hparams)."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_kwargs": arch}}, path)  # fmt: skip


def test_chunk_plan_covers_the_signal_with_exact_overlaps():
    plan = chunk_plan(1000, 300, 50)
    assert plan[0][0] == 0 and plan[-1][1] == 1000
    assert all(b[0] == a[1] - 50 for a, b in zip(plan, plan[1:], strict=False))
    assert chunk_plan(200, 300, 50) == [(0, 200)]
    with pytest.raises(ValueError, match="overlap"):
        chunk_plan(1000, 300, 300)


def test_five_minute_file_in_bounded_memory_with_exact_length(tmp_path, monkeypatch, capsys):
    _, noisy = make_speech(1, seed=5, split="test", seconds=60.0)
    wave = noisy.repeat(1, 5)[0] * 0.5  # 5 minutes at 16 kHz
    sf.write(tmp_path / "long.wav", wave.numpy(), 16000, subtype="FLOAT")
    save_ckpt(identity_model(**TINY), TINY, tmp_path / "identity.ckpt")
    seen: list[int] = []
    forward = TaylorSENet.forward_terms

    def recording(self, spec):
        seen.append(spec.shape[2])
        return forward(self, spec)

    monkeypatch.setattr(TaylorSENet, "forward_terms", recording)
    ckpt = str(tmp_path / "identity.ckpt")
    args = [str(tmp_path / "long.wav"), str(tmp_path / "out.wav"), "--ckpt", ckpt, "--chunk-seconds", "10"]
    code = enhance_main([*args, "--overlap-seconds", "1"])
    assert code == 0
    out, sr = sf.read(tmp_path / "out.wav", dtype="float32")
    assert sr == 16000 and out.shape == (wave.numel(),)
    # memory: the network never saw more than one 10-s chunk (1001 frames), and it saw every chunk
    assert max(seen) <= 10 * 100 + 1 and len(seen) == len(chunk_plan(wave.numel(), 160000, 16000))
    # the cross-fade weights sum to one: an identity network gives back the input everywhere, seams included
    np.testing.assert_allclose(out, wave.numpy(), atol=1e-4)
    printed = capsys.readouterr().out
    assert "real-time factor" in printed and "300.0 s of audio" in printed


def test_no_seams_between_chunks():
    """Stated level: chunked output within -40 dB (RMS) of whole-file output, and no level change in the overlaps."""
    torch.manual_seed(0)
    model = TaylorSENet(**SMALL_CONFIG).eval()
    _, noisy = make_speech(1, seed=6, split="test", seconds=20.0)
    x = noisy[0]
    whole = enhance_waveform(model, x, chunk_seconds=30.0)
    chunked = enhance_waveform(model, x, chunk_seconds=4.0, overlap_seconds=0.5)
    assert chunked.shape == x.shape
    err_db = 10 * math.log10((chunked - whole).pow(2).mean() / whole.pow(2).mean())
    assert err_db < -40
    for start, _ in chunk_plan(x.numel(), 64000, 8000)[1:]:
        seg = slice(start, start + 8000)
        ratio_db = 10 * math.log10(chunked[seg].pow(2).mean() / whole[seg].pow(2).mean())
        assert abs(ratio_db) < 0.1
        jump, ref = (chunked[seg].diff().abs().max()), (whole[seg].diff().abs().max())
        assert jump < 1.05 * ref + 1e-4


def test_other_sample_rates_and_folders(tmp_path, capsys):
    clean, _ = make_speech(2, seed=7, split="test", seconds=1.0)
    folder = tmp_path / "in"
    folder.mkdir()
    up = resample(clean[0], 16000, 48000)  # band-limited to 8 kHz, so the 48k -> 16k -> 48k trip keeps it
    sf.write(folder / "a48k.wav", up.numpy(), 48000, subtype="FLOAT")
    sf.write(folder / "b16k.wav", clean[1].numpy(), 16000, subtype="PCM_16")
    (folder / "notes.txt").write_text("not audio")
    arch = dict(TINY)
    save_ckpt(identity_model(**arch), arch, tmp_path / "id.ckpt")
    ckpt = str(tmp_path / "id.ckpt")
    assert enhance_main([str(folder), str(tmp_path / "out"), "--ckpt", ckpt, "--threads", "1"]) == 0
    a, sr_a = sf.read(tmp_path / "out" / "a48k.wav", dtype="float32")
    b, sr_b = sf.read(tmp_path / "out" / "b16k.wav", dtype="float32")
    assert sr_a == 48000 and a.shape == up.shape and sr_b == 16000 and b.shape == clean[1].shape
    assert sf.info(tmp_path / "out" / "b16k.wav").subtype == "PCM_16"
    # identity network: the 48k -> 16k -> 48k trip only loses what the anti-aliasing filters cut near 8 kHz
    snr_db = 10 * np.log10((up.numpy() ** 2).sum() / ((a - up.numpy()) ** 2).sum())
    assert snr_db > 30, snr_db
    assert np.abs(b - clean[1].numpy()).max() < 2e-4  # 16-bit quantisation
    assert not (tmp_path / "out" / "notes.txt").exists()
    assert capsys.readouterr().out.count("RTF") == 2


def test_errors_are_reported_and_files_never_overwritten(tmp_path, capsys):
    clean, _ = make_speech(1, seed=8, split="test", seconds=0.5)
    sf.write(tmp_path / "x.wav", clean[0].numpy(), 16000)
    save_ckpt(identity_model(**TINY), TINY, tmp_path / "id.ckpt")
    (tmp_path / "taken.wav").write_bytes(b"user data")
    ckpt = str(tmp_path / "id.ckpt")
    assert enhance_main([str(tmp_path / "x.wav"), str(tmp_path / "taken.wav"), "--ckpt", ckpt]) == 2
    assert (tmp_path / "taken.wav").read_bytes() == b"user data"
    assert "exists already" in capsys.readouterr().err
    assert enhance_main([str(tmp_path / "missing.wav"), str(tmp_path / "o.wav"), "--ckpt", ckpt]) == 2
    assert "does not exist" in capsys.readouterr().err
    torch.save({"bogus.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    assert enhance_main([str(tmp_path / "x.wav"), str(tmp_path / "o.wav"), "--ckpt", str(tmp_path / "bad.pth")]) == 2
    assert "do not fit" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def half_gain_model(**arch) -> TaylorSENet:
    """A TaylorSENet with a constant 0th-order gain of sigmoid(0) = 0.5 and zero high-order heads.

    In the compressed domain its output is 0.5 |X|^p with the noisy phase, so after decompression the waveform is
    0.5^(1/p) x: 0.5 x for a model trained with p = 1.0, 0.25 x when wrongly decompressed with p = 0.5.
    """
    model = identity_model(**arch)
    with torch.no_grad():
        model.zeroorderblock.de.last_conv[3].bias.zero_()
    return model


def test_enhance_uses_the_compression_power_the_model_was_trained_with(tmp_path, capsys):
    clean, _ = make_speech(1, seed=9, split="test", seconds=1.0)
    x = clean[0].numpy()
    sf.write(tmp_path / "x.wav", x, 16000, subtype="FLOAT")
    model = half_gain_model(**TINY)
    # a tenfold checkpoint of a model trained with power 1.0 (no compression): its hyper-parameters say so
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_kwargs": TINY, "power": 1.0}}, tmp_path / "p1.ckpt")  # fmt: skip
    assert enhance_main([str(tmp_path / "x.wav"), str(tmp_path / "a.wav"), "--ckpt", str(tmp_path / "p1.ckpt")]) == 0
    assert "compression power 1 (from the checkpoint" in capsys.readouterr().out
    np.testing.assert_allclose(sf.read(tmp_path / "a.wav", dtype="float32")[0], 0.5 * x, atol=1e-4)
    # weights without a saved power (an official state dict; the tiny test architecture comes from model_kwargs
    # here, as --config only knows the paper and small ones): 0.5 by default, --power for other models
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"model_kwargs": TINY}}, tmp_path / "np.ckpt")
    ckpt = ["--ckpt", str(tmp_path / "np.ckpt")]
    assert enhance_main([str(tmp_path / "x.wav"), str(tmp_path / "b.wav"), *ckpt]) == 0
    assert "compression power 0.5 (default" in capsys.readouterr().out
    np.testing.assert_allclose(sf.read(tmp_path / "b.wav", dtype="float32")[0], 0.25 * x, atol=1e-4)
    assert enhance_main([str(tmp_path / "x.wav"), str(tmp_path / "c.wav"), *ckpt, "--power", "1.0"]) == 0
    np.testing.assert_allclose(sf.read(tmp_path / "c.wav", dtype="float32")[0], 0.5 * x, atol=1e-4)


@pytest.mark.parametrize("length", [100, 160, 161])
def test_inputs_shorter_than_the_stft_padding_are_enhanced_at_their_length(length):
    clean, _ = make_speech(1, seed=10, split="test", seconds=0.25)
    x = clean[0, 1000 : 1000 + length]
    out = enhance_waveform(identity_model(**TINY), x)
    assert out.shape == (length,)
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)
    if length <= 160:  # the front end itself names the problem instead of torch's raw padding error
        with pytest.raises(ValueError, match="need at least 161 samples"):
            stft_compress(x[None])


def test_a_short_last_chunk_is_merged_into_the_previous_one():
    # 160,050 samples in 10-s chunks without overlap: the 50-sample tail joins the first chunk
    assert chunk_plan(160_050, 160_000, 0, min_last=1600) == [(0, 160_050)]
    assert chunk_plan(160_050, 160_000, 0) == [(0, 160_000), (160_000, 160_050)]
    plan = chunk_plan(1000, 300, 50, min_last=200)  # tail (750, 1000) of 250 samples is kept
    assert plan[-1] == (750, 1000)
    plan = chunk_plan(1000, 300, 100, min_last=200)  # tail (800, 1000) of 200 samples is kept, (600, 900) precedes
    assert plan[-2:] == [(600, 900), (800, 1000)]
    assert chunk_plan(1000, 300, 100, min_last=201)[-1] == (600, 1000)
    _, noisy = make_speech(1, seed=11, split="test", seconds=10.0)
    x = torch.cat([noisy[0], noisy[0, :50]])
    out = enhance_waveform(identity_model(**TINY), x, chunk_seconds=10.0, overlap_seconds=0.0)
    assert out.shape == (160_050,)
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)


def _write_clip(path, seconds: float = 0.5, seed: int = 12) -> np.ndarray:
    clean, _ = make_speech(1, seed=seed, split="test", seconds=seconds)
    sf.write(path, clean[0].numpy(), 16000, subtype="FLOAT")
    return clean[0].numpy()


def test_a_plain_state_dict_of_another_named_configuration_says_which_to_pass(tmp_path, capsys):
    x = _write_clip(tmp_path / "x.wav")
    torch.manual_seed(0)
    small = TaylorSENet(**SMALL_CONFIG).eval()
    torch.save(small.state_dict(), tmp_path / "small.pth")  # an official-style state dict: no architecture saved
    args = [str(tmp_path / "x.wav"), str(tmp_path / "a.wav"), "--ckpt", str(tmp_path / "small.pth")]
    assert enhance_main(args) == 2  # the default architecture for a plain state dict is the paper's
    err = capsys.readouterr().err
    assert "these weights fit configuration 'small': pass --config small" in err
    assert "do not fit TaylorSENet" in err  # the key listing is still there
    assert not (tmp_path / "a.wav").exists()
    assert enhance_main([*args, "--config", "small"]) == 0
    assert "architecture: configuration 'small'" in capsys.readouterr().out
    out = sf.read(tmp_path / "a.wav", dtype="float32")[0]
    np.testing.assert_allclose(out, enhance_waveform(small, torch.from_numpy(x)).numpy(), atol=1e-5)
    # the same architecture at another order (the demo's Q=0 baseline): the order the keys show is named
    zero = TaylorSENet(**{**SMALL_CONFIG, "order_num": 0}).eval()
    torch.save(zero.state_dict(), tmp_path / "small_q0.pth")
    args = [str(tmp_path / "x.wav"), str(tmp_path / "b.wav"), "--ckpt", str(tmp_path / "small_q0.pth")]
    assert enhance_main([*args, "--config", "small"]) == 2
    assert "fit configuration 'small' with order_num=0: pass --config small --order-num 0" in capsys.readouterr().err
    assert enhance_main([*args, "--config", "small", "--order-num", "0"]) == 0
    # weights that fit no named configuration get the plain key listing only
    torch.save({"bogus.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    args = [str(tmp_path / "x.wav"), str(tmp_path / "c.wav"), "--ckpt", str(tmp_path / "bad.pth")]
    assert enhance_main(args) == 2
    err = capsys.readouterr().err
    assert "do not fit" in err and "these weights fit" not in err


def test_a_saved_architecture_wins_over_config(tmp_path, capsys):
    from tenfold.utils.checkpoint import save_model

    x = _write_clip(tmp_path / "x.wav")
    model = half_gain_model(**TINY)
    save_model(tmp_path / "model.pt", model, TINY, architecture="TaylorSENet", power=1.0)
    args = [str(tmp_path / "x.wav"), str(tmp_path / "a.wav"), "--ckpt", str(tmp_path / "model.pt")]
    assert enhance_main([*args, "--config", "paper"]) == 0
    printed = capsys.readouterr().out
    assert "architecture: the checkpoint's own (--config ignored)" in printed
    assert "compression power 1 (from the checkpoint" in printed
    np.testing.assert_allclose(sf.read(tmp_path / "a.wav", dtype="float32")[0], 0.5 * x, atol=1e-4)


def _stereo(seconds: float, rate: int) -> np.ndarray:
    """(L, 2) band-limited speech-like stereo at ``rate``: two different utterances, the right one quieter."""
    clean, _ = make_speech(2, seed=13, split="test", seconds=seconds)
    pair = torch.stack([clean[0], 0.3 * clean[1]])
    return resample(pair, 16000, rate).numpy().T.copy()


def test_stereo_44k_file_is_enhanced_per_channel_at_its_rate_and_length(tmp_path, monkeypatch):
    stereo = _stereo(1.0, 44100)
    sf.write(tmp_path / "stereo.wav", stereo, 44100, subtype="PCM_24")
    save_ckpt(identity_model(**TINY), TINY, tmp_path / "id.ckpt")
    batches: list[int] = []
    forward = TaylorSENet.forward_terms

    def recording(self, spec):
        batches.append(spec.shape[0])
        return forward(self, spec)

    monkeypatch.setattr(TaylorSENet, "forward_terms", recording)
    args = [str(tmp_path / "stereo.wav"), str(tmp_path / "out.wav"), "--ckpt", str(tmp_path / "id.ckpt")]
    assert enhance_main(args) == 0
    info = sf.info(tmp_path / "out.wav")
    assert (info.channels, info.samplerate, info.frames, info.subtype) == (2, 44100, len(stereo), "PCM_24")
    assert batches == [2]  # both channels in one batch through the network, not one call per channel
    out = sf.read(tmp_path / "out.wav", dtype="float32")[0]
    # identity network: each output channel is its own input channel (not a mix, not the other channel)
    for ch in (0, 1):
        err = ((out[:, ch] - stereo[:, ch]) ** 2).sum()
        assert 10 * np.log10((stereo[:, ch] ** 2).sum() / err) > 30, ch
    assert np.abs(out[:, 0] - out[:, 1]).max() > 0.1


def test_channels_are_enhanced_independently():
    """A random network: each channel of a (2, L) input gives what it gives alone (own scale, own instance norms)."""
    torch.manual_seed(1)
    model = TaylorSENet(**TINY).eval()
    stereo = torch.from_numpy(_stereo(1.5, 16000).T.copy())
    both = enhance_waveform(model, stereo, chunk_seconds=1.0, overlap_seconds=0.25)
    assert both.shape == stereo.shape
    for ch in (0, 1):
        alone = enhance_waveform(model, stereo[ch], chunk_seconds=1.0, overlap_seconds=0.25)
        torch.testing.assert_close(both[ch], alone, atol=1e-5, rtol=1e-4)
    assert (both[0] - both[1]).abs().max() > 0.01
    with pytest.raises(ValueError, match=r"\(L,\) or \(C, L\)"):
        enhance_waveform(model, stereo[None])


def test_keeping_freed_memory_changes_where_memory_comes_from_not_the_output(monkeypatch):
    import tenfold.speech.enhance as enhance

    torch.manual_seed(0)
    model = TaylorSENet(**TINY).eval()
    _, noisy = make_speech(1, seed=5, split="test", seconds=2.0)
    x = torch.as_tensor(noisy[0], dtype=torch.float32)
    entered = []
    real = enhance.keep_freed_memory

    def spy(*args, **kwargs):
        entered.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(enhance, "keep_freed_memory", spy)
    kept = enhance_waveform(model, x, chunk_seconds=1.0, overlap_seconds=0.25)
    assert entered == [True]
    plain = enhance_waveform(model, x, chunk_seconds=1.0, overlap_seconds=0.25, reuse_memory=False)
    assert entered == [True]  # not entered again
    assert torch.equal(kept, plain)
    with real() as applied:  # glibc on Linux: the settings apply; elsewhere a no-op that says so
        assert applied == (enhance._glibc() is not None)
        assert torch.equal(enhance_waveform(model, x, reuse_memory=False), enhance_waveform(model, x))
