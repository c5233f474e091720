"""The probability-flow ODE (Song et al. 2021, eq. 13) through torchdiffeq: sampling (``ode``, from t_start
to eps) and encoding (``encode``, from eps to T, its inverse).

The ODE is integrated in one of two variables (``VARIABLES``):

  log_sigma  y = x/α over u = log σ̃, σ̃ = σ/α = e^{-λ}:  dy/du = y - x̂_0(α y, t(u)) = -σ σ̃ s(α y, t(u))
             (Karras et al. 2022, eq. 4 with σ̃ as the noise level, written in log σ̃; k-diffusion's
             ``dpm_adaptive`` also steps in λ = -u), the default, integrated for the unit-variance
             state w = y/√(1 + σ̃²) (``LogSigmaPFODE``);
  t          x over t:  dx/dt = f(t) x - ½ g(t)² s(x, t)  (Song et al. 2021, eq. 13).

Both are the same ODE for every linear SDE: with g² = dσ²/dt - 2fσ² (the kernel's own std), y = x/α has
dy/dt = -½ g² s/α and dσ̃/dt = (σ' - fσ)/α = g²/(2σα), so dy/dσ̃ = -σ s, and x̂_0 = (x + σ² s)/α gives
y - x̂_0 = -σ σ̃ s = σ̃ dy/dσ̃. In (y, u) the ODE does not depend on the SDE, only on the range of σ̃.

Adaptive solvers end their last step exactly on the final time (torchdiffeq's ``step_t``), so that
no step is evaluated past it at clamped times and interpolated back.
"""
from __future__ import annotations

import abc
from typing import Any, Optional

import torch
from torchdiffeq import odeint
from tqdm.auto import tqdm

from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import check_finite

from .common import GuardedScore, Run, tweedie_denoise
from .grid import grid_times
from .schedules import SCHEDULES, time_steps
from .spec import METHODS, ODE_SOLVER, Requirement, choice, flag, integer, positive, register_method

#: torchdiffeq solvers that choose their own steps from ``rtol`` / ``atol``.
ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: torchdiffeq solvers that step on a fixed grid, with their evaluations per step (None: not known in
#: advance; the Adams methods warm up with Runge–Kutta steps, implicit Adams iterates to convergence).
FIXED_SOLVERS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4, "explicit_adams": None, "implicit_adams": None}


