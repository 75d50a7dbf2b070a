"""GreenMIM benchmark worker and demo figures: run in-process on tiny sizes (no timing asserts)."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from tenfold.mim import bench
from tenfold.mim.demo import make_data, make_task, plot_loss_curves, reconstruction_figure

TINY_SWIN = {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}


ROW_KEYS = {
    "encoder (224 px, batch 2, 1 CPU thread)",
    "SimMIM-style s/iter",
    "GreenMIM s/iter",
    "speed ratio (SimMIM / GreenMIM)",
    "SimMIM activations MiB",
    "GreenMIM activations MiB",
    "activation saving (%)",
    "SimMIM peak MiB",
    "GreenMIM peak MiB",
    "peak saving (%)",
    "peak saving without weight grads (%)",
    "GMACs/img SimMIM",
    "GMACs/img GreenMIM",
    "FLOP ratio (SimMIM / GreenMIM)",
    "paper speed ratio (GPU, Swin-B)",
    "paper memory saving (%)",
}
OFFICIAL_KEYS = {
    "encoder (224 px, batch 2, 1 CPU thread)",
    "official s/iter",
    "tenfold s/iter",
    "speed-up (official / tenfold)",
    "official speed ratio vs SimMIM-style",
    "tenfold speed ratio vs SimMIM-style",
    "official activations MiB",
    "tenfold activations MiB",
    "official activation saving vs SimMIM (%)",
    "tenfold activation saving vs SimMIM (%)",
    "official peak MiB",
    "tenfold peak MiB",
    "max abs diff of outputs (official vs tenfold)",
}

# A stand-in for the official checkout: the files the benchmark expects, with an encoder of the official
# constructor and call signature (our GreenSwin with the official -100 mask), and a buffer the loader must skip.
FAKE_OFFICIAL = {
    "modeling/green_swin_models.py": """
import torch
from tenfold.mim.encoder import GreenSwin, GreenSwinConfig


class SwinTransformer(GreenSwin):
    def __init__(self, img_size, window_size, embed_dim, depths, num_heads, num_classes, drop_path_rate, norm_layer):
        assert num_classes == 0 and drop_path_rate == 0.0 and norm_layer(8).eps == 1e-6
        super().__init__(GreenSwinConfig(img_size=img_size, window_size=window_size, embed_dim=embed_dim,
                                         depths=tuple(depths), num_heads=tuple(num_heads), exact_mask=True))
        self.register_buffer("relative_position_index", torch.zeros(1))

    def forward(self, x, mask):
        assert mask.dtype == torch.bool
        return super().forward(x, mask)
