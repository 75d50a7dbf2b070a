"""Image classification: the baseline task every other family builds on."""

from tenfold.classification.task import ClassificationTask, MixupConfig, create_model

__all__ = ["ClassificationTask", "MixupConfig", "create_model"]
