"""TaylorSENet: official names, parameter counts, parity with the official code's outputs, the loss, the front end."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch
from parity import assert_float32_close, assert_matches_official

from tenfold.speech.loss import ComMagEuclideanLoss
from tenfold.speech.stft import (
    STFTConfig,
    apply_scale,
    frame_counts,
    istft_decompress,
    stft_compress,
    variance_norm_scale,
)
from tenfold.speech.taylorsenet import (
    PAPER_CONFIG,
    SMALL_CONFIG,
    TaylorSENet,
    frequency_chain,
    load_taylorsenet,
)

from conftest import shared_path

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "taylorsenet" / "official_outputs.pt"
KEYS = "specs/keys/taylorsenet_paper_config_keys.json"  # under the shared data folder (conftest.shared_path)

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded_weight(key: str, shape: torch.Size) -> torch.Tensor:
    """The fixture's weight rule (tests/fixtures/taylorsenet/README.md): a function of the key name and shape."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    x = torch.randn(tuple(shape), generator=g)
    if len(shape) == 1:
        return 0.25 + 0.05 * x if key.endswith(".weight") else 0.05 * x
    return x / math.sqrt(shape[1] * math.prod(shape[2:]))


def seeded_model(**kwargs) -> TaylorSENet:
    model = TaylorSENet(**kwargs)
    model.load_state_dict({k: seeded_weight(k, v.shape) for k, v in model.state_dict().items()}, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=True)


def _batch(ref, dtype=torch.float64):
    """The fixture's padded batch (B, L) in ``dtype`` (the recorded waveforms are float32; the cast is exact)."""
    noisy = torch.nn.utils.rnn.pad_sequence(ref["inputs"]["noisy"], batch_first=True).to(dtype)
    clean = torch.nn.utils.rnn.pad_sequence(ref["inputs"]["clean"], batch_first=True).to(dtype)
    lengths = torch.tensor([len(x) for x in ref["inputs"]["noisy"]])
    return noisy, clean, lengths


def _front_end(ref, dtype=torch.float64):
    """Variance normalisation and compressed spectra of the fixture's batch, as the official solver prepares it."""
    noisy, clean, lengths = _batch(ref, dtype)
    c = variance_norm_scale(noisy, lengths)
    return noisy, lengths, c, stft_compress(apply_scale(noisy, c)), stft_compress(apply_scale(clean, c))


def _enhanced_wave(out, noisy, lengths, c):
    """Decompress, iSTFT to the padded length, mask the padding, undo the normalisation (solver + decode)."""
    mask = torch.arange(noisy.shape[1]) < lengths[:, None]
    return apply_scale(istft_decompress(out, noisy.shape[1]) * mask, c, inverse=True)


# ---------------------------------------------------------------------------------------------------------------


def test_paper_config_has_the_official_names_shapes_and_count():
    model = TaylorSENet()
    official = json.loads(shared_path(KEYS).read_text())
    state = model.state_dict()
    assert list(state) == official["state_dict_keys"]
    shapes = official["state_dict_shapes"]
    shapes = shapes if isinstance(shapes, dict) else dict(zip(official["state_dict_keys"], shapes, strict=True))
    assert {k: list(v.shape) for k, v in state.items()} == {k: list(v) for k, v in shapes.items()}
    assert sum(p.numel() for p in model.parameters()) == 5_401_351
    assert TaylorSENet(**PAPER_CONFIG).state_dict().keys() == state.keys()


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"order_num": 0}, 2_934_337),
        ({"order_num": 1}, 3_756_675),
        ({"order_num": 2}, 4_579_013),
        ({"order_num": 4}, 6_223_689),
        ({"is_param_share": True}, 3_756_675),
        # official: the shared derivative block exists even with no high orders (order 0 + one 822,338 block)
        ({"is_param_share": True, "order_num": 0}, 2_934_337 + 822_338),
        ({"is_encoder_share": True}, 4_659_271),
    ],
)
def test_ablation_parameter_counts_match_the_spec(kwargs, expected):
    assert sum(p.numel() for p in TaylorSENet(**kwargs).parameters()) == expected


