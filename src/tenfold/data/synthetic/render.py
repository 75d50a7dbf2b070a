"""The scene renderer: textured implicit shapes alpha-composited over cluttered backgrounds, vectorised.

Images are rendered as procedural scenes on vectorised coordinate grids: every object is an implicit shape
(a signed-distance-like function of rotated, scaled pixel coordinates), filled with a class texture and alpha
composited over a cluttered background. Python loops run only over shape and texture *types* and over a fixed
number of object layers, never over pixels or samples (samples are processed in fixed-size chunks to bound
memory).

``difficulty`` (default 1.0) scales every nuisance at once: background clutter, pixel noise, colour and
rotation jitter, and distractor shapes. ``difficulty=0`` renders clean objects on a flat grey (128) background.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tenfold.data.synthetic.prototypes import ClassPrototypes
from tenfold.data.synthetic.seeding import _uniform

_CHUNK_PIXELS = 1 << 18  # pixels per rendering chunk: 1 MB float32 planes stay in cache

# Nuisance ranges at difficulty 1 (tuned with those of the classification scenes, see classification.py).
_ROTATION_DEG = 45.0  # object rotation jitter, +-
_BRIGHTNESS = (-0.4, 0.2)  # object brightness jitter, relative
_CHANNEL_GAIN = 0.25  # object per-channel colour jitter, relative, +-
_BLOB_AMPLITUDE = 0.6  # smooth colour noise of the background
_GRATING_AMPLITUDE = 0.25  # largest amplitude of the background grating
_PIXEL_NOISE = (0.02, 0.15)  # range of the Gaussian pixel-noise std


# Signed-distance-like functions of local coordinates (u, v) in units of the object radius (v points down).
# Negative inside; |gradient| is close to 1 so that ``distance * radius_px`` is in pixels for anti-aliasing.


def _sd_disc(u: Tensor, v: Tensor) -> Tensor:
    return torch.sqrt(u * u + v * v) - 0.9


def _sd_square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) - 0.75


def _sd_triangle(u: Tensor, v: Tensor) -> Tensor:
    # Equilateral, pointing up, inradius 0.45: the largest of three half-plane distances.
    c = math.sqrt(3) / 2
    return torch.maximum(torch.maximum(-v, c * u + 0.5 * v), -c * u + 0.5 * v) - 0.45


def _sd_ring(u: Tensor, v: Tensor) -> Tensor:
    return (torch.sqrt(u * u + v * v) - 0.66).abs() - 0.26


def _sd_cross(u: Tensor, v: Tensor) -> Tensor:
    au, av = u.abs(), v.abs()
    return torch.minimum(torch.maximum(au - 0.9, av - 0.3), torch.maximum(au - 0.3, av - 0.9))


def _sd_diamond(u: Tensor, v: Tensor) -> Tensor:
    return (u.abs() + v.abs()) * (1 / math.sqrt(2)) - 0.62


def _sd_bar(u: Tensor, v: Tensor) -> Tensor:
    # Ellipse with semi-axes 0.95 x 0.42, scaled by the short axis to keep the gradient near 1 at its edge.
    return (torch.sqrt((u / 0.95) ** 2 + (v / 0.42) ** 2) - 1) * 0.42


def _sd_stripes(u: Tensor, v: Tensor) -> Tensor:
    # Three horizontal bars of height 0.4 with gaps of 0.2 inside a 1.6 x 1.6 block.
    band = (torch.remainder(v + 0.3, 0.6) - 0.3).abs() - 0.2
    return torch.maximum(torch.maximum(u.abs(), v.abs()) - 0.8, band)


def _sd_star(u: Tensor, v: Tensor) -> Tensor:
    rho = torch.sqrt(u * u + v * v)
    phi = torch.atan2(v, u)
    return (rho - (0.6 + 0.32 * torch.cos(5 * (phi + math.pi / 2)))) * 0.6


def _sd_frame(u: Tensor, v: Tensor) -> Tensor:
    return (torch.maximum(u.abs(), v.abs()) - 0.62).abs() - 0.2


_SDF: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    _sd_disc,
    _sd_square,
    _sd_triangle,
    _sd_ring,
    _sd_cross,
    _sd_diamond,
    _sd_bar,
    _sd_stripes,
    _sd_star,
    _sd_frame,
)


def _by_type(types: Tensor, u: Tensor, v: Tensor, fns: dict[int, Callable[..., Tensor]], *extra: Tensor) -> Tensor:
    """Evaluate ``fns[type]`` on the rows of (u, v, *extra) of each type; a loop over types, not samples."""
    out = torch.empty_like(u)
    for t in torch.unique(types).tolist():
        sel = (types == t).nonzero().squeeze(1)
        if sel.numel() == types.numel():
            out = fns[t](u, v, *extra)
        else:
            out[sel] = fns[t](u[sel], v[sel], *(e[sel] for e in extra))
    return out


def _tex_flat(u: Tensor, v: Tensor, freq: Tensor, angle: Tensor, phase: Tensor) -> Tensor:
    return torch.ones_like(u)


def _tex_grating(u: Tensor, v: Tensor, freq: Tensor, angle: Tensor, phase: Tensor) -> Tensor:
    w = u * torch.cos(angle) + v * torch.sin(angle)
    return 0.5 + 0.5 * torch.sin(2 * math.pi * freq * w + phase[..., 0:1, :])


def _tex_checker(u: Tensor, v: Tensor, freq: Tensor, angle: Tensor, phase: Tensor) -> Tensor:
    a = torch.sin(2 * math.pi * freq * u + phase[..., 0:1, :])
    b = torch.sin(2 * math.pi * freq * v + phase[..., 1:2, :])
    return 0.5 + 0.5 * torch.tanh(3 * a * b)


def _tex_rings(u: Tensor, v: Tensor, freq: Tensor, angle: Tensor, phase: Tensor) -> Tensor:
    return 0.5 + 0.5 * torch.sin(2 * math.pi * freq * torch.sqrt(u * u + v * v) + phase[..., 0:1, :])


_TEX_FNS = {0: _tex_flat, 1: _tex_grating, 2: _tex_checker, 3: _tex_rings}


def _local_coords(size: int, cx: Tensor, cy: Tensor, radius: Tensor, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rotated, scaled pixel-centre coordinates of K objects.

    Args:
        size: Image side S in pixels.
        cx: (K,) object centre x in pixels.
        cy: (K,) object centre y in pixels.
        radius: (K,) object radius in pixels (one local unit).
        theta: (K,) rotation in radians.

    Returns:
        u, v: (K, S, S) local coordinates in radius units; r: (K, 1, 1) radius.
    """
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dx = grid.view(1, 1, size) - cx.view(-1, 1, 1)
    dy = grid.view(1, size, 1) - cy.view(-1, 1, 1)
    r = radius.view(-1, 1, 1)
    c, s = torch.cos(theta).view(-1, 1, 1) / r, torch.sin(theta).view(-1, 1, 1) / r
    return c * dx + s * dy, c * dy - s * dx, r


