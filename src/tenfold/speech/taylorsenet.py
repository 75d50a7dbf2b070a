"""TaylorSENet: a Taylor-unfolding framework for monaural speech enhancement.

Paper: A. Li, S. You, G. Yu, C. Zheng, X. Li, "Taylor, Can You Hear Me Now? A Taylor-Unfolding Framework for
Monaural Speech Enhancement", IJCAI-ECAI 2022, arXiv 2205.00206. Port of the official code
Andong-Li-speech/TaylorSENet (``nets/TaylorSENet.py``, ``utils/loss.py``, ``utils/utils.py``; commit a79e979, whose
network file is unchanged since 2c0fa15). Parameter and module names are the official ones, so official state dicts
load with ``strict=True``.

The clean compressed spectrum S is estimated as a truncated Taylor series around the noisy one X (paper eq. 6-9):

    S ~= T0 + U_0 / 1! + U_1 / 2! + ... + U_{Q-1} / Q!,

* ``T0`` (0th order): a sigmoid gain G in [0, 1] from a U^2-Net/S-TCN network on |X| multiplies |X|; the noisy
  phase is kept. A magnitude-only coarse estimate.
* ``U_k`` (high orders): ``U_k = D_k(E, U_{k-1}) + k * U_{k-1}`` with ``U_{-1} = T0``, where ``D_k`` is a trainable
  "derivative operator" (:class:`HighOrderBlock`) fed by the complex encoder's feature E, and ``k * U_{k-1}`` the
  product-rule term (0-based k, as the official code). No mask or activation on these residual terms.

Layout: building blocks, the two order blocks, :class:`TaylorSENet`, then the checkpoint helpers. The official
loss (``utils/loss.py``) is :class:`tenfold.speech.loss.ComMagEuclideanLoss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

__all__ = [
    "CausalConvTranspose2d",
    "CumulativeLayerNorm",
    "HighOrderBlock",
    "PAPER_CONFIG",
    "SMALL_CONFIG",
    "TaylorOutput",
    "TaylorSENet",
    "ZeroOrderBlock",
    "checkpoint_filter_fn",
    "frequency_chain",
    "load_taylorsenet",
    "load_taylorsenet_checkpoint",
]

#: The paper / DNS configuration (``configs/train_config.toml`` of the official repository): 5,401,351 parameters.
PAPER_CONFIG: dict[str, Any] = {
    "cin": 2, "k1": (1, 3), "k2": (2, 3), "c": 64, "kd1": 5, "cd1": 64, "d_feat": 256, "dilations": (1, 2, 5, 9),
    "p": 2, "fft_num": 320, "order_num": 3, "intra_connect": "cat", "inter_connect": "cat", "norm_type": "IN",
    "is_causal": True, "is_u2": True, "is_param_share": False, "is_encoder_share": False,
}  # fmt: skip

#: The CPU demonstration configuration of the spec (about 0.95 M parameters).
SMALL_CONFIG: dict[str, Any] = {**PAPER_CONFIG, "c": 16, "cd1": 16, "dilations": (1, 2), "p": 1}

#: ``c_last``/``c_begin`` are hard-coded to 64 in the official encoder's last layer and decoder's first layer.
_C_LAST = 64
#: Output channels of the decoder's last gated transposed convolution (hard-coded in the official code).
_C_END = 16


# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------


def make_norm(norm_type: str, fmt: str, channels: int, official_in_eps_bug: bool = True) -> nn.Module:
    """The official ``NormSwitch``.

    Args:
        norm_type: ``IN`` (instance norm over the utterance, the paper's), ``BN`` (batch norm with affine
            parameters) or ``cLN`` (the official cumulative layer norm, causal: see :class:`CumulativeLayerNorm`).
        fmt: ``1D`` (over time of (B, C, T)) or ``2D`` (over time and frequency of (B, C, T, F)).
        channels: C.
        official_in_eps_bug: Fidelity flag. The official ``NormSwitch`` passes ``affine=True`` as the second
            positional argument of ``nn.InstanceNorm*d``, which is ``eps``: every official IN layer has **eps = 1**
            and no affine parameters (no state-dict keys). True (default) reproduces that, as official weights and
            numbers require; False gives the intended IN (eps 1e-5, affine weight and bias). Other norms ignore it.

    Raises:
        ValueError: an unsupported ``norm_type`` or ``fmt``.
    """
    if fmt not in ("1D", "2D"):
        raise ValueError(f"fmt must be '1D' or '2D', got {fmt!r}")
    if norm_type == "IN":
        cls = nn.InstanceNorm1d if fmt == "1D" else nn.InstanceNorm2d
        if official_in_eps_bug:
            return cls(channels, eps=1.0, affine=False)
        return cls(channels, eps=1e-5, affine=True)
    if norm_type == "BN":
        return nn.BatchNorm1d(channels) if fmt == "1D" else nn.BatchNorm2d(channels)
    if norm_type == "cLN":
        return CumulativeLayerNorm(channels, 1 if fmt == "1D" else 2)
    raise ValueError(
        f"norm_type must be 'IN', 'BN' or 'cLN' (the official cIN/iLN variants are not ported), got {norm_type!r}"
    )


class CumulativeLayerNorm(nn.Module):
    """The official cumulative layer norm (``CumulativeLayerNorm1d/2d`` of ``utils/utils.py``), a causal norm.

    Frame t is normalised with the mean and variance of every entry of frames ``0..t`` over channels (and
    frequency for ``dims=2``): with running sums ``S_t`` and ``P_t`` of the entries and of their squares and
    ``N_t`` entries, ``mean = S_t / N_t``, ``var = (P_t - 2 mean S_t) / N_t + mean^2`` (the official expression),
    ``y = (x - mean) / sqrt(var + eps) * gain + bias`` with per-channel ``gain`` and ``bias``.

    Fidelity: the official layer sits inside ``NormSwitch`` (state-dict keys ``<layer>.norm.gain``); ours is the
    layer itself (``<layer>.gain``), the same way the batch norms of this port drop the ``norm.`` level. No
    official checkpoint with cLN exists.

    Args:
        channels: C.
        dims: 1 for (B, C, T) inputs, 2 for (B, C, T, F).
        eps: added to the variance (official 1e-5).
    """

    def __init__(self, channels: int, dims: int, eps: float = 1e-5) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims}")
        shape = (1, channels, 1, 1) if dims == 2 else (1, channels, 1)
        self.dims = dims
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))

    def frame_sums(self, x: Tensor) -> tuple[Tensor, Tensor, int]:
        """Per-frame sums of the entries and of their squares, (B, 1, T[, 1]) each, and the entries per frame."""
        reduce = [1, 3] if self.dims == 2 else [1]
        return x.sum(reduce, keepdim=True), x.pow(2).sum(reduce, keepdim=True), math.prod(x.shape[1:]) // x.shape[2]

    def normalise(self, x: Tensor, cum_sum: Tensor, cum_pow: Tensor, count: Tensor) -> Tensor:
        """``x`` (B, C, T[, F]) normalised with running sums (B, 1, T[, 1]) over ``count`` entries (T values)."""
        count = count.view(1, 1, -1, 1) if self.dims == 2 else count.view(1, 1, -1)
        mean = cum_sum / count
        var = (cum_pow - 2 * mean * cum_sum) / count + mean.pow(2)
        return (x - mean) / (var + self.eps).sqrt() * self.gain + self.bias

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        step_sum, step_pow, per_frame = self.frame_sums(x)
        t = x.shape[2]
        count = torch.arange(1, t + 1, device=x.device, dtype=x.dtype) * per_frame
        return self.normalise(x, step_sum.cumsum(2), step_pow.cumsum(2), count)


class CausalConvTranspose2d(nn.ConvTranspose2d):
    """A causal transposed convolution over frequency (stride (1, 2)), computed as one convolution and additions.

    It equals ``ConvTranspose2d(cin, cout, (k_t, k_f), stride (1, 2))`` followed by the official chomp of the
    last ``k_t - 1`` frames.

    Output ``y[o, t, 2f + j] = b[o] + sum_{c, i} x[c, t - i, f] W[c, o, i, j]`` (frequency stride 2, frames before 0
    are zero): the taps ``j`` are stacked as ``k_f * cout`` output channels of a causal Conv2d with a 1-wide
    frequency kernel, whose maps are added into the even/odd frequency positions. The same multiply-adds as the
    transposed convolution (one per input position, tap and output channel), about twice as fast on CPU as
    PyTorch's transposed-convolution kernel; equal to it up to float rounding (summation order). The weight keeps
    ``nn.ConvTranspose2d``'s layout and name, so official state dicts load unchanged.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int]) -> None:
        super().__init__(cin, cout, kernel, (1, 2))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        cin, cout, kt, kf = self.weight.shape
        b, _, t, f = x.shape
        # (cin, cout, kt, kf) -> (kf * cout, cin, kt, 1), time flipped: a correlation over the past-padded input
        kernel = self.weight.permute(3, 1, 0, 2).flip(3).reshape(kf * cout, cin, kt, 1)
        if kt > 1:
            x = nn.functional.pad(x, (0, 0, kt - 1, 0))
        taps = nn.functional.conv2d(x, kernel).view(b, kf, cout, t, f)
        # the output buffer is allocated from the activations and the bias copied in, not cloned from the expanded
        # bias: a compiler that freezes the weights would turn that clone into a full-size constant read every call
        out = taps.new_empty(b, cout, t, 2 * (f - 1) + kf)
        out.copy_(self.bias.view(1, cout, 1, 1).expand_as(out))
        for j in range(kf):
            out[..., j : j + 2 * f - 1 : 2] += taps[:, j]
        return out


