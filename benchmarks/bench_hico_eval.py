"""Time the vectorised HICO-DET evaluators on a HICO-sized synthetic set (9,658 images x 600 classes).

Run: ``python benchmarks/bench_hico_eval.py``; prints a markdown table. No official-style loop is timed here.
"""

from __future__ import annotations

import time

import numpy as np

from tenfold.hoi import matlab_evaluate, upt_evaluate


def hico_sized(n_img: int = 9658, dets_per_img: int = 300, gts_per_img: int = 3, seed: int = 0) -> tuple:
    """Flat detections / GT rows of a HICO-sized set: jittered GT boxes plus random false pairs."""
    rng = np.random.default_rng(seed)
    g_img = np.repeat(np.arange(n_img), gts_per_img)
    g_cls = rng.integers(0, 600, len(g_img))
    xy = rng.uniform(0, 400, (len(g_img), 2, 2))
    g_box = np.concatenate([xy, xy + rng.uniform(20, 200, (len(g_img), 2, 2))], axis=2).reshape(-1, 8)
    d_img = np.repeat(np.arange(n_img), dets_per_img)
    src = d_img * gts_per_img + rng.integers(0, gts_per_img, len(d_img))
    d_cls = np.where(rng.random(len(d_img)) < 0.5, g_cls[src], rng.integers(0, 600, len(d_img)))
    d_box = g_box[src] + rng.normal(0, 8, (len(d_img), 8))
    return d_img, d_cls, d_box, rng.random(len(d_img)), g_img, g_cls, g_box


def main() -> None:
    """Print the timings."""
    data = hico_sized()
    rows = []
    for name, fn in (("matlab (default)", matlab_evaluate), ("upt / pocket", upt_evaluate)):
        t0 = time.perf_counter()
        m = fn(*data)
        rows.append((name, time.perf_counter() - t0, m.mAP))
    print(f"{len(data[0]):,} detections, {len(data[4]):,} GT pairs, 9,658 images x 600 classes\n")
    print("| evaluator | seconds | mAP |\n|---|---|---|")
    for name, sec, m in rows:
        print(f"| {name} | {sec:.2f} | {m:.4f} |")


if __name__ == "__main__":
    main()
