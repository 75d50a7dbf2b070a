"""Run every registered benchmark and write their tables to a markdown file (default: benchmarks/results.md)."""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from tenfold.bench import bench_markdown, list_benches, run_bench
from tenfold.utils.checkpoint import atomic_write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results.md")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sections = [
        f"# tenfold benchmarks ({time.strftime('%Y-%m-%d %H:%M')})",
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
    ]
    for name, description in list_benches().items():
        print(f"[bench] {name}: {description}", flush=True)
        body = bench_markdown(name, run_bench(name, quick=args.quick)).split("\n", 1)[1]  # without the title line
        sections.append(f"## {name}\n\n{description}\n{body}")
    with atomic_write(Path(args.out)) as tmp:
        tmp.write_text("\n\n".join(sections) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
