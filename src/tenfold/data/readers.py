"""Readers for real image datasets on the user's disk, through torchvision; they never download.

* :func:`cifar` reads the CIFAR-10 / CIFAR-100 "python version" pickles
  (``<root>/cifar-10-batches-py/`` or ``<root>/cifar-100-python/``).
* :func:`image_folder` reads an ImageFolder tree ``<root>/<split>/<class>/<image>``.

Both return map-style datasets whose items are ``(image, int label)``. With ``transform=None`` the image is a
float32 (3, H, W) tensor in [0, 1], like :class:`tenfold.data.synthetic.BuiltinClassification`; a user transform
receives the PIL image instead (as with torchvision) and its output is returned.

Problems are reported before any training starts: a missing path or a wrong layout raises
:class:`FileNotFoundError`, and unreadable content raises :class:`ValueError`; both messages name the path and
the layout that was expected.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import check_integrity
from torchvision.datasets.vision import VisionDataset
from torchvision.transforms import v2

__all__ = ["UserCIFAR10", "UserCIFAR100", "cifar", "default_transform", "image_folder"]


def default_transform() -> v2.Compose:
    """PIL image (or uint8 array) to a plain float32 (3, H, W) tensor scaled to [0, 1]."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])


# --------------------------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------------------------

# The only globals a CIFAR pickle needs: numpy array reconstruction and the bytes codec of protocol-2 pickles.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain containers and numpy arrays, so a hostile file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR pickle")


class _CifarLayout:
    def __init__(self, num_classes: int, tv_class: type[CIFAR10], label_key: str, meta_key: str, name: str) -> None:
        self.num_classes = num_classes
        self.tv_class = tv_class
        self.folder = tv_class.base_folder
        self.train_files = [name for name, _ in tv_class.train_list]
        self.test_files = [name for name, _ in tv_class.test_list]
        self.meta_file = tv_class.meta["filename"]
        self.md5 = {**dict(tv_class.train_list), **dict(tv_class.test_list), self.meta_file: tv_class.meta["md5"]}
        self.label_key = label_key
        self.meta_key = meta_key
        self.name = name

    def describe(self, root: Path) -> str:
        files = ", ".join([*self.train_files, *self.test_files, self.meta_file])
        return (
            f"expected the {self.name} python layout {root / self.folder}/ holding {files} "
            f"(extract {self.tv_class.filename} into {root})"
        )


_LAYOUTS = {
    10: _CifarLayout(10, CIFAR10, "labels", "label_names", "CIFAR-10"),
    100: _CifarLayout(100, CIFAR100, "fine_labels", "fine_label_names", "CIFAR-100"),
}


