"""Segmentation data: VOC / SBD / Cityscapes readers on tiny fake trees, label checks, joint augmentation, loaders."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tenfold.data.segmentation import (
    CITYSCAPES_CLASSES,
    JointTransform,
    SegmentationData,
    cityscapes_files,
    read_label,
    voc_files,
)


def _save_image(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _save_label(path, array, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L")
    if palette:  # VOC's SegmentationClass PNGs are palette images whose indices are the classes
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def _voc(root, ids=("2007_000032", "2007_000039"), aug_ids=("2008_000002",)):
    voc = root / "VOCdevkit" / "VOC2012"
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    label = np.zeros((20, 24), dtype=np.uint8)
    label[5:10, 5:12] = 15  # person
    label[0] = 255  # the VOC object border
    for i, name in enumerate(ids):
        _save_image(voc / "JPEGImages" / f"{name}.jpg", 20, 24, seed=i)
        _save_label(voc / "SegmentationClass" / f"{name}.png", label, palette=True)
    for i, name in enumerate((*ids, *aug_ids)):
        _save_image(voc / "JPEGImages" / f"{name}.jpg", 20, 24, seed=10 + i)
        _save_label(voc / "SegmentationClassAug" / f"{name}.png", label)
    (sets / "train.txt").write_text(f"{ids[0]}\n")
    (sets / "val.txt").write_text(f"{ids[1]}\n")
    (sets / "train_aug.txt").write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n"
                                                for i in (ids[0], *aug_ids)))  # fmt: skip
    return voc


def _cityscapes(root, labels):
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for c, city in enumerate(cities):
            name = f"{city}_000000_00001{c}"
            _save_image(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", 8, 16, seed=c)
            _save_label(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", labels)


CITY_IDS = np.tile(np.array([7, 8, 26, 33, 0, 1, 6, 9, 10, 14, 11, 24, 25, 27, 28, 31]), (8, 1))


def test_voc_splits_read_through_torchvision_and_the_sbd_layout(tmp_path):
    _voc(tmp_path)
    train = voc_files(tmp_path, "train")
    assert [p[0].rsplit("/", 1)[-1] for p in train] == ["2007_000032.jpg"]
    assert train[0][1].endswith("SegmentationClass/2007_000032.png")
    aug = voc_files(tmp_path, "train_aug")
    assert [p[1].rsplit("/", 2)[-2:] for p in aug] == [["SegmentationClassAug", "2007_000032.png"],
                                                      ["SegmentationClassAug", "2008_000002.png"]]  # fmt: skip
    (tmp_path / "my_list.txt").write_text("2008_000002\n")
    assert len(voc_files(tmp_path, str(tmp_path / "my_list.txt"))) == 1

    data = SegmentationData("voc", root=str(tmp_path), train_split="train_aug", crop_size=(16, 16), batch_size=2)
    data.setup("fit")
    assert data.num_classes == 21 and data.class_names[15] == "person" and data.eval_batch_size == 1
    image, label = data._splits["val"][0]  # evaluation: the whole image, normalised
    assert image.shape == (3, 20, 24) and image.dtype == torch.float32 and label.shape == (20, 24)
    assert sorted(label.unique().tolist()) == [0, 15, 255]
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (2, 3, 16, 16) and labels.shape == (2, 16, 16)
    assert set(labels.unique().tolist()) <= {0, 15, 255}


def test_cityscapes_ids_map_to_train_ids(tmp_path):
    _cityscapes(tmp_path, CITY_IDS)
    files = cityscapes_files(tmp_path, "train")
    assert [p[0].rsplit("/", 1)[-1] for p in files] == ["aachen_000000_000010_leftImg8bit.png",
                                                        "bochum_000000_000011_leftImg8bit.png"]  # fmt: skip
    data = SegmentationData("cityscapes", root=str(tmp_path), crop_size=(8, 8), batch_size=2)
    data.setup("fit")
    _, label = data._splits["val"][0]
    # labelIds -> trainIds from the official table, by hand: road 7->0, sidewalk 8->1, car 26->13, bicycle 33->18,
    # unlabeled/ego/ground/parking/rail track/guard rail 0,1,6,9,10,14 -> 255, building 11->2, person 24->11,
    # rider 25->12, truck 27->14, bus 28->15, train 31->16
    expected = [0, 1, 13, 18, 255, 255, 255, 255, 255, 255, 2, 11, 12, 14, 15, 16]
    assert label[0].tolist() == expected
    assert data.num_classes == 19 and CITYSCAPES_CLASSES[:3] == ("road", "sidewalk", "building")
    assert CITYSCAPES_CLASSES[-1] == "bicycle"


def test_missing_layouts_name_the_path_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit/VOC2012' does not exist; expected the Pascal VOC 2012"):
        voc_files(tmp_path, "train")
    _voc(tmp_path)
    (tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"Segmentation/val.txt' does not exist; expected"):
        voc_files(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="list file 'nolist.txt' does not exist"):
        voc_files(tmp_path, "nolist.txt")
    (tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2008_000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2008_000002.jpg"):
        SegmentationData("voc", root=str(tmp_path), train_split="train_aug").setup("fit")
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/train' does not exist; expected the Cityscapes layout"):
        cityscapes_files(tmp_path / "city", "train")
    with pytest.raises(ValueError, match="set data.init_args.root"):
        SegmentationData("cityscapes")


def test_bad_labels_name_the_file(tmp_path):
    bad = np.zeros((4, 5), dtype=np.uint8)
    bad[1, 1] = 30  # neither a VOC class nor 255
    _save_label(tmp_path / "bad.png", bad)
    with pytest.raises(ValueError, match=r"bad.png' holds values \[30\] outside \[0, 21\) and other than 255"):
        read_label(tmp_path / "bad.png", 21)
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png' is a RGB image; expected a single-channel index PNG"):
        read_label(tmp_path / "rgb.png", 21)
    ids = np.full((8, 16), 7, dtype=np.uint8)
    ids[0, 0] = 40  # no Cityscapes labelId 40
    _cityscapes(tmp_path / "city", ids)
    data = SegmentationData("cityscapes", root=str(tmp_path / "city"))
    data.setup("validate")
    with pytest.raises(ValueError, match=r"frankfurt_000000_000010_gtFine_labelIds.png' holds ids \[40\]"):
        data._splits["val"][0]
    # an image and a label of different sizes
    voc = _voc(tmp_path / "voc")
    _save_label(voc / "SegmentationClass" / "2007_000039.png", np.zeros((20, 23), dtype=np.uint8), palette=True)
    data = SegmentationData("voc", root=str(tmp_path / "voc"))
    data.setup("validate")
    with pytest.raises(ValueError, match=r"2007_000039.png' is \(20, 23\) \(H, W\) but its image .* is \(20, 24\)"):
        data._splits["val"][0]


def test_joint_transform_is_seeded_by_sample_and_epoch_and_pads_with_ignore():
    image = torch.randint(0, 256, (3, 10, 12), dtype=torch.uint8)
    label = torch.randint(0, 5, (10, 12))
    t = JointTransform((16, 16), scale_range=(0.5, 2.0), scale_step=0.1, flip=True, seed=3)
    a, b = t(image, label, index=4, epoch=1), t(image, label, index=4, epoch=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    views = {tuple(t(image, label, index=4, epoch=e)[1].flatten().tolist()) for e in range(6)}
    assert len(views) > 1  # another epoch, another crop
    assert a[0].shape == (3, 16, 16) and a[1].shape == (16, 16)
    # no rescale, a crop larger than the image: the padded label is 255, the padded image 0 (the mean colour)
    pad = JointTransform((14, 15), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x, y = pad(image, label)
    assert (y[10:] == 255).all() and (y[:, 12:] == 255).all() and torch.equal(y[:10, :12], label)
    assert (x[:, 10:] == 0).all()
    torch.testing.assert_close(x[:, :10, :12], (image.float() / 255 - 0.5) / 0.25)
    bgr = JointTransform(bgr=True)(image, label)[0]
    torch.testing.assert_close(bgr, image.float().flip(0) / 255)
    # labels are resized with nearest neighbours: no new values appear
    big = JointTransform(scale_range=(1.7, 1.7))(image, label)[1]
    assert big.shape == (17, 20) and set(big.unique().tolist()) <= set(label.unique().tolist())
    with pytest.raises(ValueError, match="scale_range must be"):
        JointTransform(scale_range=(2.0, 1.0))


def test_builtin_data_and_unpadded_evaluation_shards():
    data = SegmentationData(num_classes=4, train_size=16, val_size=5, image_size=32, batch_size=4)
    data.setup("fit")
    assert data.class_names == ("background", "class0", "class1", "class2")
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64 and int(labels.max()) <= 3
    # each of 2 processes evaluates its own images, none twice (5 = 3 + 2)
    seen = []
    for rank in (0, 1):
        data.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        seen += list(data.val_dataloader().sampler)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    # the training sampler hands the epoch to the augmentation
    sampler = data.train_dataloader().sampler
    sampler.set_epoch(3)
    assert {e for _, e in sampler} == {3}
    with pytest.raises(ValueError, match=r"builtin num_classes \(background included\) must be in \[3, 101\]"):
        SegmentationData(num_classes=2)
