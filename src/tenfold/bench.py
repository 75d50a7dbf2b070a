"""``tenfold bench NAME``: registered comparisons that print ratios against a baseline measured in the same run.

A benchmark is a function ``fn(quick: bool)`` returning table rows (a list of dicts), or several titled tables
(a dict ``{title: rows}``) when its measurements do not share columns. A benchmark with a compiled mode takes a
keyword ``compile: bool`` too (``tenfold bench NAME --compile``: its models also run through
:func:`tenfold.utils.compile.compile_for_inference`). Numbers are measurements of this machine at this moment: they
are reported, never asserted in tests.

A benchmark that can time the official implementation side by side takes a keyword ``official: Path | None``
(``tenfold bench NAME --official PATH``): PATH is a checkout of the official repository that the user supplies (it
is never vendored). Such a benchmark imports it with :func:`import_official`, which raises
:class:`OfficialCodeMissing` naming what is missing; :func:`run_bench` turns that into a one-row table saying the
official comparison was skipped and why, so the rest of the benchmark still prints.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "register_bench",
    "list_benches",
    "compilable_benches",
    "official_benches",
    "run_bench",
    "bench_markdown",
    "import_official",
    "OfficialCodeMissing",
]

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


def official_benches() -> list[str]:
    """Names of the registered benchmarks that can time the official code side by side (an ``official`` keyword)."""
    list_benches()
    return [name for name, (fn, _) in _REGISTRY.items() if "official" in inspect.signature(fn).parameters]


class OfficialCodeMissing(RuntimeError):
    """The official repository given with ``--official`` is absent or is not the expected repository."""


@contextmanager
def _on_sys_path(root: Path) -> Iterator[None]:
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))


def import_official(
    root: str | os.PathLike | None, module: str, *, repo: str, expect: Sequence[str] = ()
) -> ModuleType:
    """Import ``module`` from a checkout of an official repository at ``root``.

    The repository's folder goes on ``sys.path`` for the import only; its modules stay in ``sys.modules`` (they
    may import each other lazily), so import official code in a benchmark process, not in a library one.

    Args:
        root: the checkout's folder (``None``: the user gave no ``--official`` path).
        module: dotted module name relative to ``root`` (``"models.lightvit"``).
        repo: the repository's name, for the messages (``"hunto/LightViT"``).
        expect: files that must exist under ``root`` (checked first, so a wrong folder is named as such).

    Raises:
        OfficialCodeMissing: ``root`` is ``None`` or missing, an expected file is absent, or the import fails
            (the message names the folder, the file or the import error).
    """
    if root is None:
        raise OfficialCodeMissing(f"no checkout of {repo} given (pass --official PATH to time it side by side)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise OfficialCodeMissing(f"--official {path}: no such folder (expected a checkout of {repo})")
    missing = [f for f in expect if not (path / f).exists()]
    if missing:
        raise OfficialCodeMissing(f"--official {path} does not look like a checkout of {repo}: missing {missing}")
    with _on_sys_path(path):
        try:
            return importlib.import_module(module)
        except Exception as err:  # the official code's own import errors (a missing dependency) are reported
            raise OfficialCodeMissing(f"importing {module!r} from {path} ({repo}) failed: {err!r}") from err


Rows = list[dict[str, Any]]


def run_bench(
    name: str, quick: bool = False, compile: bool = False, official: str | os.PathLike | None = None
) -> Rows | dict[str, Rows]:
    """Run one benchmark and return its rows (or its titled tables).

    Args:
        name: a registered benchmark.
        quick: fewer timed runs.
        compile: also measure the models compiled (only benchmarks with a compiled mode).
        official: a checkout of the official repository to time side by side (only benchmarks with an
            official comparison). If it cannot be imported, the result gains a table ``official comparison`` with
            the reason, and the rest of the benchmark runs.

    Raises:
        ValueError: ``name`` is not registered, or ``compile`` / ``official`` for a benchmark without that mode.
    """
    names = list_benches()
    if name not in names:
        raise ValueError(f"unknown benchmark {name!r}; registered: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    if compile:
        if name not in compilable_benches():
            raise ValueError(f"benchmark {name!r} has no compiled mode; --compile works with {compilable_benches()}")
        kwargs["compile"] = True
    if official is not None:
        if name not in official_benches():
            raise ValueError(
                f"benchmark {name!r} has no official comparison; --official works with {official_benches()}"
            )
        kwargs["official"] = Path(official)
    try:
        return _REGISTRY[name][0](quick, **kwargs)
    except OfficialCodeMissing as err:
        kwargs.pop("official")
        result = _REGISTRY[name][0](quick, **kwargs)
        tables = result if isinstance(result, dict) else {"": result}
        return {**tables, "official comparison": [{"status": "skipped", "reason": str(err)}]}


def bench_markdown(name: str, result: Rows | dict[str, Rows]) -> str:
    """Markdown of a benchmark's result: one table, or one titled table per entry."""
    from tenfold.engine.demo import markdown_table

    tables = result if isinstance(result, dict) else {"": result}
    parts = [f"tenfold bench {name}\n"]
    for title, rows in tables.items():
        parts.append((f"### {title}\n\n" if title else "") + markdown_table(rows))
    return "\n".join(parts)
