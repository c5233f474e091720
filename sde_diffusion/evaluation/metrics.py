"""Sample-quality metrics for targets with known structure (used by tests and benchmarks).

``energy_distance`` is the V-statistic D² = 2 E|X-Y| - E|X-X'| - E|Y-Y'| with all pairs
(diagonals included). For two independent samples of sizes n and m from the *same* law its
expectation is the noise floor E|X-X'| (1/n + 1/m) > 0 (the diagonal zeros remove a fraction 1/n
of the E|X-X'| term), so "within k× the noise floor" is a meaningful, positive criterion.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from sde_diffusion.core.mixtures import GaussianMixture


def _mean_pairwise_distance(x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        total = total + torch.cdist(x[i : i + chunk], y).sum()
    return total / (x.shape[0] * y.shape[0])


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance (V-statistic) between samples x (n, d) and y (m, d)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    y = y.reshape(y.shape[0], -1).to(torch.float64)
    d = 2 * _mean_pairwise_distance(x, y) - _mean_pairwise_distance(x, x) - _mean_pairwise_distance(y, y)
    return float(d)


def energy_noise_floor(samples: torch.Tensor, n: int, m: int) -> float:
    """Expected energy distance between independent samples of sizes n and m from the law of
    ``samples``: E|X-X'| (1/n + 1/m)."""
    s = samples.reshape(samples.shape[0], -1).to(torch.float64)
    half = s.shape[0] // 2
    return float(_mean_pairwise_distance(s[:half], s[half:])) * (1.0 / n + 1.0 / m)


