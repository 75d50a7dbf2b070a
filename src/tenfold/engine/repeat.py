"""``tenfold repeat --seeds 0,1,2 -- fit --config ...``: one run per seed, then mean and std of the final metrics.

Papers report "mean +- std over N runs"; this command does exactly that. Each seed runs in its own process (so
runs cannot leak state into each other) and writes its own run folder; the summary is ``repeat.md`` and
``repeat.json`` beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tenfold.engine.rundir import recipe_run_name
from tenfold.utils.checkpoint import atomic_write

__all__ = ["repeat_main", "summarize"]


def summarize(per_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, sample std (n-1, as papers report) and count of every numeric metric over seeds."""
    names = sorted({k for m in per_seed.values() for k, v in m.items() if isinstance(v, int | float)})
    out = {}
    for name in names:
        values = [float(m[name]) for m in per_seed.values() if isinstance(m.get(name), int | float)]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out[name] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
    return out


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise ValueError(f"--seeds must be comma-separated integers like 0,1,2, got {text!r}") from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list distinct integers, got {text!r}")
    return seeds


def repeat_main(argv: list[str]) -> int:
    """Parse ``repeat`` options, run the command once per seed, print and write the summary."""
    parser = argparse.ArgumentParser(
        prog="tenfold repeat",
        description="Run a tenfold command once per seed (each in its own run folder) and report mean and std of "
        "the final metrics. Example: tenfold repeat --seeds 0,1,2 -- fit --config configs/classification/tiny.yaml",
    )
    parser.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--out", help="folder of the repeated runs (default runs/<recipe>/repeat-<time>)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- fit|validate|test --config ... [overrides]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or command[0] not in ("fit", "validate", "test"):
        raise ValueError("repeat needs a command after --, e.g. `-- fit --config configs/classification/tiny.yaml`")
    for banned in ("--seed_everything", "--run_dir"):
        if any(a == banned or a.startswith(banned + "=") for a in command):
            raise ValueError(f"repeat sets {banned} itself; remove it from the command")
    seeds = _parse_seeds(args.seeds)
    recipe = "run"
    for i, word in enumerate(command):
        if word == "--config" and i + 1 < len(command):
            recipe = recipe_run_name(command[i + 1])
        elif word.startswith("--config="):
            recipe = recipe_run_name(word.split("=", 1)[1])
    out = Path(args.out) if args.out else Path("runs") / recipe / time.strftime("repeat-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)
    per_seed: dict[int, dict[str, Any]] = {}
    env = {k: v for k, v in os.environ.items() if k != "TENFOLD_RUN_DIR"}
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        cmd = [sys.executable, "-m", "tenfold.cli", *command, "--seed_everything", str(seed), "--run_dir", str(run_dir)]
        print(f"[repeat] seed {seed}: {' '.join(cmd[2:])}", flush=True)
        result = subprocess.run(cmd, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"seed {seed} failed with exit code {result.returncode}; its folder is {run_dir}")
        per_seed[seed] = json.loads((run_dir / "metrics.json").read_text())
    summary = summarize(per_seed)
    lines = [f"# tenfold repeat: {' '.join(command)}", "", f"seeds: {seeds}", "", "| metric | mean | std | n |"]
    lines += ["|---|---|---|---|"]
    lines += [f"| {k} | {v['mean']:.4f} | {v['std']:.4f} | {v['n']} |" for k, v in summary.items() if "/" in k]
    text = "\n".join(lines) + "\n"
    with atomic_write(out / "repeat.md") as tmp:
        tmp.write_text(text)
    with atomic_write(out / "repeat.json") as tmp:
        tmp.write_text(json.dumps({"seeds": seeds, "per_seed": per_seed, "summary": summary}, indent=2))
    print(text)
    return 0
