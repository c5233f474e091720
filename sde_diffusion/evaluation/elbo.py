"""The discrete-time variational bound of the DDPM chain: an independent lower bound on the
log-likelihood, to cross-check the probability-flow ODE.

For the chain q(x_k | x_{k-1}) = N(√(1-β_k) x_{k-1}, β_k I), k = 1..N, of a VP-type SDE (Ho et al.
2020, eq. 5; checklist TRN-1, TRN-2):

    -log p(x_0) ≤ L_vlb = L_N + Σ_{k=2}^N L_{k-1} + L_0,
    L_N     = KL(q(x_N | x_0) ‖ N(0, I)),
    L_{k-1} = E_q KL(q(x_{k-1} | x_k, x_0) ‖ p(x_{k-1} | x_k)),
    L_0     = -E_q log p(x_0 | x_1).

The reverse model p(x_{k-1} | x_k) = N(μ̃_k(x_k, x̂_0), σ_k² I), σ_k² = β̃_k or β_k, has the mean
of the true posterior q(x_{k-1} | x_k, x_0) (``DDPMChain.posterior``) with x_0 replaced by Tweedie's
x̂_0 = (x_k + (1 - ᾱ_k) s)/√ᾱ_k, s the score at the continuous time t_k whose half log-SNR is that of
step k, λ(t_k) = ½ log(ᾱ_k/(1 - ᾱ_k)). The decoder p(x_0 | x_1) = N(x̂_0(x_1), β_1 I) is a continuous
density, or, for data on a grid of K levels, discretised into the bins with open-ended outer
bins (Ho et al. 2020, eq. 13; checklist LIK-2).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

from sde_diffusion.core.discrete import DDPMChain
from sde_diffusion.core.parameterization import data_from_score
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import append_dims, check_finite, check_positive_int, sum_except_batch


def gaussian_kl(mean_q: torch.Tensor, var_q: torch.Tensor, mean_p: torch.Tensor, var_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, var_q) ‖ N(mean_p, var_p)) per coordinate (checklist LIK-5, diagonal case):
    ½ [log(var_p/var_q) - 1 + var_q/var_p + (mean_q - mean_p)²/var_p]."""
    return 0.5 * (torch.log(var_p / var_q) - 1.0 + var_q / var_p + (mean_q - mean_p) ** 2 / var_p)


def discretized_gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, levels: int, low: float, high: float
) -> torch.Tensor:
    """log ∫_bin N(v; mean, std²) dv per coordinate, for x at the centre of one of the K bins of width
    Δ = (high - low)/K that tile [low, high] (the ``datasets`` convention, whose dequantisation draws
    uniformly over the same bins), with the outer bins open to ±∞ (Ho et al. 2020, eq. 13).

    log(Φ(b) - Φ(a)) is evaluated as log Φ(b) + log1p(-Φ(a)/Φ(b)) on the lower half-line and by the
    symmetry Φ(b) - Φ(a) = Φ(-a) - Φ(-b) on the upper one, so neither tail cancels.
    """
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    width = (high - low) / levels
    idx = torch.floor((x - low) / width)
    if bool(((idx < 0) | (idx > levels - 1)).any()) or not torch.allclose(x, low + width * (idx + 0.5), atol=1e-4 * width):
        raise ValueError(f"x must lie at the bin centres low + (v + 1/2)(high - low)/K of {levels} levels on [{low}, {high}]")
    inf = torch.full_like(x, math.inf)
    lower = torch.where(idx == 0, -inf, (x - width / 2 - mean) / std)
    upper = torch.where(idx == levels - 1, inf, (x + width / 2 - mean) / std)
    flip = lower > 0
    a, b = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_b = torch.special.log_ndtr(b)
    return log_b + torch.log1p(-torch.exp(torch.special.log_ndtr(a) - log_b))


@dataclass
class VLB:
    """The terms of -L_vlb per sample (B,), in nats: prior L_N, diffusion Σ L_{k-1}, decoder L_0."""

    prior: torch.Tensor
    diffusion: torch.Tensor
    decoder: torch.Tensor

    @property
    def nll(self) -> torch.Tensor:
        """L_vlb, an upper bound on -log p(x_0)."""
        return self.prior + self.diffusion + self.decoder

    @property
    def elbo(self) -> torch.Tensor:
        """-L_vlb, a lower bound on log p(x_0)."""
        return -self.nll