def test_official_parity_paper_config(ref):
    """Float64 run vs the float64 recording of the official code: every intermediate the fixture holds."""
    r = ref["paper"]
    noisy, lengths, c, spec, target = _front_end(ref)
    assert spec.dtype == target.dtype == torch.float64
    assert_matches_official(c, r["c"], what="paper c")
    assert_matches_official(spec, r["spec_in"], what="paper spec_in")
    assert_matches_official(target, r["spec_target"], what="paper spec_target")
    assert torch.equal(frame_counts(lengths), r["frames"])
    model = seeded_model().double()
    with torch.no_grad():
        out = model.forward_terms(spec)
        loss = ComMagEuclideanLoss(0.5, "L2")(out.out, target, frame_counts(lengths))
        gain, mag_feature = model.zeroorderblock(torch.linalg.vector_norm(spec, dim=1))
        sep_feature = model.separate_en(spec)[0]
        # each derivative operator D_k alone, on the official inputs (E flattened as (B, 64 * 4, T), U_{k-1})
        b, ch, t, f = r["sep_feature"].shape
        feat = r["sep_feature"].transpose(-2, -1).reshape(b, ch * f, t)
        prevs = [r["zero_term"], *r["terms"][:-1]]
        block_out = [blk(feat, prev) for blk, prev in zip(model.highorderblock_list, prevs, strict=True)]
    assert_matches_official(out.gain, r["gain"], what="paper gain (forward_terms)")
    assert_matches_official(gain, r["gain"], what="paper gain (zeroorderblock)")
    assert_matches_official(mag_feature, r["mag_feature"], what="paper mag_feature")
    assert_matches_official(sep_feature, r["sep_feature"], what="paper sep_feature")
    assert_matches_official(out.zero_term, r["zero_term"], what="paper zero_term")
    assert_matches_official(torch.stack(block_out), r["block_out"], what="paper block_out")
    assert len(out.terms) == 3
    assert_matches_official(torch.stack(out.terms), r["terms"], what="paper terms")
    assert_matches_official(out.out, r["out"], what="paper out")
    assert_matches_official(loss, r["loss"], what="paper loss")
    assert_matches_official(_enhanced_wave(out.out, noisy, lengths, c), r["wave"], what="paper wave")


def test_official_parity_paper_config_float32_run(ref):
    """The float32 path (what training and inference use) against the float64 official recording.

    Depth (parity.assert_float32_close): the longest chain of dependent layers of the paper configuration is
    magnitude U^2-encoder 25 (four RELs of 1 + 2 * scale layers, scales 4, 3, 2, 1, and the last gated conv) + two
    TCM lists of 4 S-TCNs x 3 convolutions = 24 + U^2-decoder 26 (RDLs of scales 1..4 and the gated deconv + 1x1
    head) = 75 for T0, then three derivative operators of 1 + 24 + 1 layers in sequence = 78: 153 layers, plus the
    compressed STFT in front (154, the network output) and the decompressed iSTFT behind (155, the waveform).
    """
    r = ref["paper"]
    noisy, lengths, c, spec, _ = _front_end(ref, torch.float32)
    assert spec.dtype == torch.float32
    with torch.no_grad():
        out = seeded_model()(spec)
    wave = _enhanced_wave(out, noisy, lengths, c)
    assert out.dtype == wave.dtype == torch.float32
    assert_float32_close(out, r["out"], depth=154, what="paper out (float32 run)")
    assert_float32_close(wave, r["wave"], depth=155, what="paper wave (float32 run)")


def test_official_parity_variant_branches(ref):
    """Encoder sharing, parameter sharing, non-causal S-TCN, 'add' connections, 2 orders, small widths (float64)."""
    r = ref["variant"]
    noisy, lengths, c, spec, target = _front_end(ref)
    model = seeded_model(**r["kwargs"]).double()
    assert sum(p.numel() for p in model.parameters()) == r["num_params"]
    assert not hasattr(model, "separate_en") and len(model.highorderblock_list) == 1
    with torch.no_grad():
        out = model.forward_terms(spec)
    assert_matches_official(out.gain, r["gain"], what="variant gain")
    assert_matches_official(torch.stack(out.terms), r["terms"], what="variant terms")
    assert_matches_official(out.out, r["out"], what="variant out")
    loss = ComMagEuclideanLoss()(out.out, target, frame_counts(lengths))
    assert_matches_official(loss, r["loss"], what="variant loss")
    assert_matches_official(_enhanced_wave(out.out, noisy, lengths, c), r["wave"], what="variant wave")


