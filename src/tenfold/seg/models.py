"""DeepLabV3 and DeepLabV3+ semantic-segmentation networks on dilated ResNet (torchvision) or timm backbones.

Papers: DeepLabV3, Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation" (arXiv 1706.05587);
DeepLabV3+, Chen et al., "Encoder-Decoder with Atrous Separable Convolution" (arXiv 1802.02611).

Three reference implementations fix the details this module reproduces, each selectable by keyword:

* torchvision ``deeplabv3_resnet50/101`` (the defaults of :class:`DeepLabV3`): output stride 8, ASPP of 256
  channels with rates (12, 24, 36), dropout 0.5 after the ASPP projection, no dropout before the classifier, an
  FCN auxiliary head on layer3, bilinear upsampling with ``align_corners=False``. Parameter names are torchvision's
  (``backbone.*``, ``classifier.*``, ``aux_classifier.*``), so its state dicts load unchanged.
* CIRKD (winycg/CIRKD ``models/deeplabv3.py``), the segmentation code of DIST and MasKD: ASPP of 512 channels,
  dropout 0.1 before the classifier, image pooling upsampled with ``align_corners=True``, logits upsampled with
  ``align_corners=True``, a deep-stem ("v1s") ResNet. Set ``aspp_channels=512, head_dropout=0.1,
  pool_align_corners=True, align_corners=True`` and a deep stem (timm ``resnet101s``; ``resnet18`` with
  ``backbone_kwargs={"stem_type": "deep", "stem_width": 64}``). Its checkpoints load through
  :func:`checkpoint_filter_fn`.
* PRCL (Haoyu-Xie/PRCL ``DeepLabv3Plus_with_un``, the defaults of :class:`DeepLabV3Plus`): output stride 16, ASPP
  rates (6, 12, 18) without dropout, a 48-channel projection of layer1, a 3x3 decoder conv of 256 channels, logits
  at 1/4 resolution upsampled with ``align_corners=True``. The head keeps PRCL's names (``ASPP``, ``project``,
  ``classifier``); its backbone keys (``resnet_conv1``, ``resnet_layer1``...) are renamed by
  :func:`checkpoint_filter_fn`.

Output stride (dilation rule, as PSPNet/ReCo's ``_nostride_dilate`` and torchvision's ``replace_stride_with_dilation``):
for output stride 16 the stride-2 convolutions of layer4 become stride 1 (a 3x3 one then has dilation 1) and its
other 3x3 convolutions get dilation = padding = 2; for output stride 8 layer3 does the same with dilation 2 and layer4
with dilation 4 (its first 3x3 conv: dilation 2).

Models return a :class:`SegOutput` of logits at the network's own resolution (1/OS for DeepLabV3, 1/4 for
DeepLabV3+) and the auxiliary logits (1/OS); :meth:`DeepLabV3.upsample` brings them to the input or label size with
the model's interpolation setting, and :meth:`DeepLabV3.predict` returns full-resolution logits. The losses of the
official recipes are computed on upsampled logits; distillation terms (MasKD) act on the low-resolution ones.
"""

from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import deeplabv3 as tv_deeplabv3
from torchvision.models.segmentation.fcn import FCNHead

from tenfold.utils.checkpoint import load_checkpoint, load_state_dict_strict, unwrap_state_dict

__all__ = [
    "ASPP",
    "ASPPPooling",
    "DeepLabHead",
    "DeepLabV3",
    "DeepLabV3Plus",
    "FCNHead",
    "SegOutput",
    "build_backbone",
    "build_segmenter",
    "checkpoint_filter_fn",
    "default_atrous_rates",
    "dilate_resnet_",
    "load_segmenter_weights",
]

#: torchvision ResNets a backbone name may select (``backbone_source="torchvision"``).
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class SegOutput(NamedTuple):
    """What a segmenter returns.

    Attributes:
        logits: (B, num_classes, h, w) main logits at the network's output resolution (not upsampled).
        aux: (B, num_classes, H/OS, W/OS) logits of the auxiliary FCN head on layer3, or None without one.
    """

    logits: Tensor
    aux: Tensor | None


