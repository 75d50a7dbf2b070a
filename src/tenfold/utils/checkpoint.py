"""Safe checkpoint reading and atomic writing.

Every checkpoint tenfold reads goes through :func:`load_checkpoint`, which refuses anything but tensors and plain
values (``torch.load(weights_only=True)``) and turns the many ways a file can be wrong into one clear error.
Every file tenfold writes goes through :func:`atomic_write`, so a crash never leaves a half-written file behind.

A model that tenfold writes for later use (the demos' trained models) is a *self-describing model file*
(:func:`save_model`): its weights together with the constructor configuration that rebuilds it, and what inference
must repeat (e.g. a speech model's compression power). :func:`load_model` reads it back, as well as a tenfold
training checkpoint or a plain (official) state dict, and says which known configuration a mismatched state dict
fits.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch

__all__ = [
    "MODEL_FILE_FORMAT",
    "LoadedModel",
    "atomic_write",
    "task_weights",
    "fitting_configs",
    "load_checkpoint",
    "load_model",
    "load_state_dict_strict",
    "save_checkpoint",
    "save_model",
    "saved_config",
    "unwrap_state_dict",
]

#: ``format`` entry of the self-describing model files written by :func:`save_model`.
MODEL_FILE_FORMAT = "tenfold-model/1"


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


def task_weights(checkpoint: dict[str, Any], source: str, prefixes: tuple[str, ...] = ("model.", "student.")) -> dict:
    """The network's weights inside a tenfold (Lightning) checkpoint: the ``model.*`` or else the ``student.*`` keys.

    A task keeps its network under ``model`` and a distillation task its student under ``student``; the prefix is
    removed. ``source`` names the file in the error.

    Raises:
        ValueError: no key carries any of ``prefixes``.
    """
    state = checkpoint["state_dict"]
    for prefix in prefixes:
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    raise ValueError(f"checkpoint {source!r} holds no {' or '.join(p + '*' for p in prefixes)} weights")


def unwrap_state_dict(
    checkpoint: Any,
    keys: tuple[str, ...] = ("state_dict", "model", "net"),
    strip_prefixes: tuple[str, ...] = ("module.",),
    accept: Callable[[str], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Return the flat ``state_dict`` inside a checkpoint.

    (timm's ``clean_state_dict`` only strips ``module.``; this also finds the state dict inside the wrappers that
    official training scripts save, strips other prefixes, filters keys and refuses non-tensor entries.)

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


_PLAIN = (type(None), bool, int, float, str)


def _check_plain(value: Any, where: str) -> None:
    """Raise ValueError unless ``value`` is made of plain values only (what ``weights_only`` loading accepts)."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a non-string key {key!r}")
            _check_plain(item, f"{where}.{key}")
        return
    raise ValueError(
        f"{where} holds a {type(value).__name__}; a model file keeps only plain values (numbers, strings, lists, "
        "dicts) so that it loads with weights_only=True"
    )


def save_model(
    path: str | os.PathLike,
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    architecture: str,
    **hparams: Any,
) -> Path:
    """Write a self-describing model file: the weights and the constructor configuration that rebuilds the model.

    The file is a dict of tensors and plain values, written atomically::

        {"format": MODEL_FILE_FORMAT, "architecture": architecture, "state_dict": {name: tensor},
         "hyper_parameters": {"model_kwargs": config, **hparams}}

    The weights and ``hyper_parameters.model_kwargs`` sit where a tenfold training checkpoint keeps them, so every
    loader of those (``tenfold enhance --ckpt``, ``weights=``/``teacher_weights=`` options, timm's file loader) also
    reads this file, with no architecture option.

    Args:
        path: file to write (``.pt``/``.pth``); its folder is created.
        model: the module, or its state dict (tensors are detached and moved to the CPU).
        config: keyword arguments of the constructor (or registered timm model) that rebuild it.
        architecture: what ``config`` is for: a timm model name or the class name.
        **hparams: what else inference must repeat (e.g. ``power=0.5``, the front end's compression exponent).

    Returns:
        ``path``.

    Raises:
        ValueError: ``config`` or ``hparams`` hold something other than plain values, or the state dict holds
            something other than tensors.
    """
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state dict entry {name!r} holds {type(value).__name__}, expected a tensor")
    config, hparams = dict(config), dict(hparams)
    _check_plain(config, "config")
    _check_plain(hparams, "hparams")
    if "model_kwargs" in hparams:
        raise ValueError("pass the constructor configuration as config, not as hparams['model_kwargs']")
    payload = {
        "format": MODEL_FILE_FORMAT,
        "architecture": str(architecture),
        "state_dict": {name: value.detach().cpu() for name, value in state.items()},
        "hyper_parameters": {"model_kwargs": config, **hparams},
    }
    save_checkpoint(payload, path)
    return Path(path)


