"""EDM samplers (Karras et al. 2022): Heun's method (Alg. 1) and the stochastic sampler (Alg. 2).

Both run on x̃ = x/α in the noise level σ̃ = σ/α = e^{-λ}, where the PF-ODE of every linear SDE
becomes EDM's dx̃/dσ̃ = (x̃ - D(x̃; σ̃))/σ̃ with the denoiser D = x̂_0 (their σ(t) = t, s(t) = 1). The
final denoise is EDM's Euler step to σ̃ = 0, x̃ + (0 - σ̃)(x̃ - D)/σ̃ = D.

Stiff steps. Written with the denoiser, a Heun step σ̃_s → σ̃_t with r = σ̃_t/σ̃_s is

    x̃_t = r x̃ + (1 - r) [D' + (1/(2r) - 1)(D' - D)],  D = D(x̃; σ̃_s),  D' = D(x̃'; σ̃_t),

a convex combination of x̃ and the two denoised estimates only while r ≥ 1/2; below, the trapezoidal
corrector (A- but not L-stable) extrapolates past D' by (1/(2r) - 1)(D' - D). Where the two
estimates differ, i.e. where a step crosses the levels at which the modes separate, a large step
throws samples off the data (few-step grids have r well below 1/2 on most steps; README, "Fast
solvers"). On steps with r < ``STIFF_RATIO`` = 1/2 both samplers take the exponential midpoint step
instead (DPM-Solver++(2S) with r₁ = 1/2, Lu et al. 2022): Euler to the node m half-way in
λ = -log σ̃, then

    x̃_t = r x̃ + (1 - r) D(x̃_m; σ̃_m),

second order as well, with the same two evaluations, and always a convex combination of x̃ and a
denoised estimate. Steps with r ≥ 1/2, e.g. all but the last few of EDM's 18-level Karras grid from
80 to 0.002, are Karras et al.'s Heun steps.

Small budgets. With fewer than ``MIN_SECOND_ORDER_STEPS`` = 3 steps, each step spans several e-folds
of σ̃ over which no second-order step from one or two levels tracks x̂_0, so ``heun`` spends each
step's two evaluations on two Euler (DDIM) steps through the node half-way in the schedule's
coordinate: on a named schedule this is DDIM on its 2n-step grid, the lower order for a budget too
small for the nominal one, as in DPM-Solver's order schedule (Lu et al. 2022, §3.4).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn

from .common import Run, noise_like
from .grid import GridStepper, grid_nfe, grid_options, run_grid
from .schedules import Node, data_prediction, half_way, nodes_at_lambda, noise_prediction
from .spec import FIXED_GRID, POSITIVE_EPS, non_negative, register_method

#: Fewer Heun steps than this take two Euler steps each (module docstring, "Small budgets").
MIN_SECOND_ORDER_STEPS = 3
#: A step σ̃_s → σ̃_t with σ̃_t < STIFF_RATIO · σ̃_s is stiff: Heun's corrector would extrapolate past
#: D(x̃'; σ̃_t) by more than its distance to D(x̃; σ̃_s).
STIFF_RATIO = 0.5


def denoiser(score_fn: ScoreFn, x_tilde: torch.Tensor, node: Node) -> torch.Tensor:
    """D(x̃; σ̃) = x̂_0(α x̃, t): Tweedie at the point x = α x̃ of time t."""
    return data_prediction(score_fn, node.alpha * x_tilde, node)


def derivative(score_fn: ScoreFn, x_tilde: torch.Tensor, node: Node) -> torch.Tensor:
    """dx̃/dσ̃ = (x̃ - D(x̃; σ̃))/σ̃ = -σ s(α x̃, t) = ε̂(α x̃, t): with Tweedie's D = x̃ + (σ²/α) s and
    σ̃ = σ/α, the PF-ODE's derivative is the noise prediction at x = α x̃."""
    return noise_prediction(score_fn, node.alpha * x_tilde, node)


def heun_step(score_fn: ScoreFn, x_tilde: torch.Tensor, s: Node, t: Node, correct: bool = True) -> torch.Tensor:
    """One Heun step σ̃_s → σ̃_t (Karras et al. 2022, Alg. 1, lines 4-8), or Euler without ``correct``:

        d = (x̃ - D(x̃; σ̃_s))/σ̃_s,  x' = x̃ + (σ̃_t - σ̃_s) d,  d' = (x' - D(x'; σ̃_t))/σ̃_t,
        x̃_t = x̃ + (σ̃_t - σ̃_s)(d + d')/2,

    with d and d' computed as ``derivative``.
    """
    dt = t.sigma_tilde - s.sigma_tilde
    d = derivative(score_fn, x_tilde, s)
    x_euler = x_tilde + dt * d
    if not correct:
        return x_euler
    d_prime = derivative(score_fn, x_euler, t)
    return x_tilde + (dt / 2) * (d + d_prime)