class PFODE(abc.ABC):
    """The PF-ODE right-hand side for torchdiffeq in a solver variable (a subclass: ``coordinate``
    maps times to it, ``to_state`` / ``from_state`` map x to the solver's state and back), with times
    clamped to [eps, T] (adaptive solvers probe times outside the interval while choosing a first
    step), and, given a ``run``, torchdiffeq's step hooks that drive the run's per-step score checks
    and callback (after each accepted step of an adaptive solver, with its latest evaluation; after
    each step of a fixed one, with the step's first)."""

    def __init__(self, sde: LinearSDE, score: ScoreFn, eps: float, adaptive: bool, bar: Any,
                 run: Optional[Run] = None) -> None:
        self.sde, self.score, self.eps, self.bar, self.run = sde, score, eps, bar, run
        self.accepted = self.rejected = 0
        if run is not None and adaptive:
            self.callback_accept_step, self.callback_reject_step = self._accept, self._reject
        elif run is not None:
            self.callback_step = self._fixed_step

    @abc.abstractmethod
    def coordinate(self, times: torch.Tensor) -> torch.Tensor:
        """The solver variable at the float64 ``times``."""

    def to_state(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return x

    def from_state(self, y: torch.Tensor, t: float) -> torch.Tensor:
        return y

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


VARIABLES: Registry[type[PFODE]] = Registry("PF-ODE variable")


@VARIABLES.register("t")
class TimePFODE(PFODE):
    """dx/dt = f(t) x - ½ g(t)² s(x, t) (Song et al. 2021, eq. 13)."""

    def coordinate(self, times: torch.Tensor) -> torch.Tensor:
        return times

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.bar.update()
        t = t.clamp(self.eps, self.sde.T).expand(x.shape[0])
        return self.sde.reverse_drift(x, t, self.score(x, t), probability_flow=True)


@VARIABLES.register("log_sigma")
class LogSigmaPFODE(PFODE):
    """dw/du = (w - c x̂_0(x, t(u)))/c² for w = x/√(α² + σ²) = y/c over u = log σ̃ = -λ, c = √(1 + σ̃²):
    the EDM ODE dy/du = y - x̂_0 (Karras et al. 2022, eq. 4, in log σ̃) with its state y = x/α scaled to
    unit variance at every noise level (EDM's input scaling c_in with σ_data = 1, Karras et al. 2022,
    Table 1), so that ``rtol`` / ``atol`` weigh every noise level alike. Written as
    dw/du = -(σ σ̃/c) s - (σ̃²/c²) w (y - x̂_0 = -σ σ̃ s, no cancellation at low noise); t(u) =
    ``sde.t_of_lambda(-u)`` in float64. Needs σ(eps) > 0."""

    def __init__(self, sde: LinearSDE, score: ScoreFn, eps: float, adaptive: bool, bar: Any,
                 run: Optional[Run] = None) -> None:
        super().__init__(sde, score, eps, adaptive, bar, run)
        self.u_min, self.u_max = self.coordinate(torch.tensor([eps, sde.T], dtype=torch.float64)).tolist()

    def coordinate(self, times: torch.Tensor) -> torch.Tensor:
        return -self.sde.lambda_(times.to(torch.float64))

    def _scale(self, t: float) -> float:
        """√(α² + σ²) at t: x = √(α² + σ²) w."""
        return float(torch.hypot(self.sde.alpha(t), self.sde.sigma(t)))

    def to_state(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return x / self._scale(t)

    def from_state(self, w: torch.Tensor, t: float) -> torch.Tensor:
        return w * self._scale(t)

    def __call__(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        self.bar.update()
        u = u.to(torch.float64).clamp(self.u_min, self.u_max)
        t = self.sde.t_of_lambda(-u).clamp(self.eps, self.sde.T)
        alpha, sigma, sigma_tilde = self.sde.alpha(t), self.sde.sigma(t), torch.exp(u)
        c2 = 1.0 + sigma_tilde**2
        s = self.score(torch.hypot(alpha, sigma).to(w.dtype) * w, t.to(w.dtype).expand(w.shape[0]))
        return -(sigma * sigma_tilde / c2.sqrt()).to(w.dtype) * s - (sigma_tilde**2 / c2).to(w.dtype) * w


def solve_pf_ode(sde: LinearSDE, score: ScoreFn, x: torch.Tensor, times: torch.Tensor, *, eps: float, solver: str,
                 rtol: float, atol: float, variable: str, progress: bool,
                 run: Optional[Run] = None) -> tuple[torch.Tensor, dict[str, int]]:
    """x at ``times[-1]`` from x at ``times[0]`` on the probability-flow ODE in ``variable``: adaptive
    solvers from ``rtol`` / ``atol`` (on the solver's state), fixed-step solvers on the grid ``times``
    (mapped to the variable). Returns x and the step counts."""
    adaptive = solver in ADAPTIVE_SOLVERS
    times = times.to(torch.float64).cpu()
    with tqdm(desc=f"ode ({solver})", unit="nfe", leave=False, disable=not progress) as bar:
        rhs = VARIABLES.get(variable)(sde, score, eps, adaptive, bar, run)
        grid = rhs.coordinate(times).to(device=x.device, dtype=x.dtype)
        options = {"step_t": grid[-1:]} if adaptive else {}
        y = odeint(rhs, rhs.to_state(x, float(times[0])), grid, method=solver, rtol=rtol, atol=atol, options=options)[-1]
    rhs.finish()
    return rhs.from_state(y, float(times[-1])), ({"accepted": rhs.accepted, "rejected": rhs.rejected} if adaptive else {})


def _fixed_only(run: Run, options: dict[str, Any]) -> bool:
    """``steps`` and ``schedule`` are for the fixed-step solvers."""
    return options["solver"] in FIXED_SOLVERS or not ({"steps", "schedule"} & run.given)


#: u = log σ̃ is -inf at σ = 0.
LOG_SIGMA_EPS = Requirement(lambda run, options: options["variable"] != "log_sigma" or run.eps > 0.0,
                            "eps > 0 with variable 'log_sigma' (log σ/α = -inf at σ = 0; variable='t' reaches eps = 0)",
                            lambda run: f"eps = {run.eps}")


@register_method(
    "ode",
    ODE_SOLVER,
    options={
        "solver": choice("dopri5", ADAPTIVE_SOLVERS + tuple(FIXED_SOLVERS)),
        "variable": choice("log_sigma", VARIABLES.names),
        "rtol": positive(1e-5),
        "atol": positive(1e-5),
        "schedule": choice("logsnr", SCHEDULES.names),
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
                          lambda run: f"{', '.join(sorted({'steps', 'schedule'} & run.given))} given"), LOG_SIGMA_EPS),
)
def ode(run: Run, x: torch.Tensor, *, solver: str, variable: str, rtol: float, atol: float, schedule: str, rho: float,
        denoise: bool) -> tuple[torch.Tensor, dict[str, int]]:
    """Probability-flow ODE sampling (Song et al. 2021, eq. 13) with a torchdiffeq solver.

    From t_start to eps in ``variable`` (module docstring): ``"log_sigma"``, dy/du = y - x̂_0(α y, t(u))
    for y = x/α over u = log σ/α (Karras et al. 2022, eq. 4), or ``"t"``, dx/dt = f(t) x - ½ g(t)² s(x, t).
    ``solver`` adaptive: ``rtol`` / ``atol`` on the solver's state (w = x/√(α² + σ²), or x); fixed-step:
    ``steps`` (default 100) steps of ``schedule`` (default ``logsnr``: uniform in u, the default variable),
    or the explicit grid, its times mapped to the variable. ``denoise`` adds a final Tweedie step at eps (one more score evaluation)."""
    if solver in ADAPTIVE_SOLVERS:
        times = torch.tensor([run.t_start, run.eps], dtype=torch.float64)
    else:
        times = grid_times(run, schedule, rho)
    x, info = solve_pf_ode(run.sde, run.score, x, times, eps=run.eps, solver=solver, rtol=rtol, atol=atol,
                           variable=variable, progress=run.progress, run=run)
    return (tweedie_denoise(run.sde, run.score, x, run.eps) if denoise else x), info


def encode(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x0: torch.Tensor,
    *,
    eps: Optional[float] = None,
    solver: str = "dopri5",
    variable: str = "log_sigma",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: Optional[int] = None,
    schedule: str = "logsnr",
    progress: bool = False,
) -> tuple[torch.Tensor, int]:
    """The latent z = x(T) of data ``x0`` placed at t = eps, by the probability-flow ODE integrated from eps
    to T in ``variable``: the inverse of ``sample(..., 'ode', x_T=z)`` with the same eps and solver settings
    (fixed-step solvers: ``steps`` steps, default 100, of ``schedule`` walked upwards).

    Returns ``(z, nfe)`` with nfe the counted score evaluations.
    """
    check_finite(x0, "x0")
    eps = sde.default_eps if eps is None else float(eps)
    if not 0.0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, {sde.T}), got {eps}")
    options = METHODS.get("ode").options
    for name, value in (("solver", solver), ("variable", variable), ("rtol", rtol), ("atol", atol), ("schedule", schedule)):
        options[name].check("encode", name, value)
    if variable == "log_sigma" and not eps > 0.0:
        raise ValueError(f"encode with variable 'log_sigma' needs eps > 0 (log σ/α = -inf at σ = 0); got eps = {eps}")
    if solver in ADAPTIVE_SOLVERS:
        times = torch.tensor([eps, sde.T], dtype=torch.float64)
    else:
        steps = integer(100).check("encode", "steps", 100 if steps is None else steps)
        times = time_steps(sde, steps, eps, schedule).flip(0)
    guarded = GuardedScore(score_fn, "encode")
    with torch.no_grad():
        try:
            z, _ = solve_pf_ode(sde, guarded, x0, times, eps=eps, solver=solver, rtol=rtol, atol=atol, variable=variable,
                                progress=progress)
        except Exception:
            guarded.check()
            raise
    guarded.check()
    return z, guarded.nfe


