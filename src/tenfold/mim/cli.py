"""``tenfold greenmim-convert``: a GreenMIM pre-training checkpoint -> a Swin backbone file for fine-tuning."""

from __future__ import annotations

import argparse

__all__ = ["convert_main"]


def convert_main(argv: list[str]) -> int:
    """Run the conversion command line; returns the exit code."""
    from tenfold.mim.convert import convert_checkpoint

    parser = argparse.ArgumentParser(
        prog="tenfold greenmim-convert",
        description="Convert a GreenMIM pre-training checkpoint (official MAE-style file, plain state dict or tenfold "
        "run checkpoint) into a Swin backbone: timm layout (fine-tune with ClassificationTask and a timm Swin name) "
        "or the Microsoft/SimMIM layout.",
    )
    parser.add_argument("checkpoint", help="pre-training checkpoint (.pth/.ckpt)")
    parser.add_argument("out", help="file to write (must not exist)")
    parser.add_argument("--format", choices=("timm", "swin"), default="timm", help="key layout of the output")
    parser.add_argument(
        "--released-channel-order",
        action="store_true",
        help="the checkpoint was trained with the pre-b981012 row-first patch-merging order (the released "
        "Swin-B/Swin-L files): swap the merge channel blocks so that a standard Swin reproduces it",
    )
    parser.add_argument("--num-classes", type=int, default=0, help="timm only: add a new classifier head")
    parser.add_argument("--img-size", type=int, default=224, help="timm only: input size of the model")
    args = parser.parse_args(argv)
    out = convert_checkpoint(
        args.checkpoint,
        args.out,
        fmt=args.format,
        released_channel_order=args.released_channel_order,
        num_classes=args.num_classes,
        img_size=args.img_size,
    )
    print(out)
    return 0
