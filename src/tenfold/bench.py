"""``tenfold bench NAME``: registered comparisons that print ratios against a baseline measured in the same run.

A benchmark is a function ``fn(quick: bool)`` returning table rows (a list of dicts), or several titled tables
(a dict ``{title: rows}``) when its measurements do not share columns. A benchmark with a compiled mode takes a
keyword ``compile: bool`` too (``tenfold bench NAME --compile``: its models also run through
:func:`tenfold.utils.compile.compile_for_inference`). Numbers are measurements of this machine at this moment: they
are reported, never asserted in tests.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["register_bench", "list_benches", "compilable_benches", "run_bench", "bench_markdown"]

#: Modules whose import registers benchmarks; a family adds its module here when it lands.
BENCH_MODULES = (
    "tenfold.classification.bench",
    "tenfold.distill.bench",
    "tenfold.models.bench",
    "tenfold.speech.bench",
    "tenfold.mim.bench",
)

_REGISTRY: dict[str, tuple[Callable[[bool], Any], str]] = {}


def register_bench(name: str, description: str) -> Callable:
    """Register ``fn(quick) -> rows | {title: rows}`` as the benchmark ``name``."""

    def wrap(fn: Callable[[bool], Any]) -> Callable[[bool], Any]:
        _REGISTRY[name] = (fn, description)
        return fn

    return wrap


def list_benches() -> dict[str, str]:
    """Registered benchmark names and their one-line descriptions."""
    for module in BENCH_MODULES:
        importlib.import_module(module)
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def compilable_benches() -> list[str]:
    """Names of the registered benchmarks that have a compiled mode (a ``compile`` keyword)."""
    list_benches()
    return [name for name, (fn, _) in _REGISTRY.items() if "compile" in inspect.signature(fn).parameters]


Rows = list[dict[str, Any]]


def run_bench(name: str, quick: bool = False, compile: bool = False) -> Rows | dict[str, Rows]:
    """Run one benchmark and return its rows (or its titled tables).

    Args:
        name: a registered benchmark.
        quick: fewer timed runs.
        compile: also measure the models compiled (only benchmarks with a compiled mode).

    Raises:
        ValueError: ``name`` is not registered, or ``compile`` for a benchmark without a compiled mode.
    """
    names = list_benches()
    if name not in names:
        raise ValueError(f"unknown benchmark {name!r}; registered: {sorted(names)}")
    if not compile:
        return _REGISTRY[name][0](quick)
    if name not in compilable_benches():
        raise ValueError(f"benchmark {name!r} has no compiled mode; --compile works with {compilable_benches()}")
    return _REGISTRY[name][0](quick, compile=True)


def bench_markdown(name: str, result: Rows | dict[str, Rows]) -> str:
    """Markdown of a benchmark's result: one table, or one titled table per entry."""
    from tenfold.engine.demo import markdown_table

    tables = result if isinstance(result, dict) else {"": result}
    parts = [f"tenfold bench {name}\n"]
    for title, rows in tables.items():
        parts.append((f"### {title}\n\n" if title else "") + markdown_table(rows))
    return "\n".join(parts)
