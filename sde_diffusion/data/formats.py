"""Readers for image data as users have it on disk: a folder of PNG/JPEG files, a ``.npy``/``.npz``
array, CIFAR-10's "python version" batches and MNIST's IDX files. Nothing is downloaded.

Every reader returns stored values as numpy arrays, images channels-first (N, C, H, W), and raises
``ValueError`` naming the path and what was expected there.

* Folder: every ``*.png``, ``*.jpg``, ``*.jpeg`` below the root (any depth, hidden entries skipped),
  in sorted path order. If the root holds first-level subdirectories and no images of its own, each
  subdirectory is a class, numbered in sorted name order (torchvision's ``ImageFolder`` rule). An
  image is converted to grey (``L``) or RGB, its shorter side resized to ``size`` (bilinear,
  antialiased) and the centre ``size``×``size`` cropped; ``size=None`` keeps the stored size.
* CIFAR-10 (python version): ``data_batch_1`` … ``data_batch_5`` (train), ``test_batch`` (test), each a
  pickled dict with ``b'data'`` (10000×3072 uint8, rows of 1024 red, green, blue values) and
  ``b'labels'``. Only numpy's array classes may be unpickled, so a tampered file cannot run code.
* MNIST (IDX): ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (train) and ``t10k-…``
  (test), each optionally gzipped (``.gz``). Header: magic 0x0000 08 n_dims (8 = unsigned byte),
  then n_dims big-endian uint32 sizes, then the data in C order.
"""
from __future__ import annotations

import codecs
import gzip
import os
import pickle
import zipfile
from collections.abc import Sequence
from typing import Optional

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: PIL mode of each supported channel count.
MODES = {1: "L", 3: "RGB"}
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
#: What ``config.data.path`` must name for each format.
FOLDER = "a directory of PNG/JPEG images (first-level subdirectories as classes)"
ARRAY = "a .npy or .npz file of images"
CIFAR10 = f"CIFAR-10's python-version directory (cifar-10-batches-py: {', '.join(CIFAR_TRAIN + CIFAR_TEST)})"
MNIST = "a directory with MNIST's IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-…)"


def _directory(path: Optional[str], what: str) -> str:
    path = require(path, what)
    if not os.path.isdir(path):
        raise ValueError(f"config.data.path={path!r} is a file; expected {what}")
    return path


def require(path: Optional[str], what: str) -> str:
    """``path`` if it exists, else ``ValueError`` saying what was expected there."""
    if not path:
        raise ValueError(f"config.data.path is not set; expected {what}")
    if not os.path.exists(path):
        raise ValueError(f"config.data.path={path!r} does not exist; expected {what}")
    return path


# --- folder ----------------------------------------------------------------------------------------
def _visible(name: str) -> bool:
    return not name.startswith(".")


def folder_classes(root: str) -> tuple[str, ...]:
    """Sorted first-level subdirectory names of ``root`` if it holds no image files of its own,
    else () (an unlabelled folder)."""
    entries = [e for e in os.scandir(root) if _visible(e.name)]
    if any(e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) for e in entries):
        return ()
    return tuple(sorted(e.name for e in entries if e.is_dir()))


def _images_below(root: str) -> list[str]:
    found = []
    for parent, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        found += [os.path.join(parent, f) for f in files if _visible(f) and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


def scan_folder(root: str) -> tuple[list[str], Optional[np.ndarray], tuple[str, ...]]:
    """``(files, labels, classes)`` of an image folder: the image paths in sorted order, their class
    indices (None for an unlabelled folder) and the class names."""
    root = _directory(root, FOLDER)
    classes = folder_classes(root)
    if not classes:
        files = _images_below(root)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root!r}")
        return files, None, ()
    files, labels = [], []
    for k, name in enumerate(classes):
        found = _images_below(os.path.join(root, name))
        if not found:
            raise ValueError(f"class directory {os.path.join(root, name)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [k] * len(found)
    return files, np.asarray(labels, dtype=np.int64), classes


def read_image(path: str, num_channels: int, size: Optional[int]) -> np.ndarray:
    """One image as uint8 (C, H, W): converted to ``num_channels`` channels, its shorter side resized
    to ``size`` and centre-cropped to size×size (``size=None``: as stored)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert(MODES[num_channels])
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"cannot read image {path!r}: {err}") from None
    if size is not None:
        image = _fit(image, size)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _fit(image, size: int):
    """Resize the shorter side to ``size`` (bilinear), then crop the centre size×size."""
    from PIL import Image

    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def image_size_of(path: str) -> tuple[int, int]:
    """(height, width) of an image file, read from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            w, h = image.size
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path!r}: {err}") from None
    return h, w


def common_size(files: Sequence[str], root: str) -> int:
    """The side of the square images ``files`` all share; ``ValueError`` naming two that differ (or a
    non-square one) otherwise, since without ``image_size`` nothing is resized."""
    first = image_size_of(files[0])
    for path in files[1:]:
        size = image_size_of(path)
        if size != first:
            raise ValueError(
                f"images under {root!r} have different sizes ({files[0]!r} is {first[0]}×{first[1]}, {path!r} is"
                f" {size[0]}×{size[1]}); set config.data.image_size to resize and centre-crop them"
            )
    if first[0] != first[1]:
        raise ValueError(f"images under {root!r} are {first[0]}×{first[1]}, not square; set config.data.image_size to centre-crop them")
    return first[0]


# --- arrays ----------------------------------------------------------------------------------------
ARRAY_KEYS = ("images", "x", "data")


