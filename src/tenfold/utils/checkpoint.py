"""Safe checkpoint reading and atomic writing.

Every checkpoint tenfold reads goes through :func:`load_checkpoint`, which refuses anything but tensors and plain
values (``torch.load(weights_only=True)``) and turns the many ways a file can be wrong into one clear error.
Every file tenfold writes goes through :func:`atomic_write`, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write", "load_checkpoint", "load_state_dict_strict", "save_checkpoint", "unwrap_state_dict"]


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it to ``path`` only if the block succeeds.

    Args:
        path: the final file path. Its parent folder is created if needed.

    Yields:
        The temporary path to write to. On an exception it is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)  # atomic on POSIX and Windows for same-volume paths
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (write to a temporary file, then rename)."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a torch or safetensors checkpoint safely.

    Only tensors and plain values (dicts, lists, tuples, numbers, strings) are accepted: ``.pt``/``.ckpt``/``.pth``
    files are read with ``torch.load(weights_only=True)`` and ``.safetensors`` with safetensors. ``argparse.Namespace``
    is allowed too (its values must themselves be plain): the training scripts of MAE, GreenMIM, DeiT and timm save
    their command-line ``args`` beside the weights.

    Args:
        path: file to read.
        map_location: passed to ``torch.load`` (default: everything on the CPU).

    Returns:
        The loaded object (for safetensors, a ``dict[str, Tensor]``).

    Raises:
        FileNotFoundError: ``path`` does not exist or is a folder.
        ValueError: the file is corrupt, truncated, not a checkpoint, or holds a pickled object other than
            tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        device = map_location if isinstance(map_location, str) else "cpu"
        try:
            return load_file(path, device=device)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"checkpoint {str(path)!r} is not a valid safetensors file: {err}") from err
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses any global it does not know: the file holds a pickled Python object.
        raise ValueError(
            f"checkpoint {str(path)!r} holds a pickled object that is not a tensor or plain value; tenfold only "
            f"loads checkpoints with weights_only=True. Re-save its state_dict() instead. Details: {err}"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a torch checkpoint: {err}") from err


def unwrap_state_dict(
    checkpoint: Any,
    keys: tuple[str, ...] = ("state_dict", "model", "net"),
    strip_prefixes: tuple[str, ...] = ("module.",),
    accept: Callable[[str], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Return the flat ``state_dict`` inside a checkpoint.

    Args:
        checkpoint: a raw state dict, or a dict that nests one under one of ``keys`` (checked in order).
        keys: wrapper keys to look through.
        strip_prefixes: prefixes removed from every key that carries them (DataParallel's ``module.``).
        accept: optional filter on the (stripped) key names.

    Raises:
        ValueError: ``checkpoint`` is not a dict of tensors.
    """
    if not isinstance(checkpoint, dict):
        raise ValueError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    for key in keys:
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    out = {}
    for name, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"expected a state_dict of tensors, but key {name!r} holds {type(value).__name__}")
        for prefix in strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if accept is None or accept(name):
            out[name] = value
    return out


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, Any], source: str = "") -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with a ValueError that lists everything that does not fit.

    Args:
        model: the module to load into.
        state_dict: the weights.
        source: where they come from (a path), named in the message.

    Raises:
        ValueError: keys missing from ``state_dict``, keys the model does not have, or shapes that differ; the
            message lists each kind (the first 12 of each, with the total).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:

        def show(items: list[str]) -> str:
            return (", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")) or "none"

        raise ValueError(
            f"weights {source!r} do not fit {type(model).__name__}: missing keys: {show(missing)}; unexpected keys: "
            f"{show(unexpected)}; shape mismatches: {show(wrong)}"
        )
    model.load_state_dict(state_dict, strict=True)
