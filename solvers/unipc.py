"""UniPC: the unified predictor-corrector of Zhao et al. 2023, with data prediction.

A step s → t (h = λ_t - λ_s) of UniP (predictor) or UniC (corrector) is

    x_t = (σ_t/σ_s) x_s + α_t (1 - e^{-h}) m_s + α_t B(h) Σ_k a_k D_k,    D_k = (m_k - m_s)/r_k,

with m = x̂_0 at earlier nodes (r_k = (λ_k - λ_s)/h < 0) and, for UniC, at the new node t (r = 1),
B(h) = h (bh1) or 1 - e^{-h} (bh2), and a solving Σ_k a_k r_k^{i-1} = i! h φ_{i+1}(-h)/B(h),
i = 1..K (their Algorithms 1-3 and eq. 8, in data-prediction form); a single difference takes
a = 1/2. UniC reuses the evaluation at the predicted x_t that the next step needs anyway, so the
corrector raises the order by one at no extra evaluation.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from sde_diffusion.sde_lib import LinearSDE

from .common import ScoreFn, progress_range
from .dpm_solver import GRID_OPTIONS, check_order, phi, step_orders
from .registry import register_method
from .schedules import Node, check_positive_eps, data_prediction, schedule_nodes

#: B(h) of each UniPC variant.
VARIANTS = {"bh1": lambda h: h, "bh2": lambda h: -math.expm1(-h)}


def unipc_coefficients(rs: list[float], h: float, b_h: float) -> list[float]:
    """a with Σ_k a_k r_k^{i-1} = i! h φ_{i+1}(-h)/B(h) for i = 1..K (a = [1/2] when K = 1)."""
    if len(rs) == 1:
        return [0.5]
    lhs = torch.tensor([[r**i for r in rs] for i in range(len(rs))], dtype=torch.float64)
    rhs = torch.tensor([math.factorial(i) * h * phi(i + 1, -h) / b_h for i in range(1, len(rs) + 1)], dtype=torch.float64)
    return torch.linalg.solve(lhs, rhs).tolist()


def unipc_update(
    x: torch.Tensor, s: Node, t: Node, m_s: torch.Tensor, others: list[tuple[Node, torch.Tensor]], variant: str
) -> torch.Tensor:
    """One UniP (``others`` at earlier nodes) or UniC (``others`` including the node t) step."""
    h = t.lam - s.lam
    x_t = (t.sigma / s.sigma) * x - t.alpha * math.expm1(-h) * m_s
    if not others:
        return x_t
    b_h = VARIANTS[variant](h)
    rs = [(node.lam - s.lam) / h for node, _ in others]
    coefficients = unipc_coefficients(rs, h, b_h)
    for a, r, (_, m) in zip(coefficients, rs, others):
        x_t = x_t + t.alpha * b_h * a * (m - m_s) / r
    return x_t


@register_method(
    "unipc", options={"order": 3, "variant": "bh2", "corrector": True, "lower_order_final": True, **GRID_OPTIONS}, deterministic=True
)
def unipc(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *,
    steps: Optional[int],
    eps: float,
    generator: Optional[torch.Generator],
    progress: bool,
    order: int,
    variant: str,
    corrector: bool,
    lower_order_final: bool,
    schedule: str,
    rho: float,
    t_start: Optional[float],
    denoise: bool,
) -> torch.Tensor:
    """UniPC-p multistep sampler of the PF-ODE (Zhao et al. 2023, Alg. 3): UniP-p, then UniC-p with
    the new evaluation (order p + 1); the corrected x is the start of the next step, the evaluation
    at the predicted x enters the history. NFE = steps (+1 with ``denoise``); the last step has no
    corrector (its evaluation would be the final denoise, taken at the predicted point).
    """
    check_order(order, (1, 2, 3), "unipc")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    check_positive_eps(eps, "unipc")
    steps = steps or 20
    grid = schedule_nodes(sde, steps, eps, schedule, t_start, rho)
    orders = step_orders(steps, order, lower_order_final)
    history: list[tuple[Node, torch.Tensor]] = []  # (node, x̂_0), newest first
    x_start = x
    for i in progress_range(steps, progress):
        m = data_prediction(score_fn, x, grid[i])
        if corrector and history:
            s, m_s = history[0]
            x = unipc_update(x_start, s, grid[i], m_s, [(grid[i], m)] + history[1 : orders[i - 1]], variant)
        history = ([(grid[i], m)] + history)[:order]
        x_start = x
        x = unipc_update(x, grid[i], grid[i + 1], m, history[1 : orders[i]], variant)
    if not denoise:
        return x
    m = data_prediction(score_fn, x, grid[-1])
    if not corrector:
        return m
    s, m_s = history[0]
    x_c = unipc_update(x_start, s, grid[-1], m_s, [(grid[-1], m)] + history[1 : orders[-1]], variant)
    return m + (x_c - x) / grid[-1].alpha
