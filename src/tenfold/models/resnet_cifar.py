"""CIFAR ResNets and Wide ResNets used as teachers and students by the distillation papers.

These are the 32x32-input networks of the CRD benchmark, which DIST (arXiv:2205.10536) and the later KD
papers reuse for their CIFAR-100 tables:

* ``resnet{8,14,20,32,44,56,110}`` and ``resnet8x4`` / ``resnet32x4``: the CIFAR ResNet of He et al., "Deep
  Residual Learning for Image Recognition" (arXiv:1512.03385, section 4.2): a 3x3 stem and three stages of
  basic blocks at strides 1, 2, 2; depth ``6n + 2``. The ``x4`` variants widen every stage four times.
* ``wrn_{16,40}_{1,2}``: the pre-activation Wide ResNet of Zagoruyko and Komodakis, "Wide Residual Networks"
  (arXiv:1605.07146); depth ``6n + 4``, width factor ``k``.

The structure and the parameter names follow the code of Tian et al., "Contrastive Representation
Distillation" (arXiv:1910.10699), https://github.com/HobbitLong/RepDistiller, files ``models/resnet.py`` and
``models/wrn.py``, so the released CIFAR-100 checkpoints (CRD's teachers and DIST's ``cifar_ckpts.zip``) load
with ``strict=True``. This is an independent implementation; it differs from the reference code only where no
weight and no output at 32x32 depends on it:

* Global pooling is adaptive (timm's ``SelectAdaptivePool2d``) instead of a fixed 8x8 average, so the result
  is identical at 32x32 and other input sizes work too.
* There are no ``is_feat`` / ``preact`` forward flags. Distillation taps use forward hooks on the module names
  (``relu``, ``layer1`` ... ``layer3`` for the ResNets; ``conv1``, ``block1`` ... ``block3``, ``relu`` for the
  WRNs), or :meth:`forward_intermediates`.

Local weights load through timm, with no download::

    timm.create_model("resnet32x4", pretrained=True, pretrained_cfg_overlay=dict(file="resnet32x4.pth"))
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg

from tenfold.models.surface import StagedSurface

__all__ = ["CifarResNet", "CifarWideResNet", "checkpoint_filter_fn"]

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False)


def _init_weights(model: nn.Module) -> None:
    """The reference initialisation: He-normal (fan-out) convolutions, unit BatchNorm, zero linear bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Post-activation basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity, or a strided 1x1 convolution with BatchNorm (``downsample.0`` /
    ``downsample.1``) when the shape changes. The final ReLU is functional, as in the reference, so a hook on
    ``relu`` sees only the inner activation.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_chs, out_chs, stride)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + shortcut)


class WideBasicBlock(nn.Module):
    """Pre-activation wide block: ``conv2(drop(relu2(bn2(conv1(relu1(bn1(x))))))) + shortcut``.

    As in the reference (and the original WRN code), when the channel count changes the shortcut is a 1x1
    convolution ``convShortcut`` applied to the *pre-activated* input ``relu1(bn1(x))``; otherwise it is the
    raw input ``x``.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(in_chs, out_chs, stride)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_chs, out_chs)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.equal_in_out = in_chs == out_chs
        # The reference name, kept so the released checkpoints load unchanged.
        self.convShortcut: nn.Module | None = None  # noqa: N815
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride)."""
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        out = self.conv2(self.drop(out))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class WideResNetStage(nn.Module):
    """A stage of ``num_blocks`` wide blocks (``block{i}.layer.{j}``); the first changes stride and width."""

    def __init__(self, num_blocks: int, in_chs: int, out_chs: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, drop_rate)
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks in order."""
        return self.layer(x)


class _CifarNet(StagedSurface, nn.Module):
    """The timm surface shared by both families; subclasses build the trunk and define ``_stages()``."""

    num_features: int
    feature_info: list[dict[str, Any]]
    avgpool: nn.Module
    fc: nn.Module
    pool_attr = "avgpool"

    def _init_head(self, num_features: int, num_classes: int, global_pool: str) -> None:
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.grad_checkpointing = False
        # `avgpool` and `fc` are the reference names (the pool holds no parameters).
        self.avgpool, self.fc = create_classifier(num_features, num_classes, pool_type=global_pool)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def _head_features(self, x: torch.Tensor) -> torch.Tensor:
        return x  # the final norm (WRN: relu(bn1(.))); none in the ResNets

    def _norm_last_map(self, x: torch.Tensor) -> torch.Tensor:
        return self._head_features(x)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes grouping parameters into stem, per-stage (or per-block) and head, for layer-wise decay."""
        raise NotImplementedError


