"""What the wrappers share: the VE SDE of a model trained on noise levels [σ_min, σ_max] and the
checks on a foreign network's output."""
from __future__ import annotations

import math

import torch

from sde_diffusion.core.sde_lib import VESDE


def ve_sde_for_levels(sigma_min: float, sigma_max: float, N: int) -> VESDE:
    """The VE SDE whose kernel std √(σ_n(t)² - σ_min²), σ_n(t) = σ_min (σ_max/σ_min)^t, is the noise
    level a model trained on [σ_min, σ_max] is conditioned on; its ``default_eps`` is the time where
    that std reaches σ_min, t_min = log 2 / (2 log(σ_max/σ_min)), the least noisy level the model knows."""
    sde = VESDE(sigma_min=sigma_min, sigma_max=sigma_max, N=N)
    sde.default_eps = math.log(2.0) / (2.0 * math.log(sigma_max / sigma_min))
    return sde


def check_level_range(sigma: torch.Tensor, sigma_min: float, sigma_max: float, rtol: float = 1e-4) -> None:
    """Noise levels must lie in the trained range [σ_min, σ_max] (to ``rtol``, for float32 times)."""
    lo, hi = float(sigma.min()), float(sigma.max())
    if lo < sigma_min * (1 - rtol) or hi > sigma_max * (1 + rtol):
        raise ValueError(
            f"noise level {lo if lo < sigma_min * (1 - rtol) else hi:.6g} is outside the model's range"
            f" [{sigma_min:.6g}, {sigma_max:.6g}]; sample with eps >= the SDE's default_eps"
        )


def check_output(out: torch.Tensor, x: torch.Tensor, who: str) -> None:
    """A model output must have the input's shape and be finite."""
    if out.shape != x.shape:
        raise ValueError(f"{who} returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{who} returned {int((~torch.isfinite(out)).sum())} non-finite values")
