"""ScaleNet (Xie et al., ECCV 2022): search space, weight-sharing super-supernet, sampler, FLOPs and export.

Pure PyTorch part of the method (spec ``/work/shared/specs/scalenet.md``): the joint base/scaling search and the
Lightning training task build on these pieces.

* :class:`ScaleNetSpace` describes the base-model space (stage rows, ops, expand ratios) and the scaling space
  (depth / width multipliers and resolutions per scaling stage, FLOPs targets). ``paper()`` is the official
  ImageNet configuration, ``tiny()`` the CPU demonstration of spec section 7 (with scaling lists that reach the
  FLOPs targets; ``tiny_spec()`` keeps the spec's lists).
* :class:`ScaleNetSuperNet` is the super-supernet with the official "n-laterally coupled" slicing: every dynamic
  conv / BN module keeps its own counter and alternates between the leading and trailing weight slices each time
  it is called (spec 2.2). Its ``state_dict`` keys equal the official ones without the DDP ``module.`` prefix,
  see :func:`official_state_dict`.
* :func:`sample_subnet` is the hierarchical sampler (spec 2.3), :func:`check_basenet` / :func:`scale_basenet` the
  official encoding repair and scaling (spec 2.6), :func:`official_flops` the official (inexact) multiply-add
  counter and :func:`true_flops` the count of the real forward, :func:`family_score` the family score (spec 2.5).
* :func:`scalenet_from_encoding` builds a found encoding as a standalone network (spec 2.7), the
  timm-registered :class:`tenfold.models.scalenet.ScaleNetModel` (re-exported here).

An encoding is a list of one op index per choice block (43 in the paper space; 0 = ``id`` = layer skipped)
followed by ``[c_m, resolution]``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tenfold.models.scalenet import OP_KERNELS, ScaleNetModel
from tenfold.utils.flops import count_flops

__all__ = [
    "ScaleNetModel",
    "ScaleNetSpace",
    "ScaleNetSuperNet",
    "StageRow",
    "at_resolution",
    "check_basenet",
    "evaluate_candidate",
    "evaluate_candidates",
    "family_score",
    "is_feasible",
    "official_flops",
    "official_lr_factor",
    "official_param_groups",
    "official_state_dict",
    "proxy_logits",
    "s_softmax_loss",
    "sample_subnet",
    "scale_basenet",
    "scaling_values",
    "scalenet_from_encoding",
    "space_from_name",
    "true_flops",
]


@dataclass(frozen=True)
class StageRow:
    """One searchable stage: ``n_base`` layers, stride on the first, channels ``c_in -> c_out``, expand ratio ``t``."""

    name: str
    n_base: int
    stride: int
    c_in: int
    c_out: int
    t: int


@dataclass(frozen=True)
class ScaleNetSpace:
    """Base-model space plus scaling space of ScaleNet.

    Attributes:
        stem_out: Output channels of the 3x3 stride-``stem_stride`` stem (input has ``in_chans`` channels).
        stages: The searchable stages, in order.
        conv_out: Output channels of the final 1x1 conv (never sliced).
        num_classes: Classifier outputs.
        ops: Op names of every searchable block; index 0 must be ``"id"``.
        depth_multipliers: Per scaling stage, the allowed depth multipliers (stage 0 = ``(1.0,)``).
        width_multipliers: Per scaling stage, the allowed width multipliers.
        resolutions: Per scaling stage, the allowed input resolutions (pixels).
        flops_constraint: Base FLOPs target (multiply-adds); stage ``s`` targets ``flops_constraint * 2**s``.
        err_base: Base-model FLOPs tolerance (official hard-coded 25e6).
        err_scale: Scaling-strategy FLOPs tolerance (official hard-coded 50e6).
        n_coupling: ``n`` of the n-laterally coupled slicing (official 2; 0 or 1 = always leading slice).
        stem_stride: Stride of the stem conv.
        in_chans: Input image channels.
    """

    stem_out: int
    stages: tuple[StageRow, ...]
    conv_out: int
    num_classes: int
    ops: tuple[str, ...] = ("id", "ir_3x3_se", "ir_5x5_se", "ir_7x7_se")
    depth_multipliers: tuple[tuple[float, ...], ...] = ((1.0,),)
    width_multipliers: tuple[tuple[float, ...], ...] = ((1.0,),)
    resolutions: tuple[tuple[int, ...], ...] = ((224,),)
    flops_constraint: float = 306e6
    err_base: float = 25e6
    err_scale: float = 50e6
    n_coupling: int = 2
    stem_stride: int = 2
    in_chans: int = 3

    def __post_init__(self) -> None:
        if self.ops[0] != "id" or any(op not in OP_KERNELS for op in self.ops):
            raise ValueError(f"ops must start with 'id' and be among {sorted(OP_KERNELS)}, got {self.ops}")
        n = len(self.width_multipliers)
        if len(self.depth_multipliers) != n or len(self.resolutions) != n:
            raise ValueError(
                "depth_multipliers, width_multipliers and resolutions need one list per scaling stage, got "
                f"{len(self.depth_multipliers)}, {n}, {len(self.resolutions)}"
            )

    @classmethod
    def paper(cls) -> ScaleNetSpace:
        """The official ImageNet space (``config/training_super_supernet.yaml``)."""
        rows = [(1, 1, 32, 16, 1), (4, 2, 16, 32, 6), (4, 2, 32, 40, 6), (4, 2, 40, 80, 6), (4, 1, 80, 96, 6)]
        rows += [(4, 2, 96, 192, 6), (1, 1, 192, 320, 6)]
        stages = tuple(StageRow(f"stage{i + 1}", *r) for i, r in enumerate(rows))
        mult = ((1.0,), (1.04, 1.08, 1.12, 1.16), (1.20, 1.24, 1.28, 1.32, 1.36))
        mult += (tuple(round(1.40 + 0.04 * i, 2) for i in range(7)),)
        return cls(
            stem_out=32,
            stages=stages,
            conv_out=1280,
            num_classes=1000,
            depth_multipliers=mult,
            width_multipliers=mult,
            resolutions=((224,), (224, 240, 256), (272, 288, 304), (320, 336, 354)),
        )

    @classmethod
    def tiny(cls, num_classes: int = 10, flops_constraint: float = 0.0) -> ScaleNetSpace:
        """The CPU demonstration space of spec section 7 with scaling lists that reach the FLOPs targets.

        Base space as in the spec (stem 8, 3 stages of ``n_base`` 2 with 8 / 16 / 24 channels, t = 3, ops id / ir3 /
        ir5 with SE, conv_out 64, digits at 16 px). With the spec's lists ({1.25, 1.5} / {1.75, 2.0} for depth and
        width, resolutions {16, 20} / {20, 24}, kept as :meth:`tiny_spec`) every stage-1 member has >= 2.08x and
        every stage-2 member >= 6.55x its base's MAdds: under the 10 % / 20 % tolerances 57 of the 75 feasible
        bases have no feasible stage-1 member and none has a stage-2 one. Measured over all 75 feasible bases
        (216 distinct repaired bases; official counter, F0 = the median base, 187.3k), these lists give every
        base 4-6 stage-1 triples within ``err_base`` of 2 F(b) and 3-7 stage-2 triples within ``err_base`` of
        4 F(b) (8-12 / 8-13 within ``err_scale``), trading depth, width and resolution (docs/scalenet.md):

        * stage 1: depth {1.0, 1.5}, width {1.0, 1.125, 1.25, 1.375}, resolution {16, 18, 20};
        * stage 2: depth {1.5, 2.0}, width {1.5, 1.625, 1.75, 2.0}, resolution {16, 18, 20}.

        Depth 1.0 is allowed in stage 1 because ``ceil`` depth scaling adds a layer to every stage for any
        ``d_m > 1`` (already ~1.5x the MAdds); depth values are one per ``ceil`` class (1.25 would equal 1.5, 1.75
        equal 2.0) so that no grid point is a FLOPs-neutral duplicate. Odd resolutions are avoided (the official
        counter's ``(w + 2p - k + 1) // stride`` under-counts them). The largest multipliers (2.0 / 2.0) are the
        spec's, so super widths, super depths and the state_dict equal :meth:`tiny_spec`'s, and the timm layout
        ``scalenet_tiny_searched`` (4 choice blocks per stage) fits both.

        Args:
            num_classes: Classifier outputs.
            flops_constraint: Base FLOPs target F0; the demo sets it to the median base FLOPs (0 = not set yet).
        """
        return replace(
            cls.tiny_spec(num_classes, flops_constraint),
            depth_multipliers=((1.0,), (1.0, 1.5), (1.5, 2.0)),
            width_multipliers=((1.0,), (1.0, 1.125, 1.25, 1.375), (1.5, 1.625, 1.75, 2.0)),
            resolutions=((16,), (16, 18, 20), (16, 18, 20)),
        )

    @classmethod
    def tiny_spec(cls, num_classes: int = 10, flops_constraint: float = 0.0) -> ScaleNetSpace:
        """The tiny space with spec section 7's scaling lists, as run through the official code for the fixtures.

        Depth / width {1.0}, {1.25, 1.5}, {1.75, 2.0}; resolutions {16}, {16, 20}, {20, 24}. Its scaled members
        overshoot the FLOPs targets (see :meth:`tiny`); kept for the parity tests (the sampler's random stream
        depends on the lists) and as ``space_from_name("tiny_spec")``.

        Args:
            num_classes: Classifier outputs.
            flops_constraint: Base FLOPs target F0 (0 = not set yet); tolerances 10 % / 20 % of it.
        """
        stages = (
            StageRow("stage1", 2, 1, 8, 8, 3),
            StageRow("stage2", 2, 2, 8, 16, 3),
            StageRow("stage3", 2, 2, 16, 24, 3),
        )
        return cls(
            stem_out=8,
            stages=stages,
            conv_out=64,
            num_classes=num_classes,
            ops=("id", "ir_3x3_se", "ir_5x5_se"),
            depth_multipliers=((1.0,), (1.25, 1.5), (1.75, 2.0)),
            width_multipliers=((1.0,), (1.25, 1.5), (1.75, 2.0)),
            resolutions=((16,), (16, 20), (20, 24)),
            flops_constraint=flops_constraint,
            err_base=0.1 * flops_constraint,
            err_scale=0.2 * flops_constraint,
        )

    @property
    def max_scaling_stage(self) -> int:
        """Index of the last scaling stage."""
        return len(self.width_multipliers) - 1

    @property
    def max_width(self) -> float:
        """Largest width multiplier of the last scaling stage (sets the super widths)."""
        return max(self.width_multipliers[-1])

    @property
    def max_depth(self) -> float:
        """Largest depth multiplier of the last scaling stage (sets the super depths)."""
        return max(self.depth_multipliers[-1])

    def super_channels(self, c: int) -> int:
        """Stored channel count of a stage of base width ``c``: ``ceil(c * max_width) + c`` (official)."""
        return int(math.ceil(c * self.max_width)) + c

    @property
    def depth_stage(self) -> list[tuple[int, int]]:
        """Per block group ``(n_base, n_max)``: stem, stages, conv_out, pool, head (official ``depth_stage``)."""
        rows = [(r.n_base, int(math.ceil(r.n_base * self.max_depth))) for r in self.stages]
        return [(1, 1), *rows, (1, 1), (1, 1), (1, 1)]

    @property
    def num_blocks(self) -> int:
        """Number of choice blocks (length of the op part of an encoding)."""
        return sum(n for _, n in self.depth_stage)

    def block_choices(self) -> list[int]:
        """Number of ops of every choice block."""
        return [
            len(self.ops) if 0 < g < len(self.stages) + 1 else 1
            for g, (_, n) in enumerate(self.depth_stage)
            for _ in range(n)
        ]

    def model_kwargs(self) -> dict[str, Any]:
        """The layout arguments of :class:`~tenfold.models.scalenet.ScaleNetModel` for encodings of this space."""
        stages = tuple(
            (n_max, r.stride, r.c_out, r.t) for r, (_, n_max) in zip(self.stages, self.depth_stage[1:], strict=False)
        )
        return {
            "stages": stages,
            "stem_chs": self.stem_out,
            "head_chs": self.conv_out,
            "ops": self.ops,
            "num_classes": self.num_classes,
            "stem_stride": self.stem_stride,
            "in_chans": self.in_chans,
        }

    def validate(self, encoding: Sequence[Any]) -> None:
        """Raise ``ValueError`` naming the problem if ``encoding`` is not ``ops + [c_m, resolution]`` of this space."""
        if len(encoding) != self.num_blocks + 2:
            raise ValueError(f"encoding has {len(encoding)} entries, expected {self.num_blocks} op indices + [c_m, r]")
        for i, (op, n) in enumerate(zip(encoding[:-2], self.block_choices(), strict=True)):
            if not 0 <= int(op) < n or int(op) != op:
                raise ValueError(f"encoding[{i}] = {op} is not an op index in [0, {n})")
        if not float(encoding[-2]) > 0 or int(encoding[-1]) <= 0:
            raise ValueError(f"encoding needs c_m > 0 and resolution > 0, got {encoding[-2:]}")


# --------------------------------------------------------------------------------------------------------------
# Super-supernet
# --------------------------------------------------------------------------------------------------------------


def hswish(x: torch.Tensor) -> torch.Tensor:
    """Official HSwish ``x * relu6(x + 3) / 6``.

    ``F.hardswish`` gives the same forward values but its fused backward rounds differently (about 1e-9 of the
    gradient scale after a few layers), so the official composition is kept for gradient parity.
    """
    return x * F.relu6(x + 3) / 6


def hsigmoid(x: torch.Tensor) -> torch.Tensor:
    """Official HSigmoid ``relu6(x + 3) / 6`` (composition kept for gradient parity, see :func:`hswish`)."""
    return F.relu6(x + 3) / 6


class _Coupled:
    """Mixin: per-module counter of the n-laterally coupled slicing, toggled on every call."""

    n: int
    idx: int

    def _trailing(self) -> bool:
        trailing = self.idx % 2 == 1
        if self.n > 0:
            self.idx = (self.idx + 1) % self.n
        return trailing


class DynamicConv2d(nn.Conv2d, _Coupled):
    """Conv2d using a leading or trailing slice of its weight, alternating per call (official ``DynamicConv2d``).

    Depthwise convs (``groups > 1``) slice ``in_c`` filters and use ``groups = in_c``.
    """

    def __init__(self, *args: Any, n: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n = n
        self.idx = 0

    def forward(self, x: torch.Tensor, out_c: int | None = None) -> torch.Tensor:  # type: ignore[override]
        in_c = x.shape[1]
        out_c = self.out_channels if out_c is None else out_c
        trailing = self._trailing()
        if self.groups == 1:
            o0, i0 = (self.out_channels - out_c, self.in_channels - in_c) if trailing else (0, 0)
            w = self.weight[o0 : o0 + out_c, i0 : i0 + in_c]
            b = None if self.bias is None else self.bias[o0 : o0 + out_c]
            groups = 1
        else:
            o0 = self.in_channels - in_c if trailing else 0
            w = self.weight[o0 : o0 + in_c]
            b = None if self.bias is None else self.bias[o0 : o0 + in_c]
            groups = in_c
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, groups)


class DynamicBatchNorm2d(nn.BatchNorm2d, _Coupled):
    """BatchNorm2d on a leading or trailing channel slice, alternating per call; running stats updated in place."""

    def __init__(self, num_features: int, n: int = 2) -> None:
        super().__init__(num_features)
        self.n = n
        self.idx = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        s = self.num_features - c if self._trailing() else 0
        return F.batch_norm(
            x,
            self.running_mean[s : s + c],
            self.running_var[s : s + c],
            self.weight[s : s + c],
            self.bias[s : s + c],
            self.training or not self.track_running_stats,
            factor,
            self.eps,
        )


class _ConvOp(nn.Module):
    """Stem (3x3) / conv_out (1x1): conv -> BN -> HSwish; ``fixed_out`` keeps all outputs (conv_out)."""

    def __init__(self, inp: int, oup: int, oup_base: int, k: int, stride: int, n: int, fixed_out: bool) -> None:
        super().__init__()
        self.oup_base, self.fixed_out = oup_base, fixed_out
        self.conv = DynamicConv2d(inp, oup, k, stride, k // 2, bias=False, n=n)
        self.bn = DynamicBatchNorm2d(oup, n=n)

    def forward(self, x: torch.Tensor, c_m: float) -> torch.Tensor:
        out_c = None if self.fixed_out else int(math.ceil(self.oup_base * c_m))
        return hswish(self.bn(self.conv(x, out_c)))


class _SqueezeExcite(nn.Module):
    """SE with the squeeze width computed from the current input width (``C // 4``)."""

    def __init__(self, c: int, n: int) -> None:
        super().__init__()
        self.squeeze_conv = DynamicConv2d(c, c // 4, 1, bias=True, n=n)
        self.excite_conv = DynamicConv2d(c // 4, c, 1, bias=True, n=n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        s = x.mean((2, 3), keepdim=True)
        s = self.excite_conv(F.relu(self.squeeze_conv(s, c // 4)), c)
        return x * hsigmoid(s)


class _InvertedResidual(nn.Module):
    """MBConv-SE: [1x1 expand -> BN -> HSwish] -> kxk dw -> BN -> HSwish -> SE -> 1x1 -> BN (+ residual)."""

    def __init__(self, inp: int, oup: int, inp_base: int, oup_base: int, t: int, k: int, stride: int, n: int):
        super().__init__()
        self.t, self.inp_base, self.oup_base = t, inp_base, oup_base
        hid = int(round(inp * t))
        if t == 1:
            self.conv1 = DynamicConv2d(hid, hid, k, stride, k // 2, groups=hid, bias=False, n=n)
            self.bn1 = DynamicBatchNorm2d(hid, n=n)
        else:
            self.conv1 = DynamicConv2d(inp, hid, 1, 1, 0, bias=False, n=n)
            self.bn1 = DynamicBatchNorm2d(hid, n=n)
            self.conv1_2 = DynamicConv2d(hid, hid, k, stride, k // 2, groups=hid, bias=False, n=n)
            self.bn1_2 = DynamicBatchNorm2d(hid, n=n)
        self.se = _SqueezeExcite(hid, n)
        self.conv2 = DynamicConv2d(hid, oup, 1, 1, 0, bias=False, n=n)
        self.bn2 = DynamicBatchNorm2d(oup, n=n)
        self.use_shortcut = inp == oup and stride == 1

    def forward(self, x: torch.Tensor, c_m: float) -> torch.Tensor:
        hid = int(math.ceil(int(round(self.inp_base * self.t)) * c_m))
        y = hswish(self.bn1(self.conv1(x, hid)))
        if self.t != 1:
            y = hswish(self.bn1_2(self.conv1_2(y)))
        y = self.bn2(self.conv2(self.se(y), int(math.ceil(self.oup_base * c_m))))
        return y + x if self.use_shortcut else y


class _Identity(nn.Module):
    """``id`` op: identity, or 1x1 conv + BN when the stride or the channel count changes."""

    def __init__(self, inp: int, oup: int, oup_base: int, stride: int, n: int) -> None:
        super().__init__()
        self.oup_base = oup_base
        self.downsample = stride != 1 or inp != oup
        if self.downsample:
            self.conv = DynamicConv2d(inp, oup, 1, stride, bias=False, n=n)
            self.bn = DynamicBatchNorm2d(oup, n=n)

    def forward(self, x: torch.Tensor, c_m: float) -> torch.Tensor:
        if self.downsample:
            x = self.bn(self.conv(x, int(math.ceil(self.oup_base * c_m))))
        return x


class _Pool(nn.Module):
    def forward(self, x: torch.Tensor, c_m: float) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1)


class _Head(nn.Module):
    """Linear classifier stored as ``module.0`` (official ``FC`` key layout)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.module = nn.Sequential(nn.Linear(dim_in, dim_out))

    def forward(self, x: torch.Tensor, c_m: float) -> torch.Tensor:
        return self.module(x.flatten(1))


class ScaleNetSuperNet(nn.Module):
    """The weight-sharing super-supernet of a :class:`ScaleNetSpace` (official ``Net``).

    Blocks live in ``self.net`` under the official names (``backbone_conv_stem_0``, ``backbone_stage2_3``, ...,
    ``backbone_final_pooling``, ``head_linear1``), each a ``ModuleList`` of its ops.

    Args:
        space: The search space.
        init: Apply the official initialisation (in module order, like the official ``_init_params``).
    """

    def __init__(self, space: ScaleNetSpace, init: bool = True) -> None:
        super().__init__()
        self.space = space
        n = space.n_coupling
        self.net = nn.ModuleList()
        sup = space.super_channels
        self.net.add_module(
            "backbone_conv_stem_0",
            nn.ModuleList(
                [_ConvOp(space.in_chans, sup(space.stem_out), space.stem_out, 3, space.stem_stride, n, False)]
            ),
        )
        inp_base = space.stem_out
        for row, (_, n_max) in zip(space.stages, space.depth_stage[1:], strict=False):
            inp = sup(inp_base)
            for i in range(n_max):
                stride = row.stride if i == 0 else 1
                ops: list[nn.Module] = []
                for op in space.ops:
                    if op == "id":
                        ops.append(_Identity(inp, sup(row.c_out), row.c_out, stride, n))
                    else:
                        k = OP_KERNELS[op]
                        ops.append(_InvertedResidual(inp, sup(row.c_out), inp_base, row.c_out, row.t, k, stride, n))
                self.net.add_module(f"backbone_{row.name}_{i}", nn.ModuleList(ops))
                inp, inp_base = sup(row.c_out), row.c_out
        last = space.stages[-1].c_out
        self.net.add_module(
            "backbone_conv_out_0", nn.ModuleList([_ConvOp(sup(last), space.conv_out, space.conv_out, 1, 1, n, True)])
        )
        self.net.add_module("backbone_final_pooling", nn.ModuleList([_Pool()]))
        self.net.add_module("head_linear1", nn.ModuleList([_Head(space.conv_out, space.num_classes)]))
        if init:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: conv ``N(0, sqrt(2 / (k*k*out)))`` on super shapes, bias 0; BN 1/0; Linear ``N(0, 0.01)``."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                if m.bias is not None:
                    m.bias.data.zero_()

    def reset_bn(self) -> None:
        """Official ``reset_bn``: running stats reset (the slicing counters are left as they are)."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()

    def reset_counters(self) -> None:
        """Set every slicing counter back to 0 (leading slice next)."""
        for m in self.modules():
            if isinstance(m, _Coupled):
                m.idx = 0

    def coupling_state(self) -> list[int]:
        """The slicing counters of every coupled module, in module order (saved with training checkpoints)."""
        return [m.idx for m in self.modules() if isinstance(m, _Coupled)]

    def load_coupling_state(self, state: Sequence[int]) -> None:
        """Restore :meth:`coupling_state`.

        Raises:
            ValueError: ``state`` has another length than the number of coupled modules.
        """
        mods = [m for m in self.modules() if isinstance(m, _Coupled)]
        if len(state) != len(mods):
            raise ValueError(f"coupling state has {len(state)} counters, the supernet has {len(mods)} coupled modules")
        for m, v in zip(mods, state, strict=True):
            m.idx = int(v)

    def set_subnet(self, encoding: Sequence[Any]) -> None:
        """Official ``set_subnet``: ``requires_grad`` only on the selected op of every block."""
        for block, idx in zip(self.net, encoding[: len(self.net)], strict=True):
            for j, op in enumerate(block):
                op.requires_grad_(j == int(idx))

    def forward(self, x: torch.Tensor | Mapping[int, torch.Tensor], encoding: Sequence[Any]) -> torch.Tensor:
        """Logits of the sub-network ``encoding`` (ops + ``[c_m, r]``); ``x`` a batch or ``{resolution: batch}``."""
        if len(encoding) != len(self.net) + 2:
            raise ValueError(f"encoding has {len(encoding)} entries, expected {len(self.net)} op indices + [c_m, r]")
        if isinstance(x, Mapping):
            r = int(encoding[-1])
            if r not in x:
                raise KeyError(f"resolution {r} of the encoding not among the input resolutions {sorted(x)}")
            x = x[r]
        c_m = float(encoding[-2])
        for idx, block in zip(encoding[:-2], self.net, strict=True):
            x = block[int(idx)](x, c_m)
        return x


def official_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The one filter between an official checkpoint and :class:`ScaleNetSuperNet`: strip the DDP ``module.`` prefix.

    Accepts the checkpoint dict (``{'step', 'state_dict', 'optimizer'}``) or its ``state_dict``.
    """
    sd = checkpoint.get("state_dict", checkpoint)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def s_softmax_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Official ``'s-softmax'``: target 0.9 on the label, ``0.1 / (C - 1)`` elsewhere, summed over classes / batch.

    As official, the soft targets are built in float32 and then cast to the logits' dtype.
    """
    b, c = logits.shape
    q = torch.full((b, c), 0.1 / (c - 1), dtype=torch.float32, device=logits.device)
    q.scatter_(1, labels.long().unsqueeze(1).to(logits.device), 0.9)
    return -(F.log_softmax(logits, 1) * q.to(logits.dtype)).sum() / b


# --------------------------------------------------------------------------------------------------------------
# Sampling, repair, scaling
# --------------------------------------------------------------------------------------------------------------


def _float32(x: float) -> float:
    return float(np.float32(x))


def sample_subnet(space: ScaleNetSpace, rng: random.Random) -> list[Any]:
    """Hierarchical sampler of super-supernet training (official ``UniformSearcher.generate_subnet``).

    Same sequence of ``rng.randint`` calls as the official code (which uses the global ``random``): scaling stage
    with probability proportional to its number of width options, then ``c_m``, ``d_m``, ``r``, then an op in
    ``1..len-1`` for every multi-choice block, then a base depth per group; scaled layers repeat the last base op.
    ``c_m`` is rounded through float32 as the official broadcast does.
    """
    sizes = [len(w) for w in space.width_multipliers]
    u = rng.randint(0, sum(sizes) - 1)
    s = next(i for i in range(len(sizes)) if u < sum(sizes[: i + 1]))
    c_m = space.width_multipliers[s][rng.randint(0, len(space.width_multipliers[s]) - 1)]
    d_m = space.depth_multipliers[s][rng.randint(0, len(space.depth_multipliers[s]) - 1)]
    r = space.resolutions[s][rng.randint(0, len(space.resolutions[s]) - 1)]
    ops = [rng.randint(1, n - 1) if n > 1 else 0 for n in space.block_choices()]
    out: list[int] = []
    for n_b_max, n_max in space.depth_stage:
        start = len(out)
        if n_b_max == n_max:
            out.append(ops[start])
            continue
        n_b = rng.randint(1, n_b_max)
        n_s = int(math.ceil(n_b * d_m))
        out += ops[start : start + n_b] + [ops[start + n_b - 1]] * (n_s - n_b) + [0] * (n_max - n_s)
    return out + [_float32(c_m), int(r)]


def _groups(space: ScaleNetSpace, ops: Sequence[int]) -> list[list[int]]:
    out, i = [], 0
    for _, n_max in space.depth_stage:
        out.append(list(ops[i : i + n_max]))
        i += n_max
    return out


def check_basenet(space: ScaleNetSpace, basenet: Sequence[int]) -> list[int]:
    """Official repair of a base encoding (``EvolutionSampler.check_basenet``), ops only.

    For every stage with ``n_base > 1``: first layer forced to >= 1, then one pass moving each non-``id`` op into
    the most recent hole (not a full compaction: ``[1, 0, 2, 3] -> [1, 2, 0, 3]``); finally every position beyond
    ``n_base`` is zeroed.
    """
    if len(basenet) != space.num_blocks:
        raise ValueError(f"base encoding has {len(basenet)} ops, expected {space.num_blocks}")
    groups = _groups(space, [int(v) for v in basenet])
    for g, (n_base, _) in zip(groups, space.depth_stage, strict=True):
        if n_base > 1:
            if g[0] == 0:
                g[0] = 1
            hole = -1
            for j in range(n_base):
                if g[j] > 0 and hole != -1:
                    g[hole], g[j], hole = g[j], 0, -1
                elif g[j] == 0 and hole == -1:
                    hole = j
    for g, (n_base, n_max) in zip(groups, space.depth_stage, strict=True):
        if n_base != n_max:
            g[n_base:] = [0] * (n_max - n_base)
    return [v for g in groups for v in g]


def scaling_values(space: ScaleNetSpace, stage: int, index: Sequence[int] | None) -> tuple[float, float, int]:
    """``(d_m, c_m, r)`` of a (depth, width, resolution) index triple in scaling stage ``stage`` (0 -> 1, 1, r0)."""
    if stage == 0:
        return 1.0, 1.0, space.resolutions[0][0]
    if index is None or len(index) != 3:
        raise ValueError(f"scaling stage {stage} needs a (depth, width, resolution) index triple, got {index}")
    d, w, r = index
    return space.depth_multipliers[stage][d], space.width_multipliers[stage][w], space.resolutions[stage][r]


def scale_basenet(space: ScaleNetSpace, basenet: Sequence[int], d_m: float, c_m: float, resolution: int) -> list[Any]:
    """Official ``generate_subnet_``: repair, then per stage ``n_s = ceil(n_b * d_m)`` copies of the last base op.

    ``n_b`` counts the leading non-``id`` layers; a stray op after a hole stays active.
    """
    groups = _groups(space, check_basenet(space, basenet))
    for g, (n_base, _) in zip(groups, space.depth_stage, strict=True):
        if len(g) > 1:
            n_b = 0
            for j in range(n_base):
                if g[j] <= 0:
                    break
                n_b += 1
            n_s = int(math.ceil(n_b * d_m))
            g[n_b:n_s] = [g[n_b - 1]] * (n_s - n_b)
    return [v for g in groups for v in g] + [c_m, resolution]


# --------------------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------------------


def _layer_rows(space: ScaleNetSpace) -> list[tuple[str, StageRow | None, int]]:
    """Per choice block: kind ('stem', 'stage', 'conv_out', 'pool', 'head'), its stage row, layer index."""
    rows: list[tuple[str, StageRow | None, int]] = [("stem", None, 0)]
    for row, (_, n_max) in zip(space.stages, space.depth_stage[1:], strict=False):
        rows += [("stage", row, i) for i in range(n_max)]
    return rows + [("conv_out", None, 0), ("pool", None, 0), ("head", None, 0)]


def official_flops(space: ScaleNetSpace, encoding: Sequence[Any]) -> int:
    """Official multiply-add counter (``EvolutionSampler.count_flops``), with its inexactness kept.

    Hidden width ``round(ceil(C_in * c_m) * t)``, output size ``(w + 2p - k + 1) // stride``, ``id`` ops count 0
    and leave the size unchanged; BN, activations, pooling and biases are ignored; SE convs count ``C_in * C_out``.
    """
    space.validate(encoding)
    c_m, w = float(encoding[-2]), int(encoding[-1])
    total = 0

    def conv(inp: int, oup: int, k: int, stride: int, groups: int) -> None:
        nonlocal total, w
        w = (w + 2 * (k // 2) - k + 1) // stride
        total += inp * oup * w * w // groups * k * k

    prev_base = space.stem_out
    for (kind, row, i), op in zip(_layer_rows(space), encoding[:-2], strict=True):
        if kind == "stem":
            conv(space.in_chans, int(math.ceil(space.stem_out * c_m)), 3, space.stem_stride, 1)
        elif kind == "stage":
            assert row is not None
            inp_base = prev_base if i == 0 else row.c_out
            k = OP_KERNELS[space.ops[int(op)]]
            if k:
                inp = int(math.ceil(inp_base * c_m))
                hid = int(round(inp * row.t))
                oup = int(math.ceil(row.c_out * c_m))
                stride = row.stride if i == 0 else 1
                if row.t != 1:
                    conv(inp, hid, 1, 1, 1)
                conv(hid, hid, k, stride, hid)
                total += 2 * hid * (hid // 4)
                conv(hid, oup, 1, 1, 1)
            if i == 0:
                prev_base = row.c_out
        elif kind == "conv_out":
            conv(int(math.ceil(space.stages[-1].c_out * c_m)), space.conv_out, 1, 1, 1)
        elif kind == "head":
            total += space.conv_out * space.num_classes
    return int(total)


def true_flops(model: nn.Module, resolution: int, in_chans: int = 3) -> int:
    """Multiply-adds of the real forward of a standalone network at ``resolution`` (via ``tenfold.utils.flops``)."""
    was = model.training
    model.eval()
    try:
        macs = count_flops(model, torch.zeros(1, in_chans, resolution, resolution)).macs
    finally:
        model.train(was)
    return int(macs)


def is_feasible(
    space: ScaleNetSpace,
    basenet: Sequence[int],
    scaled: Sequence[Any] | None,
    stage: int,
    err: float,
    flops: Callable[[ScaleNetSpace, Sequence[Any]], int] = official_flops,
) -> bool:
    """Official FLOPs feasibility: base ``|F(b) - F0| <= err_base``; scaled ``|F(s) - 2**s F(b)| <= err * 2**s``.

    Args:
        space: The space (``flops_constraint`` = F0, ``err_base``).
        basenet: Base op encoding (repaired).
        scaled: Scaled encoding of scaling stage ``stage`` (None: check the base only).
        stage: Scaling stage of ``scaled``.
        err: Tolerance of the scaled check (``err_base`` in the family score, ``err_scale`` in the grid search).
        flops: FLOPs counter (default the official one).
    """
    f_base = flops(space, [*basenet, 1.0, space.resolutions[0][0]])
    if scaled is None:
        return abs(space.flops_constraint - f_base) <= space.err_base
    return abs(2**stage * f_base - flops(space, scaled)) <= err * 2**stage


def family_score(
    space: ScaleNetSpace,
    basenet: Sequence[int],
    strategy: Mapping[int, Sequence[int]],
    accuracy: Callable[[list[Any]], float],
    stages: Sequence[int] | None = None,
    weights: Sequence[float] | None = None,
) -> float:
    """Official family score of a base under a scaling strategy (``EvolutionSampler.eval_subnet``); higher is better.

    Infeasible base: ``3 + (F0 - F(b)) / F0``. Otherwise the weighted mean over ``stages`` (default 1..max) of the
    proxy ``accuracy(scaled)`` if the scaled member is feasible under ``err_base`` (relative to the base's own
    FLOPs), else ``3 + (2**s F0 - F) / (2**s F0)``. The base itself is not part of the score.
    """
    basenet = check_basenet(space, basenet)
    f0 = space.flops_constraint
    f_base = official_flops(space, [*basenet, 1.0, space.resolutions[0][0]])
    if abs(f0 - f_base) > space.err_base:
        return 3.0 + (f0 - f_base) / f0
    stages = list(range(1, space.max_scaling_stage + 1)) if stages is None else list(stages)
    weights = [1.0] * len(stages) if weights is None else list(weights)
    scores = []
    for s in stages:
        scaled = scale_basenet(space, basenet, *scaling_values(space, s, strategy[s]))
        f = official_flops(space, scaled)
        if is_feasible(space, basenet, scaled, s, space.err_base):
            scores.append(accuracy(scaled))
        else:
            scores.append(3.0 + (f0 * 2**s - f) / (f0 * 2**s))
    return sum(a * w for a, w in zip(scores, weights, strict=True)) / sum(weights)


def space_from_name(name: str, num_classes: int | None = None, flops_constraint: float | None = None) -> ScaleNetSpace:
    """The ``"paper"``, ``"tiny"`` or ``"tiny_spec"`` space, optionally with another class count or F0.

    For the tiny spaces a new F0 also sets the tolerances the way :meth:`ScaleNetSpace.tiny` does (10 % / 20 % of
    F0).

    Raises:
        ValueError: an unknown name.
    """
    builders = {"paper": ScaleNetSpace.paper, "tiny": ScaleNetSpace.tiny, "tiny_spec": ScaleNetSpace.tiny_spec}
    if name not in builders:
        raise ValueError(f"unknown ScaleNet space {name!r}; known: {sorted(builders)}")
    if name != "paper" and flops_constraint is not None:
        space = builders[name](flops_constraint=flops_constraint)
    else:
        space = builders[name]()
        if flops_constraint is not None:
            space = replace(space, flops_constraint=flops_constraint)
    return space if num_classes is None else replace(space, num_classes=num_classes)


# --------------------------------------------------------------------------------------------------------------
# Training pieces: weight-decay groups, learning-rate factor, proxy evaluation
# --------------------------------------------------------------------------------------------------------------


def official_param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with the official weight-decay multipliers (``BaseModel.set_params``).

    Conv weights ``2 * weight_decay``, conv biases 0, BN weights and biases 0, everything else (the Linear head's
    weight and bias) ``weight_decay``. Empty groups are left out.
    """
    conv_w: list[nn.Parameter] = []
    zero: list[nn.Parameter] = []
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            conv_w.append(module.weight)
            zero += [] if module.bias is None else [module.bias]
        elif isinstance(module, nn.BatchNorm2d):
            zero += [module.weight, module.bias]
    seen = {id(p) for p in conv_w + zero}
    rest = [p for p in net.parameters() if id(p) not in seen]
    groups = [
        {"params": conv_w, "weight_decay": 2 * weight_decay},
        {"params": zero, "weight_decay": 0.0},
        {"params": rest, "weight_decay": weight_decay},
    ]
    return [g for g in groups if g["params"]]


def official_lr_factor(iteration: int, warmup_steps: int, total_steps: int) -> float:
    """Official ``IterLRScheduler`` (``gradual`` warm-up, ``cosine`` decay) as a factor of the base lr.

    ``iteration / warmup_steps`` while ``iteration < warmup_steps``, then
    ``0.5 * (1 + cos(pi * (min(iteration, T) - W) / (T - W)))``, reaching 0 at ``total_steps``. The official loop
    counts iterations from 1.

    Raises:
        ValueError: ``total_steps <= warmup_steps``.
    """
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
    if iteration < warmup_steps:
        return iteration / warmup_steps
    c = min(iteration, total_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (c - warmup_steps) / (total_steps - warmup_steps)))


def at_resolution(images: torch.Tensor | Mapping[int, torch.Tensor], resolution: int) -> torch.Tensor:
    """The batch at ``resolution``: picked from a ``{resolution: batch}`` dict, else resized if needed.

    Resizing is bilinear with antialiasing on the whole batch (a CPU-friendly stand-in for the official
    per-resolution ``RandomResizedCrop`` / resize-and-centre-crop pipelines, see docs/scalenet.md).
    """
    if isinstance(images, Mapping):
        if resolution not in images:
            raise KeyError(f"resolution {resolution} not among the input resolutions {sorted(images)}")
        return images[resolution]
    if images.shape[-2:] == (resolution, resolution):
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def proxy_logits(
    supernet: ScaleNetSuperNet, images: torch.Tensor | Mapping[int, torch.Tensor], encoding: Sequence[Any]
) -> torch.Tensor:
    """Official test-time logits of a sub-network: BN batch statistics, no gradient, ``n`` calls summed.

    BN runs in train mode (per-batch statistics), ``n = space.n_coupling`` calls are summed (the n-laterally
    coupled leading and trailing slices); the module's train/eval mode is restored afterwards.
    """
    was = supernet.training
    supernet.train()
    try:
        with torch.no_grad():
            x = at_resolution(images, int(encoding[-1]))
            logits = supernet(x, encoding)
            for _ in range(1, max(supernet.space.n_coupling, 1)):
                logits = logits + supernet(x, encoding)
    finally:
        supernet.train(was)
    return logits


def evaluate_candidate(
    supernet: ScaleNetSuperNet, encoding: Sequence[Any], batches: Iterable[tuple[Any, torch.Tensor]]
) -> float:
    """Proxy accuracy of a candidate (official ``eval_subnet`` + ``ImagenetTester.test``), spec 2.5.

    Running BN statistics are reset (``reset_bn``; the slicing counters are kept), then every batch goes through
    :func:`proxy_logits`; the score is the top-1 accuracy in percent of each batch, averaged over batches (not over
    images, as the official ``AverageMeter`` is updated once per batch).

    Args:
        supernet: The trained super-supernet.
        encoding: ``ops + [c_m, r]``.
        batches: ``(images, labels)`` pairs; images (B, C, H, W) are resized to ``r``, or a ``{r: images}`` dict.

    Raises:
        ValueError: no batch.
    """
    supernet.reset_bn()
    accs = []
    for images, labels in batches:
        logits = proxy_logits(supernet, images, encoding)
        accs.append(100.0 * (logits.argmax(1) == labels.to(logits.device)).double().mean().item())
    if not accs:
        raise ValueError("evaluate_candidate needs at least one proxy batch")
    return sum(accs) / len(accs)


def evaluate_candidates(
    supernet: ScaleNetSuperNet, encodings: Sequence[Sequence[Any]], batches: Sequence[tuple[Any, torch.Tensor]]
) -> list[float]:
    """:func:`evaluate_candidate` of every encoding; under ``torch.distributed`` the encodings are spread.

    With an initialised process group, rank ``k`` of ``W`` evaluates ``encodings[k::W]`` on the whole proxy set
    (``batches``, the same on every rank) and the scores are gathered with ``all_gather_object``, so every rank
    returns the same list, in the order of ``encodings``. Every rank must call this with the same ``encodings``.
    """
    dist = torch.distributed
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    mine = [evaluate_candidate(supernet, e, batches) for e in encodings[rank::world]]
    if world == 1:
        return mine
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    out = [0.0] * len(encodings)
    for k, scores in enumerate(gathered):
        out[k::world] = scores
    return out


# --------------------------------------------------------------------------------------------------------------
# Standalone export
# --------------------------------------------------------------------------------------------------------------


def scalenet_from_encoding(
    encoding: Sequence[Any], space: ScaleNetSpace | str = "paper", num_classes: int | None = None, **kwargs: Any
) -> ScaleNetModel:
    """Build a found encoding of ``space`` as a standalone :class:`~tenfold.models.scalenet.ScaleNetModel`.

    The timm entrypoints ``scalenet_searched`` / ``scalenet_tiny_searched`` build the same network for the paper /
    tiny layouts; this builder takes any :class:`ScaleNetSpace`.

    Args:
        encoding: ``ops + [c_m, resolution]`` of ``space``.
        space: A :class:`ScaleNetSpace` or ``"paper"`` / ``"tiny"``.
        num_classes: Override of the space's classifier size.
        **kwargs: Further :class:`~tenfold.models.scalenet.ScaleNetModel` arguments (``drop_rate``, ``global_pool``).

    Raises:
        ValueError: an unknown space name, or an encoding that does not fit the space.
    """
    if isinstance(space, str):
        space = space_from_name(space)
    space.validate(encoding)
    arch = space.model_kwargs()
    if num_classes is not None:
        arch["num_classes"] = num_classes
    return ScaleNetModel(encoding=encoding, **arch, **kwargs)
