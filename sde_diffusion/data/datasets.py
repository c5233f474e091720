"""Training data without downloads: the 2-D toy sets and scikit-learn's bundled 8×8 digits.

``get_dataset(config.data) -> (train, test)`` returns float32 tensors in model space;
``get_labels(config.data)`` the class labels of the labelled sets (digits: 0..9), in the same order.

* Toy sets (``ring``, ``checkerboard``, ``moons``, ``swiss_roll``; ``targets.TOY_DATA``) are
  continuous 2-D samples, drawn once from ``seed`` (train first, then test) and returned as drawn:
  their scaler is the identity and ``centered`` does not apply.
* ``digits`` (``sklearn.datasets.load_digits``, 1797 images, shape (B, 1, 8, 8)) take K = 17 grey
  levels v ∈ {0, ..., 16}. A pixel is stored at the centre of its bin, y = (v + ½)/K ∈ (0, 1), and
  mapped to model space by the scaler x = 2y - 1 (``centered``, in (-1, 1)) or x = y (in (0, 1)).
  The train/test split is a fixed permutation drawn from ``seed``; ``test_fraction`` of the images
  are held out.

Uniform dequantisation (Theis et al. 2016; score_sde's ``uniform_dequantization``) replaces each
pixel by a uniform draw over its bin, y = (v + u)/K, u ~ U[0, 1). On the stored bin centres this is
the zero-mean jitter x ← x + (u - ½)·Δ with bin width Δ = (scale of the scaler)/K, applied afresh to
every training batch: ``get_dequantizer(config)`` returns that function (or None), and
``iterate_batches`` applies it. Then log P(v) ≥ E_u log p(x) - D log(K/scale), which
``likelihood.bits_per_dim`` turns into bits/dim.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch

from sde_diffusion.core.registry import Registry
from sde_diffusion.core.targets import TOY_DATA

Dequantizer = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]

#: Number of grey levels K of each quantised (image) data set.
LEVELS = {"digits": 17}

DATASETS: Registry[Callable[[Any, torch.Generator], tuple[torch.Tensor, torch.Tensor]]] = Registry("data set")
#: Class labels (train, test) of the labelled data sets, aligned with their ``DATASETS`` entry.
LABELS: Registry[Callable[[Any, torch.Generator], tuple[torch.Tensor, torch.Tensor]]] = Registry("labelled data set")
#: Number of classes of each labelled data set.
NUM_CLASSES = {"digits": 10}


def _field(config: Any, name: str, default: Any) -> Any:
    return getattr(config, name, default)


def _toy_loader(name: str) -> Callable[[Any, torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    sampler = TOY_DATA.get(name)

    def load(config: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n_train, n_test = int(_field(config, "n_train", 10000)), int(_field(config, "n_test", 2000))
        if n_train < 1 or n_test < 1:
            raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
        return sampler(n_train, generator), sampler(n_test, generator)

    return load


for _name in TOY_DATA:
    DATASETS.register(_name)(_toy_loader(_name))


def _digits(config: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grey levels v ∈ {0..16} of the 1797 bundled digits, (B, 1, 8, 8), and their classes 0..9, split by
    a seeded permutation: (train, test, train labels, test labels)."""
    from sklearn.datasets import load_digits as sklearn_digits

    for name, value in (("image_size", 8), ("num_channels", 1)):
        if _field(config, name, value) != value:
            raise ValueError(f"digits are {name}={value}, got {name}={_field(config, name, value)!r}")
    fraction = float(_field(config, "test_fraction", 0.2))
    if not 0 < fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {fraction}")
    digits = sklearn_digits()
    levels = torch.as_tensor(digits.images, dtype=torch.float32)[:, None]
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    n_test = max(1, round(fraction * levels.shape[0]))
    perm = torch.randperm(levels.shape[0], generator=generator)
    train, test = perm[n_test:], perm[:n_test]
    return levels[train], levels[test], labels[train], labels[test]


