"""Built-in synthetic datasets: seeded, deterministic, vectorised, no download.

Every generator here follows the same contract:

* ``seed`` defines the *task*: what each class looks like (its shape, colour and texture), how the verbs of the
  HOI set are drawn, and so on. Two calls with the same ``seed`` describe the same classes.
* ``split`` (``"train"``, ``"val"`` or ``"test"``) selects a separate stream of samples of that task. The sample
  stream's seed is derived from ``(seed, generator kind, split)`` through a fixed integer mix (SplitMix64), not
  through Python's randomised ``hash``, so it is the same in every process and on every machine.
* The same ``(seed, split, n)`` and keywords give bit-identical tensors. Output for ``n`` samples is not a prefix
  of the output for ``n + 1`` samples: each call draws its per-sample factors for the whole batch at once.
* A local :class:`torch.Generator` drives all randomness; the global RNG is never touched.

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
from torch.utils.data import Dataset

__all__ = [
    "SPLITS",
    "BuiltinClassification",
    "DigitsClassification",
    "load_digits",
    "make_classification",
    "make_hoi",
    "make_segmentation",
    "make_speech",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Names of the sample streams every generator accepts."""

SHAPE_NAMES: tuple[str, ...] = (
    "disc",
    "square",
    "triangle",
    "ring",
    "cross",
    "diamond",
    "bar",
    "stripes",
    "star",
    "frame",
)
"""Shape types an object class can take, indexed by shape id."""

# Texture bank: (kind, frequency in cycles per object radius, orientation in radians).
# kind 0 = flat, 1 = sinusoidal grating, 2 = checker, 3 = concentric rings.
_TEXTURES: tuple[tuple[int, float, float], ...] = (
    (0, 0.0, 0.0),
    (1, 1.1, 0.0),
    (1, 1.1, math.pi / 2),
    (1, 1.7, math.pi / 4),
    (1, 1.7, 3 * math.pi / 4),
    (2, 1.0, 0.0),
    (3, 1.4, 0.0),
)
TEXTURE_NAMES: tuple[str, ...] = (
    "flat",
    "grating-0",
    "grating-90",
    "grating-45",
    "grating-135",
    "checker",
    "rings",
)
"""Texture types an object class can take, indexed by texture id."""

_NUM_HUES = 8
_CHUNK_PIXELS = 1 << 22  # pixels per rendering chunk (about 16 MB per float32 plane)

# Generator kinds and purposes mixed into derived seeds. Fixed integers: changing one changes the data.
_KIND_CLASSIFICATION = 1
_KIND_SEGMENTATION = 2
_KIND_HOI = 3
_KIND_SPEECH = 4
_KIND_DIGITS = 5
_PURPOSE_TASK = 0
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}

