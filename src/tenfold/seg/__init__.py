"""Semantic segmentation: DeepLabV3 / DeepLabV3+ networks, whole-image and sliding-window inference, mIoU, the task.

The networks, inference and scores are plain PyTorch (``from tenfold.seg import DeepLabV3``); the LightningModule is
:class:`tenfold.seg.task.SegmentationTask` (imported lazily, so that the pure parts do not import Lightning).
"""

from tenfold.seg.inference import inference, slide_inference, whole_inference
from tenfold.seg.metrics import SegmentationScores, iou_from_confusion
from tenfold.seg.models import (
    ASPP,
    DeepLabHead,
    DeepLabV3,
    DeepLabV3Plus,
    SegOutput,
    build_backbone,
    build_segmenter,
    checkpoint_filter_fn,
    dilate_resnet_,
    load_segmenter_weights,
)
from tenfold.seg.prcl import PRCLDeepLabV3Plus, PRCLLoss, PRCLOutput, PRCLSample, UncertaintyHead

__all__ = [
    "ASPP",
    "DeepLabHead",
    "DeepLabV3",
    "DeepLabV3Plus",
    "PRCLDeepLabV3Plus",
    "PRCLLoss",
    "PRCLOutput",
    "PRCLSample",
    "SegOutput",
    "SegmentationScores",
    "SegmentationTask",
    "UncertaintyHead",
    "build_backbone",
    "build_segmenter",
    "checkpoint_filter_fn",
    "dilate_resnet_",
    "inference",
    "iou_from_confusion",
    "load_segmenter_weights",
    "slide_inference",
    "whole_inference",
]


def __getattr__(name: str):
    if name == "SegmentationTask":
        from tenfold.seg.task import SegmentationTask

        return SegmentationTask
    raise AttributeError(f"module 'tenfold.seg' has no attribute {name!r}")
