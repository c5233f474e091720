"""UniPC: the unified predictor-corrector of Zhao et al. 2023, with noise or data prediction.

A step s → t (h = λ_t - λ_s > 0) of UniP (predictor) or UniC (corrector) with model outputs m
(ε̂ for ``noise``, x̂_0 for ``data``) is, with z = h (noise) or -h (data),

    x_t = (γ_t/γ_s) x_s - c_t [(e^z - 1) m_s + B(z) Σ_k a_k D_k],    D_k = (m_k - m_s)/r_k,

where (γ, c) = (α, σ) for noise and (σ, α) for data, m_k are outputs at earlier nodes
(r_k = (λ_k - λ_s)/h < 0) and, for UniC, at the new node t (r = 1), B(z) = z (bh1) or e^z - 1 (bh2),
and a solves Σ_k a_k r_k^{i-1} = i! z φ_{i+1}(z)/B(z), i = 1..K; a single difference takes a = 1/2
(Zhao et al. 2023, §3; K = 0 is DDIM). UniC reuses the evaluation at the predicted x_t that the
next step needs anyway, so it raises the order by one at no extra cost. ``variant="auto"`` is bh1
below 10 steps and bh2 from 10.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch

from .common import Run
from .dpm_solver import PREDICTIONS, Prediction, multistep_order_options, phi, step_orders
from .grid import GridStepper, grid_nfe, grid_options, run_grid
from .schedules import Node
from .spec import FIXED_GRID, POSITIVE_EPS, choice, flag, register_method

#: B(z) of each UniPC variant.
VARIANTS = {"bh1": lambda z: z, "bh2": math.expm1}
#: ``variant="auto"`` takes bh1 on grids of fewer steps than this and bh2 on the others, as
#: diffusers' ``UniPCMultistepScheduler`` recommends for unconditional sampling.
AUTO_BH1_BELOW = 10


def resolve_variant(variant: str, steps: int) -> str:
    """The B(z) variant a grid of ``steps`` steps uses: ``variant`` itself, or for ``"auto"`` bh1
    below ``AUTO_BH1_BELOW`` steps and bh2 from there."""
    if variant != "auto":
        return variant
    return "bh1" if steps < AUTO_BH1_BELOW else "bh2"


def solve_vandermonde(rs: list[float], rhs: list[float]) -> list[float]:
    """a with Σ_k a_k r_k^i = rhs_i for i = 0..K-1 (distinct r_k), by the Björck–Pereyra algorithm
    (Björck & Pereyra 1970; Golub & Van Loan, "Matrix Computations", Alg. 4.6.2), in float64."""
    a, n = list(rhs), len(rs) - 1
    for k in range(n):
        for i in range(n, k, -1):
            a[i] -= rs[k] * a[i - 1]
    for k in range(n - 1, -1, -1):
        for i in range(k + 1, n + 1):
            a[i] /= rs[i] - rs[i - k - 1]
        for i in range(k, n):
            a[i] -= a[i + 1]
    return a


@functools.lru_cache(maxsize=4096)
def unipc_coefficients(rs: tuple[float, ...], z: float, b_z: float) -> tuple[float, ...]:
    """a with Σ_k a_k r_k^{i-1} = i! z φ_{i+1}(z)/B(z) for i = 1..K (a = [1/2] when K = 1).

    Memoised: they depend on the grid alone, so repeated runs on one grid solve each system once."""
    if len(rs) == 1:
        return (0.5,)
    return tuple(solve_vandermonde(list(rs), [z * g / b_z for g in factorial_phis(len(rs), z)]))


def factorial_phis(k: int, z: float) -> list[float]:
    """g_i = i! φ_{i+1}(z) for i = 1..k, by g_i = (i g_{i-1} - 1)/z from g_0 = φ_1(z) = (e^z - 1)/z
    (``phi``'s series for |z| < 0.05, where the recursion would cancel)."""
    if abs(z) < 0.05:
        return [math.factorial(i) * phi(i + 1, z) for i in range(1, k + 1)]
    g, out = math.expm1(z) / z, []
    for i in range(1, k + 1):
        g = (i * g - 1.0) / z
        out.append(g)
    return out


def unipc_weights(s: Node, t: Node, others: list[Node], prediction: Prediction, variant: str) -> tuple[float, list[float]]:
    """The step s → t of the module's equation over m_s and the outputs at ``others``, written as
    x_t = w_x x_s + w_s m_s + Σ_k w_k m_k: w_x = γ_t/γ_s, w_k = -c_t B(z) a_k/r_k and
    w_s = -c_t (e^z - 1) - Σ_k w_k; returns w_x and [w_s, w_1, ..., w_K]."""
    h = t.lam - s.lam
    z = prediction.sign * h
    w_x, w_s = prediction.gamma(t) / prediction.gamma(s), -prediction.c(t) * math.expm1(z)
    if not others:
        return w_x, [w_s]
    b_z = VARIANTS[variant](z)
    rs = tuple((node.lam - s.lam) / h for node in others)
    w = [-prediction.c(t) * b_z * a / r for a, r in zip(unipc_coefficients(rs, z, b_z), rs)]
    return w_x, [w_s - sum(w)] + w


def combine(x: torch.Tensor, w_x: float, weights: dict[int, float], outputs: dict[int, torch.Tensor]) -> torch.Tensor:
    """w_x x + Σ_j weights_j outputs_j."""
    out = w_x * x
    for j, w in weights.items():
        out.add_(outputs[j], alpha=w)
    return out


class UniPC(GridStepper):
    """UniP-p then UniC-p, as one linear combination per step.

    At node i the new output m_i corrects the step i-1 → i that predicted x_i: UniC and UniP over
    the same step share the term (γ_t/γ_s) x_s, so the corrected state is x_i^c = x_i + Σ_j (c_j -
    p_j) m_j (c: UniC's weights, p: UniP's). The next prediction x_{i+1} = w_x x_i^c + Σ_j w_j m_j is
    then linear in x_i and the outputs, and is computed as such; x_i^c itself is never needed."""

    def __init__(self, run: Run, grid: list[Node], order: int, prediction: str, variant: str, corrector: bool,
                 lower_order_final: bool, first_order_above: float) -> None:
        super().__init__(run, grid)
        self.order, self.kind, self.corrector = order, PREDICTIONS[prediction], corrector
        self.variant = resolve_variant(variant, len(grid) - 1)
        self.orders = step_orders(grid, order, lower_order_final, first_order_above)
        self.outputs: dict[int, torch.Tensor] = {}  # node index -> output, the last order + 1
        self.predicted: dict[int, float] = {}  # UniP's weights of the step that gave the current x

    def weights(self, s: int, t: int, others: list[int]) -> tuple[float, dict[int, float]]:
        """``unipc_weights`` of the step from node s to node t, by node index."""
        w_x, w = unipc_weights(self.grid[s], self.grid[t], [self.grid[j] for j in others], self.kind, self.variant)
        return w_x, dict(zip([s] + others, w))

    def step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        self.outputs[i] = self.kind.model(self.score, x, self.grid[i])
        self.outputs.pop(i - self.order - 1, None)
        w_x, predict = self.weights(i, i + 1, list(range(i - 1, i - self.orders[i], -1)))
        weights = dict(predict)
        if self.corrector and i > 0:
            _, correct = self.weights(i - 1, i, [i] + list(range(i - 2, i - 1 - self.orders[i - 1], -1)))
            for j, c in correct.items():
                weights[j] = weights.get(j, 0.0) + w_x * (c - self.predicted.get(j, 0.0))
        self.predicted = predict
        return combine(x, w_x, weights, self.outputs)


@register_method(
    "unipc",
    FIXED_GRID,
    options={
        "order": choice(3, (1, 2, 3)),
        "prediction": choice("data", tuple(sorted(PREDICTIONS))),
        "variant": choice("auto", (*sorted(VARIANTS), "auto")),
        "corrector": flag(True),
        **multistep_order_options(),
        **grid_options("quadratic"),
    },
    default_steps=20,
    deterministic=lambda options: True,
    nfe=grid_nfe(1),
    requires=(POSITIVE_EPS,),
)
def unipc(run: Run, x: torch.Tensor, *, order: int, prediction: str, variant: str, corrector: bool,
          lower_order_final: bool, first_order_above: float, **grid: Any) -> torch.Tensor:
    """UniPC-p multistep sampler of the PF-ODE (Zhao et al. 2023, §3): UniP-p, then UniC-p with
    the new evaluation (order p + 1); the corrected x starts the next step, the evaluation at the
    predicted x enters the history. NFE = steps (+1 with ``denoise``); the last step has no corrector.

    The defaults (order 3, data prediction x̂_0, ``variant="auto"``, the time-quadratic grid) are the
    best setting of the README's sweep over four SDEs and three targets ("Best by default"); noise prediction
    (Zhao et al.'s default for pixel models) breaks down at ≤ 8 NFE on the toolkit's targets.
    """
    options = {"order": order, "prediction": prediction, "variant": variant, "corrector": corrector,
               "lower_order_final": lower_order_final, "first_order_above": first_order_above}
    return run_grid(UniPC, run, x, **options, **grid)
