"""`tenfold repeat` runs a recipe per seed and reports mean and sample std of the final metrics."""

from __future__ import annotations

import json
import statistics

from conftest import FAST, run_tenfold


def test_repeat_reports_mean_and_std_over_seeds(tmp_path):
    proc = run_tenfold(
        ["repeat", "--seeds", "0,1,2", "--out", "rep", "--", "fit", *FAST, "--trainer.max_steps", "4",
         "--trainer.val_check_interval", "4", "--trainer.max_epochs", "-1"],
        tmp_path,
    )  # fmt: skip
    report = json.loads((tmp_path / "rep" / "repeat.json").read_text())
    assert report["seeds"] == [0, 1, 2]
    losses = [report["per_seed"][str(s)]["val/loss"] for s in (0, 1, 2)]
    assert len(set(losses)) == 3  # the seed changes the run
    summary = report["summary"]["val/loss"]
    assert abs(summary["mean"] - sum(losses) / 3) < 1e-12
    assert abs(summary["std"] - statistics.stdev(losses)) < 1e-12
    assert summary["n"] == 3
    assert "val/loss" in proc.stdout and (tmp_path / "rep" / "repeat.md").is_file()
    for seed in (0, 1, 2):
        assert (tmp_path / "rep" / f"seed{seed}" / "checkpoints" / "last.ckpt").is_file()


def test_repeat_rejects_bad_seeds(tmp_path):
    proc = run_tenfold(["repeat", "--seeds", "0,x", "--", "fit", *FAST], tmp_path, check=False)
    assert proc.returncode == 2 and "--seeds" in proc.stderr
