"""The four output parameterisations convert exactly (checklist NET-4, NET-5, TRN-11)."""
import itertools

import pytest
import torch

from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.parameterization import (
    PARAMETERIZATIONS,
    convert,
    data_from_score,
    noise_from_score,
    velocity_from_score,
)
from sde_diffusion.core.sde_lib import get_sde

KINDS = ["score", "noise", "data", "velocity"]


@pytest.mark.parametrize("src, dst", list(itertools.product(KINDS, KINDS)))
def test_round_trip(src, dst, gen):
    x = torch.randn(5, 3, 2, 2, generator=gen, dtype=torch.float64)
    v = torch.randn_like(x)
    alpha = torch.rand(5, generator=gen, dtype=torch.float64) + 0.1
    sigma = torch.rand(5, generator=gen, dtype=torch.float64) + 0.1
    back = convert(convert(v, src, dst, x, alpha, sigma), dst, src, x, alpha, sigma)
    assert torch.allclose(back, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "cosine_vp"])
def test_tweedie_and_noise_on_gaussian_data(name, gen):
    """For data N(m, v I), x_t = α x0 + σ ε is jointly Gaussian with x0, so
    E[x0 | x_t] = m + α v (x_t − α m)/(α² v + σ²) and E[ε | x_t] = σ (x_t − α m)/(α² v + σ²), and
    E[α ε − σ x0 | x_t] follows linearly. The exact score converted by Tweedie, by ε = −σ s and to
    the velocity must give these."""
    sde = get_sde(name)
    m, v = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3
    mix = GaussianMixture([1.0], m[None], v * torch.eye(2, dtype=torch.float64)[None])
    t = torch.tensor([0.01, 0.3, 0.8], dtype=torch.float64)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    xt = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    score = mix.score(xt, t, sde)
    expected_x0 = m + a * v * (xt - a * m) / (a**2 * v + s**2)
    expected_eps = s * (xt - a * m) / (a**2 * v + s**2)
    assert torch.allclose(data_from_score(score, xt, a[:, 0], s[:, 0]), expected_x0, rtol=1e-10)
    assert torch.allclose(noise_from_score(score, xt, a[:, 0], s[:, 0]), expected_eps, rtol=1e-10)
    expected_v = a * expected_eps - s * expected_x0
    assert torch.allclose(velocity_from_score(score, xt, a[:, 0], s[:, 0]), expected_v, rtol=1e-10, atol=1e-12)


def test_unknown_parameterization():
    with pytest.raises(ValueError, match="unknown parameterization 'flow'; known: data, noise, score, velocity"):
        PARAMETERIZATIONS.get("flow")
