"""The probability-flow ODE (Song et al. 2021, eq. 13) through torchdiffeq: sampling (``ode``, from T to
eps) and encoding (``encode``, from eps to T, its inverse)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torchdiffeq import odeint
from tqdm.auto import tqdm

from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.utils import check_finite, check_positive_int

from .common import CountedScore, ScoreFn, tweedie_denoise
from .registry import register_method

#: torchdiffeq solvers that choose their own steps from ``rtol`` / ``atol``.
ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: torchdiffeq solvers that step on a fixed grid of ``steps`` uniform steps.
FIXED_SOLVERS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
#: Default number of steps of the fixed-grid solvers.
DEFAULT_FIXED_STEPS = 100


def pf_ode_drift(sde: LinearSDE, score_fn: ScoreFn, eps: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The probability-flow drift dx/dt = f(t) x - ½ g(t)² ∇log p_t(x) with t clamped to [eps, T]
    (adaptive solvers probe times outside the interval while choosing a first step)."""

    def drift(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.clamp(eps, sde.T)
        return sde.f(t) * x - 0.5 * sde.g2(t) * score_fn(x, t.expand(x.shape[0]))

    return drift


def solve_pf_ode(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    t0: float,
    t1: float,
    *,
    eps: float,
    solver: str,
    steps: Optional[int],
    rtol: float,
    atol: float,
    progress: bool,
) -> torch.Tensor:
    """x(t1) from x(t0) on the probability-flow ODE: adaptive solvers from ``rtol`` / ``atol`` (``steps``
    is ignored), fixed-grid solvers on ``steps`` (default 100) uniform steps."""
    if solver in ADAPTIVE_SOLVERS:
        if rtol <= 0 or atol <= 0:
            raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
        times = torch.tensor([t0, t1], dtype=torch.float64)
    elif solver in FIXED_SOLVERS:
        steps = DEFAULT_FIXED_STEPS if steps is None else steps
        check_positive_int(steps, "steps")
        times = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
    else:
        raise ValueError(f"unknown ODE solver {solver!r}; known: {', '.join(sorted(ADAPTIVE_SOLVERS + FIXED_SOLVERS))}")
    drift = pf_ode_drift(sde, score_fn, eps)
    with tqdm(desc=f"ode ({solver})", unit="nfe", leave=False, disable=not progress) as bar:

        def drift_with_bar(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            bar.update()
            return drift(t, x)

        times = times.to(device=x.device, dtype=x.dtype)
        return odeint(drift_with_bar, x, times, method=solver, rtol=rtol, atol=atol)[-1]


@register_method("ode", options={"solver": "dopri5", "rtol": 1e-5, "atol": 1e-5, "denoise": False}, deterministic=True)
def ode(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *,
    steps: Optional[int],
    eps: float,
    generator: Optional[torch.Generator],
    progress: bool,
    solver: str,
    rtol: float,
    atol: float,
    denoise: bool,
) -> torch.Tensor:
    """Probability-flow ODE sampling (Song et al. 2021, eq. 13) with a torchdiffeq solver.

    dx/dt = f(t) x - ½ g(t)² s(x, t) from T to eps with ``solver`` (adaptive: ``rtol`` / ``atol``;
    fixed-grid: ``steps``, default 100); ``denoise`` adds a final Tweedie step at eps (one more score
    evaluation)."""
    x = solve_pf_ode(
        sde, score_fn, x, sde.T, eps, eps=eps, solver=solver, steps=steps, rtol=rtol, atol=atol, progress=progress
    )
    return tweedie_denoise(sde, score_fn, x, eps) if denoise else x


def encode(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x0: torch.Tensor,
    *,
    eps: Optional[float] = None,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: Optional[int] = None,
    progress: bool = False,
) -> tuple[torch.Tensor, int]:
    """The latent z = x(T) of data ``x0`` placed at t = eps, by the probability-flow ODE integrated from eps
    to T: the inverse of ``sample(..., 'ode', x_T=z)`` with the same eps and solver settings.

    Returns ``(z, nfe)`` with nfe the counted score evaluations.
    """
    check_finite(x0, "x0")
    eps = sde.default_eps if eps is None else float(eps)
    if not 0.0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, {sde.T}), got {eps}")
    counted = CountedScore(score_fn)
    with torch.no_grad():
        z = solve_pf_ode(
            sde, counted, x0, eps, sde.T, eps=eps, solver=solver, steps=steps, rtol=rtol, atol=atol, progress=progress
        )
    return z, counted.nfe
