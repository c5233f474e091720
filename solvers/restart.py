"""The Restart sampler (Xu, Deng, Cheng, Tian, Liu, Jaakkola 2023, "Restart Sampling for Improving
Generative Processes", NeurIPS, Alg. 1).

A deterministic pass of Heun's method (``edm.Heun``: x̃ = x/α in σ̃ = σ/α) with, when it reaches the
restart interval's lower level σ̃_min, K restarts: each adds forward noise in one jump,

    x̃ ← x̃ + S_noise √(σ̃_max² - σ̃_min²) z,       z ~ N(0, I),

the exact forward transition of x̃ from σ̃_min to σ̃_max, and then integrates the probability-flow
ODE back to σ̃_min with Heun steps on a Karras grid. The noise contracts the errors the ODE
accumulated above σ̃_min (the paper's Thm. 2), while the ODE keeps the small discretisation error
of deterministic steps.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .common import Run, noise_like
from .edm import Heun, midpoints, second_order_step
from .grid import grid_options, run_grid
from .schedules import Node, nodes_at_lambda, schedule_nodes
from .spec import FIXED_GRID, POSITIVE_EPS, integer, non_negative, positive, register_method


class Restart(Heun):
    """Heun on the main grid; after the step that reaches the restart level, the K restarts."""

    def __init__(self, run: Run, grid: list[Node], restart_min: float, restart_max: float, restart_steps: int,
                 restarts: int, s_noise: float, back_rho: float) -> None:
        super().__init__(run, grid)
        # The restart level: the main node (after the first) nearest to restart_min in log σ̃.
        self.at = min(range(1, len(grid)), key=lambda i: abs(math.log(grid[i].sigma_tilde / restart_min)))
        low, top_level = grid[self.at], min(restart_max, grid[0].sigma_tilde)
        self.restarts = restarts if top_level > low.sigma_tilde else 0
        self.jump = s_noise * math.sqrt(max(top_level**2 - low.sigma_tilde**2, 0.0))
        if self.restarts:
            (top,) = nodes_at_lambda(run.sde, [-math.log(top_level)])
            self.back = schedule_nodes(run.sde, restart_steps, low.t, "karras", top.t, back_rho)
            self.back_mids = midpoints(run.sde, self.back[:-1], self.back[1:])

    def step(self, i: int, x_tilde: torch.Tensor) -> torch.Tensor:
        x_tilde = super().step(i, x_tilde)
        if i + 1 != self.at:
            return x_tilde
        for _ in range(self.restarts):
            x_tilde = x_tilde + self.jump * noise_like(x_tilde, self.run.generator)
            for j in range(len(self.back) - 1):
                x_tilde = second_order_step(self.score, x_tilde, self.back[j], self.back[j + 1], self.back_mids[j])
        return x_tilde


def check_interval(options: dict[str, Any]) -> None:
    if not options["restart_min"] < options["restart_max"]:
        raise ValueError(f"restart_min must be < restart_max, got {options['restart_min']} and {options['restart_max']}")


@register_method(
    "restart",
    FIXED_GRID,
    options={"restart_min": positive(0.06), "restart_max": positive(0.30), "restart_steps": integer(2), "restarts": integer(2, low=0),
             "s_noise": non_negative(1.0), **grid_options("karras")},
    default_steps=17,
    deterministic=lambda options: options["restarts"] == 0 or options["s_noise"] == 0.0,
    nfe=lambda steps, options: 2 * steps + 2 * options["restarts"] * options["restart_steps"] + int(options["denoise"]),
    requires=(POSITIVE_EPS,),
    check=check_interval,
)
def restart(run: Run, x: torch.Tensor, *, restart_min: float, restart_max: float, restart_steps: int, restarts: int,
            s_noise: float, **grid: Any) -> torch.Tensor:
    """Restart sampling (Xu et al. 2023, Alg. 1): Heun on the main grid (as ``heun``); at the main
    node nearest to σ̃ = ``restart_min`` (the reference snaps t_min to the grid), ``restarts`` times:
    jump to σ̃ = ``restart_max`` (capped at σ̃(t_start)) with fresh noise, then ``restart_steps``
    Heun steps back on a Karras grid of Karras' ``rho``. NFE = 2 · steps
    + 2 · restarts · restart_steps (+1 with ``denoise``). Defaults: the paper's CIFAR-10 VP interval
    [0.06, 0.30] with 3 grid points (2 steps) and K = 2; S_noise = 1 is exact.
    """
    return run_grid(Restart, run, x, restart_min=restart_min, restart_max=restart_max, restart_steps=restart_steps,
                    restarts=restarts, s_noise=s_noise, back_rho=grid["rho"], **grid)
