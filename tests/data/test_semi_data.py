"""Tests of the semi-supervised segmentation data (tenfold.data.semi)."""

import numpy as np
import pytest
import torch
from PIL import Image

from tenfold.data.semi import SemiSegmentationData, draw_labelled_ids


def _data(**kw):
    args = dict(labelled=8, train_size=40, val_size=4, test_size=4, image_size=16, batch_size=2, epoch_images=24)
    args.update(kw)
    dm = SemiSegmentationData(**args)
    dm.setup("fit")
    return dm


def test_split_counts_deterministic_and_disjoint():
    pool = [f"img{i:05d}" for i in range(10582)]
    a = draw_labelled_ids(pool, 662)
    assert len(a) == 662 == len(set(a)) and a == draw_labelled_ids(list(reversed(pool)), 662)
    assert a != draw_labelled_ids(pool, 662, seed=1)
    dm = _data()
    assert len(dm.labelled_ids) == 8 and len(dm.unlabelled_ids) == 32
    assert not set(dm.labelled_ids) & set(dm.unlabelled_ids)
    with pytest.raises(ValueError, match="labelled count"):
        draw_labelled_ids(pool[:5], 6)


def test_user_split_file(tmp_path):
    pool = ["a", "b", "c", "d"]
    f = tmp_path / "split.txt"
    f.write_text("b\nd\n\n")
    assert draw_labelled_ids(pool, str(f)) == ["b", "d"]
    f.write_text("b\nzz\n")
    with pytest.raises(ValueError, match="zz"):
        draw_labelled_ids(pool, str(f))
    with pytest.raises(FileNotFoundError):
        draw_labelled_ids(pool, str(tmp_path / "none.txt"))


def test_batch_dict_shapes_epoch_length_and_eval():
    dm = _data()
    loader = dm.train_dataloader()
    assert loader.iter_num == int(24 / 2 / 1 / 4) and len(loader) == 3 * 4
    batch = next(iter(loader))
    images, labels = batch["labelled"]
    assert images.shape == (2, 3, 16, 16) and labels.shape == (2, 16, 16) and labels.dtype == torch.long
    assert batch["unlabelled"].shape == (2, 3, 16, 16)
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 16, 16) and float(x.min()) < 0  # normalised


def _flat(batches):
    return [torch.cat([b["labelled"][0].flatten(), b["unlabelled"].flatten()]) for b in batches]


def test_exact_resume_of_both_positions():
    dm = _data()
    ref = dm.train_dataloader()
    full = []
    for epoch in range(2):
        ref.set_epoch(epoch)
        full += _flat(ref)  # 12 batches per epoch, unlabelled loader (16 batches) wraps inside epoch 1
    k = 5
    fresh = _data().train_dataloader()
    fresh.load_state_dict({"epoch": 1, "batches_done": k})
    fresh.set_epoch(1)
    resumed = _flat(fresh)
    assert len(resumed) == 12 - k
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[12 + k :], strict=True))
    assert not torch.equal(full[0], full[12])


def test_ddp_shards_disjoint():
    loaders = []
    for rank in range(2):
        d = _data()
        d._rank_world = lambda r=rank: (r, 2)
        loaders.append(d.train_dataloader())
    assert loaders[0].n_l == 2
    b0, b1 = next(iter(loaders[0])), next(iter(loaders[1]))
    assert not torch.equal(b0["unlabelled"], b1["unlabelled"])


def _png(path, array, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_fake_voc_layout(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(6)]
    rng = np.random.default_rng(0)
    for i in ids:
        _png(voc / "JPEGImages" / f"{i}.jpg", rng.integers(0, 255, (10, 12, 3), dtype=np.uint8), "RGB")
        _png(voc / "SegmentationClassAug" / f"{i}.png", rng.integers(0, 21, (10, 12), dtype=np.uint8), "L")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(ids))
    dm = SemiSegmentationData("voc", root=str(tmp_path), labelled=2, batch_size=2, crop_size=(8, 8), epoch_images=4)
    lab, unl = dm._train_sets()
    assert len(lab) == 2 and len(unl) == 4
    assert set(dm.labelled_ids) | set(dm.unlabelled_ids) == set(ids)
    from tenfold.data.semi import _TrainView

    view = _TrainView(lab, (8, 8), (0.5, 1.5), True, 0)
    x, y = view[(0, 0)]
    assert x.shape == (3, 8, 8) and y.shape == (8, 8)
