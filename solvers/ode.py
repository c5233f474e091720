"""The probability-flow ODE (Song et al. 2021, eq. 13) through torchdiffeq: sampling (``ode``, from t_start
to eps) and encoding (``encode``, from eps to T, its inverse)."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torchdiffeq import odeint
from tqdm.auto import tqdm

from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import check_finite

from .common import GuardedScore, Run, tweedie_denoise
from .grid import grid_times
from .schedules import SCHEDULES
from .spec import METHODS, ODE_SOLVER, Requirement, choice, flag, integer, positive, register_method

#: torchdiffeq solvers that choose their own steps from ``rtol`` / ``atol``.
ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: torchdiffeq solvers that step on a fixed grid, with their evaluations per step (None: not known in
#: advance; the Adams methods warm up with Runge–Kutta steps, implicit Adams iterates to convergence).
FIXED_SOLVERS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4, "explicit_adams": None, "implicit_adams": None}


class PFODE:
    """The PF-ODE right-hand side dx/dt = f(t) x - ½ g(t)² s(x, t) for torchdiffeq, with t clamped
    to [eps, T] (adaptive solvers probe times outside the interval while choosing a first step),
    and, given a ``run``, torchdiffeq's step hooks that drive the run's per-step score checks and
    callback (after each accepted step of an adaptive solver, with its latest evaluation; after
    each step of a fixed one, with the step's first)."""

    def __init__(self, sde: LinearSDE, score: ScoreFn, eps: float, adaptive: bool, bar: Any,
                 run: Optional[Run] = None) -> None:
        self.sde, self.score, self.eps, self.bar, self.run = sde, score, eps, bar, run
        self.accepted = self.rejected = 0
        if run is not None and adaptive:
            self.callback_accept_step, self.callback_reject_step = self._accept, self._reject
        elif run is not None:
            self.callback_step = self._fixed_step

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.bar.update()
        t = t.clamp(self.eps, self.sde.T).expand(x.shape[0])
        return self.sde.reverse_drift(x, t, self.score(x, t), probability_flow=True)

    def _accept(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.run.step_done(self.accepted, at="last")
        self.accepted += 1
        self.run.begin_step(self.accepted)

    def _reject(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.rejected += 1
        self.run.score.check()

    def _fixed_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        if self.accepted > 0:
            self.run.step_done(self.accepted - 1)
        self.run.begin_step(self.accepted)
        self.accepted += 1

    def finish(self) -> None:
        """The last fixed step's hooks (torchdiffeq has no hook after a step)."""
        if self.run is not None and hasattr(self, "callback_step") and self.accepted > 0:
            self.run.step_done(self.accepted - 1)


def solve_pf_ode(sde: LinearSDE, score: ScoreFn, x: torch.Tensor, times: torch.Tensor, *, eps: float, solver: str,
                 rtol: float, atol: float, progress: bool, run: Optional[Run] = None) -> tuple[torch.Tensor, dict[str, int]]:
    """x at ``times[-1]`` from x at ``times[0]`` on the probability-flow ODE: adaptive solvers from
    ``rtol`` / ``atol``, fixed-step solvers on the grid ``times``. Returns x and the step counts."""
    adaptive = solver in ADAPTIVE_SOLVERS
    with tqdm(desc=f"ode ({solver})", unit="nfe", leave=False, disable=not progress) as bar:
        rhs = PFODE(sde, score, eps, adaptive, bar, run)
        times = times.to(device=x.device, dtype=x.dtype)
        out = odeint(rhs, x, times, method=solver, rtol=rtol, atol=atol)[-1]
    rhs.finish()
    return out, ({"accepted": rhs.accepted, "rejected": rhs.rejected} if adaptive else {})


def _fixed_only(run: Run, options: dict[str, Any]) -> bool:
    """``steps`` and ``schedule`` are for the fixed-step solvers."""
    return options["solver"] in FIXED_SOLVERS or not ({"steps", "schedule"} & run.given)


@register_method(
    "ode",
    ODE_SOLVER,
    options={
        "solver": choice("dopri5", ADAPTIVE_SOLVERS + tuple(FIXED_SOLVERS)),
        "rtol": positive(1e-5),
        "atol": positive(1e-5),
        "schedule": choice("time_uniform", SCHEDULES.names),
        "rho": positive(7.0),
        "denoise": flag(False),
    },
    default_steps=100,
    deterministic=lambda options: True,
    adaptive=lambda options: options["solver"] in ADAPTIVE_SOLVERS,
    nfe=lambda steps, options: (
        None if FIXED_SOLVERS.get(options["solver"]) is None else FIXED_SOLVERS[options["solver"]] * steps + int(options["denoise"])
    ),
    requires=(Requirement(_fixed_only, "no steps or schedule with an adaptive solver (it chooses its own steps from rtol / atol)",
                          lambda run: f"{', '.join(sorted({'steps', 'schedule'} & run.given))} given"),),
)
def ode(run: Run, x: torch.Tensor, *, solver: str, rtol: float, atol: float, schedule: str, rho: float,
        denoise: bool) -> tuple[torch.Tensor, dict[str, int]]:
    """Probability-flow ODE sampling (Song et al. 2021, eq. 13) with a torchdiffeq solver.

    dx/dt = f(t) x - ½ g(t)² s(x, t) from t_start to eps with ``solver`` (adaptive: ``rtol`` / ``atol``;
    fixed-step: ``steps`` (default 100) steps of ``schedule``, uniform in t by default, or the explicit
    grid); ``denoise`` adds a final Tweedie step at eps (one more score evaluation)."""
    if solver in ADAPTIVE_SOLVERS:
        times = torch.tensor([run.t_start, run.eps], dtype=torch.float64)
    else:
        times = grid_times(run, schedule, rho)
    x, info = solve_pf_ode(run.sde, run.score, x, times, eps=run.eps, solver=solver, rtol=rtol, atol=atol,
                           progress=run.progress, run=run)
    return (tweedie_denoise(run.sde, run.score, x, run.eps) if denoise else x), info


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
    to T: the inverse of ``sample(..., 'ode', x_T=z)`` with the same eps and solver settings (fixed-step
    solvers: ``steps`` uniform steps, default 100).

    Returns ``(z, nfe)`` with nfe the counted score evaluations.
    """
    check_finite(x0, "x0")
    eps = sde.default_eps if eps is None else float(eps)
    if not 0.0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, {sde.T}), got {eps}")
    options = METHODS.get("ode").options
    for name, value in (("solver", solver), ("rtol", rtol), ("atol", atol)):
        options[name].check("encode", name, value)
    if solver in ADAPTIVE_SOLVERS:
        times = torch.tensor([eps, sde.T], dtype=torch.float64)
    else:
        steps = integer(100).check("encode", "steps", 100 if steps is None else steps)
        times = torch.linspace(eps, sde.T, steps + 1, dtype=torch.float64)
    guarded = GuardedScore(score_fn, "encode")
    with torch.no_grad():
        try:
            z, _ = solve_pf_ode(sde, guarded, x0, times, eps=eps, solver=solver, rtol=rtol, atol=atol, progress=progress)
        except Exception:
            guarded.check()
            raise
    guarded.check()
    return z, guarded.nfe
