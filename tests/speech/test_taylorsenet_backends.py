"""``tenfold enhance --stream / --compile / --backend``: end to end on a short wav; backends equal eager."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from tenfold.data.synthetic import make_speech
from tenfold.speech.backends import inference_network
from tenfold.speech.cli import enhance_main
from tenfold.speech.enhance import enhance_waveform, stream_waveform
from tenfold.speech.stft import apply_scale, istft_decompress, stft_compress, variance_norm_scale
from tenfold.speech.taylorsenet import SMALL_CONFIG, CausalConvTranspose2d, TaylorSENet

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {**SMALL_CONFIG, "c": 4, "cd1": 4, "dilations": [1], "order_num": 1}
TINY_CAUSAL = {**TINY, "norm_type": "cLN"}


def _model(arch: dict) -> TaylorSENet:
    torch.manual_seed(0)
    return TaylorSENet(**arch).eval()


def _ckpt(model: TaylorSENet, arch: dict, path) -> None:
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_kwargs": arch}}, path)  # fmt: skip


def _wav(tmp_path, seconds: float = 0.35):
    _, noisy = make_speech(1, seed=3, split="test", seconds=seconds)
    wave = noisy[0] * 0.5
    sf.write(tmp_path / "noisy.wav", wave.numpy(), 16000, subtype="FLOAT")
    return torch.from_numpy(sf.read(tmp_path / "noisy.wav", dtype="float32")[0])


def _offline_whole(model: TaylorSENet, wave: torch.Tensor) -> torch.Tensor:
    """The official pipeline on the whole utterance: its own variance scale, no chunks."""
    c = variance_norm_scale(wave[None])
    with torch.no_grad():
        out = istft_decompress(model(stft_compress(apply_scale(wave[None], c))), wave.shape[0])
    return apply_scale(out, c, inverse=True)[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_enhance_stream_end_to_end_equals_the_offline_causal_run(tmp_path, capsys):
    model = _model(TINY_CAUSAL)
    _ckpt(model, TINY_CAUSAL, tmp_path / "causal.ckpt")
    wave = _wav(tmp_path)
    code = enhance_main([str(tmp_path / "noisy.wav"), str(tmp_path / "out.wav"), "--ckpt",
                         str(tmp_path / "causal.ckpt"), "--stream"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "algorithmic latency 20 ms" in printed and "ms per 10-ms frame" in printed
    out = torch.from_numpy(sf.read(tmp_path / "out.wav", dtype="float32")[0])
    assert out.shape == wave.shape
    assert _rel(out, _offline_whole(model, wave)) < 1e-5
    # a fixed scale, as a live stream uses: the same as the stream object with that scale
    code = enhance_main([str(tmp_path / "noisy.wav"), str(tmp_path / "fixed.wav"), "--ckpt",
                         str(tmp_path / "causal.ckpt"), "--stream", "--stream-scale", "7"])  # fmt: skip
    assert code == 0
    fixed = torch.from_numpy(sf.read(tmp_path / "fixed.wav", dtype="float32")[0])
    expected, stream = stream_waveform(model, wave, scale=7.0)
    torch.testing.assert_close(fixed, expected)
    assert stream.stats.frames == wave.shape[0] // 160 + 1 and stream.stats.mean_ms > 0


def test_enhance_stream_refuses_a_non_causal_model_and_contradicting_flags(tmp_path, capsys):
    _ckpt(_model(TINY), TINY, tmp_path / "in.ckpt")
    _wav(tmp_path)
    args = [str(tmp_path / "noisy.wav"), str(tmp_path / "out.wav"), "--ckpt", str(tmp_path / "in.ckpt")]
    assert enhance_main([*args, "--stream"]) == 2
    assert "instance norm over the whole utterance (norm_type='IN')" in capsys.readouterr().err
    assert enhance_main([*args, "--stream", "--compile"]) == 2
    assert "--stream runs the model eagerly" in capsys.readouterr().err
    assert enhance_main([*args, "--stream-scale", "2"]) == 2
    assert "--stream-scale applies to --stream only" in capsys.readouterr().err
    assert enhance_main([*args, "--compile", "--backend", "onnx"]) == 2
    assert "--compile contradicts --backend onnx" in capsys.readouterr().err
    assert not (tmp_path / "out.wav").exists()


def test_enhance_compile_flag_runs_the_compiled_network(tmp_path, capsys, monkeypatch):
    """The CLI wiring of --compile; dynamo's graph capture with the eager backend keeps the test fast (inductor's
    numerics: the slow test below)."""
    import tenfold.utils.compile as compile_module

    calls = []
    original = compile_module.compile_for_inference

    def capture_only(model, example=None, **kwargs):
        calls.append(type(model).__name__)
        return original(model, example, backend="eager")

    monkeypatch.setattr(compile_module, "compile_for_inference", capture_only)
    model = _model(TINY)
    _ckpt(model, TINY, tmp_path / "m.ckpt")
    wave = _wav(tmp_path)
    code = enhance_main([str(tmp_path / "noisy.wav"), str(tmp_path / "out.wav"), "--ckpt", str(tmp_path / "m.ckpt"),
                         "--compile"])  # fmt: skip
    assert code == 0 and calls == ["TaylorSENet"] and "backend: compile" in capsys.readouterr().out
    out = torch.from_numpy(sf.read(tmp_path / "out.wav", dtype="float32")[0])
    assert _rel(out, enhance_waveform(model, wave)) < 1e-5


def test_polyphase_transposed_convolution_equals_pytorchs_with_the_official_chomp():
    torch.manual_seed(0)
    for kernel in ((2, 3), (1, 3), (1, 5)):
        conv = CausalConvTranspose2d(6, 5, kernel).double()
        x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
        with torch.no_grad():
            ref = torch.nn.functional.conv_transpose2d(x, conv.weight, conv.bias, stride=(1, 2))
            ref = ref[:, :, : ref.shape[2] - (kernel[0] - 1)]
            torch.testing.assert_close(conv(x), ref, rtol=0, atol=1e-12)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend must be one of .*got 'tvm'"):
        inference_network(_model(TINY), "tvm")


@pytest.mark.slow
def test_inductor_compiled_network_equals_eager():
    model = _model(TINY)
    spec = torch.randn(1, 2, 40, 161)
    with torch.no_grad():
        expected = model(spec)
        got = inference_network(model, "compile", spec)(spec)
    assert _rel(got, expected) < 1e-5


@pytest.mark.slow
def test_onnx_runtime_network_equals_eager_at_any_length():
    model = _model(TINY)
    net = inference_network(model, "onnx")
    for frames in (23, 57):
        spec = torch.randn(2, 2, frames, 161)
        with torch.no_grad():
            assert _rel(net(spec), model(spec)) < 1e-4
    with pytest.raises(ValueError, match="float32 CPU spectra"):
        net(torch.randn(1, 2, 5, 161, dtype=torch.float64))