def default_atrous_rates(output_stride: int) -> tuple[int, int, int]:
    """ASPP rates of the DeepLab papers: (6, 12, 18) at output stride 16, doubled at 8 (halved at 32)."""
    return {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}[output_stride]


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


# --------------------------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------------------------


def dilate_resnet_(resnet: nn.Module, output_stride: int) -> nn.Module:
    """Make a torchvision ResNet (BasicBlock or Bottleneck) reach ``output_stride`` by dilation, in place.

    The rule of PSPNet/ReCo/PRCL (``_nostride_dilate``, PRCL's ``dilate_scale``): in each dilated stage every conv
    of stride 2 gets stride 1 (a 3x3 one then dilation = padding = d/2), and every other 3x3 conv gets
    dilation = padding = d, with d = 2 for layer4 at output stride 16, d = 2 (layer3) and 4 (layer4) at 8. For
    Bottleneck ResNets this is exactly torchvision's ``replace_stride_with_dilation``; torchvision's BasicBlock
    refuses dilation, which is why ResNet-18/34 are dilated this way.

    Args:
        resnet: a torchvision ``ResNet`` (or anything with ``layer3``/``layer4`` of such blocks).
        output_stride: 8, 16 or 32 (32 leaves the network unchanged).

    Returns:
        ``resnet`` itself.
    """
    _check_output_stride(output_stride)
    stages = {8: ((resnet.layer3, 2), (resnet.layer4, 4)), 16: ((resnet.layer4, 2),), 32: ()}[output_stride]
    for stage, d in stages:
        for m in stage.modules():
            if not isinstance(m, nn.Conv2d):
                continue
            if m.stride == (2, 2):
                m.stride = (1, 1)
                if m.kernel_size == (3, 3):
                    m.dilation, m.padding = (d // 2, d // 2), (d // 2, d // 2)
            elif m.kernel_size == (3, 3):
                m.dilation, m.padding = (d, d), (d, d)
    return resnet


#: CIRKD's deep stem (``conv1``-``bn3``: three 3x3 convs of 64, 64, 128 channels) onto timm's deep stem
#: (``conv1`` = Sequential(conv, bn, act, conv, bn, act, conv), then ``bn1``).
_DEEP_STEM = {"conv1.": "conv1.0.", "bn1.": "conv1.1.", "conv2.": "conv1.3.", "bn2.": "conv1.4.", "conv3.": "conv1.6.",
              "bn3.": "bn1."}  # fmt: skip


def _rename_deep_stem(key: str) -> str:
    for old, new in _DEEP_STEM.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


class _BackboneSpec(NamedTuple):
    module: nn.Module
    channels: tuple[int, int, int]  # (low = stride 4, aux = layer3 / penultimate level, out = last level)
    index: tuple[int, int, int] | None  # timm: positions of the three levels in the feature list


def _last_bn_channels(stage: nn.Module) -> int:
    return [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


def build_backbone(
    name: str,
    output_stride: int = 8,
    source: Literal["torchvision", "timm"] = "torchvision",
    pretrained: str | None = None,
    **kwargs: Any,
) -> _BackboneSpec:
    """A dilated feature extractor returning stride-4, penultimate (layer3) and last (layer4) features.

    Args:
        name: a torchvision ResNet (``resnet18`` ... ``resnet152``) or, with ``source="timm"``, any timm model that
            supports ``features_only`` and ``output_stride`` (``resnet101s``, ``resnet50d``, ``convnext_tiny``...).
        output_stride: 8, 16 or 32.
        source: ``torchvision`` or ``timm``.
        pretrained: optional local weight file of the classification network (ImageNet weights; never downloaded):
            torchvision names (``conv1.*``, ``layer1.*``; ``fc.*`` is dropped) loaded strictly, or for timm any
            file timm's loader accepts for that model.
        **kwargs: extra arguments of the timm model (``stem_type``, ``stem_width``, ``drop_path_rate``...).

    Returns:
        The module (stored as ``backbone`` by the segmenters, so its parameter names are the classification
        network's), the channels of the three features, and (timm) their positions in the feature list.

    Raises:
        ValueError: an unknown name or source, an unsupported output stride, or weights that do not fit.
        FileNotFoundError: ``pretrained`` does not exist.
    """
    _check_output_stride(output_stride)
    if source == "torchvision":
        if name not in TORCHVISION_RESNETS:
            raise ValueError(f"unknown torchvision backbone {name!r}; expected one of {list(TORCHVISION_RESNETS)}")
        if kwargs:
            raise ValueError(f"backbone_kwargs {sorted(kwargs)} apply to timm backbones only")
        bottleneck = name not in ("resnet18", "resnet34")
        dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
        if bottleneck:
            resnet = getattr(torchvision.models, name)(weights=None, replace_stride_with_dilation=dilate)
        else:
            resnet = dilate_resnet_(getattr(torchvision.models, name)(weights=None), output_stride)
        channels = tuple(_last_bn_channels(getattr(resnet, f"layer{i}")) for i in (1, 3, 4))
        body = IntermediateLayerGetter(resnet, return_layers={"layer1": "low", "layer3": "aux", "layer4": "out"})
        if pretrained is not None:
            state = unwrap_state_dict(load_checkpoint(pretrained))
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            load_state_dict_strict(body, state, source=pretrained)
        return _BackboneSpec(body, channels, None)  # type: ignore[arg-type]
    if source != "timm":
        raise ValueError(f"backbone source must be 'torchvision' or 'timm', got {source!r}")
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm backbone {name!r}")
    extra: dict[str, Any] = {}
    deep_stem_state = None
    if pretrained is not None:
        state = unwrap_state_dict(load_checkpoint(pretrained))
        if "conv3.weight" in state and "conv1.0.weight" not in state:
            # CIRKD's deep-stem ("v1s") ImageNet files name the stem conv1/bn1/conv2/bn2/conv3/bn3: timm's loader
            # does not know them, so they are renamed onto timm's deep stem and loaded here, strictly
            deep_stem_state = {_rename_deep_stem(k): v for k, v in state.items() if not k.startswith("fc.")}
        else:
            extra = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(pretrained)}}
    try:
        body = timm.create_model(name, features_only=True, output_stride=output_stride, **extra, **kwargs)
    except RuntimeError as err:  # torch's strict-loading error lists the keys that do not fit
        raise ValueError(f"backbone weights {pretrained!r} do not fit timm {name}: {err}") from err
    if deep_stem_state is not None:
        load_state_dict_strict(body, deep_stem_state, source=str(pretrained))
    reductions = body.feature_info.reduction()
    chans = body.feature_info.channels()
    low = next((i for i, r in enumerate(reductions) if r >= 4), 0)
    index = (low, len(reductions) - 2, len(reductions) - 1)
    return _BackboneSpec(body, tuple(chans[i] for i in index), index)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------------------


