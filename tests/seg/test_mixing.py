"""Tests of the semi-supervised batch augmentations (tenfold.seg.mixing)."""

import torch

from tenfold.seg.mixing import generate_mix, normalize, rescale_crop, strong_augment


def _batch(b=3, h=8, w=10):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, h, w, generator=g)
    labels = torch.zeros(b, h, w, dtype=torch.long)
    labels[:, :, 5:] = 1
    labels[:, :4, :3] = 2
    labels[:, 6:, :] = 3
    conf = torch.rand(b, h, w, generator=g)
    return images, labels, conf


def test_classmix_selects_half_the_classes_and_mixes_consistently():
    images, labels, conf = _batch()
    labels[1] = 7  # a second image with different values to tell the partner apart
    x, y, c = generate_mix(images, labels, conf, "classmix", generator=torch.Generator().manual_seed(1))
    kept = {int(v) for v in y[0].unique() if v in labels[0].unique()}
    assert len(kept) == 2  # floor(4 / 2) of image 0's values, the rest from image 1 (value 7)
    own = torch.isin(y[0], torch.tensor(sorted(kept)))
    assert torch.equal(x[0][:, own], images[0][:, own]) and torch.equal(x[0][:, ~own], images[1][:, ~own])
    assert torch.equal(c[0][own], conf[0][own]) and torch.equal(c[0][~own], conf[1][~own])
    assert bool((y[0][~own] == 7).all())
    # the last image's partner is image 0 ((i + 1) % B)
    own2 = y[2] == labels[2]
    assert torch.equal(x[2][:, ~own2], images[0][:, ~own2])


def test_classmix_single_class_becomes_partner():
    images, labels, conf = _batch(2)
    labels[0] = 4
    x, y, c = generate_mix(images, labels, conf, "classmix", generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[0], images[1]) and torch.equal(y[0], labels[1]) and torch.equal(c[0], conf[1])


def test_cutmix_box_is_half_the_area_and_cutout_ignores():
    images, labels, conf = _batch(2, 16, 16)
    x, _, _ = generate_mix(images, labels, conf, "cutmix", generator=torch.Generator().manual_seed(3))
    from_partner = (x[0] != images[0]).any(0)
    assert abs(int(from_partner.sum()) - 128) <= 16  # box of round(256 / 2 / w) * w pixels
    x, y, c = generate_mix(images, labels, conf, "cutout", generator=torch.Generator().manual_seed(3))
    cut = y[0] == 255
    assert abs(int(cut.sum()) - 128) <= 16
    assert bool((x[0][:, cut] == 0).all()) and bool((c[0][cut] == 0).all())


def test_strong_augment_flips_labels_with_images_and_quantises():
    images, labels, conf = _batch(4)
    g = torch.Generator().manual_seed(5)
    x, y, c = strong_augment(images, labels, conf, generator=g, jitter_p=0.0, blur_p=0.0, flip_p=0.5)
    flipped = [bool(torch.equal(x[i], images[i].flip(-1))) for i in range(4)]
    for i in range(4):
        ref = labels[i].flip(-1) if flipped[i] else labels[i]
        assert torch.equal(y[i], ref)
        cref = conf[i].flip(-1) if flipped[i] else conf[i]
        assert torch.equal(c[i], torch.floor(cref * 255) / 255)
    assert 0 < sum(flipped) < 4
    x1 = strong_augment(images, labels, conf, generator=torch.Generator().manual_seed(9))
    x2 = strong_augment(images, labels, conf, generator=torch.Generator().manual_seed(9))
    assert all(torch.equal(a, b) for a, b in zip(x1, x2, strict=True))
    assert not torch.equal(x1[0], images)
    _, _, raw = strong_augment(images, labels, conf, jitter_p=0, blur_p=0, flip_p=0, quantize_confidence=False)
    assert torch.equal(raw, conf)


def test_rescale_crop_pads_label_ignore_and_confidence_zero():
    images, labels, conf = _batch(2, 8, 8)
    x, y, c = rescale_crop(images, labels, conf, (1.0, 1.0), (12, 12), generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 12, 12) and y.shape == (2, 12, 12)
    assert bool((y[:, 8:, :] == 255).all()) and bool((c[:, :, 8:] == 0).all())
    assert torch.equal(x[:, :, 8, :8], images[:, :, 6, :])  # reflect padding
    x, y, c = rescale_crop(images, labels, conf, (0.5, 2.0), (6, 6), generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 6, 6)


def test_normalize():
    x = torch.ones(1, 3, 2, 2)
    out = normalize(x, (0.5, 0.5, 0.0), (0.5, 0.25, 2.0))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 2.0, 0.5]))
