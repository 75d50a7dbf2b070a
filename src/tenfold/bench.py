"""``tenfold bench NAME``: registered comparisons that print ratios against a baseline measured in the same run.

A benchmark is a function ``fn(quick: bool) -> list[dict]`` returning table rows. Numbers are measurements of this
machine at this moment: they are reported, never asserted in tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["register_bench", "list_benches", "run_bench"]

#: Modules whose import registers benchmarks; a family adds its module here when it lands.
BENCH_MODULES = ("tenfold.classification.bench", "tenfold.distill.bench")

_REGISTRY: dict[str, tuple[Callable[[bool], list[dict[str, Any]]], str]] = {}


def register_bench(name: str, description: str) -> Callable:
    """Register ``fn(quick) -> rows`` as the benchmark ``name``."""

    def wrap(fn: Callable[[bool], list[dict[str, Any]]]) -> Callable[[bool], list[dict[str, Any]]]:
        _REGISTRY[name] = (fn, description)
        return fn

    return wrap


def list_benches() -> dict[str, str]:
    """Registered benchmark names and their one-line descriptions."""
    for module in BENCH_MODULES:
        importlib.import_module(module)
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def run_bench(name: str, quick: bool = False) -> list[dict[str, Any]]:
    """Run one benchmark and return its rows.

    Raises:
        ValueError: ``name`` is not registered.
    """
    names = list_benches()
    if name not in names:
        raise ValueError(f"unknown benchmark {name!r}; registered: {sorted(names)}")
    return _REGISTRY[name][0](quick)
