"""Feature taps: record the outputs of submodules named by their dotted path, only while active.

Any timm or torchvision model can be a teacher or a student without editing it: a tap is a forward hook on the
module that ``model.named_modules()`` lists under that name. Hooks exist only inside the ``with`` block, so nothing
fires during evaluation or export, and losses never see hooks.

Example:
    >>> taps = FeatureTaps(model, ["layer3"])
    >>> with taps:
    ...     logits = model(images)
    >>> feature = taps["layer3"]          # (B, C, H, W)

A ``transform`` may also replace what a tapped module returns (MasKD stage 1 swaps a detector's FPN levels for
their masked versions, :class:`tenfold.distill.maskd.MaskedFeatures`); the record keeps the original output.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["FeatureTaps", "LOGITS"]

#: The tap name that stands for the model's own output (its logits): no hook is needed for it.
LOGITS = "logits"


class FeatureTaps:
    """Record outputs of named submodules of ``model`` during forwards run inside ``with taps:``.

    Args:
        model: the network to tap.
        names: dotted module paths as printed by ``model.named_modules()``; ``"logits"`` is accepted and ignored
            (the caller uses the model's return value).
        transform: optional ``transform(name, output) -> new_output``, called in the hook after recording; a
            result other than ``None`` replaces the module's output for the rest of the forward.

    Raises:
        ValueError: a name is not a submodule of ``model`` (the message lists the closest valid names).
    """

    def __init__(
        self, model: nn.Module, names: Iterable[str], transform: Callable[[str, Any], Any] | None = None
    ) -> None:
        self.model = model
        self.transform = transform
        modules = dict(model.named_modules())
        self.names = [n for n in dict.fromkeys(names) if n != LOGITS]
        for name in self.names:
            if name not in modules or name == "":
                close = difflib.get_close_matches(name, [m for m in modules if m], n=5)
                raise ValueError(
                    f"{type(model).__name__} has no submodule {name!r}; closest names: {close} "
                    "(see model.named_modules())"
                )
        self._modules = {name: modules[name] for name in self.names}
        self._handles: list[Any] = []
        self._records: dict[str, torch.Tensor] = {}

    def _hook(self, name: str):
        def record(module: nn.Module, args: Any, output: Any) -> Any:
            # some blocks return tuples (e.g. (features, attention)); the first element is the feature
            self._records[name] = output[0] if isinstance(output, tuple | list) else output
            # a forward hook's non-None return value replaces the module's output
            return None if self.transform is None else self.transform(name, output)

        return record

    def __enter__(self) -> FeatureTaps:
        if self._handles:
            raise RuntimeError("FeatureTaps is already active")
        self._records = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self._modules.items()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._records:
            raise KeyError(f"no output recorded for {name!r}: was the forward run inside the `with` block?")
        return self._records[name]

    def clear(self) -> None:
        """Drop the recorded tensors (frees their memory)."""
        self._records = {}