def _load_pickle(path: Path, what: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as err:  # any unpickling failure means the file is not what we expect
        raise ValueError(
            f"{path} is not a readable CIFAR pickle ({type(err).__name__}: {err}); expected {what}"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}; expected {what}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path, layout: _CifarLayout) -> tuple[np.ndarray, list[int]]:
    what = f"a dict with 'data' (N x 3072 uint8) and '{layout.label_key}' (N ints in [0, {layout.num_classes}))"
    entry = _load_pickle(path, what)
    data, labels = entry.get("data"), entry.get(layout.label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: 'data' is a {got}; expected {what}")
    if labels is None or len(labels) != len(data):
        raise ValueError(f"{path}: '{layout.label_key}' is missing or has the wrong length; expected {what}")
    labels = [int(v) for v in labels]
    if labels and not (0 <= min(labels) and max(labels) < layout.num_classes):
        raise ValueError(f"{path}: labels outside [0, {layout.num_classes}); expected {what}")
    return data, labels


def _read_meta(path: Path, layout: _CifarLayout) -> list[str]:
    what = f"a dict with '{layout.meta_key}' ({layout.num_classes} class names)"
    names = _load_pickle(path, what).get(layout.meta_key)
    if not isinstance(names, list | tuple) or len(names) != layout.num_classes:
        raise ValueError(f"{path}: '{layout.meta_key}' is missing or has the wrong length; expected {what}")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _fill_cifar(
    ds: CIFAR10, root: Path, train: bool, data: np.ndarray, targets: list[int], classes: list[str], transform: Any
) -> None:
    # VisionDataset's constructor only stores root and transforms; CIFAR10's would re-read and re-check the files.
    VisionDataset.__init__(ds, root, transform=transform)
    ds.train = train
    ds.data = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # HWC, as torchvision keeps it
    ds.targets = targets
    ds.classes = classes
    ds.class_to_idx = {c: i for i, c in enumerate(classes)}


class UserCIFAR10(CIFAR10):
    """torchvision's CIFAR-10 dataset filled from validated, safely unpickled user files (see :func:`cifar`).

    torchvision's own constructor compares every file with the md5 of the official archive and unpickles with
    the unrestricted :mod:`pickle`; this subclass keeps torchvision's item access (PIL image, then
    ``transform``) and attributes (``data``, ``targets``, ``classes``, ``class_to_idx``) but is filled by
    :func:`cifar`. Build it through :func:`cifar`.
    """

    def __init__(
        self, root: Path, train: bool, data: np.ndarray, targets: list[int], classes: list[str], transform: Any
    ) -> None:
        _fill_cifar(self, root, train, data, targets, classes, transform)


class UserCIFAR100(CIFAR100):
    """torchvision's CIFAR-100 dataset filled by :func:`cifar`; see :class:`UserCIFAR10`."""

    def __init__(
        self, root: Path, train: bool, data: np.ndarray, targets: list[int], classes: list[str], transform: Any
    ) -> None:
        _fill_cifar(self, root, train, data, targets, classes, transform)


_USER_CIFAR: dict[int, type[CIFAR10]] = {10: UserCIFAR10, 100: UserCIFAR100}


def cifar(
    root: str | os.PathLike,
    split: str = "train",
    num_classes: int = 10,
    transform: Callable | None = None,
    *,
    verify_md5: bool = False,
) -> Dataset:
    """CIFAR-10 or CIFAR-100 from the standard python-pickle layout on disk.

    ``root`` is the directory that holds ``cifar-10-batches-py/`` (CIFAR-10: ``data_batch_1`` ...
    ``data_batch_5``, ``test_batch``, ``batches.meta``) or ``cifar-100-python/`` (CIFAR-100: ``train``,
    ``test``, ``meta``), i.e. where torchvision would have extracted the archive; the folder itself is accepted
    too. Only the files of the requested split and the meta file must be present. Nothing is downloaded.

    The result is a :class:`torchvision.datasets.CIFAR10` / ``CIFAR100`` instance, but filled by our loader:
    the pickles are read with an unpickler that only rebuilds numpy arrays and plain containers (a tampered
    file cannot run code), and their content is validated. torchvision checks each file against the md5 of the
    official archive; we skip that by default so that re-created or subset copies load, and do it when
    ``verify_md5=True``.

    Args:
        root: Directory holding the extracted CIFAR folder.
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000); ``"val"`` is accepted and means ``"test"``,
            because CIFAR ships no separate validation set.
        num_classes: 10 for CIFAR-10, 100 for CIFAR-100 (fine labels).
        transform: Callable applied to each PIL image; None gives a float32 (3, 32, 32) tensor in [0, 1].
        verify_md5: Compare each file with the md5 of the official archive (torchvision's table).

    Returns:
        A dataset of ``(image, label)`` with ``label`` an int in ``[0, num_classes)``.

    Raises:
        ValueError: On a bad ``split`` or ``num_classes``, on unreadable or malformed files, or on an md5
            mismatch when ``verify_md5``.
        FileNotFoundError: When ``root``, the CIFAR folder or one of the needed files is missing.
    """
    if num_classes not in _LAYOUTS:
        raise ValueError(f"num_classes={num_classes!r} is not a CIFAR variant; expected 10 or 100")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r} is not a CIFAR split; expected 'train', 'test' or 'val' (= 'test')")
    layout = _LAYOUTS[num_classes]
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR root {root} does not exist or is not a directory; {layout.describe(root)}")
    if root.name == layout.folder and not (root / layout.folder).is_dir():
        root = root.parent
    folder = root / layout.folder
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found; {layout.describe(root)}")
    train = split == "train"
    needed = [*(layout.train_files if train else layout.test_files), layout.meta_file]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}; {layout.describe(root)}")
    if verify_md5:
        for name in needed:
            if not check_integrity(str(folder / name), layout.md5[name]):
                raise ValueError(
                    f"{folder / name} does not match the md5 {layout.md5[name]} of the official {layout.name} "
                    "archive; re-extract it, or pass verify_md5=False for a re-created copy"
                )
    arrays, targets = [], []
    for name in needed[:-1]:
        data, labels = _read_batch(folder / name, layout)
        arrays.append(data)
        targets.extend(labels)
    classes = _read_meta(folder / layout.meta_file, layout)
    data = np.concatenate(arrays) if arrays else np.zeros((0, 3072), np.uint8)
    tf = default_transform() if transform is None else transform
    return _USER_CIFAR[num_classes](root, train, data, targets, classes, tf)


# --------------------------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------------------------


def image_folder(root: str | os.PathLike, split: str = "train", transform: Callable | None = None) -> Dataset:
    """An ImageFolder tree ``<root>/<split>/<class>/<image>`` through :class:`torchvision.datasets.ImageFolder`.

    Classes are the sub-folder names of ``<root>/<split>`` in sorted order (so every split of one tree gets
    the same label ids when it has the same class folders). Images are read with PIL and converted to RGB.

    Args:
        root: Dataset root directory.
        split: Name of the split folder under ``root``, e.g. ``"train"``, ``"val"`` or ``"test"``.
        transform: Callable applied to each PIL image; None gives a float32 (3, H, W) tensor in [0, 1].

    Returns:
        A :class:`~torchvision.datasets.ImageFolder` of ``(image, label)``.

    Raises:
        FileNotFoundError: When ``root`` or ``root/split`` is missing.
        ValueError: When the split folder has no class folders, or a class folder holds no image.
    """
    layout = "expected the layout <root>/<split>/<class>/<image>, e.g. root/train/cat/0001.png"
    if not isinstance(split, str) or not split or Path(split).name != split:
        raise ValueError(f"split={split!r} must be the name of a folder under root; {layout}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} does not exist or is not a directory; {layout}")
    folder = root / split
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(f"split folder {folder} not found (found splits: {found}); {layout}")
    if not any(p.is_dir() for p in folder.iterdir()):
        raise ValueError(f"{folder} holds no class folders; {layout}")
    tf = default_transform() if transform is None else transform
    try:
        return ImageFolder(str(folder), transform=tf)
    except FileNotFoundError as err:  # torchvision's message for class folders without images
        raise ValueError(
            f"{folder}: a class folder holds no image with a known extension {IMG_EXTENSIONS} ({err}); {layout}"
        ) from err