@dataclass
class _Layer:
    """One object per image for a stack of images; every tensor has one row per object.

    ``idx`` names the canvas rows the objects belong to (None: one object for every canvas row, in order).
    """

    cls: Tensor  # (K,) int64 class id
    cx: Tensor  # (K,) centre x, pixels
    cy: Tensor  # (K,) centre y, pixels
    radius: Tensor  # (K,) pixels
    theta: Tensor  # (K,) rotation, radians
    opacity: Tensor  # (K,) in [0, 1]
    gain: Tensor  # (K, 3) per-channel colour jitter
    phase: Tensor  # (K, 2) texture phases
    present: Tensor | None = None  # (K,) bool: which rows are drawn at all
    idx: Tensor | None = None

    def chunk(self, lo: int, hi: int) -> _Layer | None:
        """Rows ``lo:hi`` that are present, with ``idx`` relative to a canvas holding images ``lo:hi``."""
        fields = (self.cls, self.cx, self.cy, self.radius, self.theta, self.opacity, self.gain, self.phase)
        if self.present is None:
            return _Layer(*(t[lo:hi] for t in fields))
        sel = self.present[lo:hi].nonzero().squeeze(1)
        if sel.numel() == 0:
            return None
        rows = sel + lo
        return _Layer(*(t[rows] for t in fields), idx=None if sel.numel() == hi - lo else sel)


def _make_layer(
    cls: Tensor,
    cx: Tensor,
    cy: Tensor,
    radius: Tensor,
    difficulty: float,
    gen: torch.Generator,
    opacity: Tensor | None = None,
    present: Tensor | None = None,
) -> _Layer:
    """Attach per-object nuisances (rotation, colour gain, texture phase) to K placed objects."""
    k = cls.numel()
    d = difficulty
    theta = d * _uniform(k, -1, 1, gen) * math.radians(_ROTATION_DEG)
    gain = (1 + d * _uniform((k, 1), *_BRIGHTNESS, gen)) * (
        1 + d * _uniform((k, 3), -_CHANNEL_GAIN, _CHANNEL_GAIN, gen)
    )
    phase = _uniform((k, 2), 0, 2 * math.pi, gen)
    opacity = torch.ones(k) if opacity is None else opacity
    return _Layer(cls, cx, cy, radius, theta, opacity, gain, phase, present)


