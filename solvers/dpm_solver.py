"""DPM-Solver (singlestep, noise or data prediction) and DPM-Solver++ (multistep and SDE, data prediction).

All updates are exponential integrators of the PF-ODE or reverse SDE in λ = log(α/σ), with
h = λ_t - λ_s > 0 for a step s → t (Lu et al. 2022a "DPM-Solver", Lu et al. 2022b "DPM-Solver++"):

    x_t = (α_t/α_s) x_s - α_t ∫_{λ_s}^{λ_t} e^{-λ} ε̂(λ) dλ       (noise prediction, 2022a, Prop. 3.1)
    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂_0(λ) dλ       (data prediction, 2022b, eq. 8)

with the exponential-integrator functions φ_1(z) = (e^z - 1)/z, φ_{k+1}(z) = (φ_k(z) - 1/k!)/z, for
which σ_t ∫_0^h e^{λ_s + u} u^k/k! du = α_t h^{k+1} φ_{k+1}(-h).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sde_diffusion.core.types import ScoreFn

from .common import Run, noise_like
from .grid import GridStepper, grid_nfe, grid_options, run_grid
from .schedules import Node, data_prediction, nodes_at_lambda, noise_prediction
from .spec import FIXED_GRID, POSITIVE_EPS, Option, choice, flag, number, register_method


def phi(k: int, z: float) -> float:
    """φ_k(z) = Σ_j z^j/(j+k)! by the recursion φ_{k+1} = (φ_k - 1/k!)/z (the series for |z| < 0.05,
    where the recursion would cancel)."""
    if abs(z) < 0.05:
        return sum(z**j / math.factorial(j + k) for j in range(10))
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


@dataclass(frozen=True)
class Prediction:
    """A model output m with the pieces of its exponential integrator, z = sign · h, γ and c: the
    first-order step s → t is x_t = (γ_t/γ_s) x_s - c_t (e^z - 1) m_s, for

        noise:  m = ε̂ = -σ s,        z = h,   (γ, c) = (α, σ)   (Lu et al. 2022a, eq. 3.6)
        data:   m = x̂_0 = (x + σ² s)/α,  z = -h,  (γ, c) = (σ, α)   (Lu et al. 2022b, eq. 9)."""

    model: Callable[[ScoreFn, torch.Tensor, Node], torch.Tensor]
    sign: int
    gamma: Callable[[Node], float]
    c: Callable[[Node], float]


PREDICTIONS = {
    "noise": Prediction(model=noise_prediction, sign=1, gamma=lambda n: n.alpha, c=lambda n: n.sigma),
    "data": Prediction(model=data_prediction, sign=-1, gamma=lambda n: n.sigma, c=lambda n: n.alpha),
}


# --- DPM-Solver (noise prediction, Lu et al. 2022a) and DPM-Solver++ (data, 2022b), singlestep --------
def first_order_update(x: torch.Tensor, s: Node, t: Node, m_s: torch.Tensor, p: Prediction) -> torch.Tensor:
    """DPM-Solver-1 ≡ DDIM (η = 0): x_t = (γ_t/γ_s) x_s - c_t (e^z - 1) m_s (2022a, §3.3; 2022b, eq. 9)."""
    return (p.gamma(t) / p.gamma(s)) * x - p.c(t) * math.expm1(p.sign * (t.lam - s.lam)) * m_s


def dpm_solver_2_update(
    score_fn: ScoreFn, x: torch.Tensor, s: Node, s1: Node, t: Node, p: Prediction
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver-2 (2022a, Alg. 1) / DPM-Solver++(2S) (2022b, Alg. 1) with r_1 = (λ_{s1} - λ_s)/h:

        u = DPM-Solver-1(x_s; s → s1),   x_t = DPM-Solver-1(x_s; s → t) - c_t/(2 r_1) (e^z - 1) (m(u, s1) - m_s).

    Returns x_t and the embedded first-order solution DPM-Solver-1(x_s; s → t) (2 evaluations)."""
    r1 = (s1.lam - s.lam) / (t.lam - s.lam)
    m_s = p.model(score_fn, x, s)
    low = first_order_update(x, s, t, m_s, p)
    d1 = p.model(score_fn, first_order_update(x, s, s1, m_s, p), s1) - m_s
    x_t = low - p.c(t) / (2 * r1) * math.expm1(p.sign * (t.lam - s.lam)) * d1
    return x_t, low