_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------------------------
# Seeds and validation
# --------------------------------------------------------------------------------------------------------------


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed; deterministic across processes (unlike ``hash``)."""
    h = 0x5EED
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1


def _generator(*parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_derive_seed(*parts))
    return g


def _check_split(split: str) -> int:
    if split not in _SPLIT_CODES:
        raise ValueError(f"split={split!r} is not a known split; expected one of {list(SPLITS)}")
    return _SPLIT_CODES[split]


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an int")
    if value < low or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}={value} is out of range; expected an int {expected}")


def _check_difficulty(difficulty: float) -> float:
    if not (isinstance(difficulty, int | float) and 0.0 <= float(difficulty) <= 3.0):
        raise ValueError(f"difficulty={difficulty!r} is out of range; expected a float in [0, 3]")
    return float(difficulty)


def _uniform(shape: tuple[int, ...] | int, low: float, high: float, gen: torch.Generator) -> Tensor:
    if isinstance(shape, int):
        shape = (shape,)
    return torch.rand(shape, generator=gen) * (high - low) + low


# --------------------------------------------------------------------------------------------------------------
# Class prototypes (the task)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassPrototypes:
    """What each object class looks like; fixed by the task seed.

    Attributes:
        shape: (C,) int64 shape id, an index into :data:`SHAPE_NAMES`.
        texture: (C,) int64 texture id, an index into :data:`TEXTURE_NAMES`.
        colour: (C, 3) float32 primary RGB colour in [0, 1].
        colour2: (C, 3) float32 secondary RGB colour in [0, 1] (the dark phase of the texture).
        tex_kind: (C,) int64 texture kind (0 flat, 1 grating, 2 checker, 3 rings).
        tex_freq: (C,) float32 texture frequency in cycles per object radius.
        tex_angle: (C,) float32 texture orientation in radians (object frame).
    """

    shape: Tensor
    texture: Tensor
    colour: Tensor
    colour2: Tensor
    tex_kind: Tensor
    tex_freq: Tensor
    tex_angle: Tensor

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.shape.numel())


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Vectorised HSV to RGB; h, s, v (...,) in [0, 1] -> (..., 3)."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    f = torch.minimum(k, 4 - k).clamp(0, 1)
    return v.unsqueeze(-1) * (1 - s.unsqueeze(-1) * f)


def class_prototypes(num_classes: int, *, seed: int = 0) -> ClassPrototypes:
    """Draw the class definitions of a task: each class is a distinct (shape, colour, texture) combination.

    Factor levels are shared between classes on purpose (with 10 classes, 5 shapes, 4 hues and 4 textures are
    used, each by 2-3 classes), so no single factor identifies a class and a model has to combine them.

    Args:
        num_classes: Number of classes C, 2 to 100.
        seed: Task seed.

    Returns:
        The :class:`ClassPrototypes` of the task.
    """
    _check_int("num_classes", num_classes, 2, 100)
    c = num_classes
    g = _generator(seed, _PURPOSE_TASK, c)
    n_shape = min(len(SHAPE_NAMES), max(3, round(1.6 * math.sqrt(c))))
    n_hue = min(_NUM_HUES, max(3, round(1.2 * math.sqrt(c))))
    n_tex = min(len(_TEXTURES), max(3, round(1.2 * math.sqrt(c))))
    shape_ids = torch.randperm(len(SHAPE_NAMES), generator=g)[:n_shape]
    hue_ids = torch.randperm(_NUM_HUES, generator=g)[:n_hue]
    tex_ids = torch.randperm(len(_TEXTURES), generator=g)[:n_tex]
    # Balanced use of each level, then a greedy pass (a loop over classes) that keeps every triple distinct.
    shape_lvl = (torch.arange(c) % n_shape)[torch.randperm(c, generator=g)].tolist()
    hue_lvl = (torch.arange(c) % n_hue)[torch.randperm(c, generator=g)].tolist()
    tie_break = torch.rand(c, n_hue, n_tex, generator=g).tolist()
    used: set[tuple[int, int, int]] = set()
    tex_count = [0] * n_tex
    tex_lvl: list[int] = []
    for k in range(c):
        hues = [hue_lvl[k]] + sorted(set(range(n_hue)) - {hue_lvl[k]}, key=lambda j, k=k: tie_break[k][j][0])
        done = False
        for hue in hues:
            for t in sorted(range(n_tex), key=lambda t, k=k: (tex_count[t], tie_break[k][0][t])):
                if (shape_lvl[k], hue, t) not in used:
                    used.add((shape_lvl[k], hue, t))
                    hue_lvl[k] = hue
                    tex_lvl.append(t)
                    tex_count[t] += 1
                    done = True
                    break
            if done:
                break
    shape = shape_ids[torch.tensor(shape_lvl)]
    texture = tex_ids[torch.tensor(tex_lvl)]
    # Evenly spaced hues with a per-task offset, so another seed gives other colours.
    hue = (hue_ids[torch.tensor(hue_lvl)].float() / _NUM_HUES + torch.rand(1, generator=g) / _NUM_HUES) % 1.0
    sat = _uniform(c, 0.7, 0.95, g)
    val = _uniform(c, 0.75, 0.95, g)
    colour = _hsv_to_rgb(hue, sat, val)
    colour2 = colour * _uniform((c, 1), 0.2, 0.35, g)
    bank = torch.tensor(_TEXTURES, dtype=torch.float32)[texture]
    return ClassPrototypes(
        shape=shape,
        texture=texture,
        colour=colour,
        colour2=colour2,
        tex_kind=bank[:, 0].long(),
        tex_freq=bank[:, 1] * _uniform(c, 0.9, 1.1, g),
        tex_angle=bank[:, 2] + _uniform(c, -0.15, 0.15, g),
    )


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------

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


def _local_coords(
    size: int, cx: Tensor, cy: Tensor, radius: Tensor, theta: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Rotated, scaled pixel-centre coordinates of K objects.

    Args:
        size: Image side S in pixels.
        cx, cy: (K,) object centres in pixels.
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
    """One object per selected image: all tensors have K rows, ``idx`` selects images (None = all)."""

    cls: Tensor  # (K,) int64
    cx: Tensor  # (K,)
    cy: Tensor  # (K,)
    radius: Tensor  # (K,) pixels
    theta: Tensor  # (K,) radians
    opacity: Tensor  # (K,)
    gain: Tensor  # (K, 3) per-channel colour jitter
    phase: Tensor  # (K, 2) texture phases
    idx: Tensor | None = None

    def rows(self, sel: Tensor) -> _Layer:
        """Select rows of the layer (indices into K)."""
        return _Layer(
            *(t[sel] for t in (self.cls, self.cx, self.cy, self.radius, self.theta, self.opacity)),
            self.gain[sel],
            self.phase[sel],
            None if self.idx is None else self.idx[sel],
        )


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
    canvas += (0.45 * d) * F.interpolate(blobs, size=(size, size), mode="bicubic", align_corners=False)
    # A grating with random frequency and orientation: texture-like clutter that competes with class textures.
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    ang = _uniform((b, 1, 1), 0, math.pi, gen)
    freq = _uniform((b, 1, 1), 2.0, 7.0, gen)
    w = grid.view(1, 1, size) * torch.cos(ang) + grid.view(1, size, 1) * torch.sin(ang)
    amp = _uniform((b, 1, 1), 0.0, 0.12 * d, gen)
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
        sigma = d * _uniform((b, 1, 1, 1), 0.02, 0.07, gen)
        canvas = canvas + sigma * torch.randn(canvas.shape, generator=gen)
    return canvas.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _object_jitter(k: int, difficulty: float, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Per-object nuisances: rotation (K,), colour gain (K, 3), texture phase (K, 2)."""
    d = difficulty
    theta = d * _uniform(k, -math.pi / 6, math.pi / 6, gen)
    gain = _uniform((k, 1), 1 - 0.3 * d, 1 + 0.1 * d) if False else None  # placeholder, replaced below
    gain = (1 + d * _uniform((k, 1), -0.3, 0.1, gen)) * (1 + d * _uniform((k, 3), -0.12, 0.12, gen))
    phase = _uniform((k, 2), 0, 2 * math.pi, gen)
    return theta, gain, phase


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_PIXELS // (size * size))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