@DATASETS.register("digits")
def load_digits(config: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey levels v ∈ {0..16} of the 1797 bundled digits, (B, 1, 8, 8), split by a seeded permutation."""
    return _digits(config, generator)[:2]


@LABELS.register("digits")
def load_digit_labels(config: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The classes 0..9 of ``load_digits``'s (train, test) images."""
    return _digits(config, generator)[2:]


def _levels(config: Any) -> Optional[int]:
    """K of a quantised data set, None for a continuous one; unknown names raise ValueError."""
    DATASETS.get(config.dataset)
    return LEVELS.get(config.dataset)


def _scale(config: Any) -> float:
    """Slope of the scaler from [0, 1] to model space: 2 if ``centered`` else 1."""
    return 2.0 if bool(_field(config, "centered", True)) else 1.0


def get_scaler(data_config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map from [0, 1] to model space: y ↦ 2y - 1 (``centered``) or y; identity for toy sets."""
    if _levels(data_config) is None:
        return lambda x: x
    scale = _scale(data_config)
    return lambda y: scale * y + (1.0 - scale)


def get_inverse_scaler(data_config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Inverse of ``get_scaler``: model space back to [0, 1] (identity for toy sets)."""
    if _levels(data_config) is None:
        return lambda x: x
    scale = _scale(data_config)
    return lambda x: (x - (1.0 - scale)) / scale


def get_dataset(data_config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) float32 tensors in model space, deterministic in ``data_config.seed``."""
    generator = torch.Generator().manual_seed(int(_field(data_config, "seed", 0)))
    train, test = DATASETS.get(data_config.dataset)(data_config, generator)
    K = _levels(data_config)
    if K is None:
        return train.float(), test.float()
    scaler = get_scaler(data_config)
    return scaler((train + 0.5) / K).float(), scaler((test + 0.5) / K).float()


def get_labels(data_config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) class labels (long) of the samples ``get_dataset`` returns, in the same order; a
    data set without labels raises ``ValueError`` naming the labelled ones."""
    generator = torch.Generator().manual_seed(int(_field(data_config, "seed", 0)))
    return LABELS.get(data_config.dataset)(data_config, generator)


def bin_width(data_config: Any) -> float:
    """Width Δ = scale/K of one grey level in model space (0 for the continuous toy sets)."""
    K = _levels(data_config)
    return 0.0 if K is None else _scale(data_config) / K


def dequantize(batch: torch.Tensor, width: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x + (u - ½)·Δ, u ~ U[0, 1)^D: a uniform draw over each stored value's bin of width Δ."""
    u = torch.rand(batch.shape, generator=generator, device=batch.device, dtype=batch.dtype)
    return batch + (u - 0.5) * width


def get_quantizer(data_config: Any) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The map from model space to the nearest stored value, x ↦ scaler((clip(⌊K y⌋, 0, K-1) + ½)/K)
    with y the value in [0, 1] (the centre of its grey level's bin, as the data are stored); None
    for the continuous toy sets."""
    K = _levels(data_config)
    if K is None:
        return None
    scaler, inverse = get_scaler(data_config), get_inverse_scaler(data_config)
    return lambda x: scaler((torch.floor(inverse(x) * K).clamp(0, K - 1) + 0.5) / K)


def get_dequantizer(data_config: Any) -> Optional[Dequantizer]:
    """``dequantize`` with this data set's bin width if ``uniform_dequantization`` is on, else None.
    Raises ValueError for the continuous toy sets, which have no bins."""
    if not bool(_field(data_config, "uniform_dequantization", False)):
        return None
    if _levels(data_config) is None:
        raise ValueError(
            f"uniform_dequantization applies to quantised data sets ({', '.join(LEVELS)}),"
            f" not to the continuous {data_config.dataset!r}"
        )
    width = bin_width(data_config)
    return lambda batch, generator=None: dequantize(batch, width, generator)


def iterate_batches(
    data: torch.Tensor,
    batch_size: int,
    generator: Optional[torch.Generator] = None,
    dequantizer: Optional[Dequantizer] = None,
) -> Iterator[torch.Tensor]:
    """Endless minibatches: each epoch a fresh permutation of ``data`` (generator on its device),
    cut into ``batch_size`` batches (the last partial batch is dropped unless it is the only one),
    each dequantised afresh when ``dequantizer`` is given."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    n = data.shape[0]
    size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=generator, device=data.device)
        for start in range(0, n - size + 1, size):
            batch = data[perm[start:start + size]]
            yield batch if dequantizer is None else dequantizer(batch, generator)
