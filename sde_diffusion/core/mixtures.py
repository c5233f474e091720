"""Gaussian mixtures: exact scores and log-densities under any linear SDE.

If p_0 = Σ_k w_k N(μ_k, C_k) and p_0t(x_t | x_0) = N(α(t) x_0, σ(t)² I), then
p_t = Σ_k w_k N(α μ_k, α² C_k + σ² I) is again a mixture, so score and log-density are exact at
every t. Each C_k = U_k diag(λ_k) U_kᵀ is diagonalised once (a symmetric eigendecomposition, which
doubles as the positive-definiteness check); then α² C_k + σ² I = U_k diag(α² λ_k + σ²) U_kᵀ for
every t at no further factorisation cost. Everything is computed in float64 with log-sum-exp.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional, Union

import torch

from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.utils import TimeLike, batch_time, check_finite

ArrayLike = Union[torch.Tensor, Sequence]


class GaussianMixture:
    """Σ_k w_k N(μ_k, C_k) in d dimensions with full covariances.

    Methods taking ``(x, t=None, sde=None)`` evaluate the data density when ``t`` is None and the
    density perturbed by ``sde`` to time ``t`` otherwise. ``x`` is ``(B, d)`` or any ``(B, ...)``
    whose trailing dimensions hold d numbers.
    """

    def __init__(self, weights: ArrayLike, means: ArrayLike, covariances: ArrayLike) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covariances, dtype=torch.float64)
        if mu.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(mu.shape)}")
        K, d = mu.shape
        if w.shape != (K,):
            raise ValueError(f"weights must have shape ({K},), got {tuple(w.shape)}")
        if cov.shape != (K, d, d):
            raise ValueError(f"covariances must have shape ({K}, {d}, {d}), got {tuple(cov.shape)}")
        for name, v in (("weights", w), ("means", mu), ("covariances", cov)):
            check_finite(v, name)
        if bool((w <= 0).any()):
            raise ValueError(f"weights must be positive, got {w.tolist()}")
        if not torch.allclose(cov, cov.transpose(1, 2), atol=1e-12, rtol=1e-10):
            raise ValueError("covariances must be symmetric")
        eigvals, eigvecs = torch.linalg.eigh(cov)
        if bool((eigvals <= 0).any()):
            raise ValueError(f"covariances must be positive definite; smallest eigenvalue {float(eigvals.min())}")
        self.weights = w / w.sum()
        self.log_weights = torch.log(self.weights)
        self.means = mu
        self.covariances = cov
        self.eigvals = eigvals  # (K, d)
        self.eigvecs = eigvecs  # (K, d, d), columns are eigenvectors
        self.scale_tril = eigvecs * eigvals.sqrt()[:, None, :]  # C_k = A Aᵀ (a square root)
        # Rotations into every component's eigenbasis as single matrices, so that the per-sample
        # work is two GEMMs: y_kj = Σ_d (x_d - α μ_kd) U_kdj = (x U)_kj - α (μ_k U_k)_j.
        K, d = mu.shape
        self._to_eigen = eigvecs.permute(1, 0, 2).reshape(d, K * d)  # [d, (k, j)] = U_kdj
        self._from_eigen = eigvecs.permute(0, 2, 1).reshape(K * d, d)  # [(k, j), d] = U_kdj
        self._means_eigen = torch.einsum("kd,kdj->kj", mu, eigvecs)
        self._ones = torch.ones(d, dtype=torch.float64)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Total covariance Σ_k w_k (C_k + μ_k μ_kᵀ) - μ μᵀ."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covariances + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(m, m)

    def sample(
        self,
        n: int,
        generator: Optional[torch.Generator] = None,
        dtype: torch.dtype = torch.float32,
        return_labels: bool = False,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """n draws (and, optionally, the component each came from)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[labels] + torch.einsum("nij,nj->ni", self.scale_tril[labels], z)
        x = x.to(dtype)
        return (x, labels) if return_labels else x

    # --- perturbed densities --------------------------------------------------------------------
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        check_finite(x, "x")
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ValueError(f"x holds {flat.shape[1]} numbers per sample, the mixture has d={self.dim}")
        return flat

    def _kernel(self, x: torch.Tensor, t: Optional[TimeLike], sde: Optional[LinearSDE]) -> tuple[torch.Tensor, torch.Tensor]:
        """α(t), σ(t) as float64 (B,) tensors (α = 1, σ = 0 for the data density)."""
        if t is None:
            one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
            return one, torch.zeros_like(one)
        if sde is None:
            raise ValueError("a time t needs the sde that perturbs the mixture")
        t = batch_time(t, x).to(torch.float64)
        return sde.alpha(t), sde.sigma(t)

    def _components(self, x: torch.Tensor, t: Optional[TimeLike], sde: Optional[LinearSDE]):
        """Per-component log N (B, K) and the whitened offsets y/v (B, K, d) in eigen-coordinates."""
        flat = self._flat(x)
        alpha, sigma = self._kernel(flat, t, sde)
        if bool((alpha == alpha[0]).all() and (sigma == sigma[0]).all()):
            alpha, sigma = alpha[:1], sigma[:1]  # one time for the batch: per-time terms once
        B, (K, d) = flat.shape[0], self.means.shape
        y = (flat @ self._to_eigen).view(B, K, d) - alpha[:, None, None] * self._means_eigen
        v = alpha[:, None, None] ** 2 * self.eigvals + sigma[:, None, None] ** 2  # (B or 1, K, d)
        w = y / v
        log_det = torch.log(v) @ self._ones
        log_n = -0.5 * ((y * w) @ self._ones + log_det + d * math.log(2 * math.pi))
        return log_n, w

    def component_log_prob(self, x: torch.Tensor, t: Optional[TimeLike] = None, sde: Optional[LinearSDE] = None) -> torch.Tensor:
        """log N(x; α μ_k, α² C_k + σ² I) for every component: (B, K)."""
        return self._components(x, t, sde)[0]

    def log_prob(self, x: torch.Tensor, t: Optional[TimeLike] = None, sde: Optional[LinearSDE] = None) -> torch.Tensor:
        """log p_t(x), float64 (B,)."""
        log_n = self.component_log_prob(x, t, sde)
        return torch.logsumexp(log_n + self.log_weights, dim=1)

    def responsibilities(self, x: torch.Tensor, t: Optional[TimeLike] = None, sde: Optional[LinearSDE] = None) -> torch.Tensor:
        """Posterior component probabilities p_t(k | x), float64 (B, K)."""
        return torch.softmax(self.component_log_prob(x, t, sde) + self.log_weights, dim=1)

    def score(self, x: torch.Tensor, t: Optional[TimeLike] = None, sde: Optional[LinearSDE] = None) -> torch.Tensor:
        """∇_x log p_t(x) = -Σ_k p_t(k|x) (α² C_k + σ² I)^{-1} (x - α μ_k), in x's shape and dtype."""
        log_n, whitened = self._components(x, t, sde)
        r = torch.softmax(log_n + self.log_weights, dim=1)
        grad = -(r[:, :, None] * whitened).reshape(r.shape[0], -1) @ self._from_eigen
        return grad.reshape(x.shape).to(x.dtype)

    def score_fn(self, sde: LinearSDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact score of the perturbed mixture as the ``score_fn(x, t)`` samplers take."""

        def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.score(x, t, sde)

        return score_fn

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable component of each sample under the data density: (B,) long."""
        return self.component_log_prob(x).add(self.log_weights).argmax(dim=1)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, d={self.dim})"
