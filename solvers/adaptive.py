"""Adaptive step-size solvers: DPM-Solver-12/23 on the PF-ODE (Lu et al. 2022a, App. C) and the
Gotta-Go-Fast reverse-SDE solver (Jolicoeur-Martineau et al. 2021, Alg. 1).

Both control a scaled RMS error E = ‖(x_high - x_low)/δ‖₂/√n with
δ = max(ε_abs, ε_rel · max(|x_low|, |x_prev|)), accept a step when E ≤ 1 and set the next step to
h ← min(θ h E^{-r}, remaining). Neither takes ``steps``; both name the tolerances ``rtol`` (ε_rel)
and ``atol`` (ε_abs).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import append_dims

from .common import Run, noise_like
from .dpm_solver import PREDICTIONS, SINGLESTEP_FRACTIONS, singlestep_update
from .schedules import data_prediction, nodes, nodes_at_lambda
from .spec import ADAPTIVE, POSITIVE_EPS, choice, flag, non_negative, number, positive, register_method

#: The adaptive DPM-Solver stops when λ(eps) - λ_s is below this.
LAMBDA_TOLERANCE = 1e-5


def scaled_error(x_high: torch.Tensor, x_low: torch.Tensor, x_prev: torch.Tensor, atol: float, rtol: float) -> torch.Tensor:
    """Per-sample E = RMS over the data dimensions of (x_high - x_low)/δ, shape (B,)."""
    delta = torch.maximum(torch.full_like(x_low, atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
    return ((x_high - x_low) / delta).reshape(x_low.shape[0], -1).pow(2).mean(dim=1).sqrt()


#: The options of both methods' step-size control: tolerances, first step and safety factor θ.
def control_options(rtol: float, atol: float, h_init: float) -> dict[str, Any]:
    return {"rtol": non_negative(rtol), "atol": non_negative(atol), "h_init": positive(h_init),
            "safety": number(0.9, 0.0, 1.0, low_open=True), "denoise": flag(True)}


#: How the per-sample errors E_i of a batch combine into the one E that controls the shared step:
#: their RMS (as k-diffusion's ``sample_dpm_adaptive``, whose norm runs over the whole batch tensor)
#: or the worst sample.
ERROR_NORMS = {"rms": lambda e: e.pow(2).mean().sqrt(), "max": lambda e: e.max()}


@register_method(
    "dpm_solver_adaptive",
    ADAPTIVE,
    options={"order": choice(3, (2, 3)), "error_norm": choice("rms", tuple(ERROR_NORMS)), **control_options(0.05, 0.0078, 0.05)},
    takes=("eps", "t_start"),
    deterministic=lambda options: True,
    adaptive=lambda options: True,
    requires=(POSITIVE_EPS,),
)
def dpm_solver_adaptive(run: Run, x: torch.Tensor, *, order: int, error_norm: str, rtol: float, atol: float, h_init: float,
                        safety: float, denoise: bool) -> tuple[torch.Tensor, dict[str, Any]]:
    """Adaptive DPM-Solver-12 (order 2) or -23 (order 3) with steps h in λ (Lu et al. 2022a, App. C).

    Each attempt is a DPM-Solver-k step with its embedded order k-1 solution (DPM-Solver-1, or
    DPM-Solver-2 with r_1 = 1/3), sharing every evaluation; E combines the per-sample errors by
    ``error_norm``: their RMS over the batch (default) or the largest; h ← min(θ h E^{-1/k}, λ(eps) - λ_s). NFE = k · (accepted + rejected) (+1 with
    ``denoise``); the info dict reports ``accepted``, ``rejected`` and ``nfe``. The callback fires
    after each accepted step.
    """
    sde = run.sde
    start, last = nodes(sde, torch.tensor([run.t_start, run.eps], dtype=torch.float64))
    fractions = SINGLESTEP_FRACTIONS[order]
    s, h, x_prev = start, h_init, x
    accepted = rejected = 0
    while last.lam - s.lam > LAMBDA_TOLERANCE:
        h = min(h, last.lam - s.lam)
        attempt = nodes_at_lambda(sde, [s.lam + r * h for r in fractions] + [s.lam + h])
        t = last if h == last.lam - s.lam else attempt[-1]
        run.begin_step(accepted)
        x_high, x_low = singlestep_update(run.score, x, s, attempt[:-1], t, PREDICTIONS["noise"])
        error = float(ERROR_NORMS[error_norm](scaled_error(x_high, x_low, x_prev, atol, rtol)))
        if not math.isfinite(error):
            run.score.check()
            raise FloatingPointError(f"dpm_solver_adaptive: non-finite error estimate at t = {s.t}")
        if error <= 1.0:
            x, x_prev, s = x_high, x_low, t
            run.step_done(accepted)
            accepted += 1
        else:
            rejected += 1
        h = safety * h * max(error, 1e-10) ** (-1.0 / order)
    nfe = order * (accepted + rejected) + int(denoise)
    out = data_prediction(run.score, x, last) if denoise else x
    return out, {"accepted": accepted, "rejected": rejected, "nfe": nfe}


class BrownianMemory:
    """Per-sample stacks of Brownian increments (Δt, ΔW) drawn but not yet used: rejection sampling
    with memory (RSwM1 of Rackauckas & Nie 2017).

    A rejected step keeps its increment, and a shorter retry takes the Brownian-bridge part of it,
    ΔW' ~ N((h/Δt) ΔW, h (Δt - h)/Δt); the rest waits on the stack for the next steps. Every sample's
    noise is thus one Brownian path whatever is accepted: drawing fresh noise after a rejection
    would keep only increments with small local errors, i.e. bias the noise towards small values.
    """

    def __init__(self, x: torch.Tensor) -> None:
        batch = x.shape[0]
        self.dt = torch.zeros(batch, 1, dtype=torch.float64, device=x.device)
        self.dw = torch.zeros((batch, 1) + x.shape[1:], dtype=x.dtype, device=x.device)
        self.depth = torch.zeros(batch, dtype=torch.long, device=x.device)
        self.rows = torch.arange(batch, device=x.device)

    def _top(self) -> tuple[torch.Tensor, torch.Tensor]:
        level = (self.depth - 1).clamp(min=0)
        return self.dt[self.rows, level], self.dw[self.rows, level]

    def _set_top(self, mask: torch.Tensor, dt: torch.Tensor, dw: torch.Tensor) -> None:
        level = (self.depth - 1).clamp(min=0)
        self.dt[self.rows, level] = torch.where(mask, dt, self.dt[self.rows, level])
        self.dw[self.rows, level] = torch.where(append_dims(mask, dw.ndim), dw, self.dw[self.rows, level])

    def _push(self, mask: torch.Tensor, dt: torch.Tensor, dw: torch.Tensor) -> None:
        if int(self.depth.max()) == self.dt.shape[1]:
            self.dt = torch.cat([self.dt, torch.zeros_like(self.dt[:, :1])], dim=1)
            self.dw = torch.cat([self.dw, torch.zeros_like(self.dw[:, :1])], dim=1)
        self.depth = self.depth + mask.long()
        self._set_top(mask, dt, dw)

    def take(self, h: torch.Tensor, generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """The step h_used = min(h, Δt_top) and its increment ΔW, drawing a fresh (h, √h z) where
        the stack is empty."""
        fresh = (self.depth == 0) & (h > 0)
        z = noise_like(self.dw[:, 0], generator)
        self._push(fresh, h, append_dims(h.sqrt(), z.ndim).to(z.dtype) * z)
        top_dt, top_dw = self._top()
        h_used = torch.minimum(h, top_dt)
        span = top_dt.clamp(min=1e-300)
        mean = append_dims(h_used / span, z.ndim).to(z.dtype) * top_dw
        std = append_dims((h_used * (top_dt - h_used) / span).clamp(min=0).sqrt(), z.ndim).to(z.dtype)
        return h_used, mean + std * noise_like(z, generator)

    def settle(self, accept: torch.Tensor, active: torch.Tensor, h_used: torch.Tensor, dw: torch.Tensor) -> None:
        """Remove the used part of the top interval after an accepted step; after a rejection keep
        it as its own piece above the remainder."""
        top_dt, top_dw = self._top()
        partial = active & (h_used < top_dt)
        self._set_top(partial, top_dt - h_used, top_dw - dw)
        self.depth = self.depth - (accept & ~partial).long()
        self._push(active & ~accept & partial, h_used, dw)


def improved_euler_step(sde: LinearSDE, score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                        dw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One stochastic improved-Euler step of the reverse SDE from t to t_next = t - h ((B,) float64
    times) with the Brownian increment ΔW (Jolicoeur-Martineau et al. 2021, Alg. 1), the same ΔW in
    both stages and b(x, t) = f(t) x - g(t)² s(x, t):

        x' = x - h b(x, t) + g(t) ΔW                               (Euler–Maruyama)
        x̃ = x - h b(x', t - h) + g(t - h) ΔW,  x'' = (x' + x̃)/2    (improved Euler)

    Two score evaluations; returns (x', x'')."""
    h = append_dims(t - t_next, x.ndim).to(x.dtype)
    g, g_next = append_dims(sde.g2(t), x.ndim).to(x.dtype).sqrt(), append_dims(sde.g2(t_next), x.ndim).to(x.dtype).sqrt()
    x_euler = x - h * sde.reverse_drift(x, t, score_fn(x, t.to(x.dtype))) + g * dw
    x_tilde = x - h * sde.reverse_drift(x_euler, t_next, score_fn(x_euler, t_next.to(x.dtype))) + g_next * dw
    return x_euler, (x_euler + x_tilde) / 2


