"""Pieces every sampler shares: counted score calls, noise, progress bars, the final denoise."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Optional

import torch
from tqdm.auto import tqdm

from sde_diffusion.core.parameterization import data_from_score
from sde_diffusion.core.sde_lib import LinearSDE

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CountedScore:
    """Wraps ``score_fn`` and counts every call: ``nfe`` is exact by construction."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.score_fn(x, t)


def noise_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard normal noise of x's shape, dtype and device, drawn from ``generator``."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def progress_range(n: int, progress: bool, desc: str = "sampling") -> Iterable[int]:
    """``range(n)``, wrapped in a tqdm bar when ``progress`` is on."""
    return tqdm(range(n), desc=desc, leave=False) if progress else range(n)


def full_time(x: torch.Tensor, t: float) -> torch.Tensor:
    """A ``(B,)`` time tensor of value t in x's dtype."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def tweedie_denoise(sde: LinearSDE, score_fn: ScoreFn, x: torch.Tensor, t: float) -> torch.Tensor:
    """One final denoising step x̂_0 = (x + σ(t)² ∇log p_t(x)) / α(t) (Tweedie's formula),
    costing one score evaluation."""
    tt = full_time(x, t)
    alpha, sigma = sde.alpha(tt), sde.sigma(tt)
    return data_from_score(score_fn(x, tt), x, alpha, sigma)


def uniform_time_grid(sde: LinearSDE, steps: int, eps: float) -> list[float]:
    """``steps + 1`` times from T down to eps, uniform in t (Python floats, float64 accurate)."""
    return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64).tolist()