class CifarResNet(_CifarNet):
    """CIFAR ResNet (post-activation basic blocks), as in CRD's ``models/resnet.py``.

    Module names: ``conv1, bn1, relu`` (stem), ``layer1..layer3`` (stages of ``BasicBlock``), ``avgpool``,
    ``fc``.
    The stem and ``layer1`` keep the input resolution; ``layer2`` and ``layer3`` halve it.
    """

    def __init__(
        self,
        depth: int = 20,
        channels: tuple[int, int, int, int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
    ) -> None:
        """Build the network.

        Args:
            depth: total depth ``6n + 2`` (n basic blocks per stage): 8, 14, 20, 32, 44, 56, 110...
            channels: widths of the stem and of the three stages; ``(32, 64, 128, 256)`` for the ``x4``
                models.
            num_classes: classifier outputs (0: no classifier).
            in_chans: input image channels.
            global_pool: ``"avg"``, or ``""`` for no pooling (only with ``num_classes=0``).
        """
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
        if len(channels) != 4:
            raise ValueError(f"channels must list the stem and three stage widths, got {channels}")
        n = (depth - 2) // 6
        self.in_chans = in_chans
        self.conv1 = _conv3x3(in_chans, channels[0])
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=channels[0], reduction=1, module="relu")]
        in_chs = channels[0]
        for i, (out_chs, stride) in enumerate(zip(channels[1:], (1, 2, 2), strict=True), start=1):
            blocks = [BasicBlock(in_chs if j == 0 else out_chs, out_chs, stride if j == 0 else 1) for j in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2 ** (i - 1), module=f"layer{i}"))
            in_chs = out_chs
        self._init_head(in_chs, num_classes, global_pool)
        _init_weights(self)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def _stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes grouping parameters into stem, per-stage (or per-block) and head, for layer-wise decay."""
        return dict(stem=r"^conv1|^bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")


class CifarWideResNet(_CifarNet):
    """Pre-activation Wide ResNet for CIFAR, as in CRD's ``models/wrn.py``.

    Module names: ``conv1`` (stem, no norm), ``block1..block3`` (each holding ``layer``, a sequence of
    ``WideBasicBlock``), ``bn1`` and ``relu`` (the final pre-activation norm), ``avgpool``, ``fc``.
    """

    def __init__(
        self,
        depth: int = 40,
        widen_factor: int = 2,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            depth: total depth ``6n + 4`` (n wide blocks per stage): 10, 16, 22, 28, 40...
            widen_factor: width multiplier k; stage widths are 16k, 32k, 64k.
            num_classes: classifier outputs (0: no classifier).
            in_chans: input image channels.
            global_pool: ``"avg"``, or ``""`` for no pooling (only with ``num_classes=0``).
            drop_rate: dropout probability inside every block, between the two convolutions (the reference
                ``dropRate``; 0 in all the distillation recipes).
        """
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.in_chans = in_chans
        self.conv1 = _conv3x3(in_chans, widths[0])
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="conv1")]
        for i, stride in enumerate((1, 2, 2), start=1):
            self.add_module(f"block{i}", WideResNetStage(n, widths[i - 1], widths[i], stride, drop_rate))
            self.feature_info.append(dict(num_chs=widths[i], reduction=2 ** (i - 1), module=f"block{i}"))
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self._init_head(widths[3], num_classes, global_pool)
        _init_weights(self)
        if isinstance(self.fc, nn.Linear):
            nn.init.zeros_(self.fc.bias)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def _stages(self) -> list[nn.Module]:
        return [self.block1, self.block2, self.block3]

    def _head_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(x))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes grouping parameters into stem, per-stage (or per-block) and head, for layer-wise decay."""
        blocks = r"^block(\d+)" if coarse else r"^block(\d+)\.layer\.(\d+)"
        return dict(stem=r"^conv1", blocks=[(blocks, None), (r"^bn1", (99999,))])


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, Any]:
    """Turn a CRD / DIST CIFAR checkpoint into this module's ``state_dict``.

    The released files are ``{'model': state_dict, 'epoch': ..., 'optimizer': ...}`` (CRD, DIST) or plain
    state dicts; DataParallel training adds a ``module.`` prefix. The parameter names are the reference ones,
    so apart from unwrapping this is the identity.

    Args:
        state_dict: a state dict, possibly nested under ``state_dict``, ``model`` or ``net``.
        model: the target model (unused; part of timm's filter signature).

    Returns:
        The flat state dict with any ``module.`` prefix removed.
    """
    for _ in range(3):  # unwrap at most a few levels of nesting
        key = next((k for k in ("state_dict", "model", "net") if isinstance(state_dict.get(k), Mapping)), None)
        if key is None:
            break
        state_dict = state_dict[key]
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _check_weight_source(variant: str, kwargs: Mapping[str, Any]) -> None:
    """Fail early, with the remedy, when ``pretrained=True`` has no local file (our cfgs hold no URL)."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    if cfg.state_dict is not None or cfg.url or cfg.hf_hub_id:
        return
    if not cfg.file:
        raise ValueError(
            f"{variant} has no downloadable weights; load a local file with timm.create_model({variant!r}, "
            "pretrained=True, pretrained_cfg_overlay=dict(file=PATH)), or use pretrained=False"
        )
    if not Path(cfg.file).is_file():
        raise FileNotFoundError(f"{variant} weight file {cfg.file!r} does not exist")


def _create_cifar_net(model_cls: type[_CifarNet], variant: str, pretrained: bool = False, **kwargs: Any) -> Any:
    if pretrained:
        _check_weight_source(variant, kwargs)
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # No url: weights are never downloaded; pass a local file with pretrained_cfg_overlay=dict(file=...).
    return {
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "origin_url": "https://github.com/HobbitLong/RepDistiller",
        "paper_ids": "arXiv:1910.10699",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        name: _cfg()
        for name in (
            "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
            "resnet8x4", "resnet32x4",
            "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
        )
    }
)  # fmt: skip