""",
    "modeling/group_window_attention.py": "",
    "modeling/base_green_models.py": "",
    "util/pos_embed.py": "",
}


@pytest.fixture
def tiny_bench(monkeypatch):
    """The benchmark on a tiny Swin, its workers in this process (no subprocesses), official modules cleaned up."""
    monkeypatch.setitem(bench.SIZES, "tiny", TINY_SWIN)
    monkeypatch.setattr(bench, "QUICK_SIZES", ["tiny"])
    monkeypatch.setattr(bench, "_subprocess", bench._in_process)
    yield
    for name in [m for m in sys.modules if m == "modeling" or m.startswith("modeling.")]:
        del sys.modules[name]


def _fake_checkout(root):
    for rel, text in FAKE_OFFICIAL.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "modeling" / "__init__.py").write_text("raise ImportError('the Twins model needs spconv')\n")
    return root


def test_bench_rows_in_process(tiny_bench, one_thread):
    rows = bench.bench_rows(["tiny"], rounds=1, run=bench._in_process)
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == ROW_KEYS
    assert row["encoder (224 px, batch 2, 1 CPU thread)"] == "tiny"
    assert row["SimMIM-style s/iter"] > 0 and row["GreenMIM s/iter"] > 0 and row["speed ratio (SimMIM / GreenMIM)"] > 0
    # 12 of 49 units visible: the visible-only encoder needs well under half the dense FLOPs (spec: about 4x) and
    # keeps well under half the activations
    assert row["GMACs/img SimMIM"] > 0 and row["FLOP ratio (SimMIM / GreenMIM)"] > 2.5
    assert row["activation saving (%)"] > 50
    # in-process, peak-memory rises are not meaningful (the test process's own peak), but they are numbers
    assert all(isinstance(row[k], float) for k in ("peak saving (%)", "peak saving without weight grads (%)"))


def test_official_comparison_with_a_checkout_and_skipped_without(tiny_bench, tmp_path, one_thread):
    from tenfold.bench import OfficialCodeMissing, official_benches, run_bench

    assert "greenmim" in official_benches()
    repo = _fake_checkout(tmp_path / "GreenMIM")
    tables = run_bench("greenmim", quick=True, official=repo)
    assert list(tables) == ["GreenMIM vs SimMIM-style dense Swin", "tenfold vs official GreenMIM (LayneH/GreenMIM)"]
    (row,) = tables["GreenMIM vs SimMIM-style dense Swin"]
    assert set(row) == ROW_KEYS
    (side,) = tables["tenfold vs official GreenMIM (LayneH/GreenMIM)"]
    assert set(side) == OFFICIAL_KEYS
    assert side["tenfold s/iter"] == row["GreenMIM s/iter"] and side["official s/iter"] > 0
    # same weights, images and mask reached the "official" encoder: the outputs agree (exact vs zero-weight mask)
    assert side["max abs diff of outputs (official vs tenfold)"] < 1e-5
    assert side["tenfold activations MiB"] == row["GreenMIM activations MiB"]

    # no checkout, or a folder lacking the official files: the dense comparison still runs, the skip says why
    for folder, reason in ((tmp_path / "absent", "no such folder"), (tmp_path, "modeling/green_swin_models.py")):
        result = run_bench("greenmim", quick=True, official=folder)
        assert set(result) == {"", "official comparison"}
        assert set(result[""][0]) == ROW_KEYS
        (skip,) = result["official comparison"]
        assert skip["status"] == "skipped" and reason in skip["reason"]
    with pytest.raises(OfficialCodeMissing, match="pass --official PATH"):
        bench.import_official_swin(None)


def test_bench_saving_is_nan_without_a_baseline_rise():
    assert math.isnan(bench._saving(10.0, 0.0))
    assert bench._saving(30.0, 100.0) == 70.0


def test_demo_figures_after_two_steps(tmp_path, one_thread):
    import matplotlib.image as mpimg

    from tenfold.engine.quick import quick_fit

    data = make_data("gradients")
    result = quick_fit(make_task, data, max_steps=2, val_every=2, out_dir=tmp_path / "run", seed=0)
    assert result.steps == 2
    curve = tmp_path / "loss_curve.png"
    plot_loss_curves({"two steps": [{"step": 0.0, "val/loss": 1.2}, *result.history]}, curve)
    picture = tmp_path / "reconstruction.png"
    reconstruction_figure({"prediction": result.task}, data, picture, num_images=3)
    for path in (curve, picture):
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(picture)
    # 3 rows (images) by 3 columns (masked input, one prediction, target) of square panels
    assert image.shape[0] > image.shape[1] * 0.8 and image.ndim == 3
    assert float(torch.as_tensor(image).std()) > 0.01  # not a blank canvas


def test_demo_step_times_are_medians_of_timed_optimiser_steps(monkeypatch, one_thread):
    """Each model's result is the median over its timed steps (warm-up left out), a step ending with its update.

    The clock is replaced by one that advances only when an optimiser steps, by scripted durations, so the expected
    medians are known without timing this machine.
    """
    from types import SimpleNamespace

    from torch.optim.optimizer import register_optimizer_step_post_hook

    import tenfold.mim.demo as demo

    # per model: one warm-up step, then three timed ones (median and mean differ, so a mean would be caught)
    script = {"greenmim": [100.0, 1.0, 5.0, 6.0], "dense": [100.0, 30.0, 10.0, 11.0]}
    durations = [*script["greenmim"], *script["dense"]]
    clock = {"now": 0.0, "steps": 0}
    updated: list[int] = []

    def after_step(optimizer, args, kwargs):
        clock["now"] += durations[clock["steps"]]
        clock["steps"] += 1
        updated.append(sum(p.numel() for group in optimizer.param_groups for p in group["params"]))

    monkeypatch.setattr(demo, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))
    handle = register_optimizer_step_post_hook(after_step)
    try:
        times = demo.step_times(demo.SPEC7, batch_size=2, steps=3, warmup=1)
    finally:
        handle.remove()
    assert times == {"greenmim": 5.0, "dense": 11.0}
    # 4 updates of one parameter set, then 4 of another (GreenMIM, then the dense Swin with its mask token and head)
    assert len(updated) == 8 and len(set(updated[:4])) == 1 and len(set(updated[4:])) == 1
    assert updated[0] != updated[4]
