"""The rmlr demo's pipeline on a smaller setting: every arm trains, the table and the noise rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tenfold.hoi.demo import ARMS, compare, run_arms, summarize


def _run(full: float, rare: float, non_rare: float) -> SimpleNamespace:
    final = {"val/map": full, "val/map_rare": rare, "val/map_non_rare": non_rare}
    return SimpleNamespace(final=final, seconds=2.0, history=[{"step": 1.0, **final}])


def test_summary_rows_are_mean_and_std_over_seeds_in_percent():
    runs = {"baseline": [_run(0.5, 0.2, 0.6), _run(0.7, 0.4, 0.8)], "remine": [_run(0.9, 0.9, 0.9)] * 2}
    rows = summarize(runs, {"baseline": "base", "remine": "re"})
    assert rows[0]["model"] == "base" and rows[0]["Full mAP"] == "60.0 ± 14.1" and rows[0]["Rare mAP"] == "30.0 ± 14.1"
    assert rows[0]["_Non-rare"] == pytest.approx((70.0, 14.142), abs=1e-3)
    assert rows[0]["per-seed Full"] == "50.0, 70.0" and rows[1]["Full mAP"] == "90.0 ± 0.0"


def test_noise_rule():
    assert compare((60.0, 1.0), (55.0, 2.0)) == "above"  # gap 5 > 2 x 2
    assert compare((55.0, 1.0), (60.0, 2.0)) == "below"
    assert compare((60.0, 3.0), (55.0, 1.0)) == "within noise of"  # gap 5 < 2 x 3


def test_all_arms_train_on_a_small_setting(tmp_path):
    data = dict(num_objects=2, num_verbs=3, train_size=32, val_size=16, test_size=8, batch_size=8,
                detection_hidden_size=32)  # fmt: skip
    runs = run_arms(
        ARMS, (0,), steps=4, val_every=2, out_dir=tmp_path, data_kwargs=data, text_encoder="random-32",
        text_cache_dir=str(tmp_path / "text"),
    )  # fmt: skip
    assert list(runs) == ["baseline", "remine", "full"]
    flags = [(r[0].task.model.remine, r[0].task.model.reason) for r in runs.values()]
    assert flags == [(False, False), (True, False), (True, True)]
    for rs in runs.values():
        assert [h["step"] for h in rs[0].history] == [2.0, 4.0]
        assert 0.0 <= rs[0].final["val/map"] <= 1.0
    rows = summarize(runs, {k: v[0] for k, v in ARMS.items()})
    assert len(rows) == 3 and all("±" in r["Full mAP"] for r in rows)
