"""Training data without downloads: the 2-D toy sets, scikit-learn's bundled 8×8 digits, and the
user's own files (``folder``, ``array``, ``cifar10``, ``mnist``; read by ``formats``, from
``config.data.path``).

Each data set is one ``DataSet`` record in ``DATASETS`` (its reader, shape, number of levels and of
classes); adding a format is one registration. ``get_split(config.data) -> (train, test)`` gives its
two ``Source``s, which read stored values by rows, from memory or from disk, so that a
``torch.utils.data.DataLoader`` can stream them (``sde_diffusion.data.loader``);
``to_model_space`` maps a batch of stored values to float32 model space. ``get_dataset`` and
``get_labels`` read a whole split into memory.

* Toy sets (``ring``, ``checkerboard``, ``moons``, ``swiss_roll``; ``targets.TOY_DATA``) are
  continuous 2-D samples, drawn once from ``seed`` (train first, then test) and stored in model
  space: their scaler is the identity and ``centered`` does not apply.
* Quantised images (``digits``: K = 17 grey levels; uint8 files: K = 256) are stored as levels
  v ∈ {0, ..., K-1}. A pixel sits at the centre of its bin, y = (v + ½)/K ∈ (0, 1), mapped to model
  space by the scaler x = 2y - 1 (``centered``, in (-1, 1)) or x = y (in (0, 1)).
* Float arrays are continuous images with values in ``value_range`` = [a, b]: y = (v - a)/(b - a),
  then the same scaler.
* Splits: CIFAR-10 and MNIST keep their own train/test files; the others hold out a fixed
  permutation drawn from ``seed``, ``test_fraction`` of the points.

Uniform dequantisation (Theis et al. 2016; score_sde's ``uniform_dequantization``) replaces each
pixel by a uniform draw over its bin, y = (v + u)/K, u ~ U[0, 1). On the stored bin centres this is
the zero-mean jitter x ← x + (u - ½)·Δ with bin width Δ = (scale of the scaler)/K, applied afresh to
every training batch (``get_dequantizer``). Then log P(v) ≥ E_u log p(x) - D log(K/scale), which
``likelihood.bits_per_dim`` turns into bits/dim.
"""
from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from sde_diffusion.core.registry import Registry
from sde_diffusion.core.targets import TOY_DATA
from sde_diffusion.data import formats

Dequantizer = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]
#: A batch read from a ``Source``: stored values (n, *shape) and class labels (n,) or None.
Batch = tuple[torch.Tensor, Optional[torch.Tensor]]


# --- sources: stored values by rows ------------------------------------------------------------------
class Source(torch.utils.data.Dataset, abc.ABC):
    """One split of a data set: ``len(source)`` points, ``source.rows(indices)`` a ``Batch`` of them,
    ``source.targets`` all their labels (None: unlabelled). ``__getitems__`` lets a DataLoader with a
    batch sampler read a whole batch in one call."""

    targets: Optional[torch.Tensor] = None

    @abc.abstractmethod
    def rows(self, indices: Sequence[int]) -> Batch:
        """The values and labels (None: unlabelled) of the points ``indices``."""

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        return self.rows(indices)

    def __getitem__(self, index: int) -> Batch:
        values, labels = self.rows([index])
        return values[0], None if labels is None else labels[0]


class ArraySource(Source):
    """Rows ``members`` of an image or point array (in memory, or a ``.npy`` file memory-mapped and
    opened afresh in each DataLoader worker), channels on ``axis`` (``formats.channel_axis``)."""

    def __init__(self, values: np.ndarray, labels: Optional[np.ndarray], members: np.ndarray,
                 axis: Optional[int] = 1, path: Optional[str] = None) -> None:
        self._values, self.labels, self.members, self.axis, self.path = values, labels, members, axis, path
        self.targets = None if labels is None else torch.from_numpy(labels[members])

    def __len__(self) -> int:
        return len(self.members)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_values"] = None
        return state

    def rows(self, indices: Sequence[int]) -> Batch:
        if self._values is None:
            self._values = formats.open_array(self.path)[0]
        rows = self.members[np.asarray(indices, dtype=np.int64)]
        values = self._values[rows]
        if values.ndim > 2:
            values = formats.to_chw(values, self.axis)
        labels = None if self.labels is None else torch.from_numpy(self.labels[rows])
        return torch.from_numpy(np.ascontiguousarray(values)), labels