class ASPPPooling(tv_deeplabv3.ASPPPooling):
    """ASPP image-pooling branch (children ``0`` pool, ``1`` conv, ``2`` BN, ``3`` ReLU, as torchvision's).

    torchvision upsamples the pooled vector with ``align_corners=False`` (as PRCL); CIRKD uses True. For a 1x1
    input both give the same constant map, so the flag only matters on degenerate inputs; it is kept for fidelity.
    """

    def __init__(self, in_channels: int, out_channels: int, align_corners: bool = False) -> None:
        super().__init__(in_channels, out_channels)
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)


class ASPP(tv_deeplabv3.ASPP):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches and image pooling, projected by 1x1.

    torchvision's module with its parameter names (``convs.0`` 1x1; ``convs.1-3`` dilated 3x3; ``convs.4.1/2`` the
    pooling conv and BN; ``project.0/1``), which are also PRCL's ``ASPP.*`` names. Every conv has no bias. Differs
    from torchvision's only by the two settings the references disagree on.

    Args:
        in_channels: channels of the backbone's last feature.
        atrous_rates: the three dilation rates.
        out_channels: channels of every branch and of the output (torchvision/PRCL 256, CIRKD 512).
        dropout: dropout after the projection (torchvision/CIRKD 0.5; PRCL 0, no dropout module).
        pool_align_corners: ``align_corners`` of the pooling branch's upsampling (CIRKD True).
    """

    def __init__(
        self,
        in_channels: int,
        atrous_rates: tuple[int, int, int] = (12, 24, 36),
        out_channels: int = 256,
        dropout: float = 0.5,
        pool_align_corners: bool = False,
    ) -> None:
        super().__init__(in_channels, tuple(atrous_rates), out_channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ASPP dropout must be in [0, 1), got {dropout}")
        self.convs[-1] = ASPPPooling(in_channels, out_channels, align_corners=pool_align_corners)
        if dropout > 0:
            self.project[3] = nn.Dropout(dropout)
        else:
            del self.project[3]


class DeepLabHead(nn.Sequential):
    """DeepLabV3 head: ASPP, 3x3 conv + BN + ReLU, optional dropout, 1x1 classifier (with bias).

    Children ``0``-``4`` carry torchvision's ``DeepLabHead`` names; CIRKD's dropout before the classifier is the
    extra child ``dropout`` so that the parameter names do not shift.

    Args:
        in_channels: channels of the backbone's last feature.
        num_classes: output classes.
        channels: channels of the ASPP and of the 3x3 conv (torchvision 256, CIRKD 512).
        atrous_rates: ASPP rates.
        aspp_dropout: dropout after the ASPP projection.
        dropout: dropout before the classifier (CIRKD 0.1, torchvision 0).
        pool_align_corners: ``align_corners`` of the ASPP pooling branch.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        atrous_rates: tuple[int, int, int] = (12, 24, 36),
        aspp_dropout: float = 0.5,
        dropout: float = 0.0,
        pool_align_corners: bool = False,
    ) -> None:
        super().__init__(
            ASPP(in_channels, atrous_rates, channels, aspp_dropout, pool_align_corners),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes, h, w) of a feature (B, in_channels, h, w)."""
        x = self[3](self[2](self[1](self[0](x))))
        return self[4](self.dropout(x))


# --------------------------------------------------------------------------------------------------------------
# Segmenters
# --------------------------------------------------------------------------------------------------------------


class _Segmenter(nn.Module):
    """Shared plumbing: the backbone, the auxiliary head, upsampling, and the constructor record."""

    num_classes: int
    align_corners: bool

    def _init_backbone(
        self,
        backbone: str,
        backbone_source: Literal["torchvision", "timm"],
        output_stride: int,
        pretrained_backbone: str | None,
        backbone_kwargs: dict[str, Any] | None,
    ) -> tuple[int, int, int]:
        spec = build_backbone(backbone, output_stride, backbone_source, pretrained_backbone, **(backbone_kwargs or {}))
        self.backbone = spec.module
        self._feature_index = spec.index
        self.output_stride = output_stride
        return spec.channels

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Backbone features of images (B, 3, H, W): ``low`` (stride 4), ``aux`` (layer3), ``out`` (last)."""
        feats = self.backbone(x)
        if self._feature_index is None:
            return dict(feats)
        low, aux, out = self._feature_index
        return {"low": feats[low], "aux": feats[aux], "out": feats[out]}

    def forward_head(self, features: dict[str, Tensor]) -> SegOutput:  # noqa: D102
        raise NotImplementedError

    def forward(self, x: Tensor) -> SegOutput:
        """Main and auxiliary logits of images (B, 3, H, W), at the network's resolution (see :class:`SegOutput`)."""
        return self.forward_head(self.forward_features(x))

    def upsample(self, logits: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
        """Bilinear resize of (B, C, h, w) logits to ``size`` with the model's ``align_corners`` setting."""
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def predict(self, x: Tensor) -> Tensor:
        """Main logits (B, num_classes, H, W) at the input resolution."""
        return self.upsample(self(x).logits, x.shape[-2:])


class DeepLabV3(_Segmenter):
    """DeepLabV3 (arXiv 1706.05587): a dilated backbone, an ASPP head, an optional FCN auxiliary head on layer3.

    With the defaults it is torchvision's ``deeplabv3_resnet50(num_classes=..., aux_loss=True)``, parameter for
    parameter and name for name (see the module docstring for the CIRKD settings of the DIST/MasKD recipes).

    Args:
        num_classes: output classes (Cityscapes 19, VOC 21).
        backbone: backbone name (see :func:`build_backbone`).
        backbone_source: ``torchvision`` (ResNets) or ``timm``.
        output_stride: 8 or 16 (32 allowed for quick experiments).
        aux_head: add the FCN auxiliary head on layer3 (``aux_classifier``; the recipes weight its loss 0.4).
        aspp_channels: channels of the ASPP and of the head conv (torchvision 256, CIRKD 512).
        atrous_rates: ASPP rates; default (12, 24, 36) at output stride 8, (6, 12, 18) at 16.
        aspp_dropout: dropout after the ASPP projection (0.5 in torchvision and CIRKD).
        head_dropout: dropout before the classifier (CIRKD 0.1, torchvision 0).
        pool_align_corners: ``align_corners`` of the ASPP pooling branch (CIRKD True).
        align_corners: ``align_corners`` of :meth:`upsample` (torchvision False; CIRKD and PRCL True).
        pretrained_backbone: local file of ImageNet weights for the backbone (never downloaded).
        backbone_kwargs: extra timm backbone arguments (``{"stem_type": "deep", "stem_width": 64}`` for CIRKD's
            ResNet-18 v1s).

    Raises:
        ValueError: an unknown backbone, output stride or dropout.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet50",
        backbone_source: Literal["torchvision", "timm"] = "torchvision",
        output_stride: int = 8,
        aux_head: bool = True,
        aspp_channels: int = 256,
        atrous_rates: tuple[int, int, int] | None = None,
        aspp_dropout: float = 0.5,
        head_dropout: float = 0.0,
        pool_align_corners: bool = False,
        align_corners: bool = False,
        pretrained_backbone: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.init_config = _plain_config(locals())
        _, aux_channels, out_channels = self._init_backbone(
            backbone, backbone_source, output_stride, pretrained_backbone, backbone_kwargs
        )
        rates = tuple(atrous_rates) if atrous_rates is not None else default_atrous_rates(output_stride)
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.classifier = DeepLabHead(
            out_channels, num_classes, aspp_channels, rates, aspp_dropout, head_dropout, pool_align_corners
        )
        self.aux_classifier = FCNHead(aux_channels, num_classes) if aux_head else None

    def forward_head(self, features: dict[str, Tensor]) -> SegOutput:
        """Logits of the backbone features (see :meth:`forward_features`)."""
        aux = self.aux_classifier(features["aux"]) if self.aux_classifier is not None else None
        return SegOutput(self.classifier(features["out"]), aux)


class DeepLabV3Plus(_Segmenter):
    """DeepLabV3+ (arXiv 1802.02611) as in PRCL's ``DeepLabv3Plus`` (Haoyu-Xie/PRCL, d8829da), minus PRCL's heads.

    ``ASPP`` on the last feature, upsampled (bilinear, ``align_corners=True``) to the stride-4 feature, concatenated
    with ``project(layer1)`` (1x1 conv to 48 channels, BN, ReLU) into the 304-channel decoder feature, and
    ``classifier`` = 3x3 conv (no bias) + BN + ReLU + 1x1 conv (bias). Logits are at 1/4 of the input. Attribute
    names are PRCL's, so PRCL's subclass adds ``representation`` and loads official checkpoints after
    :func:`checkpoint_filter_fn`. An optional FCN auxiliary head on layer3 (``aux_classifier``) is off by default.

    Args:
        num_classes: output classes.
        backbone: backbone name (see :func:`build_backbone`).
        backbone_source: ``torchvision`` (ResNets) or ``timm``.
        output_stride: 16 (PRCL) or 8.
        aux_head: add the FCN auxiliary head on layer3.
        aspp_channels: channels of the ASPP (256).
        atrous_rates: ASPP rates; default (6, 12, 18) at output stride 16, (12, 24, 36) at 8.
        aspp_dropout: dropout after the ASPP projection (PRCL 0: commented out in the official code).
        low_channels: channels of the projected stride-4 feature (48).
        decoder_channels: channels of the decoder's 3x3 conv (256).
        pool_align_corners: ``align_corners`` of the ASPP pooling branch (PRCL False).
        align_corners: ``align_corners`` of the decoder upsampling and of :meth:`upsample` (PRCL True).
        pretrained_backbone: local file of ImageNet weights for the backbone.
        backbone_kwargs: extra timm backbone arguments.

    Raises:
        ValueError: an unknown backbone, output stride or dropout.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet101",
        backbone_source: Literal["torchvision", "timm"] = "torchvision",
        output_stride: int = 16,
        aux_head: bool = False,
        aspp_channels: int = 256,
        atrous_rates: tuple[int, int, int] | None = None,
        aspp_dropout: float = 0.0,
        low_channels: int = 48,
        decoder_channels: int = 256,
        pool_align_corners: bool = False,
        align_corners: bool = True,
        pretrained_backbone: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.init_config = _plain_config(locals())
        low, aux_channels, out_channels = self._init_backbone(
            backbone, backbone_source, output_stride, pretrained_backbone, backbone_kwargs
        )
        rates = tuple(atrous_rates) if atrous_rates is not None else default_atrous_rates(output_stride)
        self.num_classes = num_classes
        self.align_corners = align_corners
        # official names (PRCL checkpoints): ASPP, project, classifier
        self.ASPP = ASPP(out_channels, rates, aspp_channels, aspp_dropout, pool_align_corners)
        self.project = nn.Sequential(
            nn.Conv2d(low, low_channels, 1, bias=False), nn.BatchNorm2d(low_channels), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Sequential(
            nn.Conv2d(low_channels + aspp_channels, decoder_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(decoder_channels, num_classes, 1),
        )
        self.aux_classifier = FCNHead(aux_channels, num_classes) if aux_head else None

    def decoder_features(self, features: dict[str, Tensor]) -> Tensor:
        """The decoder feature (B, low_channels + aspp_channels, H/4, W/4): [project(low), upsampled ASPP(out)].

        PRCL's ``cat``, which its representation and uncertainty heads also read.
        """
        low = self.project(features["low"])
        x = self.ASPP(features["out"])
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return torch.cat([low, x], dim=1)

    def forward_head(self, features: dict[str, Tensor]) -> SegOutput:
        """Logits (1/4 resolution) and auxiliary logits of the backbone features."""
        aux = self.aux_classifier(features["aux"]) if self.aux_classifier is not None else None
        return SegOutput(self.classifier(self.decoder_features(features)), aux)


def _plain_config(local_vars: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments as plain values (for checkpoints read with ``weights_only=True``)."""
    out = {}
    for key, value in local_vars.items():
        if key in ("self", "__class__"):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


_ARCHS: dict[str, type[_Segmenter]] = {"deeplabv3": DeepLabV3, "deeplabv3plus": DeepLabV3Plus}


def build_segmenter(arch: Literal["deeplabv3", "deeplabv3plus"] = "deeplabv3", **kwargs: Any) -> nn.Module:
    """Build :class:`DeepLabV3` or :class:`DeepLabV3Plus` by name; ``kwargs`` are the class's arguments.

    Raises:
        ValueError: an unknown architecture or argument.
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown segmentation architecture {arch!r}; expected one of {sorted(_ARCHS)}")
    cls = _ARCHS[arch]
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{cls.__name__}: {err}") from err


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------

#: PRCL (``DeepLabv3Plus_with_un``) keeps the ResNet's children as ``resnet_<name>`` attributes of the model.
_PRCL_BACKBONE = re.compile(r"^resnet_(conv1|bn1|layer[1-4])\.")

#: CIRKD (``models/deeplabv3.py`` + ``base_models/resnet.py``) -> our names; the backbone (``pretrained.*``) goes
#: through :func:`_rename_deep_stem` first.
_CIRKD_RENAMES = (
    (re.compile(r"^pretrained\."), "backbone."),
    (re.compile(r"^head\.aspp\.b0\."), "classifier.0.convs.0."),
    (re.compile(r"^head\.aspp\.b([123])\.block\."), r"classifier.0.convs.\1."),
    (re.compile(r"^head\.aspp\.b4\.gap\."), "classifier.0.convs.4."),
    (re.compile(r"^head\.aspp\.project\."), "classifier.0.project."),
    (re.compile(r"^head\.block\.0\."), "classifier.1."),
    (re.compile(r"^head\.block\.1\."), "classifier.2."),
    (re.compile(r"^head\.block\.4\."), "classifier.4."),
    (re.compile(r"^auxlayer\.block\."), "aux_classifier."),
)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Map a released or official segmentation checkpoint onto our parameter names.

    Recognised layouts (after unwrapping ``state_dict``/``model``/``net`` and stripping ``module.``):

    * ours and torchvision's ``deeplabv3_*`` / ``fcn_*``: unchanged;
    * a tenfold training checkpoint's task keys (``model.*``): the prefix is stripped;
    * PRCL (``{'model', 'ema', ...}``; the ``model`` entry is taken): ``resnet_conv1``/``resnet_bn1``/
      ``resnet_layerN`` become ``backbone.conv1``/``backbone.bn1``/``backbone.layerN``; ``ASPP``, ``project``,
      ``classifier`` (and PRCL's ``representation``) are already ours;
    * CIRKD DeepLabV3 (``pretrained.*``, ``head.*``, ``auxlayer.*``): renamed onto :class:`DeepLabV3` built with a
      timm deep-stem backbone. This mapping was derived from the CIRKD source, not from a downloaded file.

    Args:
        state_dict: the loaded checkpoint (any of the layouts above).
        model: unused; kept for timm's ``checkpoint_filter_fn(state_dict, model)`` signature.

    Returns:
        A flat state dict with our names.
    """
    state = unwrap_state_dict(state_dict)
    if any(k.startswith("model.") for k in state) and not any(k.startswith("backbone.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    deep_stem = "pretrained.conv3.weight" in state  # CIRKD's v1s backbones; its "_original" ones have a plain stem
    out = {}
    for key, value in state.items():
        key = _PRCL_BACKBONE.sub(r"backbone.\1.", key)
        if deep_stem and key.startswith("pretrained."):
            key = "pretrained." + _rename_deep_stem(key[len("pretrained.") :])
        if key.startswith(("pretrained.", "head.", "auxlayer.")):
            for pattern, repl in _CIRKD_RENAMES:
                key, hits = pattern.subn(repl, key)
                if hits:
                    break
        out[key] = value
    return out


def load_segmenter_weights(model: nn.Module, path: str) -> None:
    """Load a local checkpoint (any layout of :func:`checkpoint_filter_fn`) into ``model`` strictly.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the weights do not fit (the message lists missing, unexpected and mis-shaped keys).
    """
    load_state_dict_strict(model, checkpoint_filter_fn(load_checkpoint(path), model), source=path)
