"""The classic reverse-SDE sampler: Euler–Maruyama (Song et al. 2021)."""
from __future__ import annotations

from typing import Optional

import torch

from sde_diffusion.core.sde_lib import LinearSDE

from .common import ScoreFn
from .pc import PC_OPTIONS, pc
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
    """Euler–Maruyama on the reverse SDE, or Euler on the probability-flow ODE (Song et al. 2021, eqs. 6, 13).

    On ``steps`` (default N) uniform steps from T to eps, h = t_i - t_{i+1}:
      x ← x - h [f(t_i) x - c g(t_i)² s(x, t_i)] + g̃(t_i) √h z,   c = 1, g̃ = g (SDE);  c = ½, g̃ = 0 (ODE),
    that is ``pc`` with the ``euler_maruyama`` predictor and no corrector. ``denoise`` adds a final Tweedie
    step at eps (one more score evaluation).
    """
    options = {**PC_OPTIONS, "predictor": "euler_maruyama", "corrector": "none"}
    options.update(probability_flow=probability_flow, denoise=denoise)
    return pc(sde, score_fn, x, steps=steps, eps=eps, generator=generator, progress=progress, **options)
