"""Streaming TaylorSENet: frame-by-frame output equals the offline causal run, constant state, causality errors."""

from __future__ import annotations

import pytest
import torch

from tenfold.speech.stft import istft_decompress, stft_compress
from tenfold.speech.stream import TaylorSEStream, frame_time_ms, non_causal_layers
from tenfold.speech.taylorsenet import PAPER_CONFIG, SMALL_CONFIG, CumulativeLayerNorm, TaylorSENet

pytestmark = pytest.mark.usefixtures("one_thread")

CAUSAL_SMALL = {**SMALL_CONFIG, "norm_type": "cLN"}


def _model(dtype=torch.float32, **arch) -> TaylorSENet:
    torch.manual_seed(0)
    model = TaylorSENet(**arch).eval().to(dtype)
    with torch.no_grad():  # move the cLN gains/biases off their 1/0 start so that a skipped affine would show
        for m in model.modules():
            if isinstance(m, CumulativeLayerNorm):
                m.gain.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def _offline(model: TaylorSENet, wave: torch.Tensor, scale: float) -> torch.Tensor:
    """The offline pipeline with a fixed variance scale: scale, compressed STFT, network, iSTFT, unscale."""
    batch = wave.reshape(-1, wave.shape[-1])
    with torch.no_grad():
        out = istft_decompress(model(stft_compress(batch * scale)), batch.shape[1]) / scale
    return out.reshape(wave.shape)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("length", [1600, 1687, 330, 200])
def test_stream_equals_the_offline_causal_run_float64(length):
    """Hop by hop (with the first frame's reflect padding, the flushed partial hop and its end padding)."""
    model = _model(torch.float64, **CAUSAL_SMALL)
    wave = torch.randn(2, length, dtype=torch.float64, generator=torch.Generator().manual_seed(length)) * 0.2
    out = TaylorSEStream(model, scale=3.0).enhance(wave)
    assert out.shape == wave.shape and out.dtype == torch.float64
    assert _rel(out, _offline(model, wave, 3.0)) < 1e-12


def test_stream_equals_offline_on_the_paper_configuration_float32():
    model = _model(**{**PAPER_CONFIG, "norm_type": "cLN"})
    wave = torch.randn(2000, generator=torch.Generator().manual_seed(1)) * 0.1
    stream = model.stream(scale=5.0)
    out = stream.enhance(wave)
    assert out.shape == wave.shape
    assert _rel(out, _offline(model, wave, 5.0)) < 1e-5
    assert stream.stats.frames == 2000 // 160 + 1  # every offline frame, each computed once


def test_stream_with_batch_norm_in_eval_mode_matches_offline():
    model = _model(torch.float64, **{**SMALL_CONFIG, "norm_type": "BN"})
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    wave = torch.randn(900, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.2
    assert _rel(model.stream().enhance(wave), _offline(model, wave, 1.0)) < 1e-12


def test_cumulative_layer_norm_follows_the_official_formula():
    """Frame t: mean and (biased) variance over channels x frequency of frames 0..t, then the affine per channel."""
    norm = CumulativeLayerNorm(3, 2).double()
    with torch.no_grad():
        norm.gain.copy_(torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1))
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    expected = torch.empty_like(x)
    for t in range(5):
        past = x[:, :, : t + 1].reshape(2, -1)
        mean, var = past.mean(1), past.var(1, unbiased=False)
        expected[:, :, t] = (x[:, :, t] - mean[:, None, None]) / (var[:, None, None] + 1e-5).sqrt()
    expected = expected * norm.gain + norm.bias
    torch.testing.assert_close(norm(x), expected)
    norm1d = CumulativeLayerNorm(3, 1).double()
    y = torch.randn(1, 3, 6, dtype=torch.float64)
    t = 3
    past = y[:, :, : t + 1].reshape(-1)
    torch.testing.assert_close(
        norm1d(y)[0, :, t], (y[0, :, t] - past.mean()) / (past.var(unbiased=False) + 1e-5).sqrt()
    )
    assert set(dict(TaylorSENet(**CAUSAL_SMALL).named_parameters())) > {
        "zeroorderblock.en.last_conv.1.gain",
        "highorderblock_list.0.tcms.0.tcm_list.0.left_conv.1.bias",
    }