def saved_config(checkpoint: Any) -> dict[str, Any] | None:
    """The constructor configuration a loaded checkpoint carries, or None (a plain state dict carries none).

    Read from ``hyper_parameters["model_kwargs"]``: a :func:`save_model` file or a tenfold training checkpoint of a
    task that takes ``model_kwargs``.
    """
    if not isinstance(checkpoint, dict):
        return None
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or not isinstance(hparams.get("model_kwargs"), dict):
        return None
    return dict(hparams["model_kwargs"])


def fitting_configs(
    state_dict: Mapping[str, torch.Tensor],
    build: Callable[..., torch.nn.Module],
    configs: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """Names of the configurations whose model has exactly the keys and shapes of ``state_dict``.

    Each candidate is built on the meta device (no memory, no initialisation cost); one that ``build`` refuses
    (ValueError/TypeError) does not fit.

    Args:
        state_dict: the weights (flat, as loaded into the model).
        build: ``build(**config)`` makes the model.
        configs: candidate name -> configuration.
    """
    shapes = {name: tuple(value.shape) for name, value in state_dict.items() if hasattr(value, "shape")}
    if len(shapes) != len(state_dict):
        return []
    fits = []
    for name, config in configs.items():
        try:
            with torch.device("meta"):
                own = build(**config).state_dict()
        except (ValueError, TypeError):
            continue
        if {key: tuple(value.shape) for key, value in own.items()} == shapes:
            fits.append(name)
    return fits


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns.

    Attributes:
        model: the module, weights loaded, in eval mode.
        config: the configuration it was built with.
        hparams: the checkpoint's ``hyper_parameters`` (``{}`` for a plain state dict).
        self_described: True when ``config`` came from the file itself (a :func:`save_model` file or a tenfold
            training checkpoint), False when it was the ``config`` argument.
    """

    model: torch.nn.Module
    config: dict[str, Any]
    hparams: dict[str, Any]
    self_described: bool


def load_model(
    path: str | os.PathLike,
    build: Callable[..., torch.nn.Module],
    *,
    config: Mapping[str, Any] | None = None,
    filter_fn: Callable[[Any], dict[str, torch.Tensor]] = unwrap_state_dict,
    known_configs: Mapping[str, Mapping[str, Any]]
    | Callable[[dict[str, torch.Tensor]], Mapping[str, Mapping[str, Any]]]
    | None = None,
) -> LoadedModel:
    """Build a model from a checkpoint's own configuration and load its weights with ``strict=True``.

    A self-describing file (:func:`save_model`, or a tenfold training checkpoint) rebuilds the model from the
    configuration it carries; a plain state dict, which carries none, is built with ``config``. Files are read
    safely (:func:`load_checkpoint`).

    Args:
        path: the file.
        build: ``build(**config)`` makes the model (e.g. a class, or ``partial(timm.create_model, name)``).
        config: the configuration for a file that carries none (default: ``build()``'s defaults).
        filter_fn: turns the loaded checkpoint into the model's flat state dict (a family's
            ``checkpoint_filter_fn``).
        known_configs: named configurations a mismatched state dict is compared with: the message then says which
            of them fit (the names are shown as they are, e.g. ``"configuration 'small': pass --config small"``).
            A function of the state dict may return them (e.g. to cover every depth the keys show).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable or unsafe file, or weights that do not fit (keys and shapes listed, and the known
            configurations that fit them).
    """
    checkpoint = load_checkpoint(path)
    own = saved_config(checkpoint)
    arch = own if own is not None else dict(config or {})
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    hparams = dict(hparams) if isinstance(hparams, dict) else {}
    model = build(**arch)
    state = filter_fn(checkpoint)
    try:
        load_state_dict_strict(model, state, source=str(path))
    except ValueError as err:
        candidates = known_configs(state) if callable(known_configs) else known_configs
        fits = fitting_configs(state, build, candidates) if candidates else []
        if not fits:
            raise
        where = "the configuration the file carries" if own is not None else "the configuration used"
        raise ValueError(f"these weights fit {' or '.join(fits)} (not {where}: {err})") from err
    return LoadedModel(model.eval(), dict(arch), hparams, own is not None)