class FolderSource(Source):
    """Image files decoded on demand (``formats.read_image``): uint8 (C, size, size) each."""

    def __init__(self, files: list[str], labels: Optional[np.ndarray], num_channels: int, size: Optional[int]) -> None:
        self.files, self.labels, self.num_channels, self.size = files, labels, num_channels, size
        self.targets = None if labels is None else torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.files)

    def rows(self, indices: Sequence[int]) -> Batch:
        images = np.stack([formats.read_image(self.files[i], self.num_channels, self.size) for i in indices])
        labels = None if self.labels is None else torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64)])
        return torch.from_numpy(images), labels


# --- the record of a data set ------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSet:
    """What a data set is. Each field is a function of ``config.data``; ``shape``, ``levels`` and
    ``classes`` read at most file headers or directory names, never the data.

    load: ``(train, test)`` Sources of stored values; shape: of one point; levels: K of quantised
    data, None for continuous; classes: number of classes (0: unlabelled); images: stored values are
    in data space and mapped by the scaler (False: already in model space, the toy sets); path: what
    ``config.data.path`` must name (None: the data set reads no files)."""

    load: Callable[[Any], tuple[Source, Source]]
    shape: Callable[[Any], tuple[int, ...]]
    levels: Callable[[Any], Optional[int]]
    classes: Callable[[Any], int]
    images: bool = True
    path: Optional[str] = None


DATASETS: Registry[DataSet] = Registry("data set")


def _field(config: Any, name: str, default: Any) -> Any:
    return getattr(config, name, default)


