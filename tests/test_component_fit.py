"""The component-fit divergence (responsibility-weighted Gaussian fits against the true components)
on exact samples of analytic mixtures."""
import math

import pytest
import torch

from sde_diffusion.core.targets import anisotropic, multiscale
from sde_diffusion.evaluation import metrics


def test_gaussian_kl_matches_torch_distributions(gen):
    """The closed form against torch.distributions on random full covariances (float64 throughout)."""
    d = 5
    a, b = torch.randn(3, d, d, generator=gen, dtype=torch.float64), torch.randn(3, d, d, generator=gen, dtype=torch.float64)
    cov, ref_cov = a @ a.mT + 0.1 * torch.eye(d, dtype=torch.float64), b @ b.mT + 0.1 * torch.eye(d, dtype=torch.float64)
    mean, ref_mean = torch.randn(3, d, generator=gen, dtype=torch.float64), torch.randn(3, d, generator=gen, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(mean, cov), torch.distributions.MultivariateNormal(ref_mean, ref_cov)
    )
    torch.testing.assert_close(metrics.gaussian_kl(mean, cov, ref_mean, ref_cov), expected, rtol=1e-9, atol=1e-9)
    assert float(metrics.gaussian_kl(ref_mean, ref_cov, ref_mean, ref_cov).abs().max()) < 1e-10


def test_component_moments_are_consistent_on_exact_samples(gen):
    """Soft assignment by the true responsibilities: the fitted weights, means and covariances of
    20000 exact samples agree with the truth within 4 standard errors (weights: binomial; means:
    the component's std / √n_k per axis; covariance entries: √((C_ii C_jj + C_ij²)/n_k))."""
    mix, n = anisotropic(), 20000
    weights, means, covs = metrics.component_moments(mix, mix.sample(n, gen, dtype=torch.float64))
    w = mix.weights
    assert bool(((weights - w).abs() <= 4 * torch.sqrt(w * (1 - w) / n)).all())
    n_k = (w * n)[:, None]
    var = mix.covariances.diagonal(dim1=-2, dim2=-1)
    assert bool(((means - mix.means).abs() <= 4 * torch.sqrt(var / n_k)).all())
    entry_se = torch.sqrt((var[:, :, None] * var[:, None, :] + mix.covariances**2) / n_k[:, :, None])
    assert bool(((covs - mix.covariances).abs() <= 4 * entry_se).all())


@pytest.mark.parametrize("target", [anisotropic, multiscale], ids=["aniso8d", "multiscale16d"])
def test_exact_samples_sit_at_the_floor_and_biased_ones_above_it(target, gen):
    """Exact samples score within 1.5x the floor (the mean over replicates; one draw fluctuates by
    about √(2/p) of the KL part, p = d + d(d+1)/2 parameters per component, and the TV part by its
    own binomial noise), while samples whose offsets from their mode are 10% too large score well
    above it: inflating a covariance by 1.21 adds ½(0.21 - log 1.21) ≈ 0.0097 nats per dimension."""
    mix, n = target(), 8000
    floor = metrics.component_fit_floor(mix, n, replicates=4, generator=gen)
    x, labels = mix.sample(n, gen, dtype=torch.float64, return_labels=True)
    exact = metrics.component_fit_divergence(mix, x)
    assert exact["total"] <= 1.5 * floor
    assert math.isclose(exact["total"], exact["kl"] + exact["tv"])
    inflated = mix.means[labels] + 1.1 * (x - mix.means[labels])
    biased = metrics.component_fit_divergence(mix, inflated)
    assert biased["kl"] - exact["kl"] >= 0.5 * 0.0097 * mix.dim
    assert biased["total"] >= 2 * floor
