"""Time the vectorised HICO-DET and V-COCO evaluators on HICO- / V-COCO-sized synthetic sets.

HICO-DET: 9,658 images x 600 classes, 300 detections and 3 GT pairs per image (``matlab_evaluate`` default and
known-object, ``upt_evaluate``). V-COCO: 4,946 images (the test split), 26 actions (4 agent-only, 16 with an
object role, 6 with object and instrument roles), 3 persons and 3 objects per image, 30 detected persons per image
(``vcoco_role_ap`` scenario 1 and 2, ``vcoco_agent_ap``). The evaluators are timed in alternating rounds (so that
a change of machine load hits all alike) and the median per evaluator is printed. No official-style loop is timed
here: the official codes loop over detections in Python (the Matlab port in ``tests/fixtures/hico_eval/README.md``
needs minutes for this size).

Run: ``python benchmarks/bench_hico_eval.py [--rounds 3]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from tenfold.hoi.datasets import VCOCOData, VCOCOImage
from tenfold.hoi.hico_eval import matlab_evaluate, upt_evaluate
from tenfold.hoi.vcoco_eval import VCOCODetections, vcoco_agent_ap, vcoco_role_ap


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


def vcoco_sized(n_img: int = 4946, dets_per_img: int = 30, seed: int = 0) -> tuple[VCOCOData, VCOCODetections]:
    """A V-COCO-sized ground truth and detections (jittered persons with random action / role predictions)."""
    rng = np.random.default_rng(seed)
    roles = [("agent",)] * 4 + [("agent", "obj")] * 16 + [("agent", "obj", "instr")] * 6
    na = len(roles)
    images = []
    for i in range(n_img):
        xy = rng.uniform(0, 400, (6, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (6, 2))], axis=1)
        acts = (rng.random((6, na)) < 0.15).astype(np.int64)
        acts[3:] = -1
        role = np.where(rng.random((6, na, 2)) < 0.8, rng.integers(3, 6, (6, na, 2)), -1)
        role[acts != 1] = -1
        labels = np.array([0, 0, 0, 5, 10, 20])
        images.append(VCOCOImage(i, f"{i}.jpg", (640, 480), boxes, labels, np.zeros(6, bool), acts, role))
    gt = VCOCOData(tuple(f"a{k}" for k in range(na)), tuple(roles), tuple(images))
    img = np.repeat(np.arange(n_img), dets_per_img)
    src = rng.integers(0, 6, len(img))
    all_boxes = np.stack([im.boxes for im in images])  # (n_img, 6, 4)
    agent = all_boxes[img, src % 3] + rng.normal(0, 8, (len(img), 4))
    role_src = rng.integers(3, 6, (len(img), na, 2))
    role_boxes = all_boxes[img[:, None, None], role_src] + rng.normal(0, 8, (len(img), na, 2, 4))
    dets = VCOCODetections(img, agent, rng.random((len(img), na)), role_boxes, rng.random((len(img), na, 2)))
    return gt, dets


def main() -> None:
    """Print the timings."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    hico = hico_sized()
    n_img = 9658
    ko = (np.ones((600, n_img)), np.arange(600) % 80)
    gt, dets = vcoco_sized()
    jobs: dict[str, Callable[[], float]] = {
        "HICO-DET matlab (default)": lambda: matlab_evaluate(*hico).mAP,
        "HICO-DET matlab (known-object)": lambda: matlab_evaluate(*hico, known_object=ko).mAP,
        "HICO-DET upt / pocket": lambda: upt_evaluate(*hico).mAP,
        "V-COCO role AP scenario 1": lambda: vcoco_role_ap(gt, dets, scenario=1).mAP,
        "V-COCO role AP scenario 2": lambda: vcoco_role_ap(gt, dets, scenario=2).mAP,
        "V-COCO agent AP": lambda: vcoco_agent_ap(gt, dets).mAP,
    }
    times: dict[str, list[float]] = {k: [] for k in jobs}
    result: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn in jobs.items():
            t0 = time.perf_counter()
            result[name] = fn()
            times[name].append(time.perf_counter() - t0)
    print(
        f"HICO-DET: {len(hico[0]):,} detections, {len(hico[4]):,} GT pairs, 9,658 images x 600 classes; "
        f"V-COCO: {len(dets.image_id):,} detected persons, {len(gt.images):,} images x {len(gt.actions)} actions; "
        f"median of {args.rounds} alternating rounds\n"
    )
    print("| evaluator | seconds (median) | mAP |\n|---|---|---|")
    for name in jobs:
        print(f"| {name} | {statistics.median(times[name]):.2f} | {result[name]:.4f} |")


if __name__ == "__main__":
    main()
