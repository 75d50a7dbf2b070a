"""Image classification: the baseline task every other family builds on."""

from tenfold.classification.task import ClassificationTask, create_model

__all__ = ["ClassificationTask", "create_model"]
