"""A NAS-Bench-Macro-style space built as real modules, scored by actually training each proposal.

The network follows the NAS-Bench-Macro layout that GINAS searches (arXiv:2304.10970, section 4.1; the
benchmark of Su et al., "Prioritized Architecture Sampling with Monto-Carlo Tree Search", arXiv:2103.11922): a
3x3 stem, searchable layers with fixed channels and strides, each one of three operations, and a 1x1 head
convolution, global pooling and a linear classifier:

* 0: identity; a 1x1 convolution with the layer's stride and BatchNorm where the shape changes;
* 1: inverted residual block, expansion 3, 3x3 depthwise kernel;
* 2: inverted residual block, expansion 6, 5x5 depthwise kernel.

The layer list, the widths (``width_mult``) and the data are the user's choice; :class:`TrainedMacroSpace` scores
an answer by training the model with tenfold's classification task (:class:`~tenfold.classification.task.
ClassificationTask` through :func:`~tenfold.engine.quick.quick_fit`) and returns its validation top-1 accuracy.
The stem and head convolutions are followed by BatchNorm and ReLU (the benchmark's network does the same; the
GINAS prompt lists only the convolutions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from tenfold.nas.spaces import Evaluation, SearchSpace

__all__ = ["MACRO_LAYERS", "MacroNet", "TrainedMacroSpace", "macro_task_prompt"]

#: NAS-Bench-Macro's searchable layers: (in_channels, out_channels, stride) for layer2..layer9.
MACRO_LAYERS: tuple[tuple[int, int, int], ...] = (
    (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1), (128, 256, 2), (256, 256, 1),
    (256, 256, 1),
)  # fmt: skip
MACRO_OPS = ("identity", "inverted residual e3 k3", "inverted residual e6 k5")


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


class MacroNet(nn.Module):
    """A NAS-Bench-Macro network: stem, one chosen operation per searchable layer, head.

    Args:
        ops: one op id per searchable layer (0 identity, 1 IR e3 k3, 2 IR e6 k5).
        layers: ``(in_channels, out_channels, stride)`` per searchable layer (default: NAS-Bench-Macro's 8).
        stem_chs: stem output channels (must equal the first layer's input).
        head_chs: channels of the 1x1 head convolution.
        width_mult: multiplies every channel count (tiny CPU variants use 0.25).
        num_classes: classifier outputs.
        in_chans: image channels.
        global_pool: timm pooling type.

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
        self.stem = nn.Sequential(*_conv_bn(in_chans, _scaled(stem_chs, m), 3), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(
            *(make_op(o, _scaled(i, m), _scaled(c, m), s) for o, (i, c, s) in zip(self.ops, layers, strict=True))
        )
        self.num_features = self.head_hidden_size = _scaled(head_chs, m)
        self.head_conv = nn.Sequential(*_conv_bn(_scaled(chans[-1], m), self.num_features, 1), nn.ReLU(inplace=True))
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        """The final linear layer."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """Replace the classifier (0: :meth:`forward` returns pooled features)."""
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> head feature map (B, num_features, H / 8, W / 8) for the default layers."""
        return self.head_conv(self.blocks(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify a feature map (B, num_features, h, w) -> logits (B, num_classes)."""
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs(
    {"nas_macro_cifar": {"num_classes": 10, "input_size": (3, 32, 32), "pool_size": (4, 4), "crop_pct": 1.0,
                         "interpolation": "bilinear", "mean": (0.4914, 0.4822, 0.4465),
                         "std": (0.2470, 0.2435, 0.2616), "first_conv": "stem.0", "classifier": "fc"}}
)  # fmt: skip


@register_model
def nas_macro_cifar(pretrained: bool = False, **kwargs: Any) -> MacroNet:
    """A NAS-Bench-Macro network for 32x32 images; ``ops`` (8 op ids) and ``width_mult`` choose the variant."""
    if pretrained:
        raise ValueError("nas_macro_cifar has no released weights; train it (pretrained=False)")
    return build_model_with_cfg(MacroNet, "nas_macro_cifar", pretrained=False, **kwargs)


def macro_task_prompt(layers: Sequence[Sequence[int]], stem_chs: int, head_chs: int, dataset: str) -> str:
    """The GINAS task description of a macro space with these layers (our words, the benchmark prompt's content).

    Args:
        layers: ``(in, out, stride)`` per searchable layer.
        stem_chs: stem width.
        head_chs: head 1x1 convolution width.
        dataset: what the model is trained on, in words.
    """
    n = len(layers)
    rows = "\n".join(
        f"- layer{i + 2}: {c_in} -> {c_out} channels, stride {s}{' (downsampling)' if s == 2 else ''}"
        for i, (c_in, c_out, s) in enumerate(layers)
    )
    example = ", ".join(str(i % 3) for i in range(n))
    return (
        f"Help me choose the operations of an image classifier. It is trained and evaluated on {dataset}, and the "
        "goal is the highest accuracy.\n\n"
        f"The network has a fixed stem, {n} layers to choose (layer2 to layer{n + 1}) and a fixed head:\n"
        f"- layer1 (fixed): 3x3 convolution, 3 -> {stem_chs} channels, BatchNorm, ReLU\n{rows}\n"
        f"- head (fixed): 1x1 convolution {layers[-1][1]} -> {head_chs} channels, global average pooling, a fully "
        "connected classifier\n\n"
        f"Each of layer2..layer{n + 1} takes one of 3 operations:\n"
        "0: Identity. The input passes through unchanged; where the layer changes the channel count or has stride "
        "2, it is a 1x1 convolution with that stride followed by BatchNorm instead.\n"
        "1: Inverted residual block with expansion 3 and kernel size 3: a 1x1 convolution widening to "
        "3 x in_channels, BatchNorm, ReLU; a 3x3 depthwise convolution with the layer's stride, BatchNorm, ReLU; a "
        "1x1 convolution to out_channels, BatchNorm. The input is added to the output when the stride is 1 and "
        "in_channels == out_channels.\n"
        "2: Inverted residual block as in 1, with expansion 6 and kernel size 5.\n\n"
        f"Give the operation of each of the {n} layers as a list of {n} operation IDs, in layer order, "
        f"e.g. [{example}].\n"
    )


class TrainedMacroSpace(SearchSpace):
    """A macro space whose answers are scored by training: validation top-1 (%) after a short run.

    Args:
        data_factory: builds the LightningDataModule for each run (same data every time).
        layers: ``(in, out, stride)`` per searchable layer (default NAS-Bench-Macro's 8).
        stem_chs: stem width; head_chs: head width (before ``width_mult``).
        width_mult: channel multiplier of the trained networks.
        num_classes: classes of the data.
        max_steps: optimiser steps per training run.
        lr: SGD learning rate (momentum 0.9, cosine schedule).
        seed: training seed (the same for every architecture, so differences come from the architecture).
        out_dir: folder for the runs' logs, one subfolder ``NNN-<key>`` per training. An existing subfolder (an
            earlier run, or a resumed search in the same folder) is never reused: the new one gets a suffix
            ``-2``, ``-3``...
        dataset: the data in words, for the prompt.
        max_time_s: wall-clock cap of one run.
    """

    name = "trained-macro"

    def __init__(
        self,
        data_factory: Callable[[], Any],
        layers: Sequence[Sequence[int]] = MACRO_LAYERS,
        stem_chs: int = 32,
        head_chs: int = 1280,
        width_mult: float = 1.0,
        num_classes: int = 10,
        max_steps: int = 200,
        lr: float = 0.1,
        seed: int = 0,
        out_dir: str | Path = "runs/nas-trained",
        dataset: str = "the user's image data",
        max_time_s: float | None = None,
    ) -> None:
        self.layers = [tuple(int(v) for v in lay) for lay in layers]
        MacroNet(
            ops=(0,) * len(self.layers), layers=self.layers, stem_chs=stem_chs, head_chs=head_chs, width_mult=0.05
        )  # fmt: skip  (fails now, not after a search started, if layers do not chain)
        self.choices = ((0, 1, 2),) * len(self.layers)
        self.data_factory = data_factory
        self.model_kwargs = {"layers": self.layers, "stem_chs": stem_chs, "head_chs": head_chs,
                             "width_mult": width_mult}  # fmt: skip
        self.num_classes = num_classes
        self.max_steps = max_steps
        self.lr = lr
        self.seed = seed
        self.out_dir = Path(out_dir)
        self.max_time_s = max_time_s
        self.task_prompt = macro_task_prompt(self.layers, stem_chs, head_chs, dataset)
        self.runs = 0

    def key(self, answer: Sequence[int]) -> str:  # noqa: D102
        return "".join(str(v) for v in self.validate(answer))

    def _fresh_run_dir(self, answer: Sequence[int]) -> Path:
        """``out_dir/NNN-<key>``, or with the first suffix ``-2``, ``-3``... that names no existing folder."""
        base = self.out_dir / f"{self.runs:03d}-{self.key(answer)}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return path

    def evaluate(self, answer: Sequence[int]) -> Evaluation:
        """Train the network of ``answer`` for ``max_steps`` steps; validation top-1 in percent.

        ``info`` holds the parameter count, the steps run, the seconds and ``run_dir``, the run's log folder (a new
        one: an existing folder is never written into).
        """
        from tenfold.classification import ClassificationTask
        from tenfold.engine.optim import OptimConfig
        from tenfold.engine.quick import quick_fit
        from tenfold.utils.flops import count_parameters

        answer = self.validate(answer)
        kwargs = {**self.model_kwargs, "ops": list(answer)}

        def make_task() -> ClassificationTask:
            optim = OptimConfig(opt="momentum", lr=self.lr, sched="cosine")
            return ClassificationTask(model="nas_macro_cifar", num_classes=self.num_classes, model_kwargs=kwargs,
                                      optim=optim)  # fmt: skip

        start = time.perf_counter()
        run_dir = self._fresh_run_dir(answer)
        run_dir.mkdir(parents=True)  # claimed now: fails rather than share a folder with a concurrent run
        run = quick_fit(make_task, self.data_factory(), max_steps=self.max_steps, val_every=self.max_steps,
                        out_dir=run_dir, seed=self.seed, max_time_s=self.max_time_s)  # fmt: skip
        self.runs += 1
        acc = 100.0 * run.final["val/acc1"]
        info = {"params": count_parameters(run.task.model), "steps": run.steps,
                "seconds": round(time.perf_counter() - start, 2), "run_dir": str(run_dir)}  # fmt: skip
        return Evaluation(acc=acc, report_acc=acc, rank=None, info=info)