def midpoint_step(score_fn: ScoreFn, x_tilde: torch.Tensor, s: Node, m: Node, t: Node) -> torch.Tensor:
    """The exponential midpoint step σ̃_s → σ̃_t through m (λ_m = (λ_s + λ_t)/2) of a stiff step:
    x̃_m = Euler to σ̃_m, x̃_t = r x̃ + (1 - r) D(x̃_m; σ̃_m) with r = σ̃_t/σ̃_s (2 evaluations)."""
    x_mid = heun_step(score_fn, x_tilde, s, m, correct=False)
    ratio = t.sigma_tilde / s.sigma_tilde
    return ratio * x_tilde + (1 - ratio) * denoiser(score_fn, x_mid, m)


def midpoints(sde: LinearSDE, starts: list[Node], ends: list[Node]) -> list[Optional[Node]]:
    """For each step starts[i] → ends[i], the node half-way in λ where the step is stiff
    (σ̃_t < STIFF_RATIO · σ̃_s), else None; computed once, before the sampling loop."""
    stiff = [i for i, (s, t) in enumerate(zip(starts, ends)) if t.sigma_tilde < STIFF_RATIO * s.sigma_tilde]
    mids = dict(zip(stiff, nodes_at_lambda(sde, [(starts[i].lam + ends[i].lam) / 2 for i in stiff]))) if stiff else {}
    return [mids.get(i) for i in range(len(starts))]


def second_order_step(score_fn: ScoreFn, x_tilde: torch.Tensor, s: Node, t: Node, mid: Optional[Node]) -> torch.Tensor:
    """The exponential midpoint step on a stiff step (``mid`` given), else Heun's."""
    if mid is not None:
        return midpoint_step(score_fn, x_tilde, s, mid, t)
    return heun_step(score_fn, x_tilde, s, t)


def euler_pair_step(score_fn: ScoreFn, x_tilde: torch.Tensor, s: Node, m: Node, t: Node) -> torch.Tensor:
    """Two Euler steps σ̃_s → σ̃_m → σ̃_t, each x̃ ← r x̃ + (1 - r) D: DDIM in (x̃, σ̃) (2 evaluations)."""
    return heun_step(score_fn, heun_step(score_fn, x_tilde, s, m, correct=False), m, t, correct=False)


