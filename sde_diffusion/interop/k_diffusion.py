"""Denoisers in k-diffusion's convention D(x, σ) ≈ E[x_0 | x_0 + σ n] (Karras et al. 2022, "EDM",
eq. 2; k-diffusion's ``external`` wrappers) as ``(sde, score_fn)``.

For a linear SDE with kernel x_t = α x_0 + σ ε, x_t/α = x_0 + (σ/α) ε is the VE-form state at noise
level σ̃ = σ/α, so

    x̂_0 = D(x/α, σ/α),   score = (α x̂_0 - x)/σ²          (Tweedie inverted)

for any of the toolkit's SDEs. Without one, the SDE is the VE SDE of the denoiser's trained range
[σ_min, σ_max] (its kernel std is the level D gets).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from sde_diffusion.core.parameterization import score_from_data
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.utils import append_dims, batch_time
from sde_diffusion.interop.common import check_level_range, check_output, ve_sde_for_levels

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DenoiserScore:
    """``score_fn(x, t)`` of a denoiser D(x, σ) under ``sde`` (module docstring); σ̃ = σ/α must lie in
    [sigma_min, sigma_max] when both are known."""

    def __init__(self, denoiser: Denoiser, sde: LinearSDE, sigma_min: Optional[float], sigma_max: Optional[float]) -> None:
        self.denoiser, self.sde = denoiser, sde
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x).to(torch.float64)
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        level = sigma / alpha
        if self.sigma_min is not None and self.sigma_max is not None:
            check_level_range(level, self.sigma_min, self.sigma_max)
        alpha, sigma = alpha.to(x.dtype), sigma.to(x.dtype)
        x0 = self.denoiser(x / append_dims(alpha, x.ndim), level.to(x.dtype))
        check_output(x0, x, "the denoiser")
        return score_from_data(x0, x, alpha, sigma)


def _level(denoiser: Denoiser, name: str, given: Optional[float]) -> Optional[float]:
    if given is not None:
        return float(given)
    value = getattr(denoiser, name, None)
    return None if value is None else float(value)


def from_k_diffusion(
    denoiser: Denoiser,
    sde: Optional[LinearSDE] = None,
    *,
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
    N: int = 1000,
) -> tuple[LinearSDE, DenoiserScore]:
    """``(sde, score_fn)`` of a denoiser D(x, σ) (module docstring).

    Args:
      denoiser: ``D(x, sigma)`` with ``sigma`` a (B,) tensor, e.g. a k-diffusion ``external`` wrapper.
      sde: the SDE to sample under (default: ``VESDE(sigma_min, sigma_max, N)``).
      sigma_min, sigma_max: the trained noise range (default: the denoiser's ``sigma_min`` /
        ``sigma_max`` attributes, as k-diffusion's discrete schedules have); levels outside it are errors.
      N: steps of the default VE SDE's chain.
    """
    lo, hi = _level(denoiser, "sigma_min", sigma_min), _level(denoiser, "sigma_max", sigma_max)
    if sde is None:
        if lo is None or hi is None:
            raise ValueError("without an sde, from_k_diffusion needs sigma_min and sigma_max (or a denoiser that has them)")
        sde = ve_sde_for_levels(lo, hi, N)
    return sde, DenoiserScore(denoiser, sde, lo, hi)
