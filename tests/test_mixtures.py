"""Exact perturbed mixtures: the score is the gradient of the log-density, the density is
normalised, samples have the analytic moments, and bad input is refused."""
import math

import pytest
import torch

from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import TOY_DATA, anisotropic, ring

SDES = ["vp", "subvp", "ve", "cosine_vp"]


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("target", [ring, anisotropic], ids=["ring2d", "aniso8d"])
def test_score_is_gradient_of_log_density(name, target, gen):
    """At 64 random (x, t) pairs with per-sample times, score == autograd ∇ log p_t to 1e-9
    relative (float64 throughout, so only rounding separates the two)."""
    sde, mix = get_sde(name), target()
    t = torch.rand(64, generator=gen, dtype=torch.float64) * 0.999 + 1e-3
    x = mix.sample(64, gen, dtype=torch.float64) * sde.alpha(t)[:, None] + sde.sigma(t)[:, None] * torch.randn(64, mix.dim, generator=gen, dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x, t, sde).sum(), x)
    score = mix.score(x.detach(), t, sde)
    assert torch.allclose(score, grad, rtol=1e-9, atol=1e-9 * float(grad.abs().max()))


def test_perturbed_density_is_normalised():
    """∫ p_t = 1 on a 2-D grid (trapezoid, 801² points over ±4.5 for t = 0.05 under VP: the
    smallest std is √(α² 0.01 + σ²) ≈ 0.34 → ≥ 19 points per std, quadrature error ≪ 1e-6)."""
    sde, mix = get_sde("vp"), ring()
    g = torch.linspace(-4.5, 4.5, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    p = mix.log_prob(pts, 0.05, sde).exp().reshape(801, 801)
    assert float(torch.trapezoid(torch.trapezoid(p, g), g)) == pytest.approx(1.0, abs=1e-6)


def test_perturbed_mixture_is_gaussian_convolution(gen):
    """p_t(x) = E_{x0 ~ p_0}[N(x; α x0, σ² I)]: Monte-Carlo average over 200000 data draws
    matches log_prob at a few points within 5 relative standard errors."""
    sde, mix = get_sde("ve"), ring()
    t = 0.3
    alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
    x0 = mix.sample(200000, gen, dtype=torch.float64)
    pts = torch.tensor([[2.0, 0.0], [1.3, 1.3], [-1.0, 1.2]], dtype=torch.float64)
    d2 = ((pts[:, None, :] - alpha * x0[None]) ** 2).sum(-1)
    dens = torch.exp(-d2 / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    mc, se = dens.mean(1), dens.std(1) / math.sqrt(x0.shape[0])
    exact = mix.log_prob(pts, t, sde).exp()
    assert bool(((mc - exact).abs() < 5 * se).all()), (mc, exact, se)


def test_sample_moments(gen):
    """Empirical mean and covariance of 100000 draws of the 8-D mixture against mean() and
    covariance(): SE of a mean coordinate ≤ √(max var / n); tolerance 5 SE (covariance entries:
    SE ≈ √(2/n)·max var, tolerance 6 SE)."""
    mix = anisotropic()
    n = 100000
    x, labels = mix.sample(n, gen, dtype=torch.float64, return_labels=True)
    var_max = float(torch.diagonal(mix.covariance()).max())
    assert torch.allclose(x.mean(0), mix.mean(), atol=5 * math.sqrt(var_max / n))
    assert torch.allclose(torch.cov(x.T), mix.covariance(), atol=6 * math.sqrt(2 / n) * var_max)
    freq = torch.bincount(labels, minlength=4).double() / n
    assert torch.allclose(freq, mix.weights, atol=5 * math.sqrt(0.25 / n))


def test_responsibilities_and_assignment():
    mix = ring()
    x = mix.means.clone()
    r = mix.responsibilities(x)
    assert torch.allclose(r.sum(1), torch.ones(8, dtype=torch.float64))
    assert torch.equal(mix.assign(x), torch.arange(8))
    # at t = T under VP the modes have merged: responsibilities approach the prior weights
    sde = get_sde("vp")
    r_T = mix.responsibilities(torch.zeros(1, 2, dtype=torch.float64), 1.0, sde)
    assert torch.allclose(r_T[0], mix.weights, atol=1e-3)


def test_image_shaped_input(gen):
    """A mixture in d = C·H·W accepts (B, C, H, W) and returns the score in that shape."""
    d = 4
    mix = GaussianMixture([1.0, 2.0], torch.randn(2, d, generator=gen), torch.eye(d).expand(2, d, d) * 0.5)
    x = torch.randn(3, 1, 2, 2, generator=gen)
    s = mix.score(x, 0.4, get_sde("vp"))
    assert s.shape == x.shape and s.dtype == x.dtype
    assert torch.allclose(s.reshape(3, d), mix.score(x.reshape(3, d), 0.4, get_sde("vp")))


@pytest.mark.parametrize(
    "args, message",
    [
        (([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, -1.0]]]), "positive definite; smallest eigenvalue -1.0"),
        (([1.0, -1.0], [[0.0], [1.0]], [[[1.0]], [[1.0]]]), "weights must be positive"),
        (([1.0], [0.0, 0.0], [[[1.0]]]), "means must have shape"),
        (([1.0], [[0.0]], [[[float("inf")]]]), "covariances contains 1 non-finite"),
        (([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
    ],
)
def test_bad_mixtures(args, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(*args)


def test_bad_evaluation_inputs():
    mix = ring()
    with pytest.raises(ValueError, match="x contains 1 non-finite"):
        mix.log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="d=2"):
        mix.score(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="needs the sde"):
        mix.score(torch.zeros(2, 2), 0.5)


def test_toy_datasets(gen):
    """Sample-only sets: right shape, reproducible by generator, and their defining geometry."""
    for name in TOY_DATA:
        a = TOY_DATA.get(name)(500, torch.Generator().manual_seed(3))
        b = TOY_DATA.get(name)(500, torch.Generator().manual_seed(3))
        assert a.shape == (500, 2) and torch.equal(a, b)
    cb = TOY_DATA.get("checkerboard")(4000, gen)
    cells = (torch.floor(cb[:, 0]) + torch.floor(cb[:, 1])) % 2
    assert bool((cells == 0).all()), "checkerboard points must all lie on the same colour"
    assert bool((cb.abs() <= 2).all())
    roll = TOY_DATA.get("swiss_roll")(4000, gen)
    r = roll.norm(dim=1) * 7.0
    slack = 5 * 0.05 * 7.0  # five noise standard deviations, in radius units
    assert 1.5 * math.pi - slack < float(r.min()) and float(r.max()) < 4.5 * math.pi + slack