def mode_weights(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Fraction of samples assigned (most probable component) to each mode: (K,) float64."""
    counts = torch.bincount(mixture.assign(x), minlength=mixture.n_components)
    return counts.to(torch.float64) / x.shape[0]


def mode_weight_tv(mixture: GaussianMixture, x: torch.Tensor) -> float:
    """Total variation ½ Σ_k |ŵ_k - w_k| between empirical and true mode weights."""
    return float(0.5 * (mode_weights(mixture, x) - mixture.weights).abs().sum())


def _whitened_offsets(mixture: GaussianMixture, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    diff = flat - mixture.means[labels]
    y = torch.einsum("bd,bdj->bj", diff, mixture.eigvecs[labels])
    return y / mixture.eigvals[labels].sqrt()


def spread_ratio(mixture: GaussianMixture, x: torch.Tensor) -> float:
    """Per-mode spread relative to the truth: RMS of the whitened offset from the assigned mode
    divided by 1 (its true value). Below 1 means under-dispersed (e.g. a too-early final denoise)."""
    y = _whitened_offsets(mixture, x, mixture.assign(x))
    return float(y.pow(2).mean().sqrt())


def off_manifold_fraction(mixture: GaussianMixture, x: torch.Tensor, n_std: float = 4.0) -> float:
    """Fraction of samples farther than ``n_std`` whitened standard deviations (per-axis RMS) from
    every mode."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    dists = []
    for k in range(mixture.n_components):
        labels = torch.full((flat.shape[0],), k, dtype=torch.long)
        y = _whitened_offsets(mixture, flat, labels)
        dists.append(y.pow(2).mean(dim=1).sqrt())
    nearest = torch.stack(dists, dim=1).min(dim=1).values
    return float((nearest > n_std).to(torch.float64).mean())


def distance_to_reference(x: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Median and RMS per-sample Euclidean distance between matched samples."""
    d = (x.reshape(x.shape[0], -1).to(torch.float64) - reference.reshape(reference.shape[0], -1).to(torch.float64)).norm(dim=1)
    return {"median": float(d.median()), "rms": float(d.pow(2).mean().sqrt())}


def mode_switch_fraction(mixture: GaussianMixture, x: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of matched samples whose assigned mode differs from the reference's."""
    return float((mixture.assign(x) != mixture.assign(reference)).to(torch.float64).mean())


def sample_tv_bound(mixture: GaussianMixture, n: int, z: float = 4.0) -> float:
    """A z-sigma bound on the mode-weight TV of n exact samples: ½ Σ_k z √(w_k (1-w_k) / n)."""
    w = mixture.weights
    return float(0.5 * z * torch.sqrt(w * (1 - w) / n).sum())


def component_moments(mixture: GaussianMixture, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-component weights, means and covariances of samples x, each sample shared among the
    components by its true posterior responsibility r_k(x) = p(k | x) under the data density:

        ŵ_k = mean_i r_ik,  μ̂_k = Σ_i r_ik x_i / Σ_i r_ik,  Ĉ_k = Σ_i r_ik (x_i - μ̂_k)(x_i - μ̂_k)ᵀ / Σ_i r_ik.

    For exact samples these are consistent for (w_k, μ_k, C_k) however much the components overlap,
    since E_p[r_k(X) g(X)] = w_k E[g(X) | k]. Returns (K,), (K, d), (K, d, d), float64."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    r = mixture.responsibilities(flat)
    mass = r.sum(dim=0)
    means = (r.T @ flat) / mass[:, None]
    centred = flat[None] - means[:, None]  # (K, n, d)
    covs = torch.einsum("nk,kni,knj->kij", r, centred, centred) / mass[:, None, None]
    return mass / flat.shape[0], means, covs


def gaussian_kl(mean: torch.Tensor, cov: torch.Tensor, ref_mean: torch.Tensor, ref_cov: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, cov) ‖ N(ref_mean, ref_cov)) = ½ [tr(C⁻¹Ĉ) + (μ - μ̂)ᵀ C⁻¹ (μ - μ̂) - d + log det C - log det Ĉ]
    for batches of d-dimensional Gaussians (leading dimensions broadcast); +inf where cov is singular."""
    d = mean.shape[-1]
    ref_chol = torch.linalg.cholesky(ref_cov)
    diff = (ref_mean - mean).unsqueeze(-1)
    solved = torch.cholesky_solve(torch.cat([cov, diff], dim=-1), ref_chol)
    trace = solved[..., :d].diagonal(dim1=-2, dim2=-1).sum(-1)
    mahalanobis = (diff * solved[..., d:]).sum(dim=(-2, -1))
    sign, logdet = torch.linalg.slogdet(cov)
    ref_logdet = 2 * ref_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    kl = 0.5 * (trace + mahalanobis - d + ref_logdet - logdet)
    return torch.where(sign > 0, kl, torch.full_like(kl, math.inf))


def component_fit_divergence(mixture: GaussianMixture, x: torch.Tensor) -> dict[str, float]:
    """How far samples x are from the mixture, component by component: the weight-averaged KL
    divergence Σ_k w_k KL(N(μ̂_k, Ĉ_k) ‖ N(μ_k, C_k)) of the responsibility-weighted Gaussian fits
    (``component_moments``) from the true components, and the mode-weight total variation
    ½ Σ_k |ŵ_k - w_k|. ``total`` is their sum. Unlike an energy distance it resolves a small bias in
    a component's spread or orientation (a discretisation's signature) in any dimension."""
    weights, means, covs = component_moments(mixture, x)
    kl = float(mixture.weights @ gaussian_kl(means, covs, mixture.means, mixture.covariances))
    tv = float(0.5 * (weights - mixture.weights).abs().sum())
    return {"kl": kl, "tv": tv, "total": kl + tv}


def component_fit_floor(mixture: GaussianMixture, n: int, replicates: int = 10, generator: Optional[torch.Generator] = None) -> float:
    """The expected ``component_fit_divergence(...)['total']`` of n exact samples (its sampling
    noise), the mean over ``replicates`` independent draws."""
    totals = [component_fit_divergence(mixture, mixture.sample(n, generator, dtype=torch.float64))["total"] for _ in range(replicates)]
    return sum(totals) / replicates
