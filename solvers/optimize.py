"""Step schedules fitted to a score function: ``optimize_schedule``.

A fixed-grid solver with n steps maps a latent x_T to Φ(x_T; t_0, ..., t_n). Xue et al. (2024,
"Accelerating Diffusion Sampling with Optimized Time Steps", CVPR) choose the interior times to
minimise the distance between Φ and the exact solution of the probability-flow ODE; they minimise an
analytic bound on it. Here, as in Optimal Stepsize Distillation (Pei et al. 2025) and GITS (Chen et
al. 2024), the distance is measured on the score function itself: against a high-accuracy solution
x*(x_T) from the same latents,

    J(t_1, ..., t_{n-1}) = median_i ‖Φ(x_T^i; t) - x*(x_T^i)‖₂,     i = 1, ..., m = ``n_samples`` latents,

over λ_0 = λ(t_start) < λ_1 < ... < λ_n = λ(eps) (λ = log α/σ). J is the whole trajectory's error
of the very solver that will use the schedule (multistep history, lower-order warm-up and final
denoise included), which a per-step dynamic programme cannot see for multistep solvers. The search
starts from the best of the named schedules (so the result is never worse than them on the
fitting latents) and moves one interior λ_k at a time by a fraction δ of the gap to its
neighbour, accepting improvements, with δ = 1/2, 1/4, ... (a compass / pattern search on a
candidate grid that refines around the incumbent). The median (``statistic="median"``, the
default) leaves out the few latents that land in another mode, whose distances, of the order of
the modes' separation, would otherwise decide the fit; ``statistic="mean"`` is the mean norm.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torchdiffeq import odeint

from sde_diffusion.core.parameterization import data_from_score
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import check_positive_int

from .api import sample
from .common import full_time, tweedie_denoise
from .schedules import SCHEDULES, resolve_t_start, time_steps
from .spec import FIXED_GRID, METHODS, Method

#: Fractions of the gap to a neighbour tried by the pattern search, coarse to fine.
STEP_FRACTIONS = tuple(2.0**-k for k in range(1, 6))
#: The statistic of the per-latent distances that the fit minimises.
STATISTICS = {"median": torch.median, "mean": torch.mean}
#: Tolerance of the reference solution the schedule is fitted against.
REFERENCE_TOL = {torch.float64: 1e-8, torch.float32: 1e-6}


def reference_solution(
    sde: LinearSDE, score_fn: ScoreFn, x: torch.Tensor, t_start: float, eps: float, *, rtol: float, atol: float, denoise: bool
) -> torch.Tensor:
    """The PF-ODE solved with dopri5 from x at t_start to eps (then Tweedie's x̂_0 with ``denoise``),
    in float64 (the score is called in x's dtype, e.g. float32 for a network), in the variables y = x/α and u = log(σ/α) = -λ, where it reads dy/du = y - D(α y, t(u))
    with D = x̂_0 (Karras et al. 2022, eq. 4 with σ(t) = t, s(t) = 1): smooth in u on every SDE."""

    def velocity(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = sde.t_of_lambda(-u)
        alpha, sigma = sde.alpha(t), sde.sigma(t)
        xt = alpha * y
        score = score_fn(xt.to(x.dtype), full_time(xt, float(t)).to(x.dtype)).to(torch.float64)
        return y - data_from_score(score, xt, alpha, sigma)

    t0, t1 = torch.tensor(t_start, dtype=torch.float64), torch.tensor(eps, dtype=torch.float64)
    u_span = torch.stack([-sde.lambda_(t0), -sde.lambda_(t1)])
    with torch.no_grad():
        y = odeint(velocity, x.to(torch.float64) / sde.alpha(t0), u_span, rtol=rtol, atol=atol, method="dopri5")[-1]
        out = (sde.alpha(t1) * y).to(x.dtype)
        return tweedie_denoise(sde, score_fn, out, eps) if denoise else out


def steps_for_nfe(spec: Method, nfe: int, options: dict[str, Any]) -> int:
    """The most steps whose NFE (the spec's count at the resolved options) is ≤ ``nfe``."""
    resolved = spec.resolve(options)
    steps = 0
    while spec.nfe(steps + 1, resolved) <= nfe:
        steps += 1
    if steps < 1:
        raise ValueError(f"method {spec.name!r} needs at least {spec.nfe(1, resolved)} evaluations, got nfe={nfe}")
    return steps


def optimize_schedule(
    sde: LinearSDE,
    score_fn: ScoreFn,
    shape: tuple[int, ...],
    method: str,
    nfe: int,
    *,
    t_start: Optional[float] = None,
    eps: Optional[float] = None,
    n_samples: int = 256,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float64,
    statistic: str = "median",
    **options: Any,
) -> torch.Tensor:
    """The decreasing times (float64, t_start first, eps last) that minimise the ``statistic`` of the
    distances of ``method``'s output at ``nfe`` evaluations to the exact probability-flow solution
    from the same latents (module docstring; Xue et al. 2024's objective, measured as in Pei et al.
    2025).

    Args:
      shape: per-sample shape (without the batch dimension).
      method: a deterministic fixed-grid method of ``solvers.available()``.
      nfe: the evaluation budget; the schedule has the most steps that fit in it.
      t_start, eps: the interval (None: T and the SDE's default eps).
      n_samples: latents drawn from the prior (rescaled to σ(t_start)) with ``generator``.
      dtype: the dtype the score function is called in (float64 for exact targets, float32 for a
        network, whose rounding limits the reference to a tolerance of 1e-6).
      statistic: ``"median"`` or ``"mean"`` of the per-latent distances (module docstring).
      **options: the method's options, held fixed during the fit.

    Pass the result back as ``solvers.sample(..., method, schedule=times)`` with the same options.
    """
    spec = METHODS.get(method)
    if spec.family is not FIXED_GRID:
        raise ValueError(f"optimize_schedule needs a fixed-grid method; {method!r} is {spec.family.name}")
    if "schedule" in options:
        raise ValueError("the fitted times replace the schedule; do not pass one")
    if not spec.is_deterministic(options):
        raise ValueError(f"optimize_schedule needs a deterministic method; {method!r} with {options} is stochastic")
    check_positive_int(nfe, "nfe")
    check_positive_int(n_samples, "n_samples")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    reduce = STATISTICS[statistic]
    eps = sde.default_eps if eps is None else float(eps)
    t_start = resolve_t_start(sde, t_start, eps)
    std = float(sde.sigma(torch.tensor(t_start, dtype=torch.float64)))
    if dtype not in REFERENCE_TOL:
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    x_T = (std * torch.randn((n_samples, *shape), generator=generator, dtype=torch.float64)).to(dtype)
    steps = steps_for_nfe(spec, nfe, options)
    denoise = spec.resolve(options)["denoise"]
    tol = REFERENCE_TOL[dtype]
    target = reference_solution(sde, score_fn, x_T, t_start, eps, rtol=tol, atol=tol, denoise=denoise)

    def times_of(lams: list[float]) -> torch.Tensor:
        t = sde.t_of_lambda(torch.tensor(lams, dtype=torch.float64)).clamp(eps, t_start)
        t[0], t[-1] = t_start, eps
        return t

    def cost(lams: list[float]) -> float:
        x, _ = sample(sde, score_fn, x_T.shape, method, x_T=x_T, schedule=times_of(lams), **options)
        value = float(reduce((x - target).reshape(n_samples, -1).norm(dim=1)))
        return value if math.isfinite(value) else math.inf

    named = [sde.lambda_(time_steps(sde, steps, eps, name, t_start)).tolist() for name in SCHEDULES.names()]
    best, lams = min((cost(lams), lams) for lams in named)
    for fraction in STEP_FRACTIONS:
        improved = True
        while improved:
            improved = False
            for k in range(1, steps):
                for side in (k - 1, k + 1):
                    trial = list(lams)
                    trial[k] = lams[k] + fraction * (lams[side] - lams[k])
                    value = cost(trial)
                    if value < best:
                        best, lams, improved = value, trial, True
                        break
    return times_of(lams)
