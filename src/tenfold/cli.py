"""The ``tenfold`` command line.

``tenfold fit|validate|test|predict --config RECIPE.yaml [--dotted.key value ...]`` trains and evaluates through
LightningCLI; ``demo``, ``bench``, ``info`` and ``repeat`` are tenfold's own commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

__all__ = ["main"]

# the Lightning commands and their one-line help (LightningCLI parses their options)
LIGHTNING_HELP = {
    "fit": "train a recipe:  tenfold fit --config configs/classification/tiny.yaml [--trainer.max_steps 100]",
    "validate": "evaluate on the validation split (--ckpt_path FILE)",
    "test": "evaluate on the test split (--ckpt_path FILE)",
    "predict": "run prediction (--compile true: torch.compile the task's networks)",
}


def _usage() -> str:
    """The top-level help, generated from the two command tables (nothing to keep in step by hand)."""
    width = max(map(len, [*LIGHTNING_HELP, *COMMANDS])) + 2
    lines = [
        "usage: tenfold COMMAND [ARGS]",
        "",
        "Training and evaluation (LightningCLI; `tenfold fit --help` lists every key):",
    ]
    lines += [f"  {name:{width}}{text}" for name, text in LIGHTNING_HELP.items()]
    lines += ["", "tenfold commands:"]
    for name, (_, text) in COMMANDS.items():
        first, *rest = text.split("\n")
        lines.append(f"  {name:{width}}{first}")
        lines += [f"  {'':{width}}{line}" for line in rest]
    lines += ["", "Run `tenfold COMMAND --help` for the options of a command; set TENFOLD_DEBUG=1 for full tracebacks."]
    return "\n".join(lines) + "\n"


def _demo(argv: list[str]) -> int:
    from tenfold.engine.demo import list_demos, run_demos

    parser = argparse.ArgumentParser(
        prog="tenfold demo",
        description="Run each registered method demo on built-in data (CPU, minutes) and write a markdown report "
        "with a table and plots under runs/demo-<time>/.",
    )
    parser.add_argument("--only", action="append", help="run only this demo (repeatable)")
    parser.add_argument("--out", help="report folder (must not exist; default runs/demo-<time>)")
    parser.add_argument("--full", action="store_true", help="train longer (10x the time budgets)")
    parser.add_argument("--list", action="store_true", help="list the registered demos and exit")
    parser.add_argument("--jobs", type=int, default=None,
                        help="demos run at once, in separate processes (default 2 with 2+ CPUs, else 1)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(list_demos()))
        return 0
    jobs = args.jobs if args.jobs is not None else min(2, os.cpu_count() or 1)
    if jobs < 1:
        parser.error(f"--jobs must be >= 1, got {jobs}")
    run_demos(only=args.only, out=args.out, full=args.full, jobs=jobs)
    return 0


def _bench(argv: list[str]) -> int:
    from tenfold.bench import bench_markdown, compilable_benches, list_benches, official_benches, run_bench

    parser = argparse.ArgumentParser(
        prog="tenfold bench",
        description="Run a benchmark: parameters, multiply-adds, throughput or memory, printed as ratios against a "
        "baseline measured in the same run.",
    )
    parser.add_argument("name", nargs="?", help="benchmark name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the registered benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer timed runs (for smoke checks)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the models compiled with torch.compile (tenfold.utils.compile.compile_for_inference; "
        "benchmarks marked [--compile] in --list)",
    )
    parser.add_argument(
        "--official",
        metavar="PATH",
        help="a checkout of the official repository to time side by side on the same weights (never vendored; "
        "benchmarks marked [--official] in --list); skipped with the reason when it cannot be imported",
    )
    args = parser.parse_args(argv)
    if args.list or not args.name:
        compilable, official = compilable_benches(), official_benches()
        for name, desc in list_benches().items():
            marks = (" [--compile]" if name in compilable else "") + (" [--official]" if name in official else "")
            print(f"{name:20s} {desc}{marks}")
        return 0
    result = run_bench(args.name, quick=args.quick, compile=args.compile, official=args.official)
    # markdown: readable in a terminal of any width, and pastes into docs as is
    print(bench_markdown(args.name, result))
    return 0


def _info(argv: list[str]) -> int:
    from tenfold.utils.info import collect_info

    parser = argparse.ArgumentParser(
        prog="tenfold info", description="Print versions, threads, devices and which optional packages are installed."
    )
    parser.parse_args(argv)
    for key, value in collect_info().items():
        print(f"{key:28s} {value}")
    return 0


def _repeat(argv: list[str]) -> int:
    from tenfold.engine.repeat import repeat_main

    return repeat_main(argv)


def _export_student(argv: list[str]) -> int:
    from tenfold.distill.export import export_student

    parser = argparse.ArgumentParser(
        prog="tenfold export-student",
        description="Write the student of a distillation checkpoint alone (no teacher, connectors or prefixes) as "
        "safetensors, loadable with strict=True into the plain student model.",
    )
    parser.add_argument("checkpoint", help="a distillation run's checkpoint (e.g. runs/.../checkpoints/last.ckpt)")
    parser.add_argument("out", help="the .safetensors file to write (must not exist)")
    args = parser.parse_args(argv)
    print(export_student(args.checkpoint, args.out))
    return 0


def _search(argv: list[str]) -> int:
    from tenfold.nas.cli import search_main

    return search_main(argv)


def _enhance(argv: list[str]) -> int:
    from tenfold.speech.cli import enhance_main

    return enhance_main(argv)


def _greenmim_convert(argv: list[str]) -> int:
    from tenfold.mim.cli import convert_main

    return convert_main(argv)


# name -> (handler, one-line help; a second line may follow after "\n")
COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "demo": (_demo, "run every method's demo on built-in data and write runs/demo-<time>/report.md"),
    "bench": (_bench, "run a benchmark (speed, memory, FLOPs as ratios): tenfold bench --list"),
    "info": (_info, "versions, threads, devices and what is installed"),
    "repeat": (_repeat, "run a recipe once per seed and report mean and std: tenfold repeat --seeds 0,1,2 -- fit ..."),
    "export-student": (_export_student, "the student of a distillation checkpoint, alone, as safetensors:\n"
                       "tenfold export-student CKPT OUT"),
    "search": (_search, "architecture search on a benchmark table (GINAS, random, evolution, local):\n"
               "tenfold search --space nas-bench-macro --table PATH --optimizer ginas|random|evolution|local"),
    "enhance": (_enhance, "speech enhancement with a TaylorSENet checkpoint:\n"
                "tenfold enhance NOISY.wav OUT.wav --ckpt CKPT"),
    "greenmim-convert": (_greenmim_convert, "a GreenMIM pre-training checkpoint as a timm Swin for fine-tuning:\n"
                         "tenfold greenmim-convert CKPT OUT.pth [--format timm|swin] [--released-channel-order]"),
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tenfold`` console script."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS and command not in LIGHTNING_HELP:
        print(f"tenfold: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        if command in LIGHTNING_HELP:
            from tenfold.engine.lightning_cli import run_lightning_cli

            run_lightning_cli(None if from_sys else argv)
            return 0
        return COMMANDS[command][0](rest)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        if os.environ.get("TENFOLD_DEBUG"):
            raise
        print(f"tenfold {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
