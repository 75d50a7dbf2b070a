"""GreenMIM: masked image modeling for hierarchical ViTs (Swin) on the visible patches only.

Paper: Huang et al., "Green Hierarchical Vision Transformer for Masked Image Modeling", NeurIPS 2022
(arXiv 2205.13515). Official code: LayneH/GreenMIM at commit b981012 (``modeling/green_swin_models.py``,
``modeling/group_window_attention.py``, ``modeling/base_green_models.py``); this package is our own implementation
of that behaviour, one module per role, in the order data flows through them:

1. :mod:`tenfold.mim.masking`: :func:`~tenfold.mim.masking.random_unit_mask`, a random mask over *mask units*,
   squares the size of the final-stage patch, so that every 2x2 token neighbourhood of every stage is entirely
   visible or entirely masked.
2. :mod:`tenfold.mim.grouping`: the visible tokens of a stage, packed window by window into equal-size groups by a
   greedy 0/1 knapsack (:func:`~tenfold.mim.grouping.build_grouping`), or one masked attention when a stage has few
   tokens (the official "masking mode").
3. :mod:`tenfold.mim.attention` and :mod:`tenfold.mim.encoder`: group window attention, the Swin block, patch
   merging of visible tokens and :class:`~tenfold.mim.encoder.GreenSwin`, the Swin encoder on visible tokens (its
   state dict is a standard Swin), configured by :class:`~tenfold.mim.encoder.GreenSwinConfig`.
4. This module: :class:`GreenMIM`, the MAE-style decoder (mask tokens, fixed 2-D sin-cos position embedding, one ViT
   block) and the normalised-pixel loss :func:`masked_pixel_loss`, configured by :class:`GreenMIMConfig` (which
   nests the encoder's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from tenfold.mim.encoder import GreenSwin, GreenSwinConfig
from tenfold.mim.masking import UnitMask, kept_units, random_unit_mask

__all__ = [
    "GreenMIM",
    "GreenMIMConfig",
    "GreenMIMOutput",
    "masked_pixel_loss",
    "patchify",
    "sincos_pos_embed_2d",
    "unpatchify",
]


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> Tensor:
    """MAE's fixed 2-D sin-cos position embedding without cls token, (grid_size^2, embed_dim) float32.

    The first half of the channels encodes the column (MAE's meshgrid puts w first), the second the row; each half
    is ``[sin(p * omega), cos(p * omega)]`` with ``omega_k = 1 / 10000^(k / (D/4))``.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4, got {embed_dim}")
    # computed in float64 and rounded once, as MAE does (numpy float64, then ``.float()``): the float32 table is the
    # official one bit for bit, and a ``.double()`` model carries exactly the official table (a float32 computation
    # is off by a few float32 ulps, which a float64 comparison with the official code sees)
    omega = torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0)
    omega = 1.0 / 10000**omega
    pos = torch.arange(grid_size, dtype=torch.float64)
    cols, rows = pos.repeat(grid_size), pos.repeat_interleave(grid_size)

    def one(p: Tensor) -> Tensor:
        out = p[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one(cols), one(rows)], dim=1).float()


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches in raster order, each flattened as (p, q, c) (MAE's layout)."""
    b, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {p}")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify` for square images: (B, L, p*p*C) -> (B, C, H, W)."""
    b, length, _ = x.shape
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"{length} patches do not form a square grid")
    p = patch_size
    x = x.reshape(b, side, side, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, side * p, side * p)


def masked_pixel_loss(pred: Tensor, imgs: Tensor, mask: Tensor, patch_size: int, norm_pix: bool = True) -> Tensor:
    """GreenMIM/MAE reconstruction loss: mean squared error on the masked units only.

    ``loss = sum_u mask_u * mean_j (pred_uj - t_uj)^2 / sum_u mask_u`` over units u of all images, where t is the
    patchified image and, with ``norm_pix``, each target row is normalised ``(t - mean) / sqrt(var + 1e-6)`` with the
    unbiased variance over its p*p*C values.

    Args:
        pred: (B, L, p*p*C) predictions for every unit.
        imgs: (B, C, H, W) (normalised) images.
        mask: (B, L), 1 = removed (the loss covers these), 0 = visible.
        patch_size: p, the mask unit in pixels.
        norm_pix: normalise each target patch.

    Returns:
        Scalar loss.

    Raises:
        ValueError: shapes disagree or nothing is masked.
    """
    target = patchify(imgs, patch_size)
    if pred.shape != target.shape or mask.shape != target.shape[:2]:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} do not agree"
        )
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    mask = mask.to(pred.dtype)
    denom = mask.sum()
    if float(denom) == 0:
        raise ValueError("the mask removes no unit: the loss is defined on masked units only")
    per_unit = ((pred - target) ** 2).mean(dim=-1)
    return (per_unit * mask).sum() / denom


