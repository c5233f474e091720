"""Classic reverse-SDE samplers (Song et al. 2021)."""
from __future__ import annotations

import math
from typing import Optional

import torch

from sde_diffusion.sde_lib import LinearSDE
from sde_diffusion.utils import append_dims

from .common import ScoreFn, full_time, noise_like, progress_range, tweedie_denoise, uniform_time_grid
from .registry import register_method


@register_method("euler_maruyama", options={"probability_flow": False, "denoise": True})
def euler_maruyama(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *,
    steps: Optional[int],
    eps: float,
    generator: Optional[torch.Generator],
    progress: bool,
    probability_flow: bool,
    denoise: bool,
) -> torch.Tensor:
    """Euler–Maruyama on the reverse SDE (or, with probability_flow, Euler on the PF-ODE).

    With h = t_i - t_{i+1} > 0 on a uniform grid from T to eps (Song et al. 2021, eqs. 6, 13):
      x ← x - h [f(t_i) x - c g(t_i)² s(x, t_i)] + g̃(t_i) √h z,   c = 1, g̃ = g (SDE); c = ½, g̃ = 0 (ODE).
    ``denoise`` adds a final Tweedie step at eps (one more score evaluation).
    """
    steps = steps or sde.N
    ts = uniform_time_grid(sde, steps, eps)
    grid = torch.tensor(ts, dtype=torch.float64)
    f, g2 = sde.f(grid[:-1]).tolist(), sde.g2(grid[:-1]).tolist()
    c = 0.5 if probability_flow else 1.0
    for i in progress_range(steps, progress):
        h = ts[i] - ts[i + 1]
        score = score_fn(x, full_time(x, ts[i]))
        x = x - h * (f[i] * x - c * g2[i] * score)
        if not probability_flow:
            x = x + math.sqrt(g2[i] * h) * noise_like(x, generator)
    return tweedie_denoise(sde, score_fn, x, eps) if denoise else x
