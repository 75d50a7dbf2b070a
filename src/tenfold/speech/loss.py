"""The TaylorSENet training loss, the official ``ComMagEuclideanLoss``, on the compressed spectrum.

Port of ``utils/loss.py`` of Andong-Li-speech/TaylorSENet (commit a79e979): complex (RI) and magnitude distances on
the power-compressed spectrum, averaged over the valid frames of each utterance. Like every torch criterion it takes
``(estimate, target)``; its value is symmetric in the two (the metrics of :mod:`tenfold.speech.metrics` take the
reference first, as the tools they are compared with).

>>> from tenfold.speech.loss import ComMagEuclideanLoss
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["ComMagEuclideanLoss", "frame_mask"]


def frame_mask(frames: Tensor | list[int] | None, batch: int, num_frames: int, device: torch.device) -> Tensor:
    """(B, T) float mask, 1 on the first ``frames[b]`` frames of each utterance (all ones if ``frames`` is None)."""
    if frames is None:
        return torch.ones(batch, num_frames, device=device)
    frames = torch.as_tensor(frames, device=device)
    if frames.shape != (batch,):
        raise ValueError(f"frames must hold one count per utterance ({batch}), got shape {tuple(frames.shape)}")
    return (torch.arange(num_frames, device=device) < frames[:, None]).float()


class ComMagEuclideanLoss(nn.Module):
    """The official loss: complex (RI) and magnitude distances on the compressed spectrum, over valid frames.

    ``L = alpha * sum M (S_hat - S)^2 / sum M_RI + (1 - alpha) * sum M (|S_hat| - |S|)^2 / sum M_mag``

    with M the valid-frame mask; the RI term averages over the B*2*T*F valid elements, the magnitude term over
    B*T*F. ``l_type="L1"`` uses absolute values instead of squares. Only the final estimate is supervised.

    Args:
        alpha: weight of the RI term (0.5 in the paper).
        l_type: ``L2`` (paper) or ``L1``.

    Raises:
        ValueError: ``alpha`` outside [0, 1] or an unknown ``l_type``.
    """

    def __init__(self, alpha: float = 0.5, l_type: str = "L2") -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if l_type.upper() not in ("L1", "L2"):
            raise ValueError(f"l_type must be 'L1' or 'L2', got {l_type!r}")
        self.alpha = alpha
        self.l_type = l_type.upper()

    def forward(self, est: Tensor, target: Tensor, frames: Tensor | list[int] | None = None) -> Tensor:
        """Scalar loss of estimates and targets (B, 2, T, F); ``frames`` (B,) are the valid frames per utterance."""
        if est.shape != target.shape or est.dim() != 4 or est.shape[1] != 2:
            raise ValueError(
                f"est and target must both be (B, 2, T, F), got {tuple(est.shape)} and {tuple(target.shape)}"
            )
        mask = frame_mask(frames, est.shape[0], est.shape[2], est.device).to(est.dtype)[:, :, None]  # (B, T, 1)
        dist = torch.square if self.l_type == "L2" else torch.abs
        n_mag = mask.sum() * est.shape[-1]
        loss_ri = (dist(est - target) * mask[:, None]).sum() / (2 * n_mag)
        mag_diff = torch.linalg.vector_norm(est, dim=1) - torch.linalg.vector_norm(target, dim=1)
        loss_mag = (dist(mag_diff) * mask).sum() / n_mag
        return self.alpha * loss_ri + (1 - self.alpha) * loss_mag