_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model
def resnet8(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-8 (widths 16-16-32-64)."""
    model_args = dict(depth=8, channels=_NARROW)
    return _create_cifar_net(CifarResNet, "resnet8", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet14(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-14 (widths 16-16-32-64)."""
    model_args = dict(depth=14, channels=_NARROW)
    return _create_cifar_net(CifarResNet, "resnet14", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-20 (widths 16-16-32-64)."""
    model_args = dict(depth=20, channels=_NARROW)
    return _create_cifar_net(CifarResNet, "resnet20", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32 (widths 16-16-32-64)."""
    model_args = dict(depth=32, channels=_NARROW)
    return _create_cifar_net(CifarResNet, "resnet32", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-44 (widths 16-16-32-64)."""
    model_args = dict(depth=44, channels=_NARROW)
    return _create_cifar_net(CifarResNet, "resnet44", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-56 (widths 16-16-32-64)."""
    model_args = dict(depth=56, channels=_NARROW)
    return _create_cifar_net(CifarResNet, "resnet56", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-110 (widths 16-16-32-64)."""
    model_args = dict(depth=110, channels=_NARROW)
    return _create_cifar_net(CifarResNet, "resnet110", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet8x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-8, four times wider (widths 32-64-128-256)."""
    model_args = dict(depth=8, channels=_WIDE)
    return _create_cifar_net(CifarResNet, "resnet8x4", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet32x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32, four times wider (widths 32-64-128-256)."""
    model_args = dict(depth=32, channels=_WIDE)
    return _create_cifar_net(CifarResNet, "resnet32x4", pretrained, **dict(model_args, **kwargs))


@register_model
def wrn_16_1(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """Wide ResNet 16-1 for CIFAR."""
    model_args = dict(depth=16, widen_factor=1)
    return _create_cifar_net(CifarWideResNet, "wrn_16_1", pretrained, **dict(model_args, **kwargs))


@register_model
def wrn_16_2(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """Wide ResNet 16-2 for CIFAR."""
    model_args = dict(depth=16, widen_factor=2)
    return _create_cifar_net(CifarWideResNet, "wrn_16_2", pretrained, **dict(model_args, **kwargs))


@register_model
def wrn_40_1(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """Wide ResNet 40-1 for CIFAR."""
    model_args = dict(depth=40, widen_factor=1)
    return _create_cifar_net(CifarWideResNet, "wrn_40_1", pretrained, **dict(model_args, **kwargs))


@register_model
def wrn_40_2(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """Wide ResNet 40-2 for CIFAR."""
    model_args = dict(depth=40, widen_factor=2)
    return _create_cifar_net(CifarWideResNet, "wrn_40_2", pretrained, **dict(model_args, **kwargs))