class GateConv2d(nn.Module):
    """Gated convolution ``a * sigmoid(g)`` with ``(a, g)`` the two channel halves of a Conv2d(cin, 2 cout).

    For a time kernel k_t > 1, ``k_t - 1`` past frames of zeros are padded first (key ``conv.1.*``); with k_t = 1
    (the paper) the key is ``conv.*``.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 2)) -> None:
        super().__init__()
        conv = nn.Conv2d(cin, 2 * cout, kernel, stride)
        self.conv = nn.Sequential(nn.ZeroPad2d((0, 0, kernel[0] - 1, 0)), conv) if kernel[0] > 1 else conv

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        a, g = self.conv(x).chunk(2, dim=1)
        return a * torch.sigmoid(g)


class GateConvTranspose2d(nn.Module):
    """Gated transposed convolution, causal over time (key ``conv.0.*`` for k_t > 1, ``conv.*`` otherwise)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int]) -> None:
        super().__init__()
        conv = CausalConvTranspose2d(cin, 2 * cout, kernel)
        # official: Sequential(ConvTranspose2d, Chomp) for k_t > 1; the chomp is built into the convolution here,
        # an Identity keeps the official key numbering
        self.conv = nn.Sequential(conv, nn.Identity()) if kernel[0] > 1 else conv

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        a, g = self.conv(x).chunk(2, dim=1)
        return a * torch.sigmoid(g)


