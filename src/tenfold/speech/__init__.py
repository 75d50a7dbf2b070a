"""Speech enhancement: TaylorSENet (arXiv 2205.00206), its front end and loss, metrics, data and the task.

>>> from tenfold.speech import TaylorSENet, ComMagEuclideanLoss, stft_compress, istft_decompress
"""

from tenfold.speech.loss import ComMagEuclideanLoss
from tenfold.speech.stft import STFTConfig, istft_decompress, stft_compress, variance_norm_scale
from tenfold.speech.stream import TaylorSEStream
from tenfold.speech.taylorsenet import (
    PAPER_CONFIG,
    SMALL_CONFIG,
    TaylorOutput,
    TaylorSENet,
    load_taylorsenet,
    load_taylorsenet_checkpoint,
)

__all__ = [
    "PAPER_CONFIG",
    "SMALL_CONFIG",
    "ComMagEuclideanLoss",
    "STFTConfig",
    "TaylorOutput",
    "TaylorSENet",
    "TaylorSEStream",
    "istft_decompress",
    "load_taylorsenet",
    "load_taylorsenet_checkpoint",
    "stft_compress",
    "variance_norm_scale",
]
