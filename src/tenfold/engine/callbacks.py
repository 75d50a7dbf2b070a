"""Callbacks of the engine: exact RNG resume, a final-metrics file, the final checkpoint, and compilation."""

from __future__ import annotations

import difflib
import json
import math
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from tenfold.utils.checkpoint import atomic_write

__all__ = ["CompileModel", "FinalCheckpoint", "FinalMetrics", "RNGState"]


class RNGState(pl.Callback):
    """Save the Python, NumPy and torch (CPU and CUDA) generator states in checkpoints and restore them.

    Lightning does not checkpoint the global RNGs, so without this a resumed run draws different dropout masks or
    noise than the uninterrupted one. The states are stored as tensors and plain lists, which
    ``torch.load(weights_only=True)`` accepts. Under DDP the checkpoint holds rank 0's states.
    """

    def state_dict(self) -> dict[str, Any]:
        """Snapshot of every global generator."""
        np_state = np.random.get_state()
        py_version, py_internal, py_gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "python": [py_version, list(py_internal), py_gauss],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the generators saved by :meth:`state_dict`."""
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))


class FinalMetrics(pl.Callback):
    """Write the last logged value of every metric to ``<run_dir>/metrics.json`` when a stage ends.

    ``tenfold repeat`` reads these files to report mean and std over seeds. The file is written atomically by
    global rank 0 and updated (not replaced) by later stages, so ``fit`` then ``test`` in one run keep both.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _write(self, trainer: pl.Trainer, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {}
        for name, value in trainer.callback_metrics.items():
            value = float(value)
            metrics[name] = value if math.isfinite(value) else None
        existing = json.loads(self.path.read_text()) if self.path.exists() else {}
        existing.update(metrics)
        existing["_last_stage"] = stage
        existing["_global_step"] = trainer.global_step
        with atomic_write(self.path) as tmp:
            tmp.write_text(json.dumps(existing, indent=2, sort_keys=True))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self._write(trainer, "fit")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        if trainer.state.fn == TrainerFn.VALIDATING:  # the `validate` command, not validation inside `fit`
            self._write(trainer, "validate")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self._write(trainer, "test")


class FinalCheckpoint(pl.Callback):
    """Save ``last.ckpt`` when training ends, unless a checkpoint of that step was already written.

    ``ModelCheckpoint(every_n_train_steps=N)`` saves only on multiples of N, and its own ``on_train_end`` (Lightning
    >= 2.6) saves "last" only when nothing was saved during the run: a run that saved at step 500 and stopped at 520
    would end with a stale ``last.ckpt``. This callback notes the step of every checkpoint written (the public
    ``on_save_checkpoint`` hook) and, at the end, writes the final state through ``trainer.save_checkpoint`` (all
    ranks call it; rank 0 writes), updating the callback's public ``last_model_path``. It leaves the "nothing saved
    yet" case to ``ModelCheckpoint`` so that no second copy (``last-v1.ckpt``) appears.
    """

    def __init__(self) -> None:
        self.saved_step: int | None = None

    def on_save_checkpoint(  # noqa: D102
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.saved_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        callback = trainer.checkpoint_callback
        if not isinstance(callback, pl.callbacks.ModelCheckpoint) or callback.dirpath is None:
            return
        if self.saved_step == trainer.global_step:
            return
        if callback.save_last and not callback.last_model_path:
            return  # ModelCheckpoint.on_train_end (which runs after this callback) saves "last" itself
        path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, so it can be resumed
        if callback.save_last:
            callback.last_model_path = str(path)


class CompileModel(pl.Callback):
    """Compile the task's networks with ``torch.compile`` (in place) before a stage starts; eager on failure.

    ``tenfold fit|validate|test|predict --compile true`` adds this callback with its defaults; add it to
    ``trainer.callbacks`` to choose the modules or the compiler options. It works for every task: each selected
    submodule is compiled with :func:`tenfold.utils.compile.compile_module`, which keeps the module object, its
    parameters and its ``state_dict`` keys, so checkpoints of a compiled run are those of an eager one (no
    ``_orig_mod.`` prefix) and resume, export and load as usual. A module that fails to compile runs eagerly,
    with one :class:`~tenfold.utils.compile.CompileFallbackWarning`. Compiled graphs are cached between runs
    under ``cache_dir`` (see :func:`tenfold.utils.compile.inductor_cache_dir`): the first run of a recipe pays the
    compilation (tens of seconds on a CPU), later runs of the same shapes load it.

    Args:
        modules: dotted names of the task's submodules to compile (``["model"]``, ``["student", "teacher"]``).
            None: every direct child of the task that holds parameters and is called as a network, i.e. not a
            torchmetrics metric and not a ``ModuleDict``/``ModuleList`` container.
        mode: ``torch.compile`` mode (None, ``reduce-overhead``, ``max-autotune``).
        dynamic: ``torch.compile``'s ``dynamic`` (None: shapes become dynamic after they change once).
        backend: compiler backend (``inductor``; ``aot_eager``/``eager`` to debug).
        fullgraph: refuse graph breaks (a module with one then falls back to eager).
        cache_dir: inductor's cache folder; None: ``TORCHINDUCTOR_CACHE_DIR`` if set, else
            ``~/.cache/tenfold/inductor``.

    Raises:
        ValueError: (at setup) a name in ``modules`` that is not a submodule of the task (with the closest names),
            or no module to compile.
    """

    def __init__(
        self,
        modules: list[str] | None = None,
        mode: str | None = None,
        dynamic: bool | None = None,
        backend: str = "inductor",
        fullgraph: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        self.modules = list(modules) if modules is not None else None
        self.mode = mode
        self.dynamic = dynamic
        self.backend = backend
        self.fullgraph = fullgraph
        self.cache_dir = cache_dir
        self.compiled: list[str] = []

    def targets(self, pl_module: pl.LightningModule) -> dict[str, nn.Module]:
        """The submodules of ``pl_module`` this callback compiles, by name."""
        if self.modules is None:
            from torchmetrics import Metric, MetricCollection

            skip = (Metric, MetricCollection, nn.ModuleDict, nn.ModuleList, nn.ParameterDict, nn.ParameterList)
            found = {
                name: child
                for name, child in pl_module.named_children()
                if not isinstance(child, skip) and next(child.parameters(), None) is not None
            }
            if not found:
                raise ValueError(
                    f"CompileModel found no network in {type(pl_module).__name__} (no child module with "
                    "parameters); name the modules to compile with modules=[...]"
                )
            return found
        named = dict(pl_module.named_modules())
        out = {}
        for name in self.modules:
            if name not in named or not name:
                close = difflib.get_close_matches(name, [n for n in named if n and "." not in n], n=5)
                raise ValueError(
                    f"CompileModel: {type(pl_module).__name__} has no submodule {name!r}; closest names: {close}"
                )
            out[name] = named[name]
        return out

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Compile the target modules once (a later stage of the same task finds them compiled)."""
        from tenfold.utils.compile import compile_module, inductor_cache_dir, is_compiled_in_place

        inductor_cache_dir(self.cache_dir)
        for name, module in self.targets(pl_module).items():
            if is_compiled_in_place(module):
                continue
            compile_module(module, mode=self.mode, dynamic=self.dynamic, backend=self.backend,
                           fullgraph=self.fullgraph)  # fmt: skip
            self.compiled.append(name)
