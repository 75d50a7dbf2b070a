"""ScaleNet standalone networks (Xie et al., "Searching for the Model to Scale", ECCV 2022, arXiv 2207.07267).

A network found by ScaleNet's joint search (:mod:`tenfold.nas.scalenet`) is one path through the super-supernet:
a MobileNetV3/EfficientNet-like body (3x3 stem, MBConv-SE layers of kernel 3/5/7 or skipped layers, a 1x1
``conv_out``, global pooling, a linear head), scaled by a width multiplier ``c_m`` and run at an input resolution
``r``. Following the official code (``luminolx/ScaleNet`` 22487c8, ``core/search_space/ops.py``) every activation is
HSwish, the SE squeeze width is a quarter of the (scaled) hidden width and its gate is HSigmoid; widths are
``ceil(C * c_m)`` for stage outputs and ``ceil(round(C_in * t) * c_m)`` for hidden layers; the ``conv_out`` output
(1280 in the paper) is not scaled. No weights and no final architectures are released; the retraining recipe is
"use timm" (README).

The architecture is given by an *encoding* (``ops + [c_m, r]``, one op index per choice block of the space:
stem, every searchable layer, ``conv_out``, pool, head; 0 = ``id`` = layer skipped) and by the *layout* of the
space it came from (stem width, per stage ``(layers, stride, c_out, expand t)``, head width, op names). Two layouts
are registered with timm: ``scalenet_searched`` (the paper's ImageNet space, 43 choice blocks) and
``scalenet_tiny_searched`` (the CPU demonstration space, 16 choice blocks)::

    timm.create_model("scalenet_searched", encoding=[...43 ops..., 1.2, 272])

:func:`tenfold.nas.scalenet.scalenet_from_encoding` builds the same class from a
:class:`~tenfold.nas.scalenet.ScaleNetSpace`. Models trained here load with ``timm.create_model(name,
pretrained=True, pretrained_cfg_overlay=dict(file=PATH), encoding=[...])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg

from tenfold.models.surface import StemBlocksHeadSurface

__all__ = ["OP_KERNELS", "PAPER_LAYOUT", "TINY_LAYOUT", "ScaleNetModel"]

#: Depthwise kernel of every op name (0 = ``id``: skipped, or a 1x1 projection where the shape changes).
OP_KERNELS = {"id": 0, "ir_3x3_se": 3, "ir_5x5_se": 5, "ir_7x7_se": 7}

#: The paper space (``config/training_super_supernet.yaml``): per stage (choice blocks = ceil(n_base * 1.64),
#: stride, c_out, expand t).
PAPER_LAYOUT: dict[str, Any] = {
    "stem_chs": 32,
    "stages": ((2, 1, 16, 1), (7, 2, 32, 6), (7, 2, 40, 6), (7, 2, 80, 6), (7, 1, 96, 6), (7, 2, 192, 6),
               (2, 1, 320, 6)),
    "head_chs": 1280,
    "ops": ("id", "ir_3x3_se", "ir_5x5_se", "ir_7x7_se"),
    "stem_stride": 2,
}  # fmt: skip

#: The CPU demonstration space of the spec (section 7): 3 stages of up to 4 layers, ops id / ir3 / ir5.
TINY_LAYOUT: dict[str, Any] = {
    "stem_chs": 8,
    "stages": ((4, 1, 8, 3), (4, 2, 16, 3), (4, 2, 24, 3)),
    "head_chs": 64,
    "ops": ("id", "ir_3x3_se", "ir_5x5_se"),
    "stem_stride": 2,
}

# a feasible paper base (306M +- 25M multiply-adds at 224 px: 327.2M), drawn by the search's base sampler (seed 0)
_PAPER_DEFAULT = [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 3, 1, 3, 0, 0, 0, 0, 3, 2, 2, 0, 0, 0, 0]
_PAPER_DEFAULT += [1, 1, 3, 0, 0, 0, 0, 3, 0, 0, 0, 0, 1.0, 224]
_TINY_DEFAULT = [0, 1, 1, 0, 0, 2, 1, 0, 0, 1, 2, 0, 0, 0, 0, 0, 1.0, 16]


def _conv_bn_act(inp: int, oup: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    conv = nn.Conv2d(inp, oup, k, stride, k // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(oup), *([nn.Hardswish()] if act else [])]


class _MBConv(nn.Module):
    """MBConv-SE: [1x1 expand + BN + HSwish] -> kxk depthwise + BN + HSwish -> SE -> 1x1 project + BN (+ input).

    The 1x1 expansion is absent when ``expand`` is False (t = 1). SE: mean over H, W -> 1x1 conv to ``hid // 4``
    (bias) -> ReLU -> 1x1 conv back (bias) -> HSigmoid gate. The input is added when the shape is kept.
    """

    def __init__(self, inp: int, hid: int, oup: int, k: int, stride: int, expand: bool) -> None:
        super().__init__()
        self.expand = nn.Sequential(*_conv_bn_act(inp, hid, 1)) if expand else nn.Identity()
        self.dw = nn.Sequential(*_conv_bn_act(hid, hid, k, stride, groups=hid))
        self.se_reduce = nn.Conv2d(hid, hid // 4, 1)
        self.se_expand = nn.Conv2d(hid // 4, hid, 1)
        self.project = nn.Sequential(*_conv_bn_act(hid, oup, 1, act=False))
        self.use_shortcut = inp == oup and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = self.dw(self.expand(x))
        y = y * F.hardsigmoid(self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        y = self.project(y)
        return y + x if self.use_shortcut else y


class ScaleNetModel(StemBlocksHeadSurface, nn.Module):
    """A ScaleNet encoding as a standalone network (spec section 2.7).

    Module names: ``stem``, ``blocks.{i}`` (one ``nn.Sequential`` per stage holding its active layers; a skipped
    layer is absent, or a 1x1 conv + BN where it changes the stride or width), ``head_conv`` (``conv_out``),
    ``global_pool``, ``fc``. ``feature_info`` lists the stem and the end of every stage. Initialisation as the
    official ``_init_params``: conv ``N(0, sqrt(2 / (k * k * out)))``, BN 1 / 0, Linear ``N(0, 0.01)``, biases 0.

    Args:
        encoding: ``ops + [c_m, resolution]``: one op index per choice block of the layout (stem, every stage
            layer, ``conv_out``, pool, head; the single-choice blocks must be 0), then the width multiplier and the
            input resolution (pixels; stored as :attr:`resolution`, the head pools globally so any size runs).
        stages: per stage ``(layers, stride, c_out, expand t)``; the stride applies to the first layer.
        stem_chs: stem output channels before scaling (3x3 conv, stride ``stem_stride``).
        head_chs: output channels of the final 1x1 conv (not scaled).
        ops: op names of the stage layers, index 0 must be ``"id"``.
        num_classes: classifier outputs (0: no classifier, :meth:`forward` returns pooled features).
        stem_stride: stride of the stem conv.
        in_chans: image channels.
        global_pool: timm pooling type (``"avg"``, or ``""`` for none with ``num_classes=0``).
        drop_rate: dropout before the classifier (the official network has none).

    Raises:
        ValueError: the encoding does not fit the layout, or the op names are unknown.
    """

    def __init__(
        self,
        encoding: Sequence[Any] = tuple(_PAPER_DEFAULT),
        stages: Sequence[Sequence[int]] = PAPER_LAYOUT["stages"],
        stem_chs: int = PAPER_LAYOUT["stem_chs"],
        head_chs: int = PAPER_LAYOUT["head_chs"],
        ops: Sequence[str] = PAPER_LAYOUT["ops"],
        num_classes: int = 1000,
        stem_stride: int = 2,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        ops = tuple(ops)
        if not ops or ops[0] != "id" or any(op not in OP_KERNELS for op in ops):
            raise ValueError(f"ops must start with 'id' and be among {sorted(OP_KERNELS)}, got {ops}")
        n_blocks = 1 + sum(int(s[0]) for s in stages) + 3
        if len(encoding) != n_blocks + 2:
            raise ValueError(f"encoding has {len(encoding)} entries, expected {n_blocks} op indices + [c_m, r]")
        codes = encoding[:-2]
        for i, op in enumerate(codes):
            choices = len(ops) if 0 < i < n_blocks - 3 else 1
            if int(op) != op or not 0 <= int(op) < choices:
                raise ValueError(f"encoding[{i}] = {op} is not an op index in [0, {choices})")
        c_m = float(encoding[-2])
        if not c_m > 0 or int(encoding[-1]) <= 0:
            raise ValueError(f"encoding needs c_m > 0 and resolution > 0, got {list(encoding[-2:])}")
        self.encoding = [*(int(v) for v in codes), c_m, int(encoding[-1])]
        self.resolution = int(encoding[-1])
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        c = int(math.ceil(stem_chs * c_m))
        self.stem = nn.Sequential(*_conv_bn_act(in_chans, c, 3, stem_stride))
        reduction = stem_stride
        self.feature_info = [dict(num_chs=c, reduction=reduction, module="stem")]
        c_base, pos = stem_chs, 1
        stage_modules = []
        for i, (n_layers, stride, c_out, t) in enumerate(stages):
            layers: list[nn.Module] = []
            oup = int(math.ceil(c_out * c_m))
            for j in range(n_layers):
                s = stride if j == 0 else 1
                k = OP_KERNELS[ops[int(codes[pos + j])]]
                if k:
                    hid = int(math.ceil(int(round(c_base * t)) * c_m))
                    layers.append(_MBConv(c, hid, oup, k, s, t != 1))
                elif s != 1 or c != oup:
                    layers.append(nn.Sequential(*_conv_bn_act(c, oup, 1, s, act=False)))
                else:
                    continue
                c, c_base = oup, c_out
            pos += n_layers
            stage_modules.append(nn.Sequential(*layers))
            reduction *= stride
            self.feature_info.append(dict(num_chs=c, reduction=reduction, module=f"blocks.{i}"))
        self.blocks = nn.Sequential(*stage_modules)
        self.num_features = self.head_hidden_size = head_chs
        self.head_conv = nn.Sequential(*_conv_bn_act(c, head_chs, 1))
        self.global_pool, self.fc = create_classifier(head_chs, num_classes, pool_type=global_pool)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)


def _create_scalenet(variant: str, layout: dict[str, Any], pretrained: bool = False, **kwargs: Any) -> ScaleNetModel:
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
        if not cfg.file:
            raise ValueError(
                f"{variant} has no released weights; load a network trained here with timm.create_model({variant!r}, "
                "pretrained=True, pretrained_cfg_overlay=dict(file=PATH), encoding=[...]), or use pretrained=False"
            )
        if not Path(cfg.file).is_file():
            raise FileNotFoundError(f"{variant} weight file {cfg.file!r} does not exist")
    arch = {**layout, **kwargs}
    feature_cfg = dict(feature_cls="getter", out_indices=tuple(range(len(arch["stages"]) + 1)))
    return build_model_with_cfg(ScaleNetModel, variant, pretrained, feature_cfg=feature_cfg, **arch)


def _cfg(input_size: tuple[int, int, int], num_classes: int, **kwargs: Any) -> dict[str, Any]:
    return {"num_classes": num_classes, "input_size": input_size, "crop_pct": 0.875, "interpolation": "bilinear",
            "first_conv": "stem.0", "classifier": "fc", "paper_ids": "arXiv:2207.07267", **kwargs}  # fmt: skip


default_cfgs = generate_default_cfgs(
    {
        # the official normalisation (0-255 values: mean 123.675, 116.28, 103.53; std 58.395, 57.12, 57.375)
        "scalenet_searched": _cfg((3, 224, 224), 1000, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        "scalenet_tiny_searched": _cfg((3, 16, 16), 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
    }
)


@register_model
def scalenet_searched(pretrained: bool = False, **kwargs: Any) -> ScaleNetModel:
    """A network of the paper's ScaleNet space; ``encoding`` (43 op indices + ``[c_m, r]``) chooses it."""
    return _create_scalenet("scalenet_searched", {**PAPER_LAYOUT, "encoding": _PAPER_DEFAULT}, pretrained, **kwargs)


@register_model
def scalenet_tiny_searched(pretrained: bool = False, **kwargs: Any) -> ScaleNetModel:
    """A network of the CPU demonstration space; ``encoding`` (16 op indices + ``[c_m, r]``) chooses it."""
    layout = {**TINY_LAYOUT, "encoding": _TINY_DEFAULT}
    return _create_scalenet("scalenet_tiny_searched", layout, pretrained, **kwargs)