class Conv2dUnit(nn.Module):
    """Causal Conv2d(c, c, k2, stride (1, 2)) -> norm -> PReLU: halves the frequency axis, F -> (F - 3) // 2 + 1."""

    def __init__(self, k: tuple[int, int], c: int, norm: Any) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ZeroPad2d((0, 0, k[0] - 1, 0))] if k[0] > 1 else []
        layers += [nn.Conv2d(c, c, k, (1, 2)), norm("2D", c), nn.PReLU(c)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.conv(x)


class Deconv2dUnit(nn.Module):
    """ConvTranspose2d(c or 2c -> c, k2, stride (1, 2)) -> causal chomp -> norm -> PReLU: F -> 2F + 1."""

    def __init__(self, k: tuple[int, int], c: int, connect: str, norm: Any) -> None:
        super().__init__()
        cin = c if connect == "add" else 2 * c
        layers: list[nn.Module] = [CausalConvTranspose2d(cin, c, k)]
        if k[0] > 1:
            layers.append(nn.Identity())  # the official chomp, built into the convolution (keeps the key numbering)
        layers += [norm("2D", c), nn.PReLU(c)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.deconv(x)


class EnUNetModule(nn.Module):
    """Recalibration encoding/decoding layer (the paper's REL/RDL; official ``En_unet_module``).

    A gated (transposed) convolution with stride 2 over frequency, norm and PReLU give ``x_res``; a small U-Net over
    frequency (``scale`` Conv2dUnits, then ``scale`` Deconv2dUnits with skips) refines it; the output is
    ``x_res + unet(x_res)``. The first deconvolution takes the bottleneck alone ("add" width); later ones take
    ``intra_connect`` of the running map and the matching encoder output.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        k1: tuple[int, int],
        k2: tuple[int, int],
        intra_connect: str,
        norm: Any,
        scale: int,
        de_flag: bool = False,
    ) -> None:
        super().__init__()
        gate = GateConvTranspose2d(cin, cout, k1) if de_flag else GateConv2d(cin, cout, k1)
        self.in_conv = nn.Sequential(gate, norm("2D", cout), nn.PReLU(cout))
        self.enco = nn.ModuleList(Conv2dUnit(k2, cout, norm) for _ in range(scale))
        self.deco = nn.ModuleList(
            Deconv2dUnit(k2, cout, "add" if i == 0 else intra_connect, norm) for i in range(scale)
        )
        self.intra_connect = intra_connect

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x_res = self.in_conv(x)
        skips = []
        x = x_res
        for enc in self.enco:
            x = enc(x)
            skips.append(x)
        for i, dec in enumerate(self.deco):
            if i > 0:
                skip = skips[-(i + 1)]
                x = x + skip if self.intra_connect == "add" else torch.cat((x, skip), dim=1)
            x = dec(x)
        return x_res + x


class U2Encoder(nn.Module):
    """U^2-encoder: four REL layers (U-Net scales 4, 3, 2, 1) and a gated conv to 64 channels.

    Frequency sizes for F = 161: 161 -> 79 -> 39 -> 19 -> 9 -> 4. Returns the last map (B, 64, T, 4) and the five
    maps for the decoder's skips.
    """

    def __init__(self, cin: int, k1: tuple[int, int], k2: tuple[int, int], c: int, intra_connect: str, norm: Any):
        super().__init__()
        self.meta_unet_list = nn.ModuleList(
            EnUNetModule(cin if i == 0 else c, c, (1, 5) if i == 0 else k1, k2, intra_connect, norm, scale)
            for i, scale in enumerate((4, 3, 2, 1))
        )
        self.last_conv = nn.Sequential(GateConv2d(c, _C_LAST, k1), norm("2D", _C_LAST), nn.PReLU(_C_LAST))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:  # noqa: D102
        maps = []
        for layer in self.meta_unet_list:
            x = layer(x)
            maps.append(x)
        x = self.last_conv(x)
        maps.append(x)
        return x, maps


class U2Decoder(nn.Module):
    """U^2-decoder: four RDL layers (scales 1, 2, 3, 4) fed with the encoder maps, then the sigmoid gain head."""

    def __init__(
        self, c: int, k1: tuple[int, int], k2: tuple[int, int], intra_connect: str, inter_connect: str, norm: Any
    ) -> None:
        super().__init__()
        factor = {"add": 1, "cat": 2}[inter_connect]
        self.inter_connect = inter_connect
        self.meta_unet_list = nn.ModuleList(
            EnUNetModule((_C_LAST if i == 0 else c) * factor, c, k1, k2, intra_connect, norm, scale, de_flag=True)
            for i, scale in enumerate((1, 2, 3, 4))
        )
        self.last_conv = nn.Sequential(
            GateConvTranspose2d(c * factor, _C_END, (1, 5)),
            norm("2D", _C_END),
            nn.PReLU(_C_END),
            nn.Conv2d(_C_END, 1, (1, 1)),
            nn.Sigmoid(),
        )

    def _join(self, x: Tensor, skip: Tensor) -> Tensor:
        return x + skip if self.inter_connect == "add" else torch.cat((x, skip), dim=1)

    def forward(self, x: Tensor, maps: list[Tensor]) -> Tensor:
        """Gain (B, T, F) of the bottleneck (B, 64, T, 4) and the encoder maps."""
        for i, layer in enumerate(self.meta_unet_list):
            x = layer(self._join(x, maps[-(i + 1)]))
        return self.last_conv(self._join(x, maps[0])).squeeze(1)


class UNetEncoder(nn.Module):
    """Plain gated-conv U-Net encoder of the ``is_u2=False`` ablation (official ``UNet_Encoder``)."""

    def __init__(self, cin: int, k1: tuple[int, int], c: int, norm: Any) -> None:
        super().__init__()
        specs = [(cin, c, (1, 5)), (c, c, k1), (c, c, k1), (c, c, k1), (c, _C_LAST, k1)]
        self.unet_list = nn.ModuleList(
            nn.Sequential(GateConv2d(i, o, k), norm("2D", o), nn.PReLU(o)) for i, o, k in specs
        )

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:  # noqa: D102
        maps = []
        for layer in self.unet_list:
            x = layer(x)
            maps.append(x)
        return x, maps


class UNetDecoder(nn.Module):
    """Plain gated-deconv U-Net decoder of the ``is_u2=False`` ablation (official ``UNet_Decoder``)."""

    def __init__(self, c: int, k1: tuple[int, int], inter_connect: str, norm: Any) -> None:
        super().__init__()
        factor = {"add": 1, "cat": 2}[inter_connect]
        self.inter_connect = inter_connect
        layers = [
            nn.Sequential(GateConvTranspose2d((_C_LAST if i == 0 else c) * factor, c, k1), norm("2D", c), nn.PReLU(c))
            for i in range(4)
        ]
        layers.append(
            nn.Sequential(
                GateConvTranspose2d(c * factor, _C_END, (1, 5)),
                norm("2D", _C_END),
                nn.PReLU(_C_END),
                nn.Conv2d(_C_END, 1, (1, 1)),
                nn.Sigmoid(),
            )
        )
        self.unet_list = nn.ModuleList(layers)

    def forward(self, x: Tensor, maps: list[Tensor]) -> Tensor:  # noqa: D102
        for i, layer in enumerate(self.unet_list):
            skip = maps[-(i + 1)]
            x = layer(x + skip if self.inter_connect == "add" else torch.cat((x, skip), dim=1))
        return x.squeeze(1)


class SqueezedTCM(nn.Module):
    """Squeezed temporal convolution module (S-TCN) with a gated dilated convolution, residual over (B, d_feat, T).

    ``h = in_conv(x)``; ``y = out_conv(left(h) * sigmoid-right(h))``; output ``x + y``. Each branch is
    PReLU -> norm -> (causal) pad -> dilated Conv1d, in this (official) order. Causal padding is
    ``(kd1 - 1) * dilation`` past frames; the non-causal variant pads half on each side.
    """

    def __init__(self, kd1: int, cd1: int, dilation: int, d_feat: int, is_causal: bool, norm: Any) -> None:
        super().__init__()
        total = (kd1 - 1) * dilation
        pad = (total, 0) if is_causal else (total // 2, total // 2)
        self.in_conv = nn.Conv1d(d_feat, cd1, 1, bias=False)

        def branch(gate: bool) -> nn.Sequential:
            layers = [nn.PReLU(cd1), norm("1D", cd1), nn.ConstantPad1d(pad, 0.0),
                      nn.Conv1d(cd1, cd1, kd1, dilation=dilation, bias=False)]  # fmt: skip
            return nn.Sequential(*layers, nn.Sigmoid()) if gate else nn.Sequential(*layers)

        self.left_conv = branch(False)
        self.right_conv = branch(True)
        self.out_conv = nn.Sequential(nn.PReLU(cd1), norm("1D", cd1), nn.Conv1d(cd1, d_feat, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        h = self.in_conv(x)
        return x + self.out_conv(self.left_conv(h) * self.right_conv(h))


class TCMList(nn.Module):
    """S-TCNs in sequence, one per dilation (1, 2, 5, 9 in the paper)."""

    def __init__(self, kd1: int, cd1: int, d_feat: int, dilations: tuple[int, ...], is_causal: bool, norm: Any):
        super().__init__()
        self.tcm_list = nn.ModuleList(SqueezedTCM(kd1, cd1, d, d_feat, is_causal, norm) for d in dilations)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        for tcm in self.tcm_list:
            x = tcm(x)
        return x


# --------------------------------------------------------------------------------------------------------------
# The two order blocks
# --------------------------------------------------------------------------------------------------------------


def _flatten_bottleneck(x: Tensor) -> Tensor:
    """(B, C, T, F') -> (B, C * F', T), channel index ``ch * F' + f`` (the official transpose + view)."""
    b, c, t, f = x.shape
    return x.transpose(-2, -1).reshape(b, c * f, t)


class ZeroOrderBlock(nn.Module):
    """The 0th-order magnitude filter: gain G (B, T, F) in [0, 1] of the compressed magnitude (B, T, F).

    U^2-encoder (1 input channel) -> flatten to (B, 256, T) -> ``p`` TCM lists -> reshape -> U^2-decoder -> sigmoid.
    Also returns the flattened encoder bottleneck before the TCMs (used by the high orders when
    ``is_encoder_share``).
    """

    def __init__(
        self,
        cin: int,
        k1: tuple[int, int],
        k2: tuple[int, int],
        c: int,
        kd1: int,
        cd1: int,
        d_feat: int,
        dilations: tuple[int, ...],
        p: int,
        intra_connect: str,
        inter_connect: str,
        is_causal: bool,
        is_u2: bool,
        norm: Any,
    ) -> None:
        super().__init__()
        if is_u2:
            self.en = U2Encoder(cin, k1, k2, c, intra_connect, norm)
            self.de = U2Decoder(c, k1, k2, intra_connect, inter_connect, norm)
        else:
            self.en = UNetEncoder(cin, k1, c, norm)
            self.de = UNetDecoder(c, k1, inter_connect, norm)
        self.tcms = nn.ModuleList(TCMList(kd1, cd1, d_feat, dilations, is_causal, norm) for _ in range(p))

    def forward(self, mag: Tensor) -> tuple[Tensor, Tensor]:
        """Gain (B, T, F) and bottleneck feature (B, d_feat, T) of a magnitude (B, T, F) or (B, 1, T, F)."""
        if mag.dim() == 3:
            mag = mag.unsqueeze(1)
        x, maps = self.en(mag)
        b, c, t, f = x.shape
        feat = _flatten_bottleneck(x)
        h = feat
        for tcm in self.tcms:
            h = tcm(h)
        h = h.view(b, c, f, t).transpose(-2, -1)
        return self.de(h, maps), feat


class HighOrderBlock(nn.Module):
    """The trainable derivative operator D_k: next-order term (B, 2, T, F) of E (B, d_feat, T) and U (B, 2, T, F).

    ``cat(E, flat(U))`` (flat: (B, 2F, T), real rows first) -> Conv1d(d_feat + 2F -> d_feat, 1, bias) -> ``p`` TCM
    lists -> two Conv1d(d_feat -> F, 1, bias) heads for the real and imaginary parts. The output is linear.
    """

    def __init__(
        self, kd1: int, cd1: int, d_feat: int, dilations: tuple[int, ...], p: int, fft_num: int, is_causal: bool,
        norm: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        bins = fft_num // 2 + 1
        self.in_conv = nn.Conv1d(2 * bins + d_feat, d_feat, 1)
        self.tcms = nn.ModuleList(TCMList(kd1, cd1, d_feat, dilations, is_causal, norm) for _ in range(p))
        self.real_resi = nn.Conv1d(d_feat, bins, 1)
        self.imag_resi = nn.Conv1d(d_feat, bins, 1)

    def forward(self, feat: Tensor, prev: Tensor) -> Tensor:  # noqa: D102
        b, _, t, _ = prev.shape
        x = self.in_conv(torch.cat((feat, prev.transpose(-2, -1).reshape(b, -1, t)), dim=1))
        for tcm in self.tcms:
            x = tcm(x)
        return torch.stack((self.real_resi(x).transpose(-2, -1), self.imag_resi(x).transpose(-2, -1)), dim=1)


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------


def frequency_chain(fft_num: int) -> list[int]:
    """Frequency sizes of the encoder, ``[F, F1, ..., F5]`` (161, 79, 39, 19, 9, 4 for ``fft_num=320``).

    Raises:
        ValueError: the sizes do not let the decoder (``2F + 1`` per transposed conv, ``2F + 3`` for the last) and
            every inner U-Net close exactly; this is the case for the official ``fft_num=320``.
    """
    sizes = [fft_num // 2 + 1]
    sizes.append((sizes[-1] - 5) // 2 + 1)  # first REL: kernel (1, 5)
    for _ in range(4):
        sizes.append((sizes[-1] - 3) // 2 + 1)
    inner_ok = all(_unet_closes(f, s) for f, s in zip(sizes[1:5], (4, 3, 2, 1), strict=True))
    decoder = [sizes[5]]
    for _ in range(4):
        decoder.append(2 * decoder[-1] + 1)
    decoder.append(2 * (decoder[-1] - 1) + 5)
    if min(sizes) < 1 or decoder != sizes[::-1] or not inner_ok:
        raise ValueError(
            f"fft_num={fft_num} gives encoder frequency sizes {sizes} that the decoder cannot mirror; the official "
            "architecture needs every intermediate size odd (fft_num=320: 161, 79, 39, 19, 9, 4)"
        )
    return sizes


def _unet_closes(f: int, scale: int) -> bool:
    sizes = [f]
    for _ in range(scale):
        sizes.append((sizes[-1] - 3) // 2 + 1)
    back = [sizes[-1]]
    for _ in range(scale):
        back.append(2 * back[-1] + 1)
    return min(sizes) >= 1 and back == sizes[::-1]


@dataclass
class TaylorOutput:
    """Everything :meth:`TaylorSENet.forward_terms` computes (compressed domain, real/imag channel pairs).

    Attributes:
        out: the estimate ``T0 + sum_k U_k / (k+1)!`` (B, 2, T, F).
        zero_term: T0 = G |X| e^{j angle X} (B, 2, T, F).
        gain: the 0th-order gain G (B, T, F).
        terms: ``[U_0, ..., U_{Q-1}]``, each (B, 2, T, F), before the factorial division.
    """

    out: Tensor
    zero_term: Tensor
    gain: Tensor
    terms: list[Tensor]


class TaylorSENet(nn.Module):
    """TaylorSENet (arXiv 2205.00206): compressed noisy spectrum (B, 2, T, F) -> compressed clean estimate.

    Args:
        cin: input channels of the complex encoder (2: real, imag); the magnitude encoder gets ``cin // 2``.
        k1: kernel (time, freq) of the gated (de)convolutions.
        k2: kernel of the inner U-Net units (time 2: causal).
        c: channels of the U^2-Net.
        kd1: kernel size of the S-TCN dilated convolutions.
        cd1: squeezed channels of the S-TCNs.
        d_feat: bottleneck width; must equal ``64 * F5`` (256 for ``fft_num=320``).
        dilations: dilations of one TCM list.
        p: TCM lists per block.
        fft_num: FFT size of the front end (only 320 closes the frequency chain, see :func:`frequency_chain`).
        order_num: Q, number of high-order terms (0: the magnitude-only filter T0).
        intra_connect: skips inside each REL/RDL U-Net, ``cat`` or ``add``.
        inter_connect: skips between the U^2 encoder and decoder, ``cat`` (paper, DNS config) or ``add``.
            Fidelity: the official class default is ``add`` but its config and ``__main__`` use ``cat``; ours
            defaults to the paper's ``cat`` so that ``TaylorSENet()`` is the paper model.
        norm_type: ``IN`` (paper), ``BN`` or ``cLN`` (the official cumulative layer norm: with it and
            ``is_causal`` the whole network is causal and can stream, see :meth:`stream`).
        is_causal: causal S-TCN padding. The 2-D convolutions are always causal; instance norm over the whole
            utterance is not (see the docs).
        is_u2: U^2-Net encoder/decoder (paper) or the plain U-Net ablation.
        is_param_share: one derivative operator for all orders (built even when ``order_num=0``, as officially,
            although it is then unused: official state dicts of that configuration carry its weights).
        is_encoder_share: the high orders read the magnitude encoder's bottleneck instead of a separate complex
            encoder.
        official_in_eps_bug: keep the official instance norm (eps = 1, no affine); see :func:`make_norm`.

    Raises:
        ValueError: an unknown connection or norm type, a negative order, or ``fft_num``/``d_feat`` that do not fit.
    """

    def __init__(
        self,
        cin: int = 2,
        k1: tuple[int, int] | list[int] = (1, 3),
        k2: tuple[int, int] | list[int] = (2, 3),
        c: int = 64,
        kd1: int = 5,
        cd1: int = 64,
        d_feat: int = 256,
        dilations: tuple[int, ...] | list[int] = (1, 2, 5, 9),
        p: int = 2,
        fft_num: int = 320,
        order_num: int = 3,
        intra_connect: str = "cat",
        inter_connect: str = "cat",
        norm_type: str = "IN",
        is_causal: bool = True,
        is_u2: bool = True,
        is_param_share: bool = False,
        is_encoder_share: bool = False,
        official_in_eps_bug: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("intra_connect", intra_connect), ("inter_connect", inter_connect)):
            if value not in ("add", "cat"):
                raise ValueError(f"{name} must be 'add' or 'cat', got {value!r}")
        if order_num < 0:
            raise ValueError(f"order_num must be >= 0, got {order_num}")
        if cin != 2:
            raise ValueError(f"cin must be 2 (real and imaginary parts), got {cin}")
        sizes = frequency_chain(fft_num)
        if d_feat != _C_LAST * sizes[-1]:
            raise ValueError(
                f"d_feat={d_feat} does not fit fft_num={fft_num}: the bottleneck is 64 channels x {sizes[-1]} "
                f"frequencies, so d_feat must be {_C_LAST * sizes[-1]}"
            )
        make_norm(norm_type, "1D", 1)  # fail early on an unknown norm type
        k1, k2, dilations = tuple(k1), tuple(k2), tuple(dilations)
        self.order_num = order_num
        self.fft_num = fft_num
        self.is_param_share = is_param_share
        self.is_encoder_share = is_encoder_share

        def norm(fmt: str, channels: int) -> nn.Module:
            return make_norm(norm_type, fmt, channels, official_in_eps_bug)

        self.zeroorderblock = ZeroOrderBlock(
            cin // 2, k1, k2, c, kd1, cd1, d_feat, dilations, p, intra_connect, inter_connect, is_causal, is_u2, norm
        )
        if not is_encoder_share:
            encoder = U2Encoder(cin, k1, k2, c, intra_connect, norm) if is_u2 else UNetEncoder(cin, k1, c, norm)
            self.separate_en = encoder
        # the official code builds the shared block even for order_num=0, so such state dicts hold its keys
        n_blocks = 1 if is_param_share else order_num
        self.highorderblock_list = nn.ModuleList(
            HighOrderBlock(kd1, cd1, d_feat, dilations, p, fft_num, is_causal, norm) for _ in range(n_blocks)
        )

    def forward_terms(self, spec: Tensor) -> TaylorOutput:
        """All terms of the Taylor estimate of a compressed noisy spectrum (B, 2, T, F); see :class:`TaylorOutput`.

        Raises:
            ValueError: ``spec`` is not (B, 2, T, F). A 3-D input is rejected: the official forward unsqueezes it to
                (B, 1, T, F), which its complex encoder (2 input channels) cannot take either.
        """
        bins = self.fft_num // 2 + 1
        if spec.dim() == 3:
            raise ValueError(
                f"expected a batched spectrum (B, 2, T, {bins}), got a 3-D tensor of shape {tuple(spec.shape)}; "
                "add the batch dimension with spec[None]"
            )
        if spec.dim() != 4 or spec.shape[1] != 2 or spec.shape[-1] != bins:
            raise ValueError(f"expected a spectrum (B, 2, T, {bins}), got shape {tuple(spec.shape)}")
        mag = torch.linalg.vector_norm(spec, dim=1)  # official torch.norm (no epsilon)
        phase = torch.atan2(spec[:, 1], spec[:, 0])
        gain, feat = self.zeroorderblock(mag)
        filtered = gain * mag
        zero_term = torch.stack((filtered * torch.cos(phase), filtered * torch.sin(phase)), dim=1)
        out, prev, terms = zero_term, zero_term, []
        if self.order_num and not self.is_encoder_share:
            feat = _flatten_bottleneck(self.separate_en(spec)[0])
        for k in range(self.order_num):
            block = self.highorderblock_list[0 if self.is_param_share else k]
            prev = block(feat, prev) + k * prev  # D_k(E, U_{k-1}) + k U_{k-1} (product-rule term, 0-based k)
            terms.append(prev)
            out = out + prev / math.factorial(k + 1)
        return TaylorOutput(out=out, zero_term=zero_term, gain=gain, terms=terms)

    def forward(self, spec: Tensor) -> Tensor:
        """Compressed clean estimate (B, 2, T, F) of the compressed noisy spectrum (B, 2, T, F)."""
        return self.forward_terms(spec).out

    def stream(self, *, scale: float = 1.0, power: float = 0.5) -> Any:
        """A frame-by-frame enhancer over this (causal) model: see :class:`tenfold.speech.stream.TaylorSEStream`.

        Args:
            scale: fixed variance normalisation scale (the offline ``c``).
            power: compression exponent the model was trained with.

        Raises:
            ValueError: the model has non-causal parts (instance norm over the utterance, ``is_causal=False``),
                named in the message.
        """
        from tenfold.speech.stream import TaylorSEStream

        return TaylorSEStream(self, scale=scale, power=power)


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def checkpoint_filter_fn(checkpoint: Any, model: nn.Module | None = None) -> dict[str, Tensor]:
    """A flat TaylorSENet state dict from any of the formats in use.

    Accepts a plain official ``state_dict`` (the solver's best model), the solver's per-epoch checkpoint
    (``model_state_dict``), DataParallel's ``module.`` prefix, and a tenfold Lightning checkpoint (keys
    ``model.*`` under ``state_dict``).
    """
    from tenfold.utils.checkpoint import unwrap_state_dict

    state = unwrap_state_dict(checkpoint, keys=("state_dict", "model_state_dict", "model", "net"))
    if any(k.startswith("model.") for k in state) and not any(k.startswith("zeroorderblock.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return state


def load_taylorsenet_checkpoint(path: str | Path, **kwargs: Any) -> tuple[TaylorSENet, dict[str, Any]]:
    """Build a TaylorSENet, load weights from ``path`` with ``strict=True``, and return the saved hyper-parameters.

    The hyper-parameters of a tenfold training checkpoint include what inference must repeat, above all the
    compression exponent ``power`` of the front end the model was trained with; official state dicts carry none.

    Args:
        path: a tenfold training checkpoint (its saved ``model_kwargs`` give the architecture) or an official
            state dict / solver checkpoint (then ``kwargs``, default the paper configuration, give it).
        **kwargs: architecture arguments (override a checkpoint's own).

    Returns:
        The model in eval mode, and the checkpoint's ``hyper_parameters`` ({} when it has none).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the weights do not fit the architecture (missing/unexpected keys or wrong shapes listed).
    """
    from tenfold.utils.checkpoint import load_checkpoint, load_state_dict_strict

    checkpoint = load_checkpoint(path)
    arch = dict(PAPER_CONFIG)
    hparams: dict[str, Any] = {}
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("hyper_parameters"), dict):
        hparams = dict(checkpoint["hyper_parameters"])
        arch.update(hparams.get("model_kwargs") or {})
    arch.update(kwargs)
    model = TaylorSENet(**arch)
    load_state_dict_strict(model, checkpoint_filter_fn(checkpoint, model), source=str(path))
    return model.eval(), hparams


def load_taylorsenet(path: str | Path, **kwargs: Any) -> TaylorSENet:
    """Build a TaylorSENet and load weights from ``path`` with ``strict=True``.

    :func:`load_taylorsenet_checkpoint` does the same and also returns the training hyper-parameters (``power``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the weights do not fit the architecture (missing/unexpected keys or wrong shapes listed).
    """
    return load_taylorsenet_checkpoint(path, **kwargs)[0]