def _seeded_split(n: int, config: Any) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): a permutation drawn from ``seed``, the first ``test_fraction`` held out."""
    fraction = float(_field(config, "test_fraction", 0.2))
    if not 0 < fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(f"{_field(config, 'path', None)!r} holds {n} image(s); a train/test split needs at least 2")
    n_test = min(n - 1, max(1, round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(_field(config, "seed", 0)))).numpy()
    return perm[n_test:], perm[:n_test]


def _check_fixed(name: str, config: Any, channels: int, size: int) -> None:
    """Data sets stored at one size are not resized: image_size (if set) and num_channels must match."""
    for field, value in (("image_size", size), ("num_channels", channels)):
        given = _field(config, field, value)
        if given is not None and given != value:
            raise ValueError(f"{name} images are {field}={value}, got config.data.{field}={given!r}")


def _in_memory(images: np.ndarray, labels: Optional[np.ndarray], config: Any) -> tuple[Source, Source]:
    train, test = _seeded_split(images.shape[0], config)
    return ArraySource(images, labels, train), ArraySource(images, labels, test)


# toy sets
def _register_toy(name: str) -> None:
    sampler = TOY_DATA.get(name)

    def load(config: Any) -> tuple[Source, Source]:
        n_train, n_test = int(_field(config, "n_train", 10000)), int(_field(config, "n_test", 2000))
        if n_train < 1 or n_test < 1:
            raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
        generator = torch.Generator().manual_seed(int(_field(config, "seed", 0)))
        train, test = sampler(n_train, generator).numpy(), sampler(n_test, generator).numpy()
        return ArraySource(train, None, np.arange(n_train)), ArraySource(test, None, np.arange(n_test))

    DATASETS.register(name)(DataSet(load=load, shape=lambda c: (2,), levels=lambda c: None, classes=lambda c: 0, images=False))


for _name in TOY_DATA:
    _register_toy(_name)


# digits
def _load_digits(config: Any) -> tuple[Source, Source]:
    """Grey levels v ∈ {0..16} of the 1797 bundled digits, (B, 1, 8, 8), with their classes 0..9."""
    from sklearn.datasets import load_digits

    _check_fixed("digits", config, 1, 8)
    digits = load_digits()
    return _in_memory(digits.images.astype(np.uint8)[:, None], digits.target.astype(np.int64), config)


DATASETS.register("digits")(DataSet(load=_load_digits, shape=lambda c: (1, 8, 8), levels=lambda c: 17, classes=lambda c: 10))


# folder of images
def _folder_size(config: Any) -> tuple[int, list[str], Optional[np.ndarray]]:
    """(image side, files, labels) of an image folder; the side is ``image_size`` or, if that is
    None, the one size all images share."""
    files, labels, _ = formats.scan_folder(config.path)
    size = _field(config, "image_size", None)
    return (size if size is not None else formats.common_size(files, config.path)), files, labels


def _folder_channels(config: Any) -> int:
    channels = int(_field(config, "num_channels", 3))
    if channels not in formats.MODES:
        raise ValueError(f"folder images are grey (num_channels=1) or RGB (3), got config.data.num_channels={channels}")
    return channels


def _load_folder(config: Any) -> tuple[Source, Source]:
    channels = _folder_channels(config)
    size, files, labels = _folder_size(config)
    train, test = _seeded_split(len(files), config)

    def split(rows: np.ndarray) -> Source:
        return FolderSource([files[i] for i in rows], None if labels is None else labels[rows], channels, size)

    return split(train), split(test)


def _folder_shape(config: Any) -> tuple[int, ...]:
    channels = _folder_channels(config)
    size = _field(config, "image_size", None)
    size = size if size is not None else _folder_size(config)[0]
    return (channels, size, size)


DATASETS.register("folder")(DataSet(
    load=_load_folder, shape=_folder_shape, levels=lambda c: 256,
    classes=lambda c: len(formats.folder_classes(formats.require(c.path, formats.FOLDER))), path=formats.FOLDER,
))


# array file
def _array_layout(config: Any) -> tuple[tuple[int, ...], Optional[int], np.dtype]:
    """(shape of one image (C, H, W), channel axis, dtype) of the array file, from its header."""
    shape, dtype = formats.array_header(config.path)
    axis = formats.channel_axis(shape, int(_field(config, "num_channels", 1)), config.path)
    image = formats.image_shape(shape, axis)
    size = _field(config, "image_size", None)
    if size is not None and image[1:] != (size, size):
        raise ValueError(f"{config.path!r} holds {image[1]}×{image[2]} images, got config.data.image_size={size} (arrays are not resized; None takes the stored size)")
    if dtype != np.uint8 and dtype.kind != "f":
        raise ValueError(f"{config.path!r} holds {dtype} values; expected uint8 (256 levels) or float (in config.data.value_range)")
    return image, axis, dtype


def _load_array(config: Any) -> tuple[Source, Source]:
    _, axis, _ = _array_layout(config)
    images, labels = formats.open_array(config.path)
    if labels is not None:
        labels = _check_labels(np.asarray(labels), images.shape[0], config.path)
    train, test = _seeded_split(images.shape[0], config)
    path = config.path if config.path.endswith(".npy") else None
    return ArraySource(images, labels, train, axis, path), ArraySource(images, labels, test, axis, path)


def _check_labels(labels: np.ndarray, n: int, path: str) -> np.ndarray:
    if labels.shape != (n,) or labels.dtype.kind not in "iu" or (n and int(labels.min()) < 0):
        raise ValueError(f"labels in {path!r} must be {n} integers >= 0 (one per image), got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def _array_classes(config: Any) -> int:
    path = formats.require(config.path, formats.ARRAY)
    if not path.endswith(".npz"):
        return 0
    with np.load(path) as archive:
        if "labels" not in archive:
            return 0
        labels = archive["labels"]
    return int(labels.max()) + 1 if labels.size else 0


DATASETS.register("array")(DataSet(
    load=_load_array, shape=lambda c: _array_layout(c)[0],
    levels=lambda c: 256 if _array_layout(c)[2] == np.uint8 else None, classes=_array_classes, path=formats.ARRAY,
))


# CIFAR-10 and MNIST: their own splits
def _register_fixed(name: str, read: Callable[[str, str], tuple[np.ndarray, np.ndarray]], shape: tuple[int, int, int], path: str) -> None:
    def load(config: Any) -> tuple[Source, Source]:
        _check_fixed(name, config, shape[0], shape[1])
        splits = [read(config.path, split) for split in ("train", "test")]
        return tuple(ArraySource(images, labels, np.arange(images.shape[0])) for images, labels in splits)

    DATASETS.register(name)(DataSet(load=load, shape=lambda c: shape, levels=lambda c: 256, classes=lambda c: 10, path=path))


_register_fixed("cifar10", formats.read_cifar10, (3, 32, 32), formats.CIFAR10)
_register_fixed("mnist", formats.read_mnist, (1, 28, 28), formats.MNIST)


# --- the public API ------------------------------------------------------------------------------
def record(data_config: Any) -> DataSet:
    """The ``DataSet`` named by ``data_config.dataset`` (unknown names raise ValueError)."""
    return DATASETS.get(data_config.dataset)


def get_split(data_config: Any) -> tuple[Source, Source]:
    """(train, test) Sources of stored values, deterministic in ``data_config.seed``."""
    return record(data_config).load(data_config)


def data_shape(data_config: Any) -> tuple[int, ...]:
    """Shape of one data point, read from the config (and at most file headers)."""
    return tuple(record(data_config).shape(data_config))


def levels(data_config: Any) -> Optional[int]:
    """K of a quantised data set, None for a continuous one."""
    return record(data_config).levels(data_config)


def num_classes(data_config: Any) -> int:
    """Number of classes of a labelled data set, 0 for an unlabelled one."""
    return record(data_config).classes(data_config)


def _scale(config: Any) -> float:
    """Slope of the scaler from [0, 1] to model space: 2 if ``centered`` else 1."""
    return 2.0 if bool(_field(config, "centered", True)) else 1.0


def get_scaler(data_config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map from [0, 1] to model space: y ↦ 2y - 1 (``centered``) or y; identity for toy sets."""
    if not record(data_config).images:
        return lambda x: x
    scale = _scale(data_config)
    return lambda y: scale * y + (1.0 - scale)


