import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder

from tenfold.data.readers import cifar, image_folder


def _batch(n, num_classes, label_key, offset):
    # Each image is a constant colour that encodes its index, so items can be checked exactly.
    data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    for i in range(n):
        data[i, 0], data[i, 1], data[i, 2] = offset + i, 2 * i, 255 - i
    return {
        "batch_label": "fake",
        label_key: [(offset + i) % num_classes for i in range(n)],
        "data": data.reshape(n, -1),
    }


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for k in range(1, 6):
        _dump(folder / f"data_batch_{k}", _batch(4, 10, "labels", offset=10 * k))
    _dump(folder / "test_batch", _batch(3, 10, "labels", offset=100))
    _dump(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    return tmp_path


@pytest.fixture
def cifar100_root(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = _batch(6, 100, "fine_labels", offset=95)
    train["coarse_labels"] = [0] * 6
    _dump(folder / "train", train)
    test = _batch(2, 100, "fine_labels", offset=7)
    test["coarse_labels"] = [1] * 2
    _dump(folder / "test", test)
    _dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": ["a"] * 20})
    return tmp_path


def test_cifar10_train_test_and_val(cifar10_root):
    train = cifar(cifar10_root, "train")
    assert isinstance(train, CIFAR10) and len(train) == 20
    image, label = train[5]  # batch 2, item 1
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape == (3, 32, 32)
    expected = torch.tensor([21, 2, 254], dtype=torch.float32) / 255
    assert torch.allclose(image[:, 7, 9], expected)
    assert isinstance(label, int) and label == 21 % 10
    assert train.classes[3] == "c3"
    test = cifar(str(cifar10_root), "test")
    assert len(test) == 3 and test[2][1] == 102 % 10
    val = cifar(cifar10_root, "val")  # CIFAR has no validation set: "val" reads the test batch
    assert torch.equal(val[1][0], test[1][0])
    # The CIFAR folder itself is accepted as root.
    assert len(cifar(cifar10_root / "cifar-10-batches-py", "test")) == 3
    # Picklable, so DataLoader workers started with "spawn" can receive it.
    clone = pickle.loads(pickle.dumps(train))
    assert torch.equal(clone[5][0], image) and clone.classes == train.classes


def test_cifar100_and_user_transform(cifar100_root):
    train = cifar(cifar100_root, "train", num_classes=100)
    assert isinstance(train, CIFAR100) and len(train) == 6
    assert [train[i][1] for i in range(6)] == [95, 96, 97, 98, 99, 0]
    seen = []
    ds = cifar(cifar100_root, "test", num_classes=100, transform=lambda im: seen.append(im) or "ok")
    assert ds[1] == ("ok", 8)
    assert isinstance(seen[0], Image.Image) and seen[0].size == (32, 32)
    assert train.classes[99] == "f99"


def test_cifar_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as info:
        cifar(missing)
    assert "cifar-10-batches-py" in str(info.value)


def test_cifar_wrong_layout_lists_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        cifar(tmp_path, num_classes=100)
    msg = str(info.value)
    assert str(tmp_path / "cifar-100-python") in msg
    for name in ("train", "test", "meta"):
        assert name in msg


def test_cifar_missing_batch_file_is_named(cifar10_root):
    os.remove(cifar10_root / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        cifar(cifar10_root, "train")
    assert len(cifar(cifar10_root, "test")) == 3  # the test split does not need the training batches


def test_cifar_corrupt_batch_gives_clear_error(cifar10_root):
    bad = cifar10_root / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(os.urandom(64) + b"garbage")
    with pytest.raises(ValueError, match="test_batch") as info:
        cifar(cifar10_root, "test")
    assert "expected" in str(info.value)


def test_cifar_malformed_content_is_rejected(cifar10_root):
    folder = cifar10_root / "cifar-10-batches-py"
    _dump(folder / "test_batch", {"data": np.zeros((3, 100), np.uint8), "labels": [0, 1, 2]})
    with pytest.raises(ValueError, match="3072"):
        cifar(cifar10_root, "test")
    _dump(folder / "test_batch", {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]})
    with pytest.raises(ValueError, match="labels"):
        cifar(cifar10_root, "test")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_pickle_cannot_run_code(cifar10_root):
    _dump(cifar10_root / "cifar-10-batches-py" / "test_batch", {"data": _Evil(), "labels": []})
    with pytest.raises(ValueError, match="not allowed"):
        cifar(cifar10_root, "test")


def test_cifar_md5_check_is_opt_in(cifar10_root):
    with pytest.raises(ValueError, match="md5"):
        cifar(cifar10_root, "test", verify_md5=True)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"num_classes": 20}, "num_classes=20"), ({"split": "dev"}, "split='dev'")]
)
def test_cifar_bad_arguments(cifar10_root, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cifar(cifar10_root, **kwargs)


# ---------------------------------------------------------------------------------------------------- ImageFolder


def _png_tree(root, split="train"):
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / split / cls).mkdir(parents=True)
        Image.new("RGB", (20, 16), colour).save(root / split / cls / "a.png")
        Image.new("L", (20, 16), 128).save(root / split / cls / "b.png")  # grey images become RGB


def test_image_folder_reads_png_tree(tmp_path):
    _png_tree(tmp_path)
    ds = image_folder(tmp_path, "train")
    assert isinstance(ds, ImageFolder) and len(ds) == 4 and ds.classes == ["cat", "dog"]
    image, label = ds[0]
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape == (3, 16, 20)
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0])) and label == 0
    grey, _ = ds[1]
    assert grey.shape == (3, 16, 20) and torch.allclose(grey, torch.full_like(grey, 128 / 255))
    assert ds[3][1] == 1
    pil = image_folder(tmp_path, "train", transform=lambda im: im.size)
    assert pil[2] == ((20, 16), 1)


def test_image_folder_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here") as info:
        image_folder(tmp_path / "nothing-here")
    assert "<root>/<split>/<class>/<image>" in str(info.value)
    _png_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "val")):
        image_folder(tmp_path, "val")


def test_image_folder_empty_is_value_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        image_folder(tmp_path, "train")
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no image"):
        image_folder(tmp_path, "train")