def test_official_weights_load_strictly_from_each_format(tmp_path, ref):
    model = seeded_model()
    state = model.state_dict()
    spec = ref["paper"]["spec_in"][:1, :, :8].float()
    with torch.no_grad():
        expected = model(spec)
    formats = {
        "best.pth": state,
        "epoch.pth.tar": {"model_state_dict": state, "start_epoch": 3, "val_no_impv": 0},
        "dp.pth": {f"module.{k}": v for k, v in state.items()},
    }
    for name, obj in formats.items():
        torch.save(obj, tmp_path / name)
        with torch.no_grad():
            torch.testing.assert_close(load_taylorsenet(tmp_path / name)(spec), expected)
    torch.save({k: v for k, v in state.items() if "imag_resi" not in k}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="imag_resi"):
        load_taylorsenet(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        load_taylorsenet(tmp_path / "missing.pth")


def test_corrected_instance_norm_flag_adds_affine_and_changes_the_function():
    spec = torch.randn(1, 2, 12, 161)
    official = TaylorSENet(**SMALL_CONFIG)
    fixed = TaylorSENet(**SMALL_CONFIG, official_in_eps_bug=False)
    extra = set(fixed.state_dict()) - set(official.state_dict())
    assert extra and all(k.endswith((".weight", ".bias")) for k in extra)
    norms = [m for m in official.modules() if isinstance(m, torch.nn.modules.instancenorm._InstanceNorm)]
    assert norms and all(m.eps == 1.0 and not m.affine for m in norms)
    fixed.load_state_dict({**fixed.state_dict(), **official.state_dict()})  # same convs, different norms
    with torch.no_grad():
        assert (official(spec) - fixed(spec)).abs().max() > 1e-3


def test_convolutions_are_causal_with_frozen_norms():
    """With batch norm in eval mode (no utterance statistics) a change in future frames leaves the past unchanged."""
    torch.manual_seed(0)
    model = TaylorSENet(**{**SMALL_CONFIG, "norm_type": "BN"}).eval()
    spec = torch.randn(1, 2, 20, 161)
    later = spec.clone()
    later[:, :, 12:] += torch.randn_like(later[:, :, 12:])
    with torch.no_grad():
        a, b = model(spec), model(later)
    torch.testing.assert_close(a[:, :, :12], b[:, :, :12])
    assert (a[:, :, 12:] - b[:, :, 12:]).abs().max() > 1e-4


def test_taylor_sum_and_magnitude_only_order_zero():
    torch.manual_seed(0)
    model = TaylorSENet(**SMALL_CONFIG).eval()
    spec = torch.randn(2, 2, 10, 161)
    with torch.no_grad():
        o = model.forward_terms(spec)
    expected = o.zero_term + o.terms[0] + o.terms[1] / 2 + o.terms[2] / 6
    torch.testing.assert_close(o.out, expected)
    mag = torch.linalg.vector_norm(spec, dim=1)
    torch.testing.assert_close(torch.linalg.vector_norm(o.zero_term, dim=1), o.gain * mag)
    assert 0 <= float(o.gain.min()) and float(o.gain.max()) <= 1
    zero = TaylorSENet(**{**SMALL_CONFIG, "order_num": 0}).eval()
    with torch.no_grad():
        z = zero.forward_terms(spec)
    assert z.terms == [] and torch.equal(z.out, z.zero_term)
    # the phase of a magnitude-only estimate is the noisy phase
    angle = torch.atan2(z.out[:, 1], z.out[:, 0]) - torch.atan2(spec[:, 1], spec[:, 0])
    assert torch.cos(angle).min() > 0.999


def test_train_and_eval_compute_the_same_function():
    torch.manual_seed(0)
    model = TaylorSENet(**SMALL_CONFIG)
    spec = torch.randn(1, 2, 9, 161)
    with torch.no_grad():
        a = model.train()(spec)
        b = model.eval()(spec)
    torch.testing.assert_close(a, b)


def test_constructor_rejects_what_cannot_work():
    assert frequency_chain(320) == [161, 79, 39, 19, 9, 4]
    with pytest.raises(ValueError, match="fft_num=512"):
        TaylorSENet(fft_num=512)
    with pytest.raises(ValueError, match="d_feat must be 256"):
        TaylorSENet(d_feat=128)
    with pytest.raises(ValueError, match="inter_connect"):
        TaylorSENet(inter_connect="sum")
    with pytest.raises(ValueError, match="norm_type must be 'IN', 'BN' or 'cLN'.*got 'iLN'"):
        TaylorSENet(norm_type="iLN")  # the official instant layer norm is not ported (cLN is, for streaming)
    with pytest.raises(ValueError, match=r"\(B, 2, T, 161\)"):
        TaylorSENet(**SMALL_CONFIG)(torch.randn(1, 2, 5, 129))
    # a 3-D input is rejected with its own shape named (the official unsqueeze to (B, 1, T, F) cannot work)
    with pytest.raises(ValueError, match=r"3-D tensor of shape \(2, 5, 161\)"):
        TaylorSENet(**SMALL_CONFIG)(torch.randn(2, 5, 161))


def test_shared_derivative_block_with_order_zero_loads_official_keys_strictly(tmp_path):
    shared = TaylorSENet(**{**SMALL_CONFIG, "order_num": 0, "is_param_share": True})
    state = shared.state_dict()
    # the official state dict of this configuration holds one (unused) HighOrderBlock besides the order-0 model
    plain = TaylorSENet(**{**SMALL_CONFIG, "order_num": 0}).state_dict()
    extra = set(state) - set(plain)
    assert extra and {k.split(".")[:2] == ["highorderblock_list", "0"] for k in extra} == {True}
    torch.save(state, tmp_path / "official_q0_shared.pth")
    loaded = load_taylorsenet(tmp_path / "official_q0_shared.pth", **{**SMALL_CONFIG, "order_num": 0,
                                                                       "is_param_share": True})  # fmt: skip
    spec = torch.randn(1, 2, 6, 161)
    with torch.no_grad():
        torch.testing.assert_close(loaded(spec), shared.eval()(spec))


# --------------------------------------------------------------------------------------------------------------- loss


def test_loss_formula_on_a_hand_computed_case():
    est = torch.zeros(1, 2, 3, 161)
    est[:, 0] = 3.0
    est[:, 1] = 4.0
    target = torch.zeros_like(est)
    # RI: mean of (9 + 16) / 2 = 12.5; magnitude: 5^2 = 25
    assert ComMagEuclideanLoss(0.5)(est, target).item() == pytest.approx(0.5 * 12.5 + 0.5 * 25)
    assert ComMagEuclideanLoss(0.2, "L1")(est, target).item() == pytest.approx(0.2 * 3.5 + 0.8 * 5)


def test_loss_ignores_padded_frames_and_has_finite_gradients_at_zero():
    torch.manual_seed(0)
    est = torch.randn(2, 2, 6, 161)
    target = torch.randn(2, 2, 6, 161)
    frames = torch.tensor([6, 4])
    garbage = est.clone()
    garbage[1, :, 4:] = 1e3
    loss = ComMagEuclideanLoss()
    torch.testing.assert_close(loss(est, target, frames), loss(garbage, target, frames))
    assert not torch.isclose(loss(est, target), loss(garbage, target))
    zero = torch.zeros(1, 2, 3, 161, requires_grad=True)
    loss(zero, torch.zeros(1, 2, 3, 161)).backward()
    assert torch.isfinite(zero.grad).all()
    with pytest.raises(ValueError, match="alpha"):
        ComMagEuclideanLoss(alpha=1.5)
    with pytest.raises(ValueError, match="same|both"):
        loss(est, target[:, :, :5])


# --------------------------------------------------------------------------------------------------------- front end


def test_front_end_is_exactly_invertible_and_has_the_official_frame_count():
    torch.manual_seed(0)
    wave = torch.randn(2, 4321) * 0.1
    spec = stft_compress(wave)
    assert spec.shape == (2, 2, 4321 // 160 + 1, 161)
    torch.testing.assert_close(istft_decompress(spec, 4321), wave, atol=1e-5, rtol=1e-4)
    # compression: the compressed magnitude is the square root of the linear one
    linear = stft_compress(wave, STFTConfig(power=1.0))
    torch.testing.assert_close(
        torch.linalg.vector_norm(spec, dim=1) ** 2, torch.linalg.vector_norm(linear, dim=1), atol=1e-5, rtol=1e-4
    )


def test_variance_normalisation_gives_unit_power_and_survives_silence():
    wave = torch.randn(2, 1000) * torch.tensor([[0.01], [3.0]])
    wave[1, 600:] = 0
    c = variance_norm_scale(wave, torch.tensor([1000, 600]))
    scaled = apply_scale(wave, c)
    assert scaled[0].pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)
    assert scaled[1, :600].pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(apply_scale(scaled, c, inverse=True), wave)
    assert variance_norm_scale(torch.zeros(1, 50)).item() == 1.0


def test_multiply_adds_per_second_in_both_conventions():
    """Spec section 4: 3.75 G true MACs per second of audio; 6.12 G with transposed convs counted per output."""
    from tenfold.speech.bench import paper_style_macs
    from tenfold.utils.flops import count_flops

    model = TaylorSENet().eval()
    spec = torch.randn(1, 2, 101, 161)
    assert count_flops(model, spec).macs / 1e9 == pytest.approx(3.75, abs=0.01)
    paper = paper_style_macs(model, spec)
    assert paper["conv"] / 1e9 == pytest.approx(1.570, abs=0.005)
    assert paper["conv_transpose"] / 1e9 == pytest.approx(4.547, abs=0.005)
    assert 6.12 < paper["total"] / 1e9 < 6.25  # the paper's "6.2 G/s"


def test_bench_counts_the_cpus_this_process_may_use(monkeypatch):
    import os

    from tenfold.speech.bench import usable_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cpus() == 2  # e.g. `taskset -c 0,3` on a 64-core machine