def dpm_solver_3_update(
    score_fn: ScoreFn, x: torch.Tensor, s: Node, s1: Node, s2: Node, t: Node, p: Prediction
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver-3 (2022a, Alg. 2) / DPM-Solver++(3S) with r_i = (λ_{si} - λ_s)/h, z = sign · h,
    z_2 = sign · r_2 h:

        u_1 = DPM-Solver-1(x_s; s → s1),                                  D_1 = m(u_1, s1) - m_s
        u_2 = DPM-Solver-1(x_s; s → s2) - c_{s2} (r_2/r_1) z_2 φ_2(z_2) D_1,   D_2 = m(u_2, s2) - m_s
        x_t = DPM-Solver-1(x_s; s → t) - (c_t/r_2) z φ_2(z) D_2.

    Returns x_t and the embedded second-order solution DPM-Solver-1(x_s; s → t) - c_t/(2 r_1)(e^z - 1) D_1
    (DPM-Solver-2 with the same r_1, no extra evaluation; 3 evaluations)."""
    h = t.lam - s.lam
    r1, r2 = (s1.lam - s.lam) / h, (s2.lam - s.lam) / h
    z, z2 = p.sign * h, p.sign * r2 * h
    m_s = p.model(score_fn, x, s)
    d1 = p.model(score_fn, first_order_update(x, s, s1, m_s, p), s1) - m_s
    u2 = first_order_update(x, s, s2, m_s, p) - p.c(s2) * (r2 / r1) * z2 * phi(2, z2) * d1
    d2 = p.model(score_fn, u2, s2) - m_s
    first = first_order_update(x, s, t, m_s, p)
    x_t = first - (p.c(t) / r2) * z * phi(2, z) * d2
    return x_t, first - p.c(t) / (2 * r1) * math.expm1(z) * d1


#: Intermediate fractions r of each singlestep order (Lu et al. 2022a, §3.3: r_1 = 1/2; 1/3, 2/3).
SINGLESTEP_FRACTIONS = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


def singlestep_update(
    score_fn: ScoreFn, x: torch.Tensor, s: Node, mids: list[Node], t: Node, p: Prediction
) -> tuple[torch.Tensor, torch.Tensor]:
    """One singlestep step of order len(mids) + 1 (its embedded lower-order solution second)."""
    if not mids:
        first = first_order_update(x, s, t, p.model(score_fn, x, s), p)
        return first, first
    if len(mids) == 1:
        return dpm_solver_2_update(score_fn, x, s, mids[0], t, p)
    return dpm_solver_3_update(score_fn, x, s, mids[0], mids[1], t, p)


def singlestep_orders(nfe: int, order: int, lower_order_final: bool) -> list[int]:
    """The orders of the singlestep steps that spend ``nfe`` evaluations (Lu et al. 2022a, App. D.1,
    the reference ``get_orders_and_timesteps_for_singlestep_solver``): K = ⌊nfe/3⌋ + 1 steps

        order 3:  [3]·(K-2) + [2, 1]  (nfe ≡ 0 mod 3),  [3]·(K-1) + [1]  (≡ 1),  [3]·(K-1) + [2]  (≡ 2)
        order 2:  [2]·(nfe/2)  (even),  [2]·⌊nfe/2⌋ + [1]  (odd),         order 1: [1]·nfe,

    so a budget too small for the nominal order takes lower-order steps instead of one long step.
    Without ``lower_order_final`` every step has the nominal order but a last one of order nfe mod order."""
    if order == 3 and lower_order_final:
        k = nfe // 3 + 1
        return {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[nfe % 3]
    return [order] * (nfe // order) + ([nfe % order] if nfe % order else [])


class DPMSolver(GridStepper):
    """Singlestep DPM-Solver: step j of order k_j spans k_j intervals of the grid (one per evaluation);
    its intermediate nodes sit at λ_s + r h, placed once, before the loop."""

    def __init__(self, run: Run, grid: list[Node], order: int, prediction: str, lower_order_final: bool) -> None:
        self.prediction = PREDICTIONS[prediction]
        orders = singlestep_orders(len(grid) - 1, order, lower_order_final)
        ends = [sum(orders[: j + 1]) for j in range(len(orders))]
        super().__init__(run, [grid[0]] + [grid[e] for e in ends])
        outer = self.grid
        self.mids = [nodes_at_lambda(run.sde, [s.lam + r * (t.lam - s.lam) for r in SINGLESTEP_FRACTIONS[k]]) if k > 1 else []
                     for s, t, k in zip(outer[:-1], outer[1:], orders)]

    def step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return singlestep_update(self.score, x, self.grid[i], self.mids[i], self.grid[i + 1], self.prediction)[0]


@register_method(
    "dpm_solver",
    FIXED_GRID,
    options={"order": choice(2, (1, 2, 3)), "prediction": choice("data", tuple(sorted(PREDICTIONS))), "lower_order_final": flag(True),
             **grid_options("logsnr")},
    default_steps=10,
    deterministic=lambda options: True,
    nfe=grid_nfe(1),
    steps_taken=lambda steps, options: len(singlestep_orders(steps, options["order"], options["lower_order_final"])),
    requires=(POSITIVE_EPS,),
)
def dpm_solver(run: Run, x: torch.Tensor, *, order: int, prediction: str, lower_order_final: bool, **grid: Any) -> torch.Tensor:
    """Singlestep DPM-Solver-1/2/3 on the PF-ODE: with data prediction x̂_0 (``prediction="data"``,
    DPM-Solver++(2S)/(3S), Lu et al. 2022b) or noise prediction ε̂ = -σ s (DPM-Solver, 2022a, §3.3).

    ``steps`` is the number of evaluations, as in the reference implementation and diffusers: the
    grid's ``steps`` intervals are grouped into steps of order ≤ ``order`` by ``singlestep_orders``
    (DPM-Solver-1 is DDIM with η = 0); a step's intermediate times sit at λ_s + r h with r = 1/2
    (order 2) or 1/3, 2/3 (order 3). NFE = steps (+1 with ``denoise``). The defaults, order 2 with
    data prediction, are diffusers' ``DPMSolverSinglestepScheduler`` defaults; with noise prediction
    or order 3 few-step budgets do worse than DDIM (README, "Fast solvers").
    """
    return run_grid(DPMSolver, run, x, order=order, prediction=prediction, lower_order_final=lower_order_final, **grid)


# --- DPM-Solver++, multistep, data prediction (Lu et al. 2022b) -------------------------------------
def taylor_terms(history: list[tuple[Node, torch.Tensor]]) -> list[torch.Tensor]:
    """x̂_0 and its λ-derivatives at the newest node from the interpolating polynomial through the
    last k = len(history) ≤ 3 data predictions (Newton divided differences, newest last):

        p'(λ_0) = f[0,1] + h_0 f[0,1,2],  p''(λ_0) = 2 f[0,1,2],  h_0 = λ_0 - λ_1."""
    (n0, m0) = history[-1]
    if len(history) == 1:
        return [m0]
    (n1, m1) = history[-2]
    h0 = n0.lam - n1.lam
    f01 = (m0 - m1) / h0
    if len(history) == 2:
        return [m0, f01]
    (n2, m2) = history[-3]
    f012 = (f01 - (m1 - m2) / (n1.lam - n2.lam)) / (n0.lam - n2.lam)
    return [m0, f01 + h0 * f012, 2 * f012]


def multistep_update(x: torch.Tensor, s: Node, t: Node, terms: list[torch.Tensor]) -> torch.Tensor:
    """DPM-Solver++(kM) step: the interpolating polynomial of x̂_0(λ) integrated exactly in eq. 8,

        x_t = (σ_t/σ_s) x_s + α_t Σ_j h^{j+1} φ_{j+1}(-h) x̂_0^{(j)}(λ_s)

    (k = 1 is DDIM in data form). For 3M the reference implementations (dpm-solver, diffusers,
    k-diffusion) weight x̂_0'' by half of this, which makes them second order only; this form is
    third order (README, "Fast solvers")."""
    h = t.lam - s.lam
    x_t = (t.sigma / s.sigma) * x
    for j, term in enumerate(terms):
        x_t = x_t + t.alpha * h ** (j + 1) * phi(j + 1, -h) * term
    return x_t


def multistep_order_options() -> dict[str, Option]:
    """The order options of every multistep method: ``lower_order_final`` and ``first_order_above``,
    the longest step (in λ) that uses earlier outputs; the default 1 lets σ̃ shrink by at most a factor
    e. The model's output changes on a λ-scale of about 1 where the modes separate, so a polynomial
    through earlier outputs extrapolated further predicts it worse than the newest output alone
    (``inf``: every step at the nominal order)."""
    return {"lower_order_final": flag(True), "first_order_above": number(1.0, 0.0, math.inf, low_open=True)}


def step_orders(grid: list[Node], order: int, lower_order_final: bool, first_order_above: float) -> list[int]:
    """Per-step order of a multistep method on ``grid``: order 1 on steps longer than
    ``first_order_above`` in λ (where few-step grids would otherwise do worse than DDIM), else one
    more than the previous step's, up to ``order``: the warm-up 1, 2, ..., order, which restarts
    after a first-order step. With ``lower_order_final``, orders ≤ steps - i on the last steps
    (Lu et al. 2022b, §5; k-diffusion #43)."""
    steps, orders = len(grid) - 1, []
    for i in range(steps):
        orders.append(1 if grid[i + 1].lam - grid[i].lam > first_order_above else min(order, (orders[-1] if orders else 0) + 1))
    return [min(k, steps - i) for i, k in enumerate(orders)] if lower_order_final else orders


class Multistep(GridStepper):
    """A multistep method on the last ``order`` data predictions x̂_0 (one new evaluation per step),
    at the orders of ``step_orders``."""

    def __init__(self, run: Run, grid: list[Node], order: int, lower_order_final: bool, first_order_above: float) -> None:
        super().__init__(run, grid)
        self.order, self.orders = order, step_orders(grid, order, lower_order_final, first_order_above)
        self.history: list[tuple[Node, torch.Tensor]] = []

    def terms(self, i: int, x: torch.Tensor) -> list[torch.Tensor]:
        """The Taylor terms at node i after its new data prediction joins the history."""
        self.history = (self.history + [(self.grid[i], data_prediction(self.score, x, self.grid[i]))])[-self.order :]
        return taylor_terms(self.history[-self.orders[i] :])


class DPMSolverPP(Multistep):
    def step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return multistep_update(x, self.grid[i], self.grid[i + 1], self.terms(i, x))


@register_method(
    "dpm_solver_pp",
    FIXED_GRID,
    options={"order": choice(3, (1, 2, 3)), **multistep_order_options(), **grid_options("logsnr")},
    default_steps=20,
    deterministic=lambda options: True,
    nfe=grid_nfe(1),
    requires=(POSITIVE_EPS,),
)
def dpm_solver_pp(run: Run, x: torch.Tensor, *, order: int, lower_order_final: bool, first_order_above: float,
                  **grid: Any) -> torch.Tensor:
    """Multistep DPM-Solver++(2M) / (3M) on the PF-ODE with data prediction (Lu et al. 2022b, Alg. 2).

    Each step reuses the last ``order`` data predictions x̂_0 = (x + σ² s)/α (one new evaluation per
    step). NFE = steps (+1 with ``denoise``, the final x̂_0 at eps).
    """
    return run_grid(DPMSolverPP, run, x, order=order, lower_order_final=lower_order_final, first_order_above=first_order_above, **grid)


# --- SDE-DPM-Solver++(2M), data prediction (Lu et al. 2022b, App. B) --------------------------------
def sde_multistep_update(
    x: torch.Tensor, s: Node, t: Node, terms: list[torch.Tensor], z: torch.Tensor
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) step (Lu et al. 2022b, App. B), exact in the linear part of the reverse SDE:

        x_t = (σ_t/σ_s) e^{-h} x_s + α_t (1 - e^{-2h}) D + σ_t √(1 - e^{-2h}) z,
        D = x̂_0 + (h/2) x̂_0' = (1 + 1/(2r)) m_0 - 1/(2r) m_1,  r = h_prev/h   (midpoint form).

    With ``terms`` = [x̂_0] it is the first-order step (DDIM with η = 1, the exact posterior step of a
    point mass). The midpoint weight (1 - e^{-2h}) h/2 on x̂_0' is smaller than the Taylor weight
    h - (1 - e^{-2h})/2 and amplifies the injected noise carried by m_0 - m_1 less."""
    h = t.lam - s.lam
    decay = -math.expm1(-2 * h)
    denoised = terms[0] + h / 2 * terms[1] if len(terms) > 1 else terms[0]
    return (t.sigma / s.sigma) * math.exp(-h) * x + t.alpha * decay * denoised + t.sigma * math.sqrt(decay) * z


class SDEDPMSolverPP(Multistep):
    def step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        terms = self.terms(i, x)
        return sde_multistep_update(x, self.grid[i], self.grid[i + 1], terms, noise_like(x, self.run.generator))


@register_method(
    "sde_dpm_solver_pp",
    FIXED_GRID,
    options={"order": choice(2, (1, 2)), **multistep_order_options(), **grid_options("quadratic")},
    default_steps=20,
    nfe=grid_nfe(1),
    requires=(POSITIVE_EPS,),
)
def sde_dpm_solver_pp(run: Run, x: torch.Tensor, *, order: int, lower_order_final: bool, first_order_above: float,
                      **grid: Any) -> torch.Tensor:
    """SDE-DPM-Solver++(1) / (2M): a discretisation of the reverse SDE (not an ancestral sampler)
    with data prediction (Lu et al. 2022b, App. B; diffusers' ``sde-dpmsolver++``).

    NFE = steps (+1 with ``denoise``); ``lower_order_final`` makes the last step first order. The
    default grid is time-quadratic, which kept the ring's samples on its modes at 10 NFE on every
    SDE where the logSNR and Karras grids did not (README, "Fast solvers").
    """
    return run_grid(SDEDPMSolverPP, run, x, order=order, lower_order_final=lower_order_final, first_order_above=first_order_above,
                    **grid)
