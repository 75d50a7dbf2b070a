"""Shared utilities: FLOP and parameter counts, throughput, checkpoint IO, environment info.

The counting and timing helpers are re-exported lazily (``from tenfold.utils import count_flops``), so that
importing a light submodule such as ``tenfold.utils.info`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "FlopCount",
    "ThroughputResult",
    "compile_for_inference",
    "compile_module",
    "count_flops",
    "count_parameters",
    "measure_throughput",
]

_LAZY = {
    "FlopCount": "tenfold.utils.flops",
    "count_flops": "tenfold.utils.flops",
    "count_parameters": "tenfold.utils.flops",
    "ThroughputResult": "tenfold.utils.throughput",
    "measure_throughput": "tenfold.utils.throughput",
    "compile_for_inference": "tenfold.utils.compile",
    "compile_module": "tenfold.utils.compile",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