# --------------------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------------------


def _check_image_args(n: int, num_classes: int, split: str, image_size: int, min_size: int) -> int:
    _check_int("n", n, 1)
    _check_int("num_classes", num_classes, 2, 100)
    _check_int("image_size", image_size, min_size, 1024)
    return _check_split(split)


def make_classification(
    n: int,
    num_classes: int = 10,
    *,
    seed: int = 0,
    split: str = "train",
    image_size: int = 32,
    difficulty: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Procedural object-classification scenes, CIFAR-sized by default.

    Each class is a distinct combination of a shape, a hue and a texture (see :func:`class_prototypes`); classes
    share factor levels, so a model must combine factors. Each image shows one large object of its class with
    random position, scale, rotation (+-30 deg) and colour jitter, over a cluttered background (smooth colour
    noise and a faint grating) with one or two smaller, fainter distractor objects of other classes behind it,
    then global brightness/contrast jitter and Gaussian pixel noise.

    Args:
        n: Number of images (>= 1).
        num_classes: Number of classes, 2 to 100.
        seed: Task seed: defines what each class looks like.
        split: ``"train"``, ``"val"`` or ``"test"``: which sample stream of the task.
        image_size: Image side S in pixels, 16 to 1024.
        difficulty: Nuisance strength in [0, 3]; 0 gives clean objects on flat grey, no distractors.

    Returns:
        images: (n, 3, S, S) uint8.
        labels: (n,) int64 in [0, num_classes); balanced (counts differ by at most one).

    Raises:
        ValueError: On an unknown split or an out-of-range argument.
    """
    split_code = _check_image_args(n, num_classes, split, image_size, 16)
    d = _check_difficulty(difficulty)
    protos = class_prototypes(num_classes, seed=seed)
    g = _generator(seed, _KIND_CLASSIFICATION, split_code, num_classes, image_size)
    s = float(image_size)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    # Main object: centre, radius (pixels), rotation, colour and texture phase.
    main = dict(
        cx=_uniform(n, 0.36, 0.64, g) * s,
        cy=_uniform(n, 0.36, 0.64, g) * s,
        radius=_uniform(n, 0.2, 0.3, g) * s,
    )
    m_theta, m_gain, m_phase = _object_jitter(n, d, g)
    # Distractors: one always (when difficulty > 0), a second for half the images; other classes, smaller,
    # fainter, anywhere in the image, drawn behind the main object.
    n_distract = 2 if d > 0 else 0
    distract = []
    for j in range(n_distract):
        present = torch.rand(n, generator=g) < (1.0 if j == 0 else 0.5)
        cls = (labels + torch.randint(1, num_classes, (n,), generator=g)) % num_classes
        theta, gain, phase = _object_jitter(n, d, g)
        distract.append(
            dict(
                present=present,
                cls=cls,
                cx=_uniform(n, 0.15, 0.85, g) * s,
                cy=_uniform(n, 0.15, 0.85, g) * s,
                radius=main["radius"] * _uniform(n, 0.4, 0.65, g),
                theta=theta,
                opacity=_uniform(n, 0.35, 0.75, g) * min(1.0, d),
                gain=gain,
                phase=phase,
            )
        )
    images = torch.empty((n, 3, image_size, image_size), dtype=torch.uint8)
    for lo, hi in _chunks(n, image_size):
        canvas = _background(hi - lo, image_size, d, g)
        for dd in distract:
            sel = dd["present"][lo:hi].nonzero().squeeze(1)
            if sel.numel():
                rows = sel + lo
                _draw_layer(
                    canvas,
                    _Layer(
                        dd["cls"][rows],
                        dd["cx"][rows],
                        dd["cy"][rows],
                        dd["radius"][rows],
                        dd["theta"][rows],
                        dd["opacity"][rows],
                        dd["gain"][rows],
                        dd["phase"][rows],
                        idx=sel,
                    ),
                    protos,
                )
        _draw_layer(
            canvas,
            _Layer(
                labels[lo:hi],
                main["cx"][lo:hi],
                main["cy"][lo:hi],
                main["radius"][lo:hi],
                m_theta[lo:hi],
                torch.ones(hi - lo),
                m_gain[lo:hi],
                m_phase[lo:hi],
            ),
            protos,
        )
        images[lo:hi] = _finish(canvas, d, g)
    return images, labels