def test_blocks_of_hops_give_the_same_samples_as_single_hops():
    model = _model(torch.float64, **CAUSAL_SMALL)
    wave = torch.randn(1, 2345, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 0.2
    single = model.stream(scale=2.0).enhance(wave)
    stream = model.stream(scale=2.0)
    blocked = stream.enhance(wave, block=4)
    assert blocked.shape == wave.shape and _rel(blocked, single) < 1e-12
    stream.reset()
    assert stream.step(torch.zeros(1, 3 * 160)).shape == (1, 3 * 160)  # k hops in, k hops out (the first delayed)


def test_state_size_does_not_grow_with_the_input():
    stream = _model(**CAUSAL_SMALL).stream()
    hops = torch.randn(60, 160, generator=torch.Generator().manual_seed(3)) * 0.1
    for hop in hops[:20]:
        stream.step(hop)
    shapes_n = [tuple(t.shape) for t in stream.cache_tensors()]
    for hop in hops[20:40]:
        stream.step(hop)
    shapes_2n = [tuple(t.shape) for t in stream.cache_tensors()]
    assert shapes_n == shapes_2n and stream.cache_numel() == sum(map(lambda s: torch.Size(s).numel(), shapes_n))
    # the caches are the layers' past frames: e.g. the S-TCNs keep (kd1 - 1) * dilation frames each
    assert (1, 16, 4 * 2) in shapes_n and stream.cache_numel() > 0


def test_step_contract_latency_and_errors():
    stream = _model(**CAUSAL_SMALL).stream(scale=2.0)
    assert stream.algorithmic_latency_ms == 20.0 and stream.lookahead_frames == 0
    first = stream.step(torch.ones(160) * 0.1)
    assert first.shape == (160,) and torch.equal(first, torch.zeros(160))  # the delay: nothing is ready yet
    second = stream.step(torch.ones(160) * 0.1)
    assert second.shape == (160,) and second.abs().max() > 0
    with pytest.raises(ValueError, match="one hop of 160 samples"):
        stream.step(torch.zeros(100))
    with pytest.raises(ValueError, match="block of whole hops"):
        stream.step(torch.zeros(330))
    with pytest.raises(ValueError, match="mono"):
        stream.step(torch.zeros(1, 160))
    batched = TaylorSEStream(_model(**CAUSAL_SMALL))
    assert batched.step(torch.zeros(3, 160)).shape == (3, 160)
    with pytest.raises(ValueError, match="batch size 3, got 2"):
        batched.step(torch.zeros(2, 160))
    assert stream.flush(torch.zeros(30)).shape == (160 + 30,)
    with pytest.raises(ValueError, match="flushed"):
        stream.step(torch.zeros(160))
    stream.reset()
    stream.step(torch.zeros(160))
    with pytest.raises(ValueError, match="too short"):
        stream.flush()  # 160 samples: the centred STFT needs 161, as offline
    with pytest.raises(ValueError, match="scale must be > 0"):
        TaylorSEStream(_model(**CAUSAL_SMALL), scale=0.0)
    timing = frame_time_ms(stream, frames=5)
    assert 0 < timing["median_ms"] <= timing["p90_ms"]


def test_reset_starts_a_new_utterance():
    model = _model(**CAUSAL_SMALL)
    stream = model.stream()
    a = torch.randn(800, generator=torch.Generator().manual_seed(4)) * 0.2
    b = torch.randn(800, generator=torch.Generator().manual_seed(5)) * 0.2
    stream.enhance(a)
    torch.testing.assert_close(stream.enhance(b), model.stream().enhance(b))


def test_non_causal_configurations_cannot_stream_and_say_why():
    with pytest.raises(ValueError, match=r"instance norm over the whole utterance \(norm_type='IN'\).*zeroorderblock"):
        TaylorSENet(**SMALL_CONFIG).stream()
    with pytest.raises(ValueError, match=r"is_causal=False"):
        TaylorSENet(**{**CAUSAL_SMALL, "is_causal": False}).stream()
    found = non_causal_layers(TaylorSENet(**{**SMALL_CONFIG, "is_causal": False}))
    assert len(found) == 2 and non_causal_layers(TaylorSENet(**CAUSAL_SMALL)) == {}
