"""Human-object interaction scenes: stick-figure persons, textured objects, boxes and verb labels."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tenfold.data.synthetic.prototypes import _hsv_to_rgb, class_prototypes
from tenfold.data.synthetic.render import _background, _chunks, _draw_layer, _finish, _make_layer
from tenfold.data.synthetic.seeding import _KIND_HOI, _check_difficulty, _check_int, _check_split, _generator, _uniform


def _sd_capsule(x: Tensor, y: Tensor, ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor, r: Tensor) -> Tensor:
    """Distance in pixels from grid points to a segment a-b of half-width r; (K, S, S)."""
    pax, pay = x - ax, y - ay
    bax, bay = bx - ax, by - ay
    t = ((pax * bax + pay * bay) / (bax * bax + bay * bay).clamp_min(1e-6)).clamp(0, 1)
    return torch.hypot(pax - t * bax, pay - t * bay) - r


def _draw_person(
    canvas: Tensor, idx: Tensor, px: Tensor, py: Tensor, h: Tensor, hands: Tensor, shirt: Tensor, skin: Tensor
) -> Tensor:
    """Composite stick figures (head disc, torso, two arms, two legs) onto ``canvas[idx]``.

    Args:
        canvas: (B, 3, S, S) float32, modified in place.
        idx: (K,) canvas rows.
        px: (K,) figure centre x in pixels.
        py: (K,) figure centre y in pixels.
        h: (K,) figure height in pixels.
        hands: (K, 2, 2) hand positions (left, right) x (x, y) in pixels.
        shirt: (K, 3) body colour.
        skin: (K, 3) head colour.

    Returns:
        (K, S, S) coverage alpha of the whole figure.
    """
    size = canvas.shape[-1]
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    x, y = grid.view(1, 1, size), grid.view(1, size, 1)

    def col(t: Tensor) -> Tensor:
        return t.view(-1, 1, 1)

    cx, cy, hh = col(px), col(py), col(h)
    shoulder_y, hip_y = cy - 0.2 * hh, cy + 0.08 * hh
    body = _sd_capsule(x, y, cx, cy - 0.26 * hh, cx, hip_y, 0.085 * hh)
    for side in (-1.0, 1.0):
        leg = _sd_capsule(x, y, cx, hip_y, cx + side * 0.13 * hh, cy + 0.455 * hh, 0.045 * hh)
        body = torch.minimum(body, leg)
    for arm in range(2):
        hand_x, hand_y = col(hands[:, arm, 0]), col(hands[:, arm, 1])
        body = torch.minimum(body, _sd_capsule(x, y, cx, shoulder_y, hand_x, hand_y, 0.04 * hh))
    head = torch.hypot(x - cx, y - (cy - 0.385 * hh)) - 0.115 * hh
    a_body = (0.5 - body).clamp_(0, 1)
    a_head = (0.5 - head).clamp_(0, 1)
    sub = canvas[idx]
    sub = torch.lerp(sub, shirt.view(-1, 3, 1, 1), a_body.unsqueeze(1))
    sub = torch.lerp(sub, skin.view(-1, 3, 1, 1), a_head.unsqueeze(1))
    canvas[idx] = sub
    return torch.maximum(a_body, a_head)


def _mask_boxes(cover: Tensor) -> Tensor:
    """Tight xyxy boxes (K, 4) float32 in pixel-edge coordinates of boolean masks (K, S, S)."""
    size = cover.shape[-1]
    cols, rows = cover.any(dim=1), cover.any(dim=2)
    ar = torch.arange(size)
    big = size + 1

    def first(m: Tensor) -> Tensor:
        return torch.where(m, ar, big).amin(dim=1)

    def last(m: Tensor) -> Tensor:
        return torch.where(m, ar, -1).amax(dim=1) + 1

    boxes = torch.stack([first(cols), first(rows), last(cols), last(rows)], dim=1).float()
    return boxes


def make_hoi(
    n: int,
    num_objects: int = 10,
    num_verbs: int = 5,
    *,
    seed: int = 0,
    split: str = "train",
    image_size: int = 64,
    difficulty: float = 1.0,
    interact_prob: float = 0.7,
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Human-object interaction scenes: stick-figure persons, textured objects and verb labels.

    Each image shows 1-2 persons (stick figures with a head, torso, arms and legs; label 0) and 1-3 objects
    whose classes are the :func:`make_classification` classes of the same ``seed`` (label ``k + 1`` for object
    class ``k``). Each object interacts, with probability ``interact_prob``, with one person; a person's objects
    take distinct verbs. The verb is visible as a relation: for verb ``v`` the object touches the person on the
    side at angle ``-90 deg + 360 deg * v / num_verbs`` around the person's centre (v = 0 above the head, then
    clockwise in image coordinates), and the person's arm on that side reaches to the object. Objects that do
    not interact are kept away from every person.

    Args:
        n: Number of images (>= 1).
        num_objects: Number of object classes, 1 to 100.
        num_verbs: Number of verbs, 1 to 16.
        seed: Task seed (object classes).
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: Image side S in pixels, 48 to 1024.
        difficulty: Nuisance strength of background clutter and noise, in [0, 3].
        interact_prob: Probability that an object interacts with a person, in [0, 1].

    Returns:
        images: (n, 3, S, S) uint8.
        targets: one dict per image with ``"boxes"`` (M, 4) float32 xyxy in pixels (tight around the rendered
        shape, within [0, S]), ``"labels"`` (M,) int64 (0 = person, k + 1 = object class k; persons first),
        and ``"hoi"`` (P, 3) int64 rows ``(human_idx, object_idx, verb)`` indexing into ``boxes``.

    Raises:
        ValueError: On an unknown split or an out-of-range argument.
    """
    _check_int("n", n, 1)
    _check_int("num_objects", num_objects, 1, 100)
    _check_int("num_verbs", num_verbs, 1, 16)
    _check_int("image_size", image_size, 48, 1024)
    split_code = _check_split(split)
    d = _check_difficulty(difficulty)
    if not 0.0 <= float(interact_prob) <= 1.0:
        raise ValueError(f"interact_prob={interact_prob!r} is out of range; expected a float in [0, 1]")
    protos = class_prototypes(max(2, num_objects), seed=seed)
    g = _generator(seed, _KIND_HOI, split_code, num_objects, num_verbs, image_size)
    s = float(image_size)
    max_p, max_o = 2, 3

    # Persons: one centred anywhere, or two in the left and right thirds.
    n_person = torch.randint(1, max_p + 1, (n,), generator=g)
    two = (n_person == 2).float()
    h = _uniform((n, max_p), 0.38, 0.48, g) * s
    px = (
        torch.stack(
            [
                torch.lerp(_uniform(n, 0.3, 0.7, g), _uniform(n, 0.2, 0.32, g), two),
                _uniform(n, 0.68, 0.8, g),
            ],
            dim=1,
        )
        * s
    )
    py = _uniform((n, max_p), 0.42, 0.58, g) * s
    p_present = torch.arange(max_p) < n_person.unsqueeze(1)  # (n, 2)
    half_w, half_h = 0.2 * h, 0.5 * h  # the figure's extent around its centre

    # Objects: class, size, partner person and verb.
    n_obj = torch.randint(1, max_o + 1, (n,), generator=g)
    o_present = torch.arange(max_o) < n_obj.unsqueeze(1)  # (n, 3)
    o_cls = torch.randint(num_objects, (n, max_o), generator=g)
    o_r = _uniform((n, max_o), 0.07, 0.1, g) * s
    partner = (torch.rand((n, max_o), generator=g) * n_person.unsqueeze(1)).long()  # uniform in [0, n_person)
    verb_perm = torch.argsort(torch.rand((n, max_p, num_verbs), generator=g), dim=2)
    slot = torch.arange(max_o).clamp_max(num_verbs - 1).expand(n, max_o)
    verb = verb_perm[torch.arange(n).unsqueeze(1), partner, slot]
    interacts = o_present & (torch.rand((n, max_o), generator=g) < interact_prob) & (torch.arange(max_o) < num_verbs)

    # Interacting objects sit on an ellipse around their partner at the verb's angle, overlapping its edge.
    ang = -math.pi / 2 + 2 * math.pi * verb.float() / num_verbs
    ppx, ppy = px.gather(1, partner), py.gather(1, partner)
    phw, phh = half_w.gather(1, partner), half_h.gather(1, partner)
    jitter = _uniform((n, max_o, 2), -0.15, 0.15, g) * o_r.unsqueeze(-1)
    ix = ppx + torch.cos(ang) * (phw + 0.6 * o_r) + jitter[..., 0]
    iy = ppy + torch.sin(ang) * (phh + 0.4 * o_r) + jitter[..., 1]
    # Other objects: the first of 32 random candidates clear of every person (else the clearest one).
    k_cand = 32
    cand = _uniform((n, max_o, k_cand, 2), 0, 1, g) * (s - 2 * o_r.view(n, max_o, 1, 1)) + o_r.view(n, max_o, 1, 1)
    margin = 0.06 * s + o_r.view(n, max_o, 1, 1)
    gap_x = (cand[..., 0:1] - px.view(n, 1, 1, max_p)).abs() - half_w.view(n, 1, 1, max_p) - margin
    gap_y = (cand[..., 1:2] - py.view(n, 1, 1, max_p)).abs() - half_h.view(n, 1, 1, max_p) - margin
    clear = torch.maximum(gap_x, gap_y)  # > 0 when the candidate is outside the person's padded box
    clear = torch.where(p_present.view(n, 1, 1, max_p), clear, torch.full_like(clear, s)).amin(dim=3)
    score = (clear > 0).float() * 2 * s + clear  # every clear candidate beats every blocked one
    best = score.argmax(dim=2, keepdim=True)
    fx = cand[..., 0].gather(2, best).squeeze(2)
    fy = cand[..., 1].gather(2, best).squeeze(2)
    ox = torch.where(interacts, ix, fx).clamp(o_r, s - o_r)
    oy = torch.where(interacts, iy, fy).clamp(o_r, s - o_r)

    # Arms: at rest they hang down and out; an interacting object pulls the arm on its side towards it.
    shoulder_y = py - 0.2 * h
    reach = 0.3 * h
    rest = torch.tensor([math.radians(115.0), math.radians(65.0)])  # left, right arm (y points down)
    arm_ang = rest.expand(n, max_p, 2).clone()  # (n, persons, arms)
    for j in range(max_o):  # loop over the three object slots, vectorised over images
        to_obj = torch.atan2(oy[:, j] - shoulder_y.gather(1, partner[:, j : j + 1]).squeeze(1), ox[:, j] - ppx[:, j])
        side = (ox[:, j] >= ppx[:, j]).long()  # 0 = left arm, 1 = right arm
        upd = interacts[:, j]
        rows = upd.nonzero().squeeze(1)
        arm_ang[rows, partner[rows, j], side[rows]] = to_obj[rows]
    hands = torch.stack(
        [
            px.unsqueeze(-1) + reach.unsqueeze(-1) * torch.cos(arm_ang),
            shoulder_y.unsqueeze(-1) + reach.unsqueeze(-1) * torch.sin(arm_ang),
        ],
        dim=-1,
    )  # (n, persons, arms, xy)
    shirt = _hsv_to_rgb(
        _uniform((n, max_p), 0, 1, g), _uniform((n, max_p), 0.5, 0.9, g), _uniform((n, max_p), 0.5, 0.9, g)
    )
    skin_tones = torch.tensor([[0.96, 0.8, 0.69], [0.87, 0.67, 0.5], [0.65, 0.45, 0.3], [0.45, 0.3, 0.2]])
    skin = skin_tones[torch.randint(len(skin_tones), (n, max_p), generator=g)]
    obj_layers = [
        _make_layer(o_cls[:, j], ox[:, j], oy[:, j], o_r[:, j], min(d, 1.0), g, present=o_present[:, j])
        for j in range(max_o)
    ]

    images = torch.empty((n, 3, image_size, image_size), dtype=torch.uint8)
    boxes_all = torch.zeros((n, max_p + max_o, 4))
    for lo, hi in _chunks(n, image_size):
        canvas = _background(hi - lo, image_size, d, g)
        for p in range(max_p):
            sel = p_present[lo:hi, p].nonzero().squeeze(1)
            if sel.numel():
                r = sel + lo
                alpha = _draw_person(canvas, sel, px[r, p], py[r, p], h[r, p], hands[r, p], shirt[r, p], skin[r, p])
                boxes_all[r, p] = _mask_boxes(alpha >= 0.5)
        for j, layer in enumerate(obj_layers):
            part = layer.chunk(lo, hi)
            if part is not None:
                alpha = _draw_layer(canvas, part, protos)
                rows = torch.arange(lo, hi) if part.idx is None else part.idx + lo
                boxes_all[rows, max_p + j] = _mask_boxes(alpha >= 0.5)
        images[lo:hi] = _finish(canvas, d, g)

    # Per-image targets: persons first, then objects; P rows of (human, object, verb).
    targets: list[dict[str, Tensor]] = []
    np_list, no_list = n_person.tolist(), n_obj.tolist()
    obj_labels = o_cls + 1
    for i in range(n):
        npi, noi = np_list[i], no_list[i]
        keep = interacts[i, :noi]
        hoi = torch.stack([partner[i, :noi], torch.arange(noi) + npi, verb[i, :noi]], dim=1)[keep]
        targets.append(
            {
                "boxes": torch.cat([boxes_all[i, :npi], boxes_all[i, max_p : max_p + noi]]),
                "labels": torch.cat([torch.zeros(npi, dtype=torch.int64), obj_labels[i, :noi]]),
                "hoi": hoi,
            }
        )
    return images, targets