@register_method(
    "gotta_go_fast",
    ADAPTIVE,
    options={**control_options(0.05, 0.0078, 0.01), "exponent": positive(0.9),
             "error_norm": choice("per_sample", ("per_sample",) + tuple(ERROR_NORMS))},
    takes=("eps", "t_start"),
    adaptive=lambda options: True,
)
def gotta_go_fast(run: Run, x: torch.Tensor, *, rtol: float, atol: float, h_init: float, safety: float,
                  exponent: float, error_norm: str, denoise: bool) -> tuple[torch.Tensor, dict[str, Any]]:
    """Adaptive improved Euler on the reverse SDE, per sample (Jolicoeur-Martineau et al. 2021, Alg. 1).

    Each attempt is ``improved_euler_step`` (x' Euler–Maruyama, x'' improved Euler, the same
    Brownian increment ΔW = √h z in both). E_i = ‖(x' - x'')/δ‖₂/√n per sample with
    δ = max(atol, rtol max(|x'|, |x'_prev|)) (the paper's ε_abs, ε_rel); a sample accepts when
    E ≤ 1 (keeping x'', extrapolation; x'_prev ← x') and sets h ← min(t - eps, θ h E^{-r}).
    ``error_norm="per_sample"`` (default) is the paper's control: each sample has its own t and h, so
    ``score_fn`` gets non-constant (B,) times. ``"rms"`` or ``"max"`` share one step among the batch,
    controlled by the RMS or the largest of the E_i, as ``dpm_solver_adaptive`` does. Unlike the
    paper, which redraws z after a rejection, the increments come from ``BrownianMemory`` so that
    rejections do not bias the noise (redrawing skews the mode weights; README, "Fast solvers").
    nfe counts batched score calls: 2 per iteration, all samples together (finished and rejected
    ones included), plus the final Tweedie denoise. The info dict holds ``iterations``, per-sample
    ``accepted`` and ``rejected`` totals summed over the batch, and ``nfe``. The callback fires
    after each iteration (a step of every unfinished sample).
    """
    sde, eps, generator = run.sde, run.eps, run.generator
    start, last = nodes(sde, torch.tensor([run.t_start, eps], dtype=torch.float64))
    t = torch.full((x.shape[0],), start.t, dtype=torch.float64, device=x.device)
    h = torch.full_like(t, min(h_init, start.t - eps))
    x_prev, memory = x, BrownianMemory(x)
    accepted = rejected = iterations = 0
    while bool((t > eps).any()):
        run.begin_step(iterations)
        active = t > eps
        h, dw = memory.take(h, generator)
        t_next = torch.where(h >= t - eps, torch.full_like(t, eps), t - h)
        x_euler, x_heun = improved_euler_step(sde, run.score, x, t, t_next, dw)
        error = scaled_error(x_heun, x_euler, x_prev, atol, rtol).to(torch.float64)
        if error_norm != "per_sample":
            error = ERROR_NORMS[error_norm](error).expand_as(error)
        accept = active & (error <= 1.0)
        memory.settle(accept, active, h, dw)
        x = torch.where(append_dims(accept, x.ndim), x_heun, x)
        x_prev = torch.where(append_dims(accept, x.ndim), x_euler, x_prev)
        t = torch.where(accept, t_next, t)
        h = torch.minimum(t - eps, safety * h * error.clamp(min=1e-10) ** (-exponent))
        accepted += int(accept.sum())
        rejected += int((active & ~accept).sum())
        run.step_done(iterations)
        iterations += 1
    out = data_prediction(run.score, x, last) if denoise else x
    return out, {"iterations": iterations, "accepted": accepted, "rejected": rejected, "nfe": 2 * iterations + int(denoise)}
