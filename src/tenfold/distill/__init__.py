"""Knowledge distillation: losses (pure PyTorch), feature taps, and the distillation task.

>>> from tenfold.distill import DISTLoss, KDLoss
"""

from tenfold.distill.diffkd import DiffKD, DiffKDLoss
from tenfold.distill.dist import DISTLoss
from tenfold.distill.kd import KDLoss
from tenfold.distill.maskd import MasKDLoss, MasKDSegLoss, MaskedFeatures, MaskModule, SegMaskModule, dice_coeff
from tenfold.distill.taps import FeatureTaps
from tenfold.distill.task import DistillationTask, DistillTerm

__all__ = ["DISTLoss", "DiffKD", "DiffKDLoss", "DistillTerm", "DistillationTask", "FeatureTaps", "KDLoss"]
__all__ += ["MasKDLoss", "MasKDSegLoss", "MaskModule", "MaskedFeatures", "SegMaskModule", "dice_coeff"]
