"""UniPC: the unified predictor-corrector of Zhao et al. 2023, with noise or data prediction.

A step s → t (h = λ_t - λ_s > 0) of UniP (predictor) or UniC (corrector) with model outputs m
(ε̂ for ``noise``, x̂_0 for ``data``) is, with z = h (noise) or -h (data),

    x_t = (γ_t/γ_s) x_s - c_t [(e^z - 1) m_s + B(z) Σ_k a_k D_k],    D_k = (m_k - m_s)/r_k,

where (γ, c) = (α, σ) for noise and (σ, α) for data, m_k are outputs at earlier nodes
(r_k = (λ_k - λ_s)/h < 0) and, for UniC, at the new node t (r = 1), B(z) = z (bh1) or e^z - 1 (bh2),
and a solves Σ_k a_k r_k^{i-1} = i! z φ_{i+1}(z)/B(z), i = 1..K; a single difference takes a = 1/2
(Zhao et al. 2023, §3; K = 0 is DDIM). UniC reuses the evaluation at the predicted x_t that the
next step needs anyway, so it raises the order by one at no extra cost.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

from sde_diffusion.core.sde_lib import LinearSDE

from .common import ScoreFn, progress_range
from .dpm_solver import check_order, phi, step_orders
from .registry import register_method
from .schedules import GRID_OPTIONS, Node, check_positive_eps, data_prediction, noise_prediction, schedule_nodes

#: B(z) of each UniPC variant.
VARIANTS = {"bh1": lambda z: z, "bh2": math.expm1}


@dataclass(frozen=True)
class Prediction:
    """A model output with the pieces of its exponential integrator: z = sign · h, γ, c."""

    model: Callable[[ScoreFn, torch.Tensor, Node], torch.Tensor]
    sign: int
    gamma: Callable[[Node], float]
    c: Callable[[Node], float]


PREDICTIONS = {
    "noise": Prediction(model=noise_prediction, sign=1, gamma=lambda n: n.alpha, c=lambda n: n.sigma),
    "data": Prediction(model=data_prediction, sign=-1, gamma=lambda n: n.sigma, c=lambda n: n.alpha),
}


def unipc_coefficients(rs: list[float], z: float, b_z: float) -> list[float]:
    """a with Σ_k a_k r_k^{i-1} = i! z φ_{i+1}(z)/B(z) for i = 1..K (a = [1/2] when K = 1)."""
    if len(rs) == 1:
        return [0.5]
    lhs = torch.tensor([[r**i for r in rs] for i in range(len(rs))], dtype=torch.float64)
    rhs = torch.tensor([math.factorial(i) * z * phi(i + 1, z) / b_z for i in range(1, len(rs) + 1)], dtype=torch.float64)
    return torch.linalg.solve(lhs, rhs).tolist()


def unipc_update(
    x: torch.Tensor,
    s: Node,
    t: Node,
    m_s: torch.Tensor,
    others: list[tuple[Node, torch.Tensor]],
    prediction: Prediction,
    variant: str,
) -> torch.Tensor:
    """One UniP step (``others`` at earlier nodes) or UniC step (``others`` including node t)."""
    h = t.lam - s.lam
    z = prediction.sign * h
    x_t = (prediction.gamma(t) / prediction.gamma(s)) * x - prediction.c(t) * math.expm1(z) * m_s
    if not others:
        return x_t
    b_z = VARIANTS[variant](z)
    rs = [(node.lam - s.lam) / h for node, _ in others]
    for a, r, (_, m) in zip(unipc_coefficients(rs, z, b_z), rs, others):
        x_t = x_t - prediction.c(t) * b_z * a * (m - m_s) / r
    return x_t


def corrector_update(
    x_start: torch.Tensor,
    t: Node,
    m_t: torch.Tensor,
    history: list[tuple[Node, torch.Tensor]],
    prediction: Prediction,
    variant: str,
) -> torch.Tensor:
    """UniC: redo the step history[0] → t from its start x_start with the new output m_t at t."""
    s, m_s = history[0]
    return unipc_update(x_start, s, t, m_s, [(t, m_t)] + history[1:], prediction, variant)


@register_method(
    "unipc",
    options={
        "order": 2,
        "prediction": "noise",
        "variant": "bh2",
        "corrector": True,
        "lower_order_final": True,
        **GRID_OPTIONS,
    },
    deterministic=True,
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
    prediction: str,
    variant: str,
    corrector: bool,
    lower_order_final: bool,
    schedule: str,
    rho: float,
    t_start: Optional[float],
    denoise: bool,
) -> torch.Tensor:
    """UniPC-p multistep sampler of the PF-ODE (Zhao et al. 2023, §3): UniP-p, then UniC-p with
    the new evaluation (order p + 1); the corrected x starts the next step, the evaluation at the
    predicted x enters the history. NFE = steps (+1 with ``denoise``); the last step has no corrector.
    """
    check_order(order, (1, 2, 3), "unipc")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {sorted(PREDICTIONS)}, got {prediction!r}")
    check_positive_eps(eps, "unipc")
    kind = PREDICTIONS[prediction]
    steps = steps or 20
    grid = schedule_nodes(sde, steps, eps, schedule, t_start, rho)
    orders = step_orders(steps, order, lower_order_final)
    history: list[tuple[Node, torch.Tensor]] = []  # (node, model output), newest first
    x_start = x  # the state the corrector re-solves the last step from
    for i in progress_range(steps, progress):
        m = kind.model(score_fn, x, grid[i])
        if corrector and history:
            x = corrector_update(x_start, grid[i], m, history[: orders[i - 1]], kind, variant)
        history = ([(grid[i], m)] + history)[:order]
        x_start = x
        x = unipc_update(x, grid[i], grid[i + 1], m, history[1 : orders[i]], kind, variant)
    return data_prediction(score_fn, x, grid[-1]) if denoise else x
