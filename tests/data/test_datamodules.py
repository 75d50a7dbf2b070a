"""ClassificationData on real-data layouts: ImageFolder with timm's ImageNet transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tenfold.data.datamodules import ClassificationData


def _tree(root, classes=("cat", "dog", "eel"), per_class=4, size=(40, 52)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.mark.parametrize("augment", ["timm", "none"])
def test_imagefolder_batches_are_resized_normalised_and_labelled(tmp_path, augment):
    _tree(tmp_path)
    data = ClassificationData(
        dataset="imagefolder", root=str(tmp_path), image_size=32, batch_size=4, augment=augment,
        auto_augment="rand-m9-mstd0.5" if augment == "timm" else None, re_prob=0.2 if augment == "timm" else 0.0,
    )  # fmt: skip
    data.setup("fit")
    assert data.num_classes == 3
    images, labels, index = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0  # normalisation happens on the device, after transfer
    assert set(labels.tolist()) <= {0, 1, 2} and index.shape == (4,)
    val_images, _, _ = next(iter(data.val_dataloader()))
    assert val_images.shape[1:] == (3, 32, 32)
    normalised, _ = data.on_after_batch_transfer((images, labels, index), 0)
    torch.testing.assert_close(normalised, (images - data.mean) / data.std)


def test_timm_augment_needs_full_size_images():
    with pytest.raises(ValueError, match="imagefolder"):
        ClassificationData(dataset="builtin", augment="timm")
    with pytest.raises(ValueError, match="data.root"):
        ClassificationData(dataset="imagefolder")


def test_interpolation_and_random_erasing_mode_reach_timm_transforms(tmp_path):
    _tree(tmp_path)
    data = ClassificationData(dataset="imagefolder", root=str(tmp_path), image_size=32, augment="timm", re_prob=0.25,
                              re_mode="pixel", interpolation="bicubic")  # fmt: skip
    train, val = repr(data._image_transform("train")), repr(data._image_transform("val"))
    assert "RandomResizedCropAndInterpolation(size=(32, 32)" in train and "interpolation=bicubic)" in train
    assert "RandomErasing(p=0.25, mode=pixel" in train
    assert "Resize(size=36, interpolation=bicubic" in val  # crop_pct 0.875: 256 -> 224 at full size
    default = repr(ClassificationData(dataset="imagefolder", root=str(tmp_path), augment="timm", re_prob=0.1)
                   ._image_transform("train"))  # fmt: skip
    assert "interpolation=bilinear" in default and "mode=const" in default


def test_crop_scale_and_color_jitter_reach_timm_transforms(tmp_path):
    _tree(tmp_path)
    data = ClassificationData(dataset="imagefolder", root=str(tmp_path), image_size=32, augment="timm",
                              crop_scale=(0.2, 1.0), color_jitter=0.0)  # fmt: skip
    train = repr(data._image_transform("train"))
    assert "scale=(0.2, 1.0)" in train and "ColorJitter" not in train and "RandomHorizontalFlip" in train
    with pytest.raises(ValueError, match="crop_scale"):
        ClassificationData(dataset="imagefolder", root=str(tmp_path), crop_scale=(0.5, 0.2))