class Heun(GridStepper):
    """Heun's method on x̃ = x/α: ``second_order_step`` on each step, the midpoints placed once; on a
    grid of fewer than ``MIN_SECOND_ORDER_STEPS`` steps, ``euler_pair_step`` through the nodes
    half-way in the coordinate of ``coordinate`` = (schedule, ρ)."""

    def __init__(self, run: Run, grid: list[Node], coordinate: Optional[tuple[str, float]] = None) -> None:
        super().__init__(run, grid)
        self.mids = midpoints(run.sde, grid[:-1], grid[1:])
        small = coordinate is not None and len(grid) - 1 < MIN_SECOND_ORDER_STEPS
        self.halves = half_way(run.sde, grid, *coordinate) if small else None

    def start(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.grid[0].alpha

    def step(self, i: int, x_tilde: torch.Tensor) -> torch.Tensor:
        if self.halves is not None:
            return euler_pair_step(self.score, x_tilde, self.grid[i], self.halves[i], self.grid[i + 1])
        return second_order_step(self.score, x_tilde, self.grid[i], self.grid[i + 1], self.mids[i])

    def finish(self, x_tilde: torch.Tensor) -> torch.Tensor:
        """x = α x̃ at eps; the driver's denoise is then EDM's Euler step to σ̃ = 0, D(x̃; σ̃(eps))."""
        return self.grid[-1].alpha * x_tilde


@register_method(
    "heun",
    FIXED_GRID,
    options=grid_options("karras"),
    default_steps=17,
    deterministic=lambda options: True,
    nfe=grid_nfe(2),
    requires=(POSITIVE_EPS,),
)
def heun(run: Run, x: torch.Tensor, *, schedule: str, rho: float, denoise: bool) -> torch.Tensor:
    """Heun's 2nd-order method on the PF-ODE in (x̃, σ̃) (Karras et al. 2022, Alg. 1).

    ``steps`` Heun steps from t_start to eps (the exponential midpoint step on stiff ones, and two
    Euler steps each below ``MIN_SECOND_ORDER_STEPS``; module docstring), then (``denoise``) Alg. 1's
    last step, the Euler step from σ̃_min = σ̃(eps) to 0. NFE = 2 · steps (+1 with ``denoise``):
    EDM's 18 levels from 80 to 0.002 are 17 steps, 35 NFE.
    """
    return run_grid(Heun, run, x, coordinate=(schedule, rho), schedule=schedule, rho=rho, denoise=denoise)


def churned_nodes(sde: LinearSDE, grid: list[Node], s_churn: float, s_tmin: float, s_tmax: float) -> list[Node]:
    """The node of each step's raised level σ̂_i = σ̃_i (1 + γ_i), γ_i = min(S_churn/n, √2 - 1) for
    σ̃_i in [S_tmin, S_tmax] and 0 elsewhere (Karras et al. 2022, Alg. 2, lines 4-5; n steps).
    σ̂_i is capped at σ̃(T); where γ_i = 0 the node is grid[i] itself.

    The last step is never churned: in EDM the step that ends at σ_min is followed by the Euler step
    to 0, and the levels it starts from are below S_tmin on EDM's grids. Here the last step starts
    where the grid puts it, possibly well inside [S_tmin, S_tmax], and noise added there would not
    be removed by a later step."""
    gamma = min(s_churn / (len(grid) - 1), math.sqrt(2.0) - 1.0)
    churned = [i for i, s in enumerate(grid[:-2]) if gamma > 0 and s_tmin <= s.sigma_tilde <= s_tmax]
    raised = dict(zip(churned, nodes_at_lambda(sde, [grid[i].lam - math.log1p(gamma) for i in churned])))
    return [raised.get(i, s) for i, s in enumerate(grid[:-1])]


class EDM(Heun):
    """EDM's stochastic sampler: churn to the raised level σ̂_i, then Heun's step from there."""

    def __init__(self, run: Run, grid: list[Node], s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
        GridStepper.__init__(self, run, grid)
        self.s_noise = s_noise
        self.raised = churned_nodes(run.sde, grid, s_churn, s_tmin, s_tmax)
        self.mids = midpoints(run.sde, self.raised, grid[1:])

    def step(self, i: int, x_tilde: torch.Tensor) -> torch.Tensor:
        s, s_hat = self.grid[i], self.raised[i]
        if s_hat is not s:
            churn = math.sqrt(max(s_hat.sigma_tilde**2 - s.sigma_tilde**2, 0.0))
            x_tilde = x_tilde + churn * self.s_noise * noise_like(x_tilde, self.run.generator)
        return second_order_step(self.score, x_tilde, s_hat, self.grid[i + 1], self.mids[i])


@register_method(
    "edm",
    FIXED_GRID,
    options={"s_churn": non_negative(10.0), "s_tmin": non_negative(0.05), "s_tmax": non_negative(50.0),
             "s_noise": non_negative(1.0), **grid_options("quadratic")},
    default_steps=17,
    deterministic=lambda options: options["s_churn"] == 0.0 or options["s_noise"] == 0.0 or options["s_tmin"] > options["s_tmax"],
    nfe=grid_nfe(2),
    requires=(POSITIVE_EPS,),
)
def edm(run: Run, x: torch.Tensor, *, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float, **grid: Any) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2): at each level add noise to raise σ̃_i
    to σ̂_i = σ̃_i (1 + γ_i), x̂ = x̃ + √(σ̂_i² - σ̃_i²) S_noise z, then take a Heun step σ̂_i → σ̃_{i+1}
    (the exponential midpoint step where σ̃_{i+1} < σ̂_i/4, see the module docstring).

    σ̂_i is capped at σ̃(T) (the SDE is not defined beyond T). S_churn = 0 is Heun. EDM's ImageNet
    preset is S_churn = 40, S_tmin = 0.05, S_tmax = 50, S_noise = 1.003 at 256 steps; S_noise = 1
    is exact for an exact score. The last step is never churned (``churned_nodes``); as in ``heun``,
    NFE = 2 · steps (+1 with ``denoise``). The default grid is
    time-quadratic, not EDM's Karras grid, which from T left more of the ring's samples off its
    modes at 10 NFE (README, "Fast solvers").
    """
    return run_grid(EDM, run, x, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, **grid)
