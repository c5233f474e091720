"""Stock targets: analytic mixtures (exact score and density) and sample-only 2-D data sets.

``ring`` is the benchmark problem of the fast-solver anchors: 8 modes on a circle of radius 2,
per-mode std 0.1, weights ∝ 1, 2, ..., 8 (so the mean is not at the origin).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch

from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.registry import Registry


def ring(n_modes: int = 8, radius: float = 2.0, std: float = 0.1, weights: Optional[list[float]] = None) -> GaussianMixture:
    """Isotropic modes at angles 2πk/n_modes on a circle; weights ∝ 1..n_modes by default."""
    angles = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    w = torch.arange(1, n_modes + 1, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    cov = (std**2) * torch.eye(2, dtype=torch.float64).expand(n_modes, 2, 2).clone()
    return GaussianMixture(w, means, cov)


def anisotropic(dim: int = 8, n_modes: int = 4, seed: int = 0) -> GaussianMixture:
    """A fixed d-dimensional mixture with full, anisotropic covariances.

    Means ~ N(0, 4 I); each covariance is Q diag(λ) Qᵀ with a random rotation Q and eigenvalues
    log-spaced from 0.01 to 1 (condition number 100); weights ∝ 1..n_modes. Deterministic in ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(n_modes, dim, generator=g, dtype=torch.float64)
    eig = torch.logspace(-2, 0, dim, dtype=torch.float64)
    covs = []
    for _ in range(n_modes):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        covs.append(q @ torch.diag(eig) @ q.T)
    cov = torch.stack(covs)
    cov = 0.5 * (cov + cov.transpose(1, 2))
    return GaussianMixture(torch.arange(1, n_modes + 1, dtype=torch.float64), means, cov)


def multiscale(dim: int = 16, n_modes: int = 5, seed: int = 1) -> GaussianMixture:
    """A fixed d-dimensional mixture whose components span length scales from 0.02 to 1.

    Means ~ N(0, 4 I); each covariance is Q diag(s²) Qᵀ with a random rotation Q and standard
    deviations s log-spaced from 0.02 to 1 (condition number 2500); weights ∝ 1, 2, 4, ..., 2^(K-1).
    Deterministic in ``seed``. It is a held-out target: no sampler default was tuned on it.
    """
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(n_modes, dim, generator=g, dtype=torch.float64)
    var = torch.logspace(math.log10(0.02), 0.0, dim, dtype=torch.float64) ** 2
    covs = []
    for _ in range(n_modes):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        covs.append(q @ torch.diag(var) @ q.T)
    cov = torch.stack(covs)
    cov = 0.5 * (cov + cov.transpose(1, 2))
    return GaussianMixture(2.0 ** torch.arange(n_modes, dtype=torch.float64), means, cov)


Sampler = Callable[[int, Optional[torch.Generator]], torch.Tensor]
TOY_DATA: Registry[Sampler] = Registry("2-D data set")


@TOY_DATA.register("ring")
def ring_samples(n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    return ring().sample(n, generator)


@TOY_DATA.register("checkerboard")
def checkerboard(n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform on the dark squares of a 4×4 board on [-2, 2]²."""
    x1 = 4 * torch.rand(n, generator=generator) - 2
    offset = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 2
    x2 = torch.rand(n, generator=generator) + offset + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], dim=1)


@TOY_DATA.register("moons")
def moons(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.05) -> torch.Tensor:
    """Two interleaved half circles (as scikit-learn's make_moons), centred and scaled by 1.5."""
    upper = torch.rand(n, generator=generator) < 0.5
    angle = math.pi * torch.rand(n, generator=generator)
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.5
    return pts + noise * torch.randn(n, 2, generator=generator)


@TOY_DATA.register("swiss_roll")
def swiss_roll(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.05) -> torch.Tensor:
    """The 2-D swiss roll r(θ) = θ, θ ∈ [1.5π, 4.5π], scaled to about [-2, 2]²."""
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1) / 7.0
    return pts + noise * torch.randn(n, 2, generator=generator)
