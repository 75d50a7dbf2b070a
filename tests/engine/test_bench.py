"""`tenfold bench`: the registry and the model-zoo benchmark's table."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tenfold.bench import list_benches, run_bench
from tenfold.cli import main


def _cifar_net_macs(blocks: int, widths: tuple[int, int, int, int], classes: int = 100, size: int = 32) -> int:
    """Multiply-adds of a CIFAR (Wide) ResNet at ``size`` px, counted by hand: a 3x3 stem, three stages of
    ``blocks`` two-conv 3x3 blocks at strides 1, 2, 2, a 1x1 projection wherever a block changes width or
    resolution, and the classifier. BatchNorm, ReLU, pooling and the additions count zero (the papers' convention)."""
    macs = 9 * 3 * widths[0] * size * size
    c_in, hw = widths[0], size
    for c_out, stride in zip(widths[1:], (1, 2, 2), strict=True):
        for j in range(blocks):
            s = stride if j == 0 else 1
            hw //= s
            macs += 9 * c_in * c_out * hw * hw + 9 * c_out * c_out * hw * hw
            if s != 1 or c_in != c_out:
                macs += c_in * c_out * hw * hw
            c_in = c_out
    return macs + c_in * classes


NARROW, WIDE = (16, 16, 32, 64), (32, 64, 128, 256)
# blocks per stage and widths: ResNet depth 6n + 2; WRN-d-k depth 6n + 4, widths 16, 16k, 32k, 64k
HAND_MACS = {
    "resnet8x4": _cifar_net_macs(1, WIDE),
    "resnet20": _cifar_net_macs(3, NARROW),
    "resnet56": _cifar_net_macs(9, NARROW),
    "resnet110": _cifar_net_macs(18, NARROW),
    "resnet32x4": _cifar_net_macs(5, WIDE),
    "wrn_40_1": _cifar_net_macs(6, (16, 16, 32, 64)),  # the narrow widths: k = 1
    "wrn_40_2": _cifar_net_macs(6, (16, 32, 64, 128)),
}
# parameter counts of the spec (DIST's CIFAR-100 models, from the official reference data)
SPEC_PARAMS = {"resnet8x4": 1_233_540, "resnet32x4": 7_433_860, "resnet20": 278_324, "resnet56": 861_620,
               "wrn_40_1": 569_780, "wrn_40_2": 2_255_156}  # fmt: skip


def test_hand_counted_macs_agree_with_the_spec():
    # the spec: resnet8x4 177.1 M and resnet32x4 1.083 G MACs at 32x32
    assert HAND_MACS["resnet8x4"] / 1e6 == pytest.approx(177.1, abs=0.05)
    assert HAND_MACS["resnet32x4"] / 1e9 == pytest.approx(1.083, abs=5e-4)


def test_models_bench_reports_sizes_and_ratios_against_the_baseline(monkeypatch):
    import tenfold.utils.throughput as throughput

    # a stand-in clock-free throughput, inversely proportional to the model's size: the speed ratios it implies are
    # known from the parameter counts alone (the real measurement is tested in tests/utils/test_throughput.py)
    def fake_throughput(model, input_shape, *, batch_size, **kwargs):
        assert input_shape == (3, 32, 32) and batch_size == 64
        return SimpleNamespace(samples_per_s=1e9 / sum(p.numel() for p in model.parameters()))

    monkeypatch.setattr(throughput, "measure_throughput", fake_throughput)
    rows = {r["model"]: r for r in run_bench("models", quick=True)}
    assert set(rows) == set(HAND_MACS)
    for name, row in rows.items():
        assert row["MACs (M)"] == pytest.approx(HAND_MACS[name] / 1e6, rel=1e-12), name
        assert row["MACs ratio"] == pytest.approx(HAND_MACS[name] / HAND_MACS["resnet8x4"], rel=1e-12), name
        if name in SPEC_PARAMS:
            assert row["params (M)"] == pytest.approx(SPEC_PARAMS[name] / 1e6, rel=1e-12), name
    # ratio = model / baseline: resnet32x4 is about 6x slower per image than resnet8x4 under the stand-in
    expected = SPEC_PARAMS["resnet8x4"] / SPEC_PARAMS["resnet32x4"]
    assert rows["resnet32x4"]["speed ratio"] == pytest.approx(expected, rel=1e-12)
    assert rows["wrn_40_2"]["speed ratio"] == pytest.approx(
        SPEC_PARAMS["resnet8x4"] / SPEC_PARAMS["wrn_40_2"], rel=1e-12
    )


def test_bench_cli(capsys):
    assert "models" in list_benches()
    assert main(["bench", "--list"]) == 0
    assert "models" in capsys.readouterr().out
    assert main(["bench", "nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_diffkd_bench_reports_block_costs_and_ratios():
    rows = run_bench("diffkd", quick=True)
    feature, logits, kd, diffkd = rows
    assert feature["params (M)"] == pytest.approx(7.64, abs=0.01)  # spec: 7.64 M
    assert feature["MACs / image (G)"] == pytest.approx(1.11, abs=0.01)  # spec: about 1.11 G
    assert logits["params (M)"] == pytest.approx(23.32, abs=0.01)
    # ratios are DiffKD over KD, measured in the same run (their values are reported, never asserted: timings)
    assert diffkd["time ratio"] == pytest.approx(diffkd["step (s)"] / kd["step (s)"])
    mem_kd, mem_diffkd = kd["saved activations (MiB)"], diffkd["saved activations (MiB)"]
    assert diffkd["memory ratio"] == pytest.approx(mem_diffkd / mem_kd)
    # saved activations do not depend on timing: the DiffKD blocks add their own on top of the same step
    assert mem_diffkd > mem_kd
