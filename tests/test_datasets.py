"""Data sets: the digits' grey levels, scaling, split and dequantisation; the toy sets; batches."""
import math

import pytest
import torch
from ml_collections import ConfigDict
from sklearn.datasets import load_digits

from sde_diffusion.data.datasets import (
    bin_width,
    get_dataset,
    get_dequantizer,
    get_inverse_scaler,
    get_scaler,
)
from sde_diffusion.evaluation.likelihood import bits_per_dim


def _digits(**overrides) -> ConfigDict:
    fields = dict(dataset="digits", centered=True, uniform_dequantization=True, seed=0, test_fraction=0.2,
                  image_size=8, num_channels=1)
    fields.update(overrides)
    return ConfigDict(fields)


def _levels(x: torch.Tensor, config: ConfigDict) -> torch.Tensor:
    """Grey level v = K·y - ½ of stored values y = (v + ½)/K in [0, 1]."""
    return get_inverse_scaler(config)(x.double()) * 17 - 0.5


@pytest.mark.parametrize("centered", [True, False])
def test_digits_levels_scaling_and_split(centered):
    """1797 images, 20% (359) held out; every stored pixel sits on one of the 17 bin centres
    (v + ½)/17 mapped by the scaler (so inside (-1, 1) or (0, 1)); train ∪ test is exactly the
    scikit-learn set (compared as multisets of rows); the split is fixed by the seed."""
    config = _digits(centered=centered)
    train, test = get_dataset(config)
    assert train.shape == (1438, 1, 8, 8) and test.shape == (359, 1, 8, 8)
    assert train.dtype == torch.float32
    lo, hi = (-1.0, 1.0) if centered else (0.0, 1.0)
    assert lo < float(train.min()) < lo + 0.06 and hi - 0.06 < float(train.max()) < hi
    levels = _levels(torch.cat([train, test]), config)
    assert torch.allclose(levels, levels.round(), atol=1e-5)
    reference = torch.as_tensor(load_digits().images, dtype=torch.float64).reshape(1797, 64)
    ours = levels.round().reshape(1797, 64)
    assert all(torch.equal(a, b) for a, b in zip(torch.unique(ours, dim=0, return_counts=True),
                                                 torch.unique(reference, dim=0, return_counts=True)))
    again, _ = get_dataset(config)
    other, _ = get_dataset(_digits(centered=centered, seed=1))
    assert torch.equal(again, train) and not torch.equal(other, train)
    y = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(get_inverse_scaler(config)(get_scaler(config)(y)), y)


@pytest.mark.parametrize("centered", [True, False])
def test_dequantization_is_uniform_within_each_bin(centered, gen):
    """A dequantised pixel stays in its grey level's bin, x ∈ [x_c - Δ/2, x_c + Δ/2) with Δ = 2/17
    (centered) or 1/17, and is uniform there: the offset u = (x - x_c)/Δ + ½ of n = 1438·64 ≈ 92000
    pixels has mean ½ ± 1/√(12 n) ≈ 0.001 and variance 1/12 ± ≈ 0.0003; tolerances 5 SE. Two
    passes draw fresh noise."""
    config = _digits(centered=centered)
    train, _ = get_dataset(config)
    dequantize = get_dequantizer(config)
    width = bin_width(config)
    assert math.isclose(width, (2.0 if centered else 1.0) / 17)
    noisy = dequantize(train, gen)
    u = ((noisy - train) / width + 0.5).double()
    assert float(u.min()) >= -1e-6 and float(u.max()) < 1 + 1e-6
    n = u.numel()
    assert abs(float(u.mean()) - 0.5) < 5 / math.sqrt(12 * n)
    assert abs(float(u.var()) - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    assert not torch.equal(dequantize(train, gen), noisy)
    assert get_dequantizer(_digits(uniform_dequantization=False)) is None


@pytest.mark.parametrize("centered", [True, False])
def test_point_mass_has_zero_bits(centered):
    """If every image were the same grey-level image, its probability is 1 (0 bits). Its dequantised
    version is uniform on a cube of side Δ = scale/17 per pixel (``bin_width``), density Δ^{-D}, so
    ``bits_per_dim`` of log p = -D log Δ must be 0 (score_sde's offsets 8 and 7 are the same formula
    for 256 levels)."""
    config = _digits(centered=centered)
    D = 64
    logp = torch.tensor([-D * math.log(bin_width(config))], dtype=torch.float64)
    assert abs(float(bits_per_dim(logp, D, 17, 2.0 if centered else 1.0))) < 1e-12


@pytest.mark.parametrize("name", ["ring", "checkerboard", "moons", "swiss_roll"])
def test_toy_sets(name):
    """2-D float32 samples of the requested sizes, fixed by the seed, train ≠ test; the scaler is the
    identity and the continuous sets have no bins (dequantising them is an error)."""
    config = ConfigDict(dict(dataset=name, n_train=500, n_test=100, seed=3, centered=True, uniform_dequantization=False))
    train, test = get_dataset(config)
    assert train.shape == (500, 2) and test.shape == (100, 2) and train.dtype == torch.float32
    assert torch.equal(get_dataset(config)[0], train)
    assert not torch.equal(train[:100], test)
    assert torch.equal(get_scaler(config)(train), train) and bin_width(config) == 0.0
    assert 0.5 < float(train.std()) < 3.0
    config.uniform_dequantization = True
    with pytest.raises(ValueError, match="uniform_dequantization applies to quantised data sets"):
        get_dequantizer(config)


def test_bad_data_configs():
    with pytest.raises(ValueError, match="unknown data set 'cifar'; known: array, checkerboard, cifar10, digits, folder, mnist, moons, ring, swiss_roll"):
        get_dataset(ConfigDict(dict(dataset="cifar")))
    with pytest.raises(ValueError, match="digits images are image_size=8, got config.data.image_size=32"):
        get_dataset(_digits(image_size=32))
    with pytest.raises(ValueError, match="test_fraction must lie in"):
        get_dataset(_digits(test_fraction=1.0))
    with pytest.raises(ValueError, match="n_train and n_test must be >= 1"):
        get_dataset(ConfigDict(dict(dataset="ring", n_train=0, n_test=10)))
