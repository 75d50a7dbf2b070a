"""The NAS-Bench-Macro network: a fixed stem and head around searchable layers of three operations each.

This is the network of the benchmark that GINAS searches (arXiv:2304.10970, section 4.1; the benchmark of Su et al.,
"Prioritized Architecture Sampling with Monto-Carlo Tree Search", arXiv:2103.11922): a 3x3 stem, searchable layers
with fixed channels and strides, each one of three operations, and a 1x1 head convolution, global pooling and a
linear classifier:

* 0: identity; a 1x1 convolution with the layer's stride and BatchNorm where the shape changes;
* 1: inverted residual block, expansion 3, 3x3 depthwise kernel;
* 2: inverted residual block, expansion 6, 5x5 depthwise kernel.

The stem and head convolutions are followed by BatchNorm and ReLU (the benchmark's network does the same; the
GINAS prompt lists only the convolutions). At the default layout the parameter count and multiply-adds equal the
benchmark table's for every architecture (tested on sampled entries). The layer list and the widths
(``width_mult``) may be changed; :class:`tenfold.nas.macro.TrainedMacroSpace` searches such spaces by training.
No weights are released; a network trained here loads with ``timm.create_model("nas_macro_cifar",
pretrained=True, pretrained_cfg_overlay=dict(file=PATH), ops=[...])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.layers import create_classifier
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)

from tenfold.models.surface import StemBlocksHeadSurface

__all__ = ["MACRO_LAYERS", "IdentityOp", "InvertedResidual", "MacroNet", "make_op"]

#: NAS-Bench-Macro's searchable layers: (in_channels, out_channels, stride) for layer2..layer9.
MACRO_LAYERS: tuple[tuple[int, int, int], ...] = (
    (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1), (128, 256, 2), (256, 256, 1),
    (256, 256, 1),
)  # fmt: skip


def _conv_bn(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_chs, out_chs, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_chs)]


class IdentityOp(nn.Module):
    """Operation 0: identity, or a 1x1 convolution with the stride and BatchNorm where the shape changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(*_conv_bn(in_chs, out_chs, 1, stride)) if stride != 1 or in_chs != out_chs else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x if self.proj is None else self.proj(x)


