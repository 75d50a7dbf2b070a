"""Semantic-segmentation scores from a confusion matrix accumulated over the whole evaluation set.

``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` per class and ``mIoU`` their mean, from one confusion matrix summed over all
images (and, under DDP, over all processes: the state is a sum), as every reference evaluator does (CIRKD's
``SegmentationMetric``, PRCL's confusion matrix, mmseg). Pixels labelled ``ignore_index`` count nowhere.

A class with no pixel in the ground truth and none predicted has an undefined IoU: it is reported as NaN and left
out of the mean (mmseg's ``nanmean``). CIRKD counts it as 0 and PRCL's plain mean returns NaN; the three agree
whenever every class occurs, as on the Cityscapes and VOC validation sets.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_confusion_matrix

__all__ = ["SegmentationScores", "iou_from_confusion", "pixel_accuracy"]


def iou_from_confusion(confmat: Tensor) -> Tensor:
    """Per-class IoU (C,) of a (C, C) confusion matrix (rows: truth, columns: prediction); NaN where undefined."""
    confmat = confmat.double()
    tp = confmat.diagonal()
    union = confmat.sum(0) + confmat.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def pixel_accuracy(confmat: Tensor) -> Tensor:
    """Fraction of the counted (non-ignored) pixels that are classified correctly."""
    total = confmat.sum()
    return confmat.diagonal().sum().double() / total.clamp_min(1).double()


class SegmentationScores(Metric):
    """mIoU, per-class IoU and pixel accuracy of a segmentation set, exact across processes.

    Args:
        num_classes: number of classes C.
        ignore_index: label value that is not evaluated (255).

    Example:
        >>> scores = SegmentationScores(3)
        >>> scores.update(torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [2, 255]]]))
        >>> float(scores.compute()["miou"])
        1.0
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            preds: (B, C, H, W) logits or scores, or (B, H, W) predicted class indices.
            target: (B, H, W) labels in [0, C) or ``ignore_index``.

        Raises:
            ValueError: shapes that do not match.
        """
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(f"predictions {tuple(preds.shape)} and labels {tuple(target.shape)} differ in shape")
        self.confmat += multiclass_confusion_matrix(
            preds, target, self.num_classes, ignore_index=self.ignore_index, validate_args=False
        )

    def compute(self) -> dict[str, Tensor]:
        """``miou`` (scalar), ``iou`` (C,) per class (NaN where undefined) and ``acc`` (pixel accuracy)."""
        iou = iou_from_confusion(self.confmat)
        return {"miou": iou.nanmean(), "iou": iou, "acc": pixel_accuracy(self.confmat)}
