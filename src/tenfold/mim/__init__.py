"""Masked image modeling: GreenMIM (arXiv 2205.13515), pre-training a Swin on visible patches only."""

from tenfold.mim.attention import GreenSwinBlock, GroupWindowAttention
from tenfold.mim.encoder import GreenSwin, GreenSwinConfig, VisiblePatchMerging
from tenfold.mim.greenmim import GreenMIM, GreenMIMConfig, GreenMIMOutput, masked_pixel_loss
from tenfold.mim.grouping import Grouping, build_grouping, choose_group_size, pack_windows
from tenfold.mim.masking import UnitMask, mask_from_noise, random_unit_mask

__all__ = [
    "GreenMIM",
    "GreenMIMConfig",
    "GreenMIMOutput",
    "GreenMIMTask",
    "GreenSwin",
    "GreenSwinBlock",
    "GreenSwinConfig",
    "GroupWindowAttention",
    "Grouping",
    "UnitMask",
    "VisiblePatchMerging",
    "build_grouping",
    "choose_group_size",
    "mask_from_noise",
    "masked_pixel_loss",
    "pack_windows",
    "random_unit_mask",
]


def __getattr__(name: str):
    # the Lightning task is imported on demand so that the method stays importable without Lightning
    if name == "GreenMIMTask":
        from tenfold.mim.task import GreenMIMTask

        return GreenMIMTask
    raise AttributeError(name)
