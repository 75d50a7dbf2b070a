"""Masked image modeling: GreenMIM (arXiv 2205.13515), pre-training a Swin on visible patches only."""

from tenfold.mim.greenmim import (
    GreenMIM,
    GreenMIMOutput,
    GreenSwin,
    Grouping,
    GroupWindowAttention,
    UnitMask,
    build_grouping,
    choose_group_size,
    mask_from_noise,
    masked_pixel_loss,
    pack_windows,
    random_unit_mask,
)

__all__ = [
    "GreenMIM",
    "GreenMIMOutput",
    "GreenMIMTask",
    "GreenSwin",
    "GroupWindowAttention",
    "Grouping",
    "UnitMask",
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