@dataclass
class GreenMIMConfig:
    """Settings of :class:`GreenMIM`: the encoder's, nested, then the decoder, the mask and the loss.

    Attributes:
        encoder: the Swin encoder (:class:`~tenfold.mim.encoder.GreenSwinConfig`; Swin-B/w7 by default). Its
            ``mlp_ratio`` and ``norm_eps`` also set the decoder blocks' and norms', as in the official model.
        decoder_embed_dim: decoder width (512).
        decoder_depth: decoder ViT blocks (1).
        decoder_num_heads: decoder heads (16).
        norm_pix_loss: normalise each target patch (on in all official scripts).
        mask_ratio: fraction of units removed (0.75).
        per_sample_mask: one mask per image instead of one per batch (the official code shares one mask).
        official_decoder_order: Fidelity flag. True (default, reproduces the official numbers): the encoder's
            visible tokens, which are in raster order, are placed by MAE's ``cat + gather(ids_restore)``, which
            assumes noise order; visible tokens thus land in the right set of positions but permuted among
            themselves (and get the wrong position embedding). False: each visible token goes to its own unit.
    """

    encoder: GreenSwinConfig = field(default_factory=GreenSwinConfig)
    decoder_embed_dim: int = 512
    decoder_depth: int = 1
    decoder_num_heads: int = 16
    norm_pix_loss: bool = True
    mask_ratio: float = 0.75
    per_sample_mask: bool = False
    official_decoder_order: bool = True


class GreenMIMOutput(NamedTuple):
    """What :meth:`GreenMIM.forward` returns: scalar ``loss``, ``pred`` (B, L, p*p*3), ``mask`` (B, L) 1 = removed."""

    loss: Tensor
    pred: Tensor
    mask: Tensor


class GreenMIM(nn.Module):
    """GreenMIM pre-training model: :class:`GreenSwin` on visible units + MAE decoder + normalised-pixel loss.

    State-dict keys are the official ``MaskedAutoencoder``'s (``encoder.*``, ``mask_token``, ``decoder_pos_embed``,
    ``decoder_embed``, ``decoder_blocks.i``, ``decoder_norm``, ``decoder_pred``), without ``relative_position_index``.

    Args:
        config: the settings (:class:`GreenMIMConfig`); None: Swin-B/w7, decoder 512 x 1, mask ratio 0.75,
            normalised-pixel loss, official decoder order.

    Initialisation follows the official constructor: xavier-uniform linears (and patch-embedding conv on its
    (out, in*k*k) view) with zero biases, unit LayerNorms, ``mask_token ~ N(0, 0.02)``, bias tables
    trunc-normal(0.02), fixed sin-cos ``decoder_pos_embed``.
    """

    def __init__(self, config: GreenMIMConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GreenMIMConfig()
        self.encoder = GreenSwin(config.encoder)
        kept_units(self.encoder.num_units, config.mask_ratio)
        self.mask_ratio = config.mask_ratio
        self.per_sample_mask = config.per_sample_mask
        self.official_decoder_order = config.official_decoder_order
        self.norm_pix_loss = config.norm_pix_loss
        self.in_chans = config.encoder.in_chans
        self.unit = self.encoder.mask_unit
        num_units = self.encoder.num_units
        norm_layer = partial(nn.LayerNorm, eps=config.encoder.norm_eps)
        decoder_embed_dim = config.decoder_embed_dim
        self.decoder_embed = nn.Linear(self.encoder.num_features, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        # fixed, but saved: the official checkpoints hold it under this name
        self.register_buffer(
            "decoder_pos_embed", sincos_pos_embed_2d(decoder_embed_dim, self.encoder.unit_grid[0]).unsqueeze(0)
        )
        self.decoder_blocks = nn.ModuleList(
            Block(
                decoder_embed_dim,
                config.decoder_num_heads,
                config.encoder.mlp_ratio,
                qkv_bias=True,
                norm_layer=norm_layer,
            )
            for _ in range(config.decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.unit**2 * self.in_chans)
        self.num_units = num_units
        self._init_official()

    def _init_official(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight.data.view(m.weight.shape[0], -1))
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Names without weight decay besides 1-D parameters: bias tables and the mask token (official rule)."""
        return {"*relative_position_bias_table", "mask_token"}

    def random_mask(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> UnitMask:
        """A unit mask with this model's ratio and sharing rule."""
        return random_unit_mask(
            batch_size,
            self.num_units,
            self.mask_ratio,
            per_sample=self.per_sample_mask,
            generator=generator,
            device=device,
        )

    def forward_decoder(self, latent: Tensor, unit_mask: UnitMask) -> Tensor:
        """Predict pixels of every unit.

        Args:
            latent: (B, N_vis, D_enc) encoder output, raster order of the visible units.
            unit_mask: the mask used by the encoder.

        Returns:
            (B, L, unit^2 * C) predictions.
        """
        x = self.decoder_embed(latent)
        b, nv, d = x.shape
        if self.official_decoder_order:
            tokens = torch.cat([x, self.mask_token.expand(b, self.num_units - nv, d)], dim=1)
            x = torch.gather(tokens, 1, unit_mask.ids_restore.unsqueeze(-1).expand(-1, -1, d))
        else:
            visible = unit_mask.mask == 0
            full = self.mask_token.expand(b, self.num_units, d).clone()
            full[visible] = x.reshape(-1, d).to(full.dtype)
            x = full
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))

    def forward(self, imgs: Tensor, unit_mask: UnitMask | None = None) -> GreenMIMOutput:
        """Mask, encode the visible units, decode all units and compute the loss.

        Args:
            imgs: (B, 3, H, W) normalised images.
            unit_mask: a fixed mask (e.g. from :func:`mask_from_noise`); default: drawn with :meth:`random_mask`.

        Returns:
            :class:`GreenMIMOutput`.
        """
        if unit_mask is None:
            unit_mask = self.random_mask(imgs.shape[0], device=imgs.device)
        latent = self.encoder(imgs, unit_mask.mask)
        pred = self.forward_decoder(latent, unit_mask)
        loss = masked_pixel_loss(pred, imgs, unit_mask.mask, self.unit, self.norm_pix_loss)
        return GreenMIMOutput(loss, pred, unit_mask.mask)
