"""The demo framework: each method registers a short run on built-in data; ``tenfold demo`` runs them all.

A demo is a function ``fn(ctx: DemoContext) -> DemoResult``. It must keep to its time budget (``ctx.budget_s``,
about 90 s on 2 cores by default, ``--full`` multiplies it), compare the method with its baseline on the same budget
and seeds, and report what it measured even when the method does not win at this scale.
"""

from __future__ import annotations

import importlib
import math
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DemoContext",
    "DemoResult",
    "list_demos",
    "markdown_table",
    "plot_curves",
    "register_demo",
    "run_demos",
    "torch_threads",
]

#: Modules whose import registers demos; a family adds its module here when it lands.
DEMO_MODULES = (
    "tenfold.classification.demo",
    "tenfold.distill.demo",
    "tenfold.models.demo",
    "tenfold.nas.demo",
    "tenfold.speech.demo",
    "tenfold.mim.demo",
    "tenfold.seg.demo",
    "tenfold.seg.demo_prcl",
    "tenfold.nas.demo_scalenet",
    "tenfold.hoi.demo",
)


@dataclass
class DemoContext:
    """What a demo gets: its output folder, its time budget, whether to train longer, and a cache.

    ``shared`` is one dict for the whole ``tenfold demo`` run: a demo may leave a trained model there for a later
    demo (the classification demo's bigger model is the distillation demo's teacher), which must still work alone
    (``--only``) by training it itself when the entry is missing.
    """

    out_dir: Path
    budget_s: float
    full: bool = False
    seed: int = 0
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    """What a demo returns.

    Attributes:
        rows: table rows (dicts with the same keys), shown in the report.
        plots: PNG files written under the demo's folder.
        notes: markdown paragraphs: what was compared, what it shows, caveats.
    """

    rows: list[dict[str, Any]]
    plots: list[Path] = field(default_factory=list)
    notes: str = ""


@dataclass
class _Demo:
    name: str
    fn: Callable[[DemoContext], DemoResult]
    budget_s: float
    title: str
    group: str | None = None
    exclusive: bool = False
    threads: int | None = None


_REGISTRY: dict[str, _Demo] = {}


def register_demo(
    name: str,
    budget_s: float = 90.0,
    title: str | None = None,
    *,
    group: str | None = None,
    exclusive: bool = False,
    threads: int | None = None,
) -> Callable:
    """Register ``fn`` as the demo ``name`` with a default time budget in seconds.

    Args:
        name: the demo's name (``tenfold demo --only NAME``).
        budget_s: its time budget on 2 cores.
        title: its report heading.
        group: demos of one group run one after the other in one process, in registration order, and share
            ``ctx.shared`` (the classification demo's model is the distillation demo's teacher).
        exclusive: the demo needs the whole machine (it runs processes of its own side by side): with
            ``jobs > 1`` it runs alone, before the parallel demos.
        threads: run the demo on this many torch threads (see :func:`torch_threads`; small models train fastest on
            one); ``None`` keeps the process's setting.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"register_demo({name!r}): threads must be >= 1, got {threads}")

    def wrap(fn: Callable[[DemoContext], DemoResult]) -> Callable[[DemoContext], DemoResult]:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"demo {name!r} is registered twice")
        _REGISTRY[name] = _Demo(name, fn, budget_s, title or name, group, exclusive, threads)
        return fn

    return wrap


def list_demos() -> list[str]:
    """Names of all registered demos, in registration order."""
    for module in DEMO_MODULES:
        importlib.import_module(module)
    return list(_REGISTRY)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows`` (dicts; columns in order of first appearance, floats to 4 significant digits)."""
    if not rows:
        return "_no rows_\n"
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch threads and restore the previous count (also on error).

    Small models train faster on one thread, and far faster on a shared 2-core machine, where OpenMP workers spin
    against other processes.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def plot_curves(
    curves: dict[str, tuple[list[float], list[float]]],
    path: str | Path,
    *,
    xlabel: str = "training step",
    ylabel: str = "validation top-1 (%)",
    title: str | None = None,
) -> Path:
    """Write a PNG line plot of ``label -> (xs, ys)`` curves (one marker per point) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def top1_curve(history: list[dict[str, float]], key: str = "val/acc1") -> tuple[list[float], list[float]]:
    """(steps, accuracy in %) of a :class:`~tenfold.engine.quick.QuickRun` history."""
    return [h["step"] for h in history], [100 * h[key] for h in history]


def _quiet_lightning() -> None:
    """Keep the demo's console to its tables: Lightning's per-run banners and known harmless warnings go."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (its import sets its loggers to INFO: import first, then quieten)

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*LeafSpec.*", r"Found .* module\(s\) in eval mode", ".*log_every_n_steps.*", ".*litlogger.*"):
        warnings.filterwarnings("ignore", message=pattern)


def _run_one(name: str, out_dir: Path, full: bool, shared: dict[str, Any]) -> dict[str, Any]:
    """Run one registered demo; never raises (a failure becomes its report section)."""
    demo = _REGISTRY[name]
    budget = demo.budget_s * (10 if full else 1)
    ctx = DemoContext(out_dir=out_dir / name, budget_s=budget, full=full, shared=shared)
    ctx.out_dir.mkdir(parents=True)
    start = time.perf_counter()
    try:
        with torch_threads(demo.threads) if demo.threads is not None else nullcontext():
            result = demo.fn(ctx)
        status = "ok"
    except Exception as err:  # a failing demo must not lose the others' results
        traceback.print_exc()
        result = DemoResult(rows=[], notes=f"**failed**: `{err!r}`\n\n```\n{traceback.format_exc()}```")
        status = "failed"
    elapsed = time.perf_counter() - start
    return {"name": name, "title": demo.title, "status": status, "seconds": elapsed, "budget": budget,
            "result": result}  # fmt: skip


