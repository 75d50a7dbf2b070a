"""``torch.compile`` for inference and training, with one fallback path: a model that does not compile runs eagerly.

Example::

    from tenfold.utils.compile import compile_for_inference, compile_module

    fast = compile_for_inference(model)  # eval mode, inductor with freezing; the first call compiles
    with torch.inference_mode():
        logits = fast(images)

    compile_module(task.model)  # in place, for training: same object, same state_dict keys

Two entry points share one fallback (:class:`CompileFallbackWarning`, warned once per model):

* :func:`compile_for_inference` returns a compiled wrapper of the model in eval mode (``tenfold bench --compile``).
* :func:`compile_module` compiles a module in place (``nn.Module.compile``): the object, its parameters, buffers,
  hooks and ``state_dict`` keys stay the same (no ``_orig_mod.`` prefix), so checkpoints of a compiled run load into
  an eager model. The engine's :class:`tenfold.engine.callbacks.CompileModel` (``tenfold fit --compile true``) uses it.

Compiled code is cached between processes by torch: inductor's FX graph cache, the AOT-autograd cache (forward and
backward graphs) and the kernel cache, all under ``TORCHINDUCTOR_CACHE_DIR``. Both entry points point that variable
at a per-user folder, ``$XDG_CACHE_HOME/tenfold/inductor`` (``~/.cache/tenfold/inductor``), unless it is already
set (torch sets it itself the first time it compiles in a process); see :func:`inductor_cache_dir`. A second run
compiling the same model and shapes then takes seconds instead of tens of seconds.

A failure to compile surfaces at the first call (compilation is lazy). The fallback then runs the eager model on
the same inputs: if that succeeds the failure was the compiler's, and the model stays eager from then on, with one
warning; if the eager model fails too, its own error is raised (a user error, such as a wrong input shape, does not
switch compilation off).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CompileFallbackWarning",
    "compile_for_inference",
    "compile_module",
    "inductor_cache_dir",
    "is_compiled_in_place",
]

#: The environment variable inductor reads its cache folder from.
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


class CompileFallbackWarning(UserWarning):
    """``torch.compile`` failed for a model; it runs eagerly instead."""


def inductor_cache_dir(path: str | Path | None = None) -> Path:
    """Choose the folder where inductor caches compiled graphs and kernels between runs, and return it.

    Args:
        path: the folder to use. None keeps ``TORCHINDUCTOR_CACHE_DIR`` when it is set (by the user, or by torch at
            its first compilation in this process) and otherwise uses ``$XDG_CACHE_HOME/tenfold/inductor``
            (``~/.cache/tenfold/inductor``), which survives reboots, unlike torch's default in the temp folder.

    Returns:
        The folder, now in ``TORCHINDUCTOR_CACHE_DIR``.
    """
    if path is None:
        current = os.environ.get(CACHE_ENV)
        if current:
            return Path(current)
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "tenfold" / "inductor"
    os.environ[CACHE_ENV] = str(Path(path).absolute())
    return Path(os.environ[CACHE_ENV])


def compile_for_inference(
    model: nn.Module,
    example: Tensor | tuple[Any, ...] | None = None,
    *,
    mode: str | None = None,
    dynamic: bool | None = False,
    backend: str = "inductor",
    fullgraph: bool = False,
    freeze: bool = True,
) -> nn.Module:
    """Put ``model`` in eval mode and compile it; fall back to the eager model (one warning) if that fails.

    With ``freeze`` (the default) inductor compiles the graphs it runs without autograd (``torch.no_grad`` /
    ``torch.inference_mode``, i.e. inference) with its *freezing* pass: parameters and buffers become constants,
    so constant sub-expressions are folded, BatchNorms are folded into the convolutions before them, and CPU
    linear / convolution weights are pre-packed for oneDNN / MKL with pointwise ops (bias, GELU, ...) fused into
    them. On LightViT-T it lifts compiling from 1.0-1.14x to 1.14-1.46x eager on a 2-core CPU (docs/benchmarks.md).
    The price: **the compiled model works on copies of the weights it was compiled with** (folded and packed ones;
    whether a later change of a parameter is seen is undefined): after changing weights (a training step,
    ``load_state_dict``) compile again, or pass ``freeze=False``. Calls with autograd enabled compile a separate,
    unfrozen graph. A model that builds a large tensor from weights alone (say ``bias.expand(...).clone()`` to the
    output's size) gets it folded into a constant that every call then reads: allocate such buffers from the
    activations instead (TaylorSENet's transposed convolution: RTF 0.19 frozen before that change, 0.089 after).
    torch's compile cache does not key on the switch, so compiling the same model object again with the other
    setting in one process reuses the first graphs unless ``torch._dynamo.reset()`` is called in between.

    Args:
        model: the network. It is switched to eval mode (inference semantics for BatchNorm / dropout).
        example: an input (or a tuple of positional inputs) to compile on now, under ``torch.inference_mode``. Without
            it the model compiles at its first call, and a compile error then falls back at that call.
        mode: ``torch.compile`` mode (None: default; ``max-autotune`` tunes longer).
        dynamic: compile for dynamic shapes (False: one graph per input shape, the fastest for fixed sizes).
        backend: compiler backend (``inductor``; ``eager`` or ``aot_eager`` for debugging).
        fullgraph: fail (and fall back) on any graph break instead of running the broken parts eagerly.
        freeze: inductor's freezing for graphs without autograd (see above); ignored by other backends.

    Returns:
        A module running the compiled model, whose one submodule ``eager`` is ``model`` (so ``parameters()`` and
        ``state_dict()`` are the model's, keys prefixed ``eager.``); with ``freeze=False`` and an ``example``, the
        ``OptimizedModule`` itself. ``model`` itself when compiling failed.
    """
    model.eval()
    inductor_cache_dir()
    try:
        compiled = torch.compile(model, mode=mode, dynamic=dynamic, backend=backend, fullgraph=fullgraph)
    except Exception as exc:  # torch.compile itself refuses (e.g. unsupported Python)
        _warn(model, exc)
        return model
    # inductor reads `freezing` from its global config when it compiles a graph, i.e. during a call (the first one
    # and any recompilation); torch.compile's `options` do not reach that pass, so each call switches it on
    call: Callable[..., Any] = _Freezing(compiled) if freeze and backend == "inductor" else compiled
    if example is None:
        return _LazyFallback(call, model)
    args = example if isinstance(example, tuple) else (example,)
    try:
        with torch.inference_mode():
            call(*args)
    except Exception as exc:  # the compiler failed on this model: run it eagerly
        _warn(model, exc)
        return model
    return compiled if call is compiled else _LazyFallback(call, model)


def compile_module(
    module: nn.Module,
    *,
    mode: str | None = None,
    dynamic: bool | None = None,
    backend: str = "inductor",
    fullgraph: bool = False,
) -> nn.Module:
    """Compile ``module`` in place for training or inference, with the eager fallback (one warning).

    ``nn.Module.compile`` replaces what calling the module runs; the module keeps its identity, parameters,
    buffers, hooks, train/eval switch and ``state_dict`` keys. It compiles at its first call (and again when the
    mode, grad mode or input shapes change, within torch's recompilation limit). A module deep-copied after this
    (an EMA teacher, say) runs eagerly.

    Args:
        module: the network to compile.
        mode: ``torch.compile`` mode (None: default; ``reduce-overhead``, ``max-autotune``).
        dynamic: None lets torch mark a dimension dynamic after it changed once (one extra compile for the last,
            smaller batch of an epoch); False compiles one graph per shape; True starts dynamic.
        backend: compiler backend (``inductor``; ``eager`` or ``aot_eager`` for debugging).
        fullgraph: fail (and fall back) on any graph break instead of running the broken parts eagerly.

    Returns:
        ``module`` itself.
    """
    inductor_cache_dir()
    try:
        module.compile(mode=mode, dynamic=dynamic, backend=backend, fullgraph=fullgraph)
    except Exception as exc:  # torch.compile itself refuses (e.g. unsupported Python)
        _warn(module, exc)
        return module
    # nn.Module.__call__ runs `_compiled_call_impl` when it is set: wrap it with the shared fallback
    module._compiled_call_impl = _Fallback(module._compiled_call_impl, module._call_impl, type(module).__name__)
    return module


def is_compiled_in_place(module: nn.Module) -> bool:
    """Whether :func:`compile_module` (or ``nn.Module.compile``) was applied to ``module``."""
    return getattr(module, "_compiled_call_impl", None) is not None


def _warn(model: nn.Module | str, exc: BaseException) -> None:
    name = model if isinstance(model, str) else type(model).__name__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    warnings.warn(
        f"torch.compile failed for {name} ({type(exc).__name__}: {first[:300]}); running it eagerly",
        CompileFallbackWarning,
        stacklevel=3,
    )


class _Fallback:
    """Call ``compiled``; the first time it fails where ``eager`` succeeds, warn once and call ``eager`` from then on.

    When ``eager`` fails on the same inputs too, its error is raised and compilation stays on: the inputs were
    wrong, not the compiler.
    """

    def __init__(self, compiled: Callable[..., Any], eager: Callable[..., Any], name: str) -> None:
        self.compiled = compiled
        self.eager = eager
        self.name = name
        self.failed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:
            error = exc
        out = self.eager(*args, **kwargs)
        self.failed = True
        _warn(self.name, error)
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        # the compiled function belongs to the original module: a deep copy of the module runs eagerly
        return None


class _Freezing:
    """Call ``compiled`` with inductor's freezing pass on (it applies to the graphs compiled without autograd)."""

    def __init__(self, compiled: Callable[..., Any]) -> None:
        self.compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch._inductor import config

        with config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


class _LazyFallback(nn.Module):
    """The compiled model, replaced by the eager one (with a warning) the first time compiling fails."""

    def __init__(self, compiled: Callable[..., Any], eager: nn.Module) -> None:
        super().__init__()
        self.eager = eager  # the one registered submodule: state_dict() / parameters() are the model's own
        object.__setattr__(self, "_call", _Fallback(compiled, eager, type(eager).__name__))

    @property
    def failed(self) -> bool:
        """Whether compiling failed and the eager model runs."""
        return self._call.failed

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        return self._call(*args, **kwargs)
