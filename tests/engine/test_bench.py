"""`tenfold bench`: the registry and the model-zoo benchmark's table."""

from __future__ import annotations

import pytest

from tenfold.bench import list_benches, run_bench
from tenfold.cli import main


def test_models_bench_reports_sizes_and_ratios_against_the_baseline():
    rows = {r["model"]: r for r in run_bench("models", quick=True)}
    # parameter counts from the DIST paper's CIFAR-100 table (spec), in millions
    assert rows["resnet8x4"]["params (M)"] == pytest.approx(1.233540)
    assert rows["resnet32x4"]["params (M)"] == pytest.approx(7.433860)
    assert rows["resnet8x4"]["MACs (M)"] == pytest.approx(177.1, rel=1e-3)
    assert rows["resnet8x4"]["MACs ratio"] == 1.0 and rows["resnet8x4"]["speed ratio"] == 1.0
    assert rows["resnet32x4"]["MACs ratio"] == pytest.approx(1083.0 / 177.1, rel=2e-3)
    assert all(r["img/s (bs64, cpu)"] > 0 for r in rows.values())


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
    assert kd["time ratio"] == kd["memory ratio"] == 1.0
    assert diffkd["time ratio"] > 1.0 and diffkd["memory ratio"] > 1.0  # DiffKD adds work on top of the same step