def get_inverse_scaler(data_config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Inverse of ``get_scaler``: model space back to [0, 1] (identity for toy sets)."""
    if not record(data_config).images:
        return lambda x: x
    scale = _scale(data_config)
    return lambda x: (x - (1.0 - scale)) / scale


def value_range(data_config: Any) -> tuple[float, float]:
    low, high = (float(v) for v in _field(data_config, "value_range", (0.0, 1.0)))
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"value_range must be two finite numbers low < high, got {(low, high)}")
    return low, high


def to_model_space(data_config: Any, values: torch.Tensor) -> torch.Tensor:
    """float32 model-space points of stored ``values``: levels v ↦ scaler((v + ½)/K), floats in
    ``value_range`` [a, b] ↦ scaler((v - a)/(b - a)) (values outside it raise ValueError), toy points
    as they are."""
    data = record(data_config)
    if not data.images:
        return values.float()
    K = data.levels(data_config)
    if K is not None:
        return get_scaler(data_config)((values.float() + 0.5) / K)
    low, high = value_range(data_config)
    lo, hi = float(values.min()), float(values.max())
    if lo < low or hi > high:
        raise ValueError(f"{_field(data_config, 'path', None)!r} holds values in [{lo:g}, {hi:g}], outside config.data.value_range={(low, high)}")
    return get_scaler(data_config)(((values.double() - low) / (high - low)).float())


def read(data_config: Any, source: Source, n: Optional[int] = None) -> Batch:
    """The first ``n`` points of ``source`` (all if None) in model space, with their labels."""
    values, labels = source.rows(range(len(source) if n is None else min(n, len(source))))
    return to_model_space(data_config, values), labels


def get_dataset(data_config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) float32 tensors in model space, deterministic in ``data_config.seed``: the whole
    data set in memory (training streams it instead: ``sde_diffusion.data.loader``)."""
    train, test = get_split(data_config)
    return read(data_config, train)[0], read(data_config, test)[0]


def held_out(data_config: Any, n: Optional[int] = None) -> torch.Tensor:
    """The first ``n`` test points (all if None) in model space."""
    return read(data_config, get_split(data_config)[1], n)[0]


def get_labels(data_config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) class labels (long) of the points ``get_dataset`` returns, in the same order; a
    data set without labels raises ``ValueError``."""
    train, test = get_split(data_config)
    if train.targets is None or test.targets is None:
        raise ValueError(f"data set {data_config.dataset!r} has no labels{_where(data_config)}")
    return train.targets, test.targets


def _where(data_config: Any) -> str:
    path = _field(data_config, "path", None)
    return f" ({path!r})" if path and record(data_config).images else ""


def bin_width(data_config: Any) -> float:
    """Width Δ = scale/K of one grey level in model space (0 for continuous data)."""
    K = levels(data_config)
    return 0.0 if K is None else _scale(data_config) / K


def dequantize(batch: torch.Tensor, width: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x + (u - ½)·Δ, u ~ U[0, 1)^D: a uniform draw over each stored value's bin of width Δ."""
    u = torch.rand(batch.shape, generator=generator, device=batch.device, dtype=batch.dtype)
    return batch + (u - 0.5) * width


def get_quantizer(data_config: Any) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The map from model space to the nearest stored value, x ↦ scaler((clip(⌊K y⌋, 0, K-1) + ½)/K)
    with y the value in [0, 1] (the centre of its grey level's bin, as the data are stored); None
    for the continuous toy sets."""
    K = levels(data_config)
    if K is None:
        return None
    scaler, inverse = get_scaler(data_config), get_inverse_scaler(data_config)
    return lambda x: scaler((torch.floor(inverse(x) * K).clamp(0, K - 1) + 0.5) / K)


def get_dequantizer(data_config: Any) -> Optional[Dequantizer]:
    """``dequantize`` with this data set's bin width if ``uniform_dequantization`` is on, else None.
    Raises ValueError for continuous data, which have no bins."""
    if not bool(_field(data_config, "uniform_dequantization", False)):
        return None
    if levels(data_config) is None:
        raise ValueError(
            "uniform_dequantization applies to quantised data sets (digits, folder, cifar10, mnist, uint8 arrays),"
            f" not to the continuous {data_config.dataset!r}{_where(data_config)}"
        )
    width = bin_width(data_config)
    return lambda batch, generator=None: dequantize(batch, width, generator)


def random_flip(batch: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Each image of (B, C, H, W) ``batch`` mirrored left–right with probability ½."""
    flip = torch.rand(batch.shape[0], generator=generator, device=batch.device) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)


def check(data_config: Any, model_classes: int = 0) -> None:
    """Raise ``ValueError`` early for a data config that cannot train: an unknown data set, a missing
    or malformed path (headers and directory names are read), dequantisation or flips of data that
    have no bins or no image axes, or fewer classes than the model's ``model_classes``."""
    data = record(data_config)
    if data.path is not None:
        formats.require(_field(data_config, "path", None), data.path)
    shape = data_shape(data_config)
    get_dequantizer(data_config)
    value_range(data_config)
    if bool(_field(data_config, "random_flip", False)) and len(shape) != 3:
        raise ValueError(f"random_flip mirrors images; {data_config.dataset!r} has points of shape {shape}")
    if model_classes:
        found = data.classes(data_config)
        if found != model_classes:
            raise ValueError(f"a class-conditional model with {model_classes} classes needs a labelled data set with {model_classes} classes;"
                             f" config.data.dataset={data_config.dataset!r}{_where(data_config)} has {found or 'no labels'}")