def open_array(path: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(images, labels)`` of a ``.npy`` file (memory-mapped, read on demand; no labels) or a
    ``.npz`` file (loaded; images under ``images``, ``x`` or ``data``, or its only array; optional
    ``labels``)."""
    path = require(path, ARRAY)
    if path.endswith(".npy"):
        try:
            return np.load(path, mmap_mode="r"), None
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read array file {path!r}: {err}") from None
    if not path.endswith(".npz"):
        raise ValueError(f"config.data.path={path!r} is neither a .npy nor a .npz file")
    try:
        with np.load(path) as archive:
            keys = list(archive.keys())
            key = _image_key(keys, path)
            labels = archive["labels"] if "labels" in keys else None
            return archive[key], labels
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read array file {path!r}: {err}") from None


def _image_key(keys: list[str], path: str) -> str:
    for key in ARRAY_KEYS:
        if key in keys:
            return key
    others = [k for k in keys if k != "labels"]
    if len(others) == 1:
        return others[0]
    raise ValueError(f"{path!r} holds arrays {', '.join(keys) or '(none)'}; expected the images under one of {', '.join(ARRAY_KEYS)} (and optional labels)")


def array_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the images of an array file, from the headers only."""
    path = require(path, ARRAY)
    if not path.endswith(".npz"):
        images, _ = open_array(path)
        return images.shape, images.dtype
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n.removesuffix(".npy") for n in archive.namelist()]
            with archive.open(_image_key(names, path) + ".npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read array file {path!r}: {err}") from None
    return shape, dtype


def channel_axis(shape: tuple[int, ...], num_channels: int, path: str) -> Optional[int]:
    """Where the channels of image array ``shape`` are: None for (N, H, W) (one channel), 3 for
    (N, H, W, C), 1 for (N, C, H, W). Channels-last wins when both fit num_channels (numpy/PIL
    order); a wrong rank or no axis of size ``num_channels`` raises ``ValueError``."""
    if len(shape) == 3:
        if num_channels != 1:
            raise ValueError(f"{path!r} holds grey images {shape} (N, H, W) but config.data.num_channels={num_channels}")
        return None
    if len(shape) != 4:
        raise ValueError(f"{path!r} holds an array of shape {shape}; expected images (N, H, W), (N, H, W, C) or (N, C, H, W)")
    for axis in (3, 1):
        if shape[axis] == num_channels:
            return axis
    raise ValueError(f"{path!r} holds an array of shape {shape} with no channel axis (1 or 3) of size config.data.num_channels={num_channels}")


def image_shape(shape: tuple[int, ...], axis: Optional[int]) -> tuple[int, int, int]:
    """(C, H, W) of one image of an array of ``shape`` with its channels on ``axis``."""
    if axis is None:
        return (1, *shape[1:])
    if axis == 3:
        return (shape[3], shape[1], shape[2])
    return tuple(shape[1:])


def to_chw(batch: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """A batch of images in channels-first order (N, C, H, W)."""
    if axis is None:
        return batch[:, None]
    return batch.transpose(0, 3, 1, 2) if axis == 3 else batch


# --- CIFAR-10 (python version) ---------------------------------------------------------------------
#: The only globals a CIFAR batch needs: numpy's array reconstruction (and the bytes codec that
#: pickle protocols < 3 use for bytes written by Python 3).
_RECONSTRUCT, _FROMBUFFER = np.zeros(1).__reduce_ex__(2)[0], np.zeros(1).__reduce_ex__(5)[0]
_PICKLE_GLOBALS = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _RECONSTRUCT for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _FROMBUFFER for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch") from None


def read_cifar10(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and int64 labels of CIFAR-10's ``train`` or ``test`` batches."""
    root = _directory(root, CIFAR10)
    images, labels = [], []
    for name in CIFAR_TRAIN if split == "train" else CIFAR_TEST:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise ValueError(f"{path!r} does not exist; expected {CIFAR10}")
        try:
            with open(path, "rb") as f:
                batch = _ArrayUnpickler(f, encoding="bytes").load()
            data, target = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"cannot read CIFAR-10 batch {path!r} (a pickled dict with b'data' and b'labels'): {err!r}") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or target.shape != (data.shape[0],):
            raise ValueError(f"CIFAR-10 batch {path!r} holds data {data.shape} and {target.shape[0]} labels; expected (N, 3072) and N labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(target)
    return np.concatenate(images), np.concatenate(labels)


# --- MNIST (IDX) -----------------------------------------------------------------------------------
def read_idx(path: str) -> np.ndarray:
    """An IDX file of unsigned bytes (type 0x08), plain or gzipped, as a uint8 array of its shape."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"cannot decompress {path!r}: {err}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path!r} is not an IDX file of unsigned bytes (magic 0x0000 08 n_dims, got {raw[:4].hex()})")
    n_dims = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=n_dims, offset=4))
    start = 4 + 4 * n_dims
    if len(raw) - start != int(np.prod(shape)):
        raise ValueError(f"{path!r} declares shape {shape} ({int(np.prod(shape))} bytes) but holds {len(raw) - start} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)


def _idx_path(root: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise ValueError(f"neither {stem!r} nor {stem + '.gz'!r} found in {root!r}; expected MNIST's IDX files")


def read_mnist(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 1, 28, 28) and int64 labels of MNIST's ``train`` or ``test`` (t10k) files."""
    root = _directory(root, MNIST)
    image_path, label_path = (_idx_path(root, stem) for stem in MNIST_FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3:
        raise ValueError(f"{image_path!r} holds an array of shape {images.shape}; expected images (N, H, W)")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{label_path!r} holds {labels.shape} labels for {images.shape[0]} images in {image_path!r}")
    return images[:, None], labels.astype(np.int64)
