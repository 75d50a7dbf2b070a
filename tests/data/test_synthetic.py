import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from tenfold.data.synthetic import (
    BuiltinClassification,
    DigitsClassification,
    class_prototypes,
    load_digits,
    make_classification,
    make_hoi,
    make_segmentation,
    make_speech,
)


def _features(images: torch.Tensor) -> torch.Tensor:
    """Cheap translation-tolerant features: colour histogram of the central region plus a coarse thumbnail."""
    x = images.float() / 255
    bins = (x[:, :, 10:22, 10:22] * 3.999).long()  # 4 levels per channel -> 64 colour bins
    code = bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2]
    hist = F.one_hot(code.flatten(1), 64).float().mean(1)
    return torch.cat([hist * 4, F.avg_pool2d(x, 8).flatten(1)], dim=1)


def _nearest_mean_accuracy(f_train, y_train, f_test, y_test, num_classes):
    means = torch.stack([f_train[y_train == k].mean(0) for k in range(num_classes)])
    pred = torch.cdist(f_test, means).argmin(1)
    return (pred == y_test).float().mean().item()


def _linear_accuracy(f_train, y_train, f_test, y_test, num_classes, ridge=0.01):
    """Least-squares linear classifier on standardised features (closed form, float64)."""
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6

    def design(f):
        return torch.cat([(f - mu) / sd, torch.ones(len(f), 1)], 1).double()

    a = design(f_train)
    w = torch.linalg.solve(
        a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype), a.T @ F.one_hot(y_train, num_classes).double()
    )
    return ((design(f_test) @ w).argmax(1) == y_test).float().mean().item()


# ---------------------------------------------------------------------------------------------------- classification