def _draw_layer(canvas: Tensor, layer: _Layer, protos: ClassPrototypes) -> Tensor:
    """Alpha-composite one textured object per selected image onto ``canvas`` in place.

    Args:
        canvas: (B, 3, S, S) float32 images, modified in place.
        layer: K objects; ``layer.idx`` (K,) names their images, or None when K == B.
        protos: Class definitions.

    Returns:
        (K, S, S) coverage alpha in [0, 1] of each object before its opacity is applied.
    """
    size = canvas.shape[-1]
    u, v, r = _local_coords(size, layer.cx, layer.cy, layer.radius, layer.theta)
    shape = protos.shape[layer.cls]
    dist = _by_type(shape, u, v, {t: _SDF[t] for t in range(len(_SDF))})
    alpha = (0.5 - dist * r).clamp_(0, 1)  # one-pixel anti-aliased edge
    del dist
    kind = protos.tex_kind[layer.cls]
    freq = protos.tex_freq[layer.cls].view(-1, 1, 1)
    angle = protos.tex_angle[layer.cls].view(-1, 1, 1)
    tex = _by_type(kind, u, v, _TEX_FNS, freq, angle, layer.phase.view(-1, 2, 1))
    del u, v
    c1 = (protos.colour[layer.cls] * layer.gain).clamp(0, 1).view(-1, 3, 1, 1)
    c2 = (protos.colour2[layer.cls] * layer.gain).clamp(0, 1).view(-1, 3, 1, 1)
    colour = torch.lerp(c2, c1, tex.unsqueeze(1))
    a = (alpha * layer.opacity.view(-1, 1, 1)).unsqueeze(1)
    if layer.idx is None:
        canvas.lerp_(colour, a)
    else:
        canvas[layer.idx] = torch.lerp(canvas[layer.idx], colour, a)
    return alpha


def _background(b: int, size: int, difficulty: float, gen: torch.Generator) -> Tensor:
    """Cluttered backgrounds, (B, 3, S, S) float32: grey base + smooth colour noise + a faint random grating."""
    d = difficulty
    base = 0.5 + d * _uniform((b, 1, 1, 1), -0.2, 0.2, gen) + d * _uniform((b, 3, 1, 1), -0.08, 0.08, gen)
    canvas = base.expand(b, 3, size, size).contiguous()
    if d == 0:
        return canvas
    blobs = torch.rand((b, 3, 5, 5), generator=gen) - 0.5
    canvas += (_BLOB_AMPLITUDE * d) * F.interpolate(blobs, size=(size, size), mode="bicubic", align_corners=False)
    # A grating with random frequency and orientation: texture-like clutter that competes with class textures.
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    ang = _uniform((b, 1, 1), 0, math.pi, gen)
    freq = _uniform((b, 1, 1), 2.0, 7.0, gen)
    w = grid.view(1, 1, size) * torch.cos(ang) + grid.view(1, size, 1) * torch.sin(ang)
    amp = _uniform((b, 1, 1), 0.0, _GRATING_AMPLITUDE * d, gen)
    canvas += (amp * torch.sin(2 * math.pi * freq * w + _uniform((b, 1, 1), 0, 2 * math.pi, gen))).unsqueeze(1)
    return canvas


def _finish(canvas: Tensor, difficulty: float, gen: torch.Generator) -> Tensor:
    """Global photometric jitter and pixel noise, then quantise to uint8 (B, 3, S, S)."""
    d = difficulty
    if d > 0:
        b = canvas.shape[0]
        mean = canvas.mean(dim=(1, 2, 3), keepdim=True)
        contrast = 1 + d * _uniform((b, 1, 1, 1), -0.25, 0.25, gen)
        gain = (1 + d * _uniform((b, 1, 1, 1), -0.15, 0.15, gen)) * (1 + d * _uniform((b, 3, 1, 1), -0.08, 0.08, gen))
        canvas = ((canvas - mean) * contrast + mean) * gain
        sigma = d * _uniform((b, 1, 1, 1), *_PIXEL_NOISE, gen)
        canvas = canvas + sigma * torch.randn(canvas.shape, generator=gen)
    return canvas.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_PIXELS // (size * size))
    return [(i, min(n, i + step)) for i in range(0, n, step)]