#: The reverse-process variance choices of Ho et al. (2020, §3.2), per chain index.
VARIANCES: dict[str, Callable[[DDPMChain], torch.Tensor]] = {
    "small": lambda chain: chain.posterior_variance,
    "large": lambda chain: chain.betas,
}


def _per_coord(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return append_dims(v, x.ndim).expand_as(x)


def _ddpm_chain(sde: LinearSDE) -> DDPMChain:
    if not isinstance(sde.chain, DDPMChain):
        raise ValueError(f"the DDPM bound needs an SDE with a DDPM chain (vp, cosine_vp), got {sde!r}")
    return sde.chain


def vlb(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x0: torch.Tensor,
    *,
    levels: Optional[int] = None,
    low: float = -1.0,
    high: float = 1.0,
    n_terms: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    variance: Optional[str] = None,
) -> VLB:
    """The variational bound (module docstring) of x0, each expectation over q by one draw.

    Args:
      levels, low, high: data at the centres of ``levels`` bins tiling [low, high] get the
        discretised decoder (a bound on the log-probability of the bin); None gives the continuous
        decoder (a bound on the log-density).
      n_terms: None sums all N - 1 diffusion terms (N score calls); an integer m estimates the sum
        without bias as (N - 1)/m Σ of m terms at steps k ~ U{2..N} drawn per sample (m calls).
      variance: the reverse variance σ_k², ``"small"`` = β̃_k or ``"large"`` = β_k (Ho et al. 2020,
        §3.2: optimal for a point-mass x_0 resp. for x_0 ~ N(0, I)); by default ``"small"`` for grid
        data and ``"large"`` for continuous data. At noise far below the data's scale grid points
        are point masses (true reverse variance β̃_k) and continuous data are broad (true variance
        ≈ β_k); as 1 - ᾱ_k ≈ kβ there, r_k = β_k/β̃_k ≈ k/(k - 1), and the mismatched choice costs
        Σ_k ½(r_k - 1 - log r_k) ≈ ¼ Σ_k 1/k² ≈ 0.41 nats per dimension, whatever N.
    """
    chain = _ddpm_chain(sde)
    variance = variance or ("large" if levels is None else "small")
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; known: {', '.join(VARIANCES)}")
    check_finite(x0, "x0")
    if n_terms is not None:
        check_positive_int(n_terms, "n_terms")
    abar, var_model = chain.alphas_cumprod.to(x0), VARIANCES[variance](chain).to(x0)
    times = sde.chain_times().to(x0)
    n, batch = len(chain), x0.shape[0]

    def noisy(i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_k ~ q(x_k | x_0) at chain index i = k - 1, and the model's x̂_0 there."""
        a, s = abar[i].sqrt(), (1.0 - abar[i]).sqrt()
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        xk = append_dims(a, x0.ndim) * x0 + append_dims(s, x0.ndim) * noise
        return xk, data_from_score(score_fn(xk, times[i]), xk, a, s)

    def diffusion_term(i: torch.Tensor) -> torch.Tensor:
        xk, x0_hat = noisy(i)
        mean_q, var_q = chain.posterior(x0, xk, i)
        mean_p, var_p = chain.posterior(x0_hat, xk, i)[0], var_model[i]
        return sum_except_batch(gaussian_kl(mean_q, _per_coord(var_q, x0), mean_p, _per_coord(var_p, x0)))

    if n_terms is None:
        steps = [torch.full((batch,), i, dtype=torch.long, device=x0.device) for i in range(1, n)]
        diffusion = torch.stack([diffusion_term(i) for i in steps]).sum(dim=0)
    else:
        steps = [torch.randint(1, n, (batch,), generator=generator, device=x0.device) for _ in range(n_terms)]
        diffusion = (n - 1) * torch.stack([diffusion_term(i) for i in steps]).mean(dim=0)

    first = torch.zeros(batch, dtype=torch.long, device=x0.device)
    x1, x0_hat = noisy(first)
    mean, _ = chain.posterior(x0_hat, x1, first)
    std = chain.betas[0].sqrt().to(x0)
    if levels is None:
        log_dec = -0.5 * ((x0 - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    else:
        log_dec = discretized_gaussian_log_prob(x0, mean, std.expand_as(x0), levels, low, high)

    prior = gaussian_kl(abar[-1].sqrt() * x0, (1.0 - abar[-1]).expand_as(x0), torch.zeros_like(x0), torch.ones_like(x0))
    return VLB(prior=sum_except_batch(prior), diffusion=diffusion, decoder=-sum_except_batch(log_dec))