def _run_group(names: list[str], modules: list[str], out_dir: Path, full: bool, threads: int) -> list[dict[str, Any]]:
    """Worker process: register the demos (importing ``modules``), then run ``names`` in order on ``threads``."""
    import torch

    for module in modules:
        importlib.import_module(module)
    _quiet_lightning()
    torch.set_num_threads(threads)
    shared: dict[str, Any] = {}
    return [_run_one(name, out_dir, full, shared) for name in names]


def _groups(names: list[str]) -> list[list[str]]:
    """Demos bundled by group (registration order inside a group), longest total budget first."""
    bundles: dict[str, list[str]] = {}
    for name in names:
        bundles.setdefault(_REGISTRY[name].group or f"demo:{name}", []).append(name)
    return sorted(bundles.values(), key=lambda b: -sum(_REGISTRY[n].budget_s for n in b))


def run_demos(
    only: list[str] | None = None,
    out: str | Path | None = None,
    full: bool = False,
    console: Any = None,
    jobs: int = 1,
) -> Path:
    """Run the registered demos and write ``report.md`` with tables and plots.

    Args:
        only: names to run (default: all).
        out: report folder (default: a new ``runs/demo-<time>``); it must not exist yet.
        full: train longer (budgets x10).
        console: a ``rich.console.Console`` for progress (default: a new one).
        jobs: demos run at once, each in its own process on ``cpu_count // jobs`` threads (most demos train small
            models on one thread); exclusive demos run alone first, a group's demos in one process. 1: all in this
            process, one after the other.

    Returns:
        Path of ``report.md``; it is rewritten after every finished demo, in registration order, so an interruption
        keeps what finished.

    Raises:
        ValueError: an unknown demo name, or ``jobs < 1``.
        FileExistsError: ``out`` exists.
    """
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from rich.console import Console
    from rich.table import Table

    from tenfold.utils.checkpoint import atomic_write

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    console = console or Console()
    _quiet_lightning()
    names = list_demos()
    if only:
        unknown = [n for n in only if n not in _REGISTRY]
        if unknown:
            raise ValueError(f"unknown demo(s) {unknown}; registered: {names}")
        names = [n for n in names if n in only]
    out_dir = Path(out) if out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=False)
    done: dict[str, dict[str, Any]] = {}

    def record(item: dict[str, Any]) -> None:
        done[item["name"]] = item
        result = item["result"]
        table = Table(title=f"{item['title']} ({item['seconds']:.0f} s, budget {item['budget']:.0f} s)")
        keys = list(result.rows[0]) if result.rows else []
        for key in keys:
            table.add_column(str(key))
        for row in result.rows:
            table.add_row(*(f"{row.get(k):.4g}" if isinstance(row.get(k), float) else str(row.get(k)) for k in keys))
        console.print(table)
        summary, sections = [], []
        for name in (n for n in names if n in done):
            it = done[name]
            res = it["result"]
            summary.append(
                {"demo": name, "status": it["status"], "seconds": round(it["seconds"], 1), "budget_s": it["budget"]}
            )
            plots = "\n".join(f"![{p.stem}]({Path(p).relative_to(out_dir).as_posix()})" for p in res.plots)
            sections.append(
                f"## {it['title']}\n\n{markdown_table(res.rows)}\n{res.notes}\n\n{plots}\n\n"
                f"_{it['seconds']:.1f} s (budget {it['budget']:.0f} s)_\n"
            )
        report = "# tenfold demo report\n\n" + markdown_table(summary) + "\n" + "\n".join(sections)
        with atomic_write(out_dir / "report.md") as tmp:
            tmp.write_text(report)

    if jobs == 1:
        shared: dict[str, Any] = {}
        for name in names:
            console.rule(f"demo {name} (budget {_REGISTRY[name].budget_s * (10 if full else 1):.0f} s)")
            record(_run_one(name, out_dir, full, shared))
    else:
        alone = [n for n in names if _REGISTRY[n].exclusive]
        parallel = [n for n in names if not _REGISTRY[n].exclusive]
        for name in alone:
            console.rule(f"demo {name} (alone, budget {_REGISTRY[name].budget_s * (10 if full else 1):.0f} s)")
            record(_run_one(name, out_dir, full, {}))
        groups = _groups(parallel)
        modules = sorted({_REGISTRY[n].fn.__module__ for n in parallel} | set(DEMO_MODULES))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        console.rule(f"{len(parallel)} demos, {jobs} at a time, {threads} thread(s) each")
        with ProcessPoolExecutor(max_workers=min(jobs, len(groups) or 1), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_group, group, modules, out_dir, full, threads): group for group in groups}
            for future in as_completed(futures):
                try:
                    items = future.result()
                except Exception as err:  # the worker died (killed, out of memory): report its demos as failed
                    items = [
                        {"name": n, "title": _REGISTRY[n].title, "status": "failed", "seconds": 0.0,
                         "budget": _REGISTRY[n].budget_s * (10 if full else 1),
                         "result": DemoResult(rows=[], notes=f"**failed**: worker process ended: `{err!r}`")}
                        for n in futures[future] if n not in done
                    ]  # fmt: skip
                for item in items:
                    record(item)
    console.print(f"report: {out_dir / 'report.md'}")
    return out_dir / "report.md"
