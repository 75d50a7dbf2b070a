"""Dataclass settings from their dict form: what a checkpoint's hyper-parameters or a plain YAML mapping hold."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["config_from"]

T = TypeVar("T")


def config_from(cls: type[T], value: T | Mapping[str, Any] | None) -> T | None:
    """``value`` as an instance of the dataclass ``cls``: returned as is, built from a mapping, or None.

    Nested dataclass fields (also ``X | None``) are built from nested mappings, and list values of tuple-typed
    fields become tuples, so ``config_from(cls, dataclasses.asdict(config)) == config``. This is how a task restored
    by ``load_from_checkpoint`` (whose hyper-parameters hold plain dicts) gets its settings back.

    Raises:
        TypeError: ``value`` is neither a ``cls`` nor a mapping, or the mapping has a key ``cls`` does not take.
    """
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a {cls.__name__} or a mapping of its fields, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}; expected some of {sorted(names)}")
    kwargs = {}
    for key, item in value.items():
        options = typing.get_args(hints[key]) or (hints[key],)
        nested = next((t for t in options if dataclasses.is_dataclass(t)), None)
        if nested is not None and isinstance(item, Mapping):
            item = config_from(nested, item)
        elif isinstance(item, list) and any(typing.get_origin(t) is tuple or t is tuple for t in options):
            item = tuple(item)
        kwargs[key] = item
    return cls(**kwargs)
