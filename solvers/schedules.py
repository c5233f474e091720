"""Time discretisations of the fast solvers: step schedules, nodes (t, α, σ, λ) and the model's
predictions at a node.

A fast solver walks a decreasing grid t_0 = t_start > t_1 > ... > t_n = eps. Every schedule places
the nodes uniformly in a warped coordinate u(t), written once for all SDEs through λ(t) = log(α/σ)
and the "EDM noise level" σ̃ = σ/α = e^{-λ}:

  time_uniform  u = t                                  (DPM-Solver's ``time_uniform``)
  logsnr        u = λ(t)                               (DPM-Solver's ``logSNR``, Lu et al. 2022, §3.3)
  karras        u = σ̃(t)^{1/ρ}, ρ = 7 by default       (Karras et al. 2022, eq. 5)
  quadratic     u = √t                                 (DPM-Solver's ``time_quadratic``)

The grid is computed once in float64 and handed to the solvers as Python floats, so the sampling
loop does no time-validation syncs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

from sde_diffusion.core.parameterization import data_from_score, noise_from_score
from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn

from .common import full_time

#: ``warp(sde, t, rho) -> u`` with u monotone in t; nodes are uniform in u.
Warp = Callable[[LinearSDE, torch.Tensor, float], torch.Tensor]
#: Its inverse ``unwarp(sde, u, rho) -> t``.
Unwarp = Callable[[LinearSDE, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    """Nodes uniform in u = warp(t)."""

    warp: Warp
    unwarp: Unwarp


SCHEDULES: Registry[Schedule] = Registry("time-step schedule")
SCHEDULES.register("time_uniform")(Schedule(warp=lambda sde, t, rho: t, unwarp=lambda sde, u, rho: u))
SCHEDULES.register("logsnr")(Schedule(warp=lambda sde, t, rho: sde.lambda_(t), unwarp=lambda sde, u, rho: sde.t_of_lambda(u)))
SCHEDULES.register("karras")(
    Schedule(warp=lambda sde, t, rho: torch.exp(-sde.lambda_(t) / rho), unwarp=lambda sde, u, rho: sde.t_of_lambda(-rho * torch.log(u)))
)
SCHEDULES.register("quadratic")(Schedule(warp=lambda sde, t, rho: t.sqrt(), unwarp=lambda sde, u, rho: u**2))


@dataclass(frozen=True)
class Node:
    """A time t with the kernel's α(t), σ(t) and λ(t) = log(α/σ), as Python floats."""

    t: float
    alpha: float
    sigma: float
    lam: float

    @property
    def sigma_tilde(self) -> float:
        """The EDM noise level σ/α = e^{-λ} (x/α follows the VE-form PF-ODE in it)."""
        return self.sigma / self.alpha


def nodes(sde: LinearSDE, times: torch.Tensor) -> list[Node]:
    """The nodes at ``times`` (a 1-D tensor, computed in float64)."""
    t = times.to(torch.float64)
    log_alpha, sigma = sde.log_alpha(t), sde.sigma(t)
    columns = torch.stack([t, log_alpha.exp(), sigma, log_alpha - sigma.log()])  # λ = log α - log σ, as sde.lambda_
    return [Node(*v) for v in columns.T.tolist()]


def nodes_at_lambda(sde: LinearSDE, lams: list[float] | torch.Tensor) -> list[Node]:
    """The nodes where λ takes the values ``lams``."""
    t = sde.t_of_lambda(torch.as_tensor(lams, dtype=torch.float64)).clamp(0.0, sde.T)
    return nodes(sde, t)


def resolve_t_start(sde: LinearSDE, t_start: Optional[float], eps: float) -> float:
    """``t_start`` (None means T), checked to lie in (eps, T]."""
    t_start = sde.T if t_start is None else float(t_start)
    if not eps < t_start <= sde.T:
        raise ValueError(f"t_start must lie in (eps, T] = ({eps}, {sde.T}], got {t_start}")
    return t_start


def check_positive_eps(eps: float, method: str) -> None:
    """Exponential integrators and the λ-based schedules need λ(eps) finite, i.e. σ(eps) > 0."""
    if not eps > 0.0:
        raise ValueError(f"{method} needs eps > 0 (λ = +inf at σ = 0), got {eps}; use denoise=True to reach σ = 0")


def time_steps(
    sde: LinearSDE, steps: int, eps: float, schedule: str = "logsnr", t_start: Optional[float] = None, rho: float = 7.0
) -> torch.Tensor:
    """``steps + 1`` decreasing float64 times from ``t_start`` (None: T) to ``eps``, uniform in the
    schedule's warped coordinate; the two ends are exact."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a finite number > 0, got {rho}")
    if schedule != "time_uniform":
        check_positive_eps(eps, f"schedule {schedule!r}")
    spacing = SCHEDULES.get(schedule)
    t_start = resolve_t_start(sde, t_start, eps)
    u0, u1 = spacing.warp(sde, torch.tensor([t_start, eps], dtype=torch.float64), rho).tolist()
    t = spacing.unwarp(sde, torch.linspace(u0, u1, steps + 1, dtype=torch.float64), rho).clamp(eps, t_start)
    t[0], t[-1] = t_start, eps
    return t


def schedule_nodes(
    sde: LinearSDE, steps: int, eps: float, schedule: str, t_start: Optional[float], rho: float
) -> list[Node]:
    """The ``steps + 1`` nodes of ``time_steps``."""
    return nodes(sde, time_steps(sde, steps, eps, schedule, t_start, rho))


def half_way(sde: LinearSDE, grid: list[Node], schedule: str, rho: float) -> list[Node]:
    """The node half-way between each pair of neighbours of ``grid`` in the schedule's coordinate u;
    on the schedule's own n-step grid these are the odd nodes of its 2n-step grid."""
    spacing = SCHEDULES.get(schedule)
    ends = torch.tensor([[s.t, t.t] for s, t in zip(grid[:-1], grid[1:])], dtype=torch.float64)
    t = spacing.unwarp(sde, spacing.warp(sde, ends, rho).mean(dim=1), rho)
    return nodes(sde, torch.minimum(torch.maximum(t, ends[:, 1]), ends[:, 0]))


def check_grid(sde: LinearSDE, grid: torch.Tensor) -> torch.Tensor:
    """An explicit time grid as float64: 1-D, at least two times, finite, strictly decreasing, in [0, T]."""
    grid = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"an explicit schedule must be a 1-D sequence of at least 2 times, got shape {tuple(grid.shape)}")
    sde.check_time(grid, "schedule")
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"an explicit schedule must be strictly decreasing (t_start first, eps last), got {grid.tolist()}")
    return grid


def data_prediction(score_fn: ScoreFn, x: torch.Tensor, node: Node) -> torch.Tensor:
    """x̂_0(x, t) = (x + σ² s(x, t)) / α, Tweedie's formula (one score evaluation)."""
    return data_from_score(score_fn(x, full_time(x, node.t)), x, node.alpha, node.sigma)


def noise_prediction(score_fn: ScoreFn, x: torch.Tensor, node: Node) -> torch.Tensor:
    """ε̂(x, t) = -σ s(x, t) (one score evaluation)."""
    return noise_from_score(score_fn(x, full_time(x, node.t)), x, node.alpha, node.sigma)
