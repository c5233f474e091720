"""The discrete chains the continuous SDEs generalise: DDPM (Ho et al. 2020) and SMLD/NCSN
(Song & Ermon 2019).

Indices are 0-based: array entry ``i`` is DDPM step ``k = i + 1`` (``ᾱ_0 := 1`` is the value
"before" step 1). Every array is float64.
"""
from __future__ import annotations

import torch

from sde_diffusion.core.utils import append_dims


class DDPMChain:
    """The DDPM forward chain q(x_k | x_{k-1}) = N(√(1-β_k) x_{k-1}, β_k I).

    Arrays (Ho et al. 2020, eqs. 4, 6, 7; checklist FWD-1, FWD-2, FWD-6):
      alphas = 1 - β_k,  alphas_cumprod = ᾱ_k = Π_{j≤k} α_j,  alphas_cumprod_prev = ᾱ_{k-1} (ᾱ_0 = 1),
      posterior q(x_{k-1} | x_k, x_0) = N(coef_x0·x_0 + coef_xt·x_k, β̃_k I) with
        coef_x0 = √ᾱ_{k-1} β_k / (1 - ᾱ_k),
        coef_xt = √α_k (1 - ᾱ_{k-1}) / (1 - ᾱ_k),
        β̃_k    = (1 - ᾱ_{k-1}) β_k / (1 - ᾱ_k).
    """

    def __init__(self, betas: torch.Tensor) -> None:
        betas = betas.to(torch.float64)
        if bool(((betas <= 0) | (betas >= 1)).any()):
            raise ValueError(
                f"DDPM betas must lie in (0, 1), got range [{float(betas.min())}, {float(betas.max())}];"
                " for the VP SDE this needs beta_max / N < 1"
            )
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_1m_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        one_minus = 1.0 - self.alphas_cumprod
        self.posterior_mean_coef_x0 = self.alphas_cumprod_prev.sqrt() * betas / one_minus
        self.posterior_mean_coef_xt = self.alphas.sqrt() * (1.0 - self.alphas_cumprod_prev) / one_minus
        self.posterior_variance = (1.0 - self.alphas_cumprod_prev) * betas / one_minus

    def __len__(self) -> int:
        return self.betas.shape[0]

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_k, σ_k) of q(x_k | x_0) = N(α_k x_0, σ_k² I): √ᾱ_k and √(1 - ᾱ_k), k = 1..N."""
        return self.sqrt_alphas_cumprod, self.sqrt_1m_alphas_cumprod

    def discretize(self, x: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward step x_{k} = x_{k-1} + f + G z with f = (√(1-β_k) - 1) x, G = √β_k."""
        beta = self.betas.to(x.device)[i].to(x.dtype)
        f = append_dims(torch.sqrt(1.0 - beta) - 1.0, x.ndim) * x
        return f, beta.sqrt()

    def ancestral_step(
        self, x: torch.Tensor, score: torch.Tensor, i: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM ancestral step with σ_k² = β_k written with the score (Song et al. 2021, eq. 47):
        x_{k-1} = (x_k + β_k s) / √(1-β_k) + √β_k z. Returns (x, mean)."""
        beta = append_dims(self.betas.to(x.device)[i].to(x.dtype), x.ndim)
        mean = (x + beta * score) / torch.sqrt(1.0 - beta)
        return mean + beta.sqrt() * noise, mean

    def posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, i: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{k-1} | x_k, x_0) (Ho et al. 2020, eq. 7)."""
        c0 = append_dims(self.posterior_mean_coef_x0.to(xt.device)[i].to(xt.dtype), xt.ndim)
        ct = append_dims(self.posterior_mean_coef_xt.to(xt.device)[i].to(xt.dtype), xt.ndim)
        return c0 * x0 + ct * xt, self.posterior_variance.to(xt.device)[i].to(xt.dtype)


class SMLDChain:
    """The SMLD/NCSN chain on geometric noise levels σ_i = exp(linspace(log σ_min, log σ_max, N)),
    x_i = x_{i-1} + √(σ_i² - σ_{i-1}²) z with σ_{-1} := 0 (Song et al. 2021, eq. 8)."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        self.sigmas = sigmas.to(torch.float64)
        self.sigmas_prev = torch.cat([self.sigmas.new_zeros(1), self.sigmas[:-1]])

    def __len__(self) -> int:
        return self.sigmas.shape[0]

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_i, σ_i) of the perturbation at level i: 1 and σ_i."""
        return torch.ones_like(self.sigmas), self.sigmas

    def discretize(self, x: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward step: f = 0, G = √(σ_i² - σ_{i-1}²)."""
        s, sp = self.sigmas.to(x.device)[i], self.sigmas_prev.to(x.device)[i]
        return torch.zeros_like(x), torch.sqrt(s**2 - sp**2).to(x.dtype)

    def ancestral_step(
        self, x: torch.Tensor, score: torch.Tensor, i: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SMLD ancestral step (Song et al. 2021, eq. 47):
        x_{i-1} = x_i + (σ_i² - σ_{i-1}²) s + √(σ_{i-1}² (σ_i² - σ_{i-1}²) / σ_i²) z."""
        s = self.sigmas.to(x.device)[i].to(x.dtype)
        sp = self.sigmas_prev.to(x.device)[i].to(x.dtype)
        mean = x + append_dims(s**2 - sp**2, x.ndim) * score
        std = torch.sqrt(sp**2 * (s**2 - sp**2) / s**2)
        return mean + append_dims(std, x.ndim) * noise, mean
