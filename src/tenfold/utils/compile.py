"""``torch.compile`` for inference, with one fallback path: a model that does not compile runs eagerly, with a warning.

Example::

    from tenfold.utils.compile import compile_for_inference

    fast = compile_for_inference(model)  # eval mode, inductor; the first call compiles
    logits = fast(images)

Compiled code is cached by torch (inductor's FX graph and kernel caches under ``TORCHINDUCTOR_CACHE_DIR``, by
default a folder in the system's temp directory), so a second process compiling the same model and shapes is much
faster than the first. Compilation happens lazily at the first call; :func:`compile_for_inference` runs that call
on ``example`` when one is given, so that a failure to compile is caught here (and the eager model returned) rather
than in the middle of a user's loop.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CompileFallbackWarning", "compile_for_inference"]


class CompileFallbackWarning(UserWarning):
    """``torch.compile`` failed for a model; it runs eagerly instead."""


def compile_for_inference(
    model: nn.Module,
    example: Tensor | tuple[Any, ...] | None = None,
    *,
    mode: str | None = None,
    dynamic: bool | None = False,
    backend: str = "inductor",
    fullgraph: bool = False,
) -> nn.Module:
    """Put ``model`` in eval mode and compile it; fall back to the eager model (one warning) if that fails.

    Args:
        model: the network. It is switched to eval mode (inference semantics for BatchNorm / dropout).
        example: an input (or a tuple of positional inputs) to compile on now, under ``torch.inference_mode``. Without
            it the model compiles at its first call, and a compile error then falls back at that call.
        mode: ``torch.compile`` mode (None: default; ``max-autotune`` tunes longer).
        dynamic: compile for dynamic shapes (False: one graph per input shape, the fastest for fixed sizes).
        backend: compiler backend (``inductor``; ``eager`` or ``aot_eager`` for debugging).
        fullgraph: fail (and fall back) on any graph break instead of running the broken parts eagerly.

    Returns:
        The compiled module (an ``OptimizedModule`` sharing the parameters of ``model``), or ``model`` itself when
        compiling failed.
    """
    model.eval()
    try:
        compiled = torch.compile(model, mode=mode, dynamic=dynamic, backend=backend, fullgraph=fullgraph)
    except Exception as exc:  # torch.compile itself refuses (e.g. unsupported Python)
        _warn(model, exc)
        return model
    if example is None:
        return _LazyFallback(compiled, model)
    args = example if isinstance(example, tuple) else (example,)
    try:
        with torch.inference_mode():
            compiled(*args)
    except Exception as exc:  # the compiler failed on this model: run it eagerly
        _warn(model, exc)
        return model
    return compiled


def _warn(model: nn.Module, exc: BaseException) -> None:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    warnings.warn(
        f"torch.compile failed for {type(model).__name__} ({type(exc).__name__}: {first[:300]}); running it eagerly",
        CompileFallbackWarning,
        stacklevel=3,
    )


class _LazyFallback(nn.Module):
    """The compiled model, replaced by the eager one (with a warning) the first time compiling fails."""

    def __init__(self, compiled: nn.Module, eager: nn.Module) -> None:
        super().__init__()
        self.eager = eager  # the one registered submodule: state_dict() / parameters() are the model's own
        object.__setattr__(self, "_compiled", compiled)
        self.failed = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        if not self.failed:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as exc:
                self.failed = True
                _warn(self.eager, exc)
        return self.eager(*args, **kwargs)