def test_classification_shapes_dtypes_and_balanced_labels():
    images, labels = make_classification(95, 10, seed=1)
    assert images.shape == (95, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (95,) and labels.dtype == torch.int64
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() >= 9 and counts.max() <= 10  # every class appears, balanced
    assert images.float().std() > 20  # not blank
    big, _ = make_classification(4, 100, image_size=48)
    assert big.shape == (4, 3, 48, 48)


def test_classification_is_deterministic_per_seed_and_split():
    a = make_classification(40, seed=5, split="train")
    b = make_classification(40, seed=5, split="train")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other_seed = make_classification(40, seed=6, split="train")
    other_split = make_classification(40, seed=5, split="val")
    assert not torch.equal(a[0], other_seed[0])
    assert not torch.equal(a[0], other_split[0])


def test_generators_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    make_classification(8)
    make_segmentation(4)
    make_hoi(2)
    make_speech(2, seconds=0.5)
    assert torch.equal(state, torch.get_rng_state())


def test_seed_defines_the_classes():
    a, b = class_prototypes(10, seed=0), class_prototypes(10, seed=0)
    c = class_prototypes(10, seed=1)
    assert torch.equal(a.colour, b.colour) and torch.equal(a.shape, b.shape)
    assert not torch.equal(a.colour, c.colour)
    triples = set(zip(a.shape.tolist(), a.hue.tolist(), a.texture.tolist(), strict=True))
    assert len(triples) == 10  # every class is a distinct combination of factors
    assert len(set(a.shape.tolist())) < 10 and len(set(a.texture.tolist())) < 10  # ... that share levels
    hundred = class_prototypes(100, seed=0)
    assert len(set(zip(hundred.shape.tolist(), hundred.hue.tolist(), hundred.texture.tolist(), strict=True))) == 100


def test_classes_transfer_across_splits_but_not_across_seeds():
    # A linear classifier on cheap features, fit on train, must beat chance (10 %) clearly on val of the same
    # task (same class definitions, learnable) and stay near chance on another seed's task.
    x_tr, y_tr = make_classification(2000, 10, seed=0, split="train")
    x_va, y_va = make_classification(500, 10, seed=0, split="val")
    x_other, y_other = make_classification(500, 10, seed=1, split="val")
    f_tr = _features(x_tr)
    same = _linear_accuracy(f_tr, y_tr, _features(x_va), y_va, 10)
    other = _linear_accuracy(f_tr, y_tr, _features(x_other), y_other, 10)
    assert same > 0.3, same
    assert other < 0.2, other


def test_difficulty_zero_is_clean():
    images, _ = make_classification(16, difficulty=0.0)
    corners = images[:, :, :2, :2]
    assert (corners == 128).all()  # flat grey background, no noise, no distractors in the corners


def test_builtin_classification_dataset():
    ds = BuiltinClassification("val", num_classes=12, size=30, seed=2)
    assert len(ds) == 30 and len(ds.classes) == 12 and ds.num_classes == 12
    image, label = ds[3]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert isinstance(label, int) and 0 <= label < 12
    images, labels = make_classification(30, 12, seed=2, split="val")
    assert torch.equal(image, images[3].float() / 255) and label == labels[3]
    assert ds.targets == labels.tolist()
    flipped = BuiltinClassification("val", num_classes=12, size=30, seed=2, transform=lambda t: t.flip(-1))
    assert torch.equal(flipped[3][0], image.flip(-1))


# ---------------------------------------------------------------------------------------------------- segmentation


def test_segmentation_shapes_and_mask_range():
    images, masks = make_segmentation(64, 7, seed=3)
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.uint8
    assert masks.shape == (64, 32, 32) and masks.dtype == torch.int64
    assert masks.min() == 0 and masks.max() <= 7
    assert set(masks.unique().tolist()) == set(range(8))  # background and every class appear
    assert ((masks > 0).flatten(1).any(1)).all()  # every image shows at least one object
    again = make_segmentation(64, 7, seed=3)
    assert torch.equal(images, again[0]) and torch.equal(masks, again[1])
    assert not torch.equal(masks, make_segmentation(64, 7, seed=3, split="test")[1])


def test_segmentation_mask_matches_image_content_on_clean_scenes():
    images, masks = make_segmentation(64, 10, seed=0, difficulty=0.0)
    background = masks == 0
    # Pixels whose 3x3 neighbourhood is all background show the flat grey background exactly.
    inner_bg = -F.max_pool2d(-background.float().unsqueeze(1), 3, 1, 1).squeeze(1) > 0.5
    assert (images.permute(1, 0, 2, 3)[:, inner_bg] == 128).all()
    # Pixels well inside an object are (almost) never grey.
    inner_obj = -F.max_pool2d(-(~background).float().unsqueeze(1), 3, 1, 1).squeeze(1) > 0.5
    grey = (images == 128).all(dim=1)
    assert grey[inner_obj].float().mean() < 0.01


def test_segmentation_mask_classes_match_the_rendered_colours():
    # On clean scenes (no colour jitter) an object of class k is painted in shades s * colour[k], s in
    # [colour2 / colour, 1]: inside each mask region the pixels must be shades of that region's class colour,
    # and of no other class's.
    num_classes = 10
    images, masks = make_segmentation(64, num_classes, seed=0, difficulty=0.0)
    colour = class_prototypes(num_classes, seed=0).colour.double()  # (C, 3)
    # Pixels whose 3x3 neighbourhood has one mask value (away from anti-aliased edges), and that value.
    eroded = -F.max_pool2d(-F.one_hot(masks, num_classes + 1).permute(0, 3, 1, 2).float(), 3, 1, 1)
    inner = torch.where(eroded.amax(1) > 0.5, eroded.argmax(1), -1)
    sel = inner > 0
    assert sel.sum() > 1000
    pixels = images.permute(0, 2, 3, 1)[sel].double() / 255  # (P, 3)
    shade = (pixels @ colour.T) / colour.pow(2).sum(1)  # (P, C) best scale of each class colour
    residual = (pixels.unsqueeze(1) - shade.unsqueeze(2) * colour).abs().amax(2)  # (P, C)
    cls = inner[sel] - 1
    own = residual.gather(1, cls.unsqueeze(1)).squeeze(1)
    assert (own <= 1 / 255).float().mean() > 0.99  # a shade of its own class colour, up to uint8 rounding
    assert (residual.argmin(1) == cls).float().mean() > 0.99  # ... and not of another class's
    own_shade = shade.gather(1, cls.unsqueeze(1)).squeeze(1)
    assert own_shade.min() > 0.4 and own_shade.max() < 1 + 2 / 255


def test_segmentation_masks_locate_class_colours():
    # Mean colour under each object's mask predicts its class on another split (mask aligned with content).
    def object_colours(images, masks, num_classes):
        feats, labels = [], []
        x = images.float() / 255
        for k in range(1, num_classes + 1):
            m = (masks == k).unsqueeze(1).float()
            area = m.sum((2, 3))
            keep = area[:, 0] >= 4
            feats.append((x * m).sum((2, 3))[keep] / area[keep])
            labels.append(torch.full((int(keep.sum()),), k - 1))
        return torch.cat(feats), torch.cat(labels)

    f_tr, y_tr = object_colours(*make_segmentation(600, 10, split="train"), 10)
    f_va, y_va = object_colours(*make_segmentation(200, 10, split="val"), 10)
    assert _nearest_mean_accuracy(f_tr, y_tr, f_va, y_va, 10) > 0.3


# ---------------------------------------------------------------------------------------------------- HOI


def test_hoi_targets_are_valid():
    size, num_objects, num_verbs = 64, 6, 5
    images, targets = make_hoi(80, num_objects, num_verbs, seed=4, image_size=size)
    assert images.shape == (80, 3, size, size) and images.dtype == torch.uint8
    assert len(targets) == 80
    n_pairs = 0
    for t in targets:
        boxes, labels, hoi = t["boxes"], t["labels"], t["hoi"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and hoi.dtype == torch.int64
        m = len(labels)
        assert boxes.shape == (m, 4) and hoi.ndim == 2 and hoi.shape[1] == 3
        assert (boxes >= 0).all() and (boxes <= size).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        n_person = int((labels == 0).sum())
        assert 1 <= n_person <= 2 and 1 <= m - n_person <= 3
        assert (labels[:n_person] == 0).all() and (labels[n_person:] >= 1).all()
        assert labels.max() <= num_objects
        if len(hoi):
            assert ((hoi[:, :2] >= 0) & (hoi[:, :2] < m)).all()  # both indices name one of the boxes
            assert (labels[hoi[:, 0]] == 0).all()  # human_idx points at a person
            assert (labels[hoi[:, 1]] > 0).all()  # object_idx points at an object
            assert ((hoi[:, 2] >= 0) & (hoi[:, 2] < num_verbs)).all()
            assert len({tuple(r) for r in hoi[:, :2].tolist()}) == len(hoi)  # one verb per pair
        n_pairs += len(hoi)
    assert n_pairs > 40  # interactions are common


def test_hoi_boxes_enclose_the_rendered_pixels_tightly():
    # On clean scenes the background is flat grey (128): every other pixel belongs to a person or an object and
    # must lie in some box (give or take the one-pixel anti-aliased rim beyond the half-coverage edge), and every
    # box is tight: each of its four edge rows/columns holds a non-background pixel.
    size = 64
    images, targets = make_hoi(40, 6, 5, seed=4, image_size=size, difficulty=0.0)
    foreground = (images != 128).any(dim=1)  # (n, S, S)
    for fg, t in zip(foreground, targets, strict=True):
        covered = torch.zeros(size + 2, size + 2, dtype=torch.bool)  # one pixel of padding on each side
        for x0, y0, x1, y1 in t["boxes"].long().tolist():
            covered[y0 : y1 + 2, x0 : x1 + 2] = True  # the box grown by one pixel
            inside = fg[y0:y1, x0:x1]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert not (fg & ~covered[1:-1, 1:-1]).any()
    assert torch.equal(targets[0]["boxes"], targets[0]["boxes"].round())  # pixel-edge coordinates


def test_hoi_interacting_objects_touch_their_person_and_others_keep_away():
    _, targets = make_hoi(100, 6, 5, seed=0, image_size=64)
    pairs = alone = apart = 0
    for t in targets:
        boxes, labels, hoi = t["boxes"], t["labels"], t["hoi"]
        persons = boxes[labels == 0]
        for h, o, _ in hoi.tolist():
            assert box_iou(boxes[h : h + 1], boxes[o : o + 1]).item() > 0  # the object touches its person
            pairs += 1
        for o in sorted(set(range(len(persons), len(labels))) - set(hoi[:, 1].tolist())):
            alone += 1
            apart += bool((box_iou(boxes[o : o + 1], persons) == 0).all())
    assert pairs > 50 and alone > 20
    assert apart / alone > 0.95  # a non-interacting object is placed clear of every person when it fits


def test_hoi_verbs_follow_a_visible_relation():
    # The verb is readable from geometry alone: the direction from the person's box centre to the object's.
    num_verbs = 5
    _, targets = make_hoi(150, 10, num_verbs, seed=0, split="val")
    correct = total = 0
    for t in targets:
        centre = (t["boxes"][:, :2] + t["boxes"][:, 2:]) / 2
        for h, o, v in t["hoi"].tolist():
            dx, dy = (centre[o] - centre[h]).tolist()
            angle = math.atan2(dy, dx) + math.pi / 2  # verb 0 is straight up, then clockwise
            guess = round(angle / (2 * math.pi / num_verbs)) % num_verbs
            correct += guess == v
            total += 1
    assert total > 50 and correct / total > 0.85


def test_hoi_is_deterministic():
    a_img, a_t = make_hoi(6, seed=2)
    b_img, b_t = make_hoi(6, seed=2)
    assert torch.equal(a_img, b_img)
    for x, y in zip(a_t, b_t, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in ("boxes", "labels", "hoi"))
    c_img, _ = make_hoi(6, seed=2, split="test")
    assert not torch.equal(a_img, c_img)


# ---------------------------------------------------------------------------------------------------- speech


def _snr_db(clean, noisy):
    clean, noise = clean.double(), noisy.double() - clean.double()
    return 10 * torch.log10(clean.pow(2).sum(-1) / noise.pow(2).sum(-1))


def test_speech_shapes_and_exact_snr():
    clean, noisy, snr = make_speech(6, seed=1, sample_rate=8000, seconds=0.75, return_snr=True)
    assert clean.shape == noisy.shape == (6, 6000)
    assert clean.dtype == noisy.dtype == torch.float32
    assert torch.isfinite(noisy).all() and clean.abs().max() <= 1.0
    assert ((snr >= -5) & (snr <= 15)).all() and snr.std() > 0
    assert torch.allclose(_snr_db(clean, noisy), snr, atol=1e-4, rtol=0)
    _, fixed = make_speech(3, snr_db=(7.5, 7.5), seconds=0.5)
    clean3, _ = make_speech(3, snr_db=(7.5, 7.5), seconds=0.5)
    assert torch.allclose(_snr_db(clean3, fixed), torch.full((3,), 7.5, dtype=torch.float64), atol=1e-4, rtol=0)


def test_speech_is_speech_like():
    sr = 16000
    clean, _ = make_speech(4, sample_rate=sr, seconds=2.0, seed=3)
    # Pauses: a good share of 20 ms frames is near-silent; syllables: a good share is loud.
    frames = clean.unfold(1, 320, 320).pow(2).mean(-1)
    quiet = frames < 1e-3 * frames.amax(1, keepdim=True)
    assert 0.1 < quiet.float().mean() < 0.7
    # Harmonic energy sits in the speech band: most energy between 80 Hz and 4 kHz.
    power = torch.fft.rfft(clean).abs().pow(2)
    freqs = torch.fft.rfftfreq(clean.shape[1], 1 / sr)
    band = ((freqs >= 80) & (freqs <= 4000)).float()
    assert ((power * band).sum(1) / power.sum(1)).min() > 0.9
    # Pitch: the autocorrelation of a loud frame peaks at a lag within 80-300 Hz.
    loud = frames.argmax(1)
    for i in range(4):
        seg = clean[i, loud[i] * 320 : loud[i] * 320 + 640].double()
        seg = seg - seg.mean()
        ac = torch.stack([(seg[:-lag] * seg[lag:]).sum() for lag in range(sr // 300, sr // 80 + 1)])
        f0 = sr / (int(ac.argmax()) + sr // 300)
        assert 80 <= f0 <= 300


def test_speech_is_deterministic_per_split():
    a = make_speech(2, seconds=0.5, seed=9)
    b = make_speech(2, seconds=0.5, seed=9)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = make_speech(2, seconds=0.5, seed=9, split="val")
    assert not torch.equal(a[0], c[0])


# ---------------------------------------------------------------------------------------------------- digits


def test_load_digits_split_is_stratified_disjoint_and_complete():
    from sklearn.datasets import load_digits as sk_digits

    splits = {s: load_digits(s, seed=0, image_size=8) for s in ("train", "val", "test")}
    sizes = {s: len(y) for s, (_, y) in splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["train"] == pytest.approx(0.7 * 1797, abs=10) and sizes["val"] == pytest.approx(0.15 * 1797, abs=10)
    for _, y in splits.values():
        assert set(y.tolist()) == set(range(10))
    # At 8x8 the images are the originals: together the splits hold exactly the bundled set.
    ours = torch.cat([x[:, 0].flatten(1) for x, _ in splits.values()]).long()
    ours = torch.cat([ours, torch.cat([y for _, y in splits.values()]).unsqueeze(1)], 1)
    data = sk_digits()
    ref = (torch.from_numpy(data.data).float() / 16 * 255).round().long()
    ref = torch.cat([ref, torch.from_numpy(data.target).long().unsqueeze(1)], 1)
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, ref.tolist()))
    assert not torch.equal(load_digits("val", seed=1, image_size=8)[1], splits["val"][1])


def test_digits_dataset():
    ds = DigitsClassification("test", image_size=32)
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image.max() > 0.5
    assert isinstance(label, int) and len(ds) > 250 and ds.classes[label] == str(label)


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_classification(10, split="dev"), "split='dev'"),
        (lambda: make_classification(10, num_classes=1), "num_classes=1"),
        (lambda: make_classification(10, num_classes=101), "num_classes=101"),
        (lambda: make_classification(0), "n=0"),
        (lambda: make_classification(10, image_size=8), "image_size=8"),
        (lambda: make_classification(10, difficulty=-1.0), "difficulty=-1.0"),
        (lambda: make_segmentation(10, split="validation"), "split='validation'"),
        (lambda: make_segmentation(10, max_objects=0), "max_objects=0"),
        (lambda: make_hoi(10, num_verbs=0), "num_verbs=0"),
        (lambda: make_hoi(10, image_size=32), "image_size=32"),
        (lambda: make_hoi(10, num_objects=0), "num_objects=0"),
        (lambda: make_speech(0), "n=0"),
        (lambda: make_speech(2, seconds=0.1), "seconds=0.1"),
        (lambda: make_speech(2, snr_db=(10.0, 0.0)), "snr_db"),
        (lambda: make_speech(2, sample_rate=4000), "sample_rate=4000"),
        (lambda: make_speech(2, split="eval"), "split='eval'"),
        (lambda: load_digits("all"), "split='all'"),
        (lambda: load_digits(image_size=4), "image_size=4"),
        (lambda: BuiltinClassification("val", num_classes=200), "num_classes=200"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "expected" in str(info.value) or "must" in str(info.value)
