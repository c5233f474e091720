"""The one entry point: ``sample(sde, score_fn, shape, method, ...) -> (x, nfe)``."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch

from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import check_finite, check_positive_int

from .common import GuardedScore, Run, StepCallback
from .schedules import check_grid
from .spec import METHODS

#: Fields of ``config.sampling`` that are not method options.
GENERAL_FIELDS = ("method", "steps", "eps", "t_start")

Schedule = Union[str, torch.Tensor, Sequence[float]]


def sample(
    sde: LinearSDE,
    score_fn: ScoreFn,
    shape: tuple[int, ...],
    method: str,
    *,
    steps: Optional[int] = None,
    eps: Optional[float] = None,
    t_start: Optional[float] = None,
    schedule: Optional[Schedule] = None,
    x_T: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device | str] = None,
    progress: bool = False,
    callback: Optional[StepCallback] = None,
    return_info: bool = False,
    **options: Any,
):
    """Draw samples by integrating from t_start (default T) down to ``eps`` with ``method``.

    Every input is checked here, once; the method's family (``solvers.available()[method]``) fixes
    what ``steps``, ``eps``, ``t_start`` and ``schedule`` mean, and a method that does not take one of
    them refuses it with ``ValueError``.

    Args:
      sde: the forward SDE the score belongs to.
      score_fn: ``score_fn(x, t) -> ∇log p_t(x)`` with ``t`` a ``(B,)`` tensor; its output must have
        x's shape (checked on the first call) and be finite (else ``NonFiniteScoreError``).
      shape: ``(B, ...)`` of the samples (ignored when ``x_T`` is given).
      method: a name from ``solvers.available()``.
      steps: number of steps; None uses the method's ``default_steps``.
      eps: final time; None uses the SDE's default (1e-3 VP / sub-VP, 1e-5 VE).
      t_start: initial time in (eps, T]; None is T.
      schedule: the name of a time-step schedule (a fixed-grid method's option), or a 1-D tensor or
        sequence of strictly decreasing times from t_start to eps, the explicit grid (its length
        fixes steps, its ends t_start and eps).
      x_T: initial latent at t_start (default: a draw from the prior with ``generator``, rescaled to
        std σ(t_start) when t_start < T).
      generator: ``torch.Generator`` for every random draw.
      progress: show a tqdm progress bar.
      callback: ``callback(info)`` after every step, with ``info["step"]``, ``info["t"]`` ((B,)),
        ``info["x"]`` (the state the step evaluated the score at, at t) and ``info["denoised"]``
        (x̂_0 there, Tweedie's formula); an exception it raises stops sampling and propagates.
      return_info: also return the statistics dict: ``steps`` (the completed steps, one callback
        each) and the method's own (accepted / rejected steps, ...).
      **options: method options (see ``solvers.available()``); unknown names or values outside
        what an option allows raise ``ValueError``.

    Returns:
      ``(x, nfe)`` where ``nfe`` counts every ``score_fn`` call, or ``(x, nfe, info)``.
    """
    spec = METHODS.get(method)
    if isinstance(schedule, str):  # a named schedule is the method's option
        options["schedule"], schedule = schedule, None
    given = {name for name, value in (("steps", steps), ("eps", eps), ("t_start", t_start), ("schedule", schedule)) if value is not None}
    refused = sorted(given - set(spec.takes))
    if refused:
        takes = ", ".join(spec.takes) or "none of steps, eps, t_start, schedule"
        raise ValueError(f"method {method!r} ({spec.family.name}) does not take {', '.join(refused)}; it takes {takes}")
    grid = None
    if schedule is not None:
        grid = check_grid(sde, schedule)
        steps, t_start, eps = _grid_ends(grid, steps, t_start, eps)
    opts = spec.resolve(options)
    if steps is not None:
        check_positive_int(steps, "steps")
    eps = sde.default_eps if eps is None else float(eps)
    if not 0.0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, {sde.T}), got {eps}")
    t_start = sde.T if t_start is None else float(t_start)
    if not eps < t_start <= sde.T:
        raise ValueError(f"t_start must lie in (eps, T] = ({eps}, {sde.T}], got {t_start}")
    guarded = GuardedScore(score_fn, method)
    run = Run(sde, guarded, spec.steps_for(sde, steps, opts), eps, t_start, grid, generator, progress, callback, frozenset(given))
    spec.check_run(run, opts)
    if x_T is None:
        x_T = sde.prior_sampling(tuple(shape), generator=generator, device=device)
        if t_start < sde.T:
            x_T = x_T * (float(sde.sigma(t_start)) / sde.prior_std)
    else:
        check_finite(x_T, "x_T")
        x_T = x_T.to(device) if device is not None else x_T
    with torch.no_grad():
        try:
            out = spec.run(run, x_T, **opts)
        except Exception:
            guarded.check()  # a non-finite score is the cause of whatever failed after it
            raise
    guarded.check()
    x, info = out if isinstance(out, tuple) else (out, {})
    info = {**info, "steps": run.completed}
    return (x, guarded.nfe, info) if return_info else (x, guarded.nfe)


def _grid_ends(grid: torch.Tensor, steps: Optional[int], t_start: Optional[float], eps: Optional[float]) -> tuple[int, float, float]:
    """steps, t_start and eps of an explicit grid; given ones must agree with it (t_start and eps to
    float32 rounding, a grid given in float32)."""
    if steps is not None and steps != grid.numel() - 1:
        raise ValueError(f"steps={steps} disagrees with the explicit schedule, which implies steps={grid.numel() - 1}")
    for name, value, implied in (("t_start", t_start, float(grid[0])), ("eps", eps, float(grid[-1]))):
        if value is not None and not math.isclose(value, implied, rel_tol=1e-6, abs_tol=1e-12):
            raise ValueError(f"{name}={value} disagrees with the explicit schedule, which implies {name}={implied}")
    return grid.numel() - 1, float(grid[0]), float(grid[-1])


def available() -> dict[str, dict[str, Any]]:
    """Every method with its description, family, default steps, the shared arguments it takes, its
    options (defaults, and what each allows) and its capabilities at the default options."""
    return {name: METHODS.get(name).describe() for name in METHODS.names()}


def _field(group: Any, name: str) -> Any:
    return group.get(name, None) if hasattr(group, "get") else getattr(group, name, None)


def get_sampler(sampling_config: Any, sde: LinearSDE):
    """The sampler described by ``config.sampling``: ``sampler(score_fn, shape, **kw) -> (x, nfe)``.

    ``config.sampling.method`` names the method, ``steps``, ``eps`` and ``t_start`` are shared, and
    the group ``config.sampling.<method>`` (if present) holds that method's options.
    """
    method = sampling_config.method
    spec = METHODS.get(method)
    group = _field(sampling_config, method)
    options = dict(group.items()) if group is not None else {}
    spec.resolve(options)  # fail now, not at the first call
    shared = {name: _field(sampling_config, name) for name in GENERAL_FIELDS[1:]}

    def sampler(score_fn: ScoreFn, shape: tuple[int, ...], **kwargs: Any):
        merged = {**shared, **options, **kwargs}
        return sample(sde, score_fn, shape, method, **merged)

    return sampler
