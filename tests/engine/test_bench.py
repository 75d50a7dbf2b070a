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


def test_compile_is_offered_only_by_benchmarks_with_a_compiled_mode(capsys):
    from tenfold.bench import compilable_benches

    assert {"models", "lightvit"} <= set(compilable_benches())
    assert "diffkd" not in compilable_benches()
    with pytest.raises(ValueError, match="'diffkd' has no compiled mode"):
        run_bench("diffkd", quick=True, compile=True)
    assert main(["bench", "diffkd", "--compile"]) == 2
    assert "has no compiled mode" in capsys.readouterr().err
    assert main(["bench", "--list"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert listed["models"].endswith("[--compile]") and not listed["diffkd"].endswith("[--compile]")


def test_models_bench_compiled_mode_times_each_model_compiled_against_itself(monkeypatch):
    import tenfold.utils.compile as compile_mod
    import tenfold.utils.throughput as throughput

    compiled = []

    def fake_compile(model):
        compiled.append(type(model).__name__)
        return SimpleNamespace(model=model)

    def fake_compare(models, input_shape, *, batch_size, **kwargs):
        assert set(models) == {"eager", "compiled"} and models["compiled"].model is models["eager"]
        assert input_shape == (3, 32, 32) and batch_size == 64
        size = sum(p.numel() for p in models["eager"].parameters())
        # a stand-in: compiled twice as fast as eager, whatever the model
        return {
            "eager": SimpleNamespace(samples_per_s=1e9 / size),
            "compiled": SimpleNamespace(samples_per_s=2e9 / size),
        }

    import tenfold.classification.bench as cls_bench

    monkeypatch.setattr(cls_bench, "ZOO", ("resnet8x4", "resnet20"))  # two models suffice for the wiring
    monkeypatch.setattr(compile_mod, "compile_for_inference", fake_compile)
    monkeypatch.setattr(throughput, "compare_throughput", fake_compare)
    monkeypatch.setattr(throughput, "measure_throughput", lambda model, *a, **k: SimpleNamespace(samples_per_s=1.0))
    rows = run_bench("models", quick=True, compile=True)
    assert compiled == ["CifarResNet", "CifarResNet"] and [r["model"] for r in rows] == ["resnet8x4", "resnet20"]
    for row in rows:
        assert row["compiled / eager"] == pytest.approx(2.0, rel=1e-12), row["model"]


def test_engine_bench_reports_medians_and_the_overhead_ratio(monkeypatch):
    import tenfold.classification.bench as cls_bench

    calls = []
    # (wall, CPU) seconds per step; medians: plain (0.20, 0.10), Lightning (0.21, 0.104)
    plain_times = iter([(0.10, 0.09), (0.30, 0.11), (0.20, 0.10)])
    lightning_times = iter([(0.21, 0.104), (0.50, 0.2), (0.205, 0.1)])
    monkeypatch.setattr(cls_bench, "plain_seconds_per_step", lambda steps: calls.append("plain") or next(plain_times))
    monkeypatch.setattr(cls_bench, "lightning_seconds_per_step",
                        lambda steps, out, extra_args: calls.append("lightning") or next(lightning_times))  # fmt: skip
    rows = {r["loop"]: r for r in cls_bench.engine_overhead_rows(steps=10, rounds=3)}
    assert calls == ["lightning", "plain", "plain", "lightning", "lightning", "plain"]  # alternating order
    assert rows["plain PyTorch loop"]["wall ms / step"] == pytest.approx(200.0)
    assert rows["plain PyTorch loop"]["CPU ms / step"] == pytest.approx(100.0)
    lightning = rows["tenfold fit (Lightning)"]
    assert lightning["wall ms / step"] == pytest.approx(210.0) and lightning["wall overhead %"] == pytest.approx(5.0)
    assert lightning["CPU ms / step"] == pytest.approx(104.0) and lightning["CPU overhead %"] == pytest.approx(4.0)


def test_seconds_per_step_counts_periodic_costs_and_skips_warmup():
    from tenfold.classification.bench import _seconds_per_step

    # 2 slow warm-up steps, then steps of 1 s with a 3 s one (a periodic log write) among them
    stamps = [0.0, 10.0, 20.0, 21.0, 22.0, 25.0, 26.0]
    assert _seconds_per_step(stamps, skip=2) == pytest.approx(6.0 / 4)
    with pytest.raises(ValueError, match="need more than 6 timed steps, got 6"):
        _seconds_per_step(stamps, skip=6)


def test_official_option_imports_from_the_given_folder_and_skips_with_the_reason(monkeypatch, tmp_path, capsys):
    import tenfold.bench as bench

    monkeypatch.setattr(bench, "_REGISTRY", {})
    monkeypatch.setattr(bench, "BENCH_MODULES", ())

    @bench.register_bench("side", "ours vs official")
    def side(quick, official=None):
        rows = [{"impl": "tenfold", "x": 1.0}]
        if official is not None:
            mod = bench.import_official(official, "offpkg.model", repo="someone/off", expect=["offpkg/model.py"])
            rows.append({"impl": "official", "x": mod.VALUE})
        return rows

    @bench.register_bench("plain", "no official mode")
    def plain(quick):
        return [{"x": 0}]

    repo = tmp_path / "off"
    (repo / "offpkg").mkdir(parents=True)
    (repo / "offpkg" / "__init__.py").write_text("")
    (repo / "offpkg" / "model.py").write_text("VALUE = 42.0\n")
    assert bench.official_benches() == ["side"]
    rows = bench.run_bench("side", official=repo)
    assert rows == [{"impl": "tenfold", "x": 1.0}, {"impl": "official", "x": 42.0}]
    assert str(repo) not in __import__("sys").path  # on sys.path only for the import

    # a folder that is not the repository: the rest still runs, the skip names the missing file
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    result = bench.run_bench("side", official=wrong)
    assert result[""] == [{"impl": "tenfold", "x": 1.0}]
    assert result["official comparison"][0]["status"] == "skipped"
    assert "offpkg/model.py" in result["official comparison"][0]["reason"]
    result = bench.run_bench("side", official=tmp_path / "absent")
    assert "no such folder" in result["official comparison"][0]["reason"]
    with pytest.raises(ValueError, match="'plain' has no official comparison"):
        bench.run_bench("plain", official=repo)
    with pytest.raises(bench.OfficialCodeMissing, match="pass --official PATH"):
        bench.import_official(None, "offpkg.model", repo="someone/off")

    assert main(["bench", "--list"]) == 0
    assert "side" in capsys.readouterr().out.split("[--official]")[0]
