"""Engine overhead: seconds per training step of ``tenfold fit`` (Lightning) vs a plain PyTorch loop.

Both train the tiny classification recipe (configs/classification/tiny.yaml: ResNet-20 on the built-in scenes,
batch 64, momentum SGD with a per-step cosine schedule) from the same seed, on one thread, for the same number of
steps, in alternating rounds; the table gives the median over rounds of each loop's mean seconds per step after 5
warm-up steps. Validation and periodic checkpoints are off in both. The same comparison is ``tenfold bench engine``.

    python benchmarks/bench_engine_overhead.py [--steps 60] [--rounds 5] [--variants]
"""

from __future__ import annotations

import argparse
import platform

import torch

from tenfold.classification.bench import engine_overhead_rows
from tenfold.engine.demo import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians over them)")
    parser.add_argument("--variants", action="store_true", help="also time Lightning without progress bar / loggers")
    args = parser.parse_args()
    rows = engine_overhead_rows(steps=args.steps, rounds=args.rounds, variants=args.variants)
    print(f"machine: {platform.processor() or platform.machine()}, 1 torch thread, torch {torch.__version__}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