class InvertedResidual(nn.Module):
    """Operations 1 and 2: 1x1 expand + BN + ReLU, kxk depthwise (stride) + BN + ReLU, 1x1 project + BN.

    The input is added when the stride is 1 and the channel count is kept (MobileNetV2).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int, kernel: int) -> None:
        super().__init__()
        hidden = in_chs * expansion
        self.conv = nn.Sequential(
            *_conv_bn(in_chs, hidden, 1), nn.ReLU(inplace=True),
            *_conv_bn(hidden, hidden, kernel, stride, groups=hidden), nn.ReLU(inplace=True),
            *_conv_bn(hidden, out_chs, 1),
        )  # fmt: skip
        self.use_shortcut = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x + self.conv(x) if self.use_shortcut else self.conv(x)


def make_op(op: int, in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """The module of operation ``op`` (0, 1, 2) for a layer ``in_chs -> out_chs`` at ``stride``."""
    if op == 0:
        return IdentityOp(in_chs, out_chs, stride)
    if op == 1:
        return InvertedResidual(in_chs, out_chs, stride, expansion=3, kernel=3)
    if op == 2:
        return InvertedResidual(in_chs, out_chs, stride, expansion=6, kernel=5)
    raise ValueError(f"unknown operation {op}; expected 0 (identity), 1 (IR e3 k3) or 2 (IR e6 k5)")


def _scaled(c: int, mult: float) -> int:
    return max(4, int(round(c * mult)))


class MacroNet(StemBlocksHeadSurface, nn.Module):
    """A NAS-Bench-Macro network: stem, one chosen operation per searchable layer, head.

    Module names: ``stem``, ``blocks.0`` ... ``blocks.{n-1}`` (the searchable layers, layer2 onwards),
    ``head_conv``, ``global_pool``, ``fc``. ``feature_info`` lists the stem and every searchable layer.

    Args:
        ops: one op id per searchable layer (0 identity, 1 IR e3 k3, 2 IR e6 k5).
        layers: ``(in_channels, out_channels, stride)`` per searchable layer (default: NAS-Bench-Macro's 8).
        stem_chs: stem output channels (must equal the first layer's input).
        head_chs: channels of the 1x1 head convolution.
        width_mult: multiplies every channel count (tiny CPU variants use 0.25).
        num_classes: classifier outputs (0: no classifier).
        in_chans: image channels.
        global_pool: timm pooling type (``"avg"``, or ``""`` for none with ``num_classes=0``).

    Raises:
        ValueError: ``ops`` does not match ``layers``, or layers do not chain.
    """

    def __init__(
        self,
        ops: Sequence[int] = (1,) * 8,
        layers: Sequence[Sequence[int]] = MACRO_LAYERS,
        stem_chs: int = 32,
        head_chs: int = 1280,
        width_mult: float = 1.0,
        num_classes: int = 10,
        in_chans: int = 3,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if len(ops) != len(layers):
            raise ValueError(f"{len(ops)} operations for {len(layers)} searchable layers")
        chans = [stem_chs] + [lay[1] for lay in layers]
        for i, (lay, prev) in enumerate(zip(layers, chans[:-1], strict=True)):
            if lay[0] != prev:
                raise ValueError(f"layer {i + 2} takes {lay[0]} channels but receives {prev}")
        m = width_mult
        self.ops = [int(o) for o in ops]
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.stem = nn.Sequential(*_conv_bn(in_chans, _scaled(stem_chs, m), 3), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(
            *(make_op(o, _scaled(i, m), _scaled(c, m), s) for o, (i, c, s) in zip(self.ops, layers, strict=True))
        )
        self.feature_info = [dict(num_chs=_scaled(stem_chs, m), reduction=1, module="stem")]
        reduction = 1
        for i, (_, c_out, stride) in enumerate(layers):
            reduction *= stride
            self.feature_info.append(dict(num_chs=_scaled(c_out, m), reduction=reduction, module=f"blocks.{i}"))
        self.num_features = self.head_hidden_size = _scaled(head_chs, m)
        self.head_conv = nn.Sequential(*_conv_bn(_scaled(chans[-1], m), self.num_features, 1), nn.ReLU(inplace=True))
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")


def _create_macro_net(variant: str, pretrained: bool = False, **kwargs: Any) -> MacroNet:
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
        if not cfg.file:
            raise ValueError(
                f"{variant} has no released weights; load a network trained here with timm.create_model({variant!r}, "
                "pretrained=True, pretrained_cfg_overlay=dict(file=PATH), ops=[...]), or use pretrained=False"
            )
        if not Path(cfg.file).is_file():
            raise FileNotFoundError(f"{variant} weight file {cfg.file!r} does not exist")
    n_maps = len(kwargs.get("layers", MACRO_LAYERS)) + 1  # the stem and every searchable layer
    # features_only goes through forward_intermediates (timm's "getter" wrapper)
    feature_cfg = dict(feature_cls="getter", out_indices=tuple(range(n_maps)))
    return build_model_with_cfg(MacroNet, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


default_cfgs = generate_default_cfgs(
    {"nas_macro_cifar": {"num_classes": 10, "input_size": (3, 32, 32), "pool_size": (4, 4), "crop_pct": 1.0,
                         "interpolation": "bilinear", "mean": (0.4914, 0.4822, 0.4465),
                         "std": (0.2470, 0.2435, 0.2616), "first_conv": "stem.0", "classifier": "fc",
                         "paper_ids": "arXiv:2103.11922"}}
)  # fmt: skip


@register_model
def nas_macro_cifar(pretrained: bool = False, **kwargs: Any) -> MacroNet:
    """A NAS-Bench-Macro network for 32x32 images; ``ops`` (8 op ids) and ``width_mult`` choose the variant."""
    return _create_macro_net("nas_macro_cifar", pretrained, **kwargs)
