"""The one fixed-grid driver: DPM-Solver, DPM-Solver++, SDE-DPM-Solver++, UniPC, Heun, EDM and the
Euler–Maruyama / predictor–corrector samplers keep only their update; this module builds the
grid, runs the steps and applies the final denoise.

The grid is the explicit ``schedule=`` times when given, else ``steps`` intervals from t_start to
eps uniform in the named schedule's coordinate (``schedules.SCHEDULES``). With ``denoise`` the
sample is the Tweedie estimate x̂_0 = (x + σ² s)/α at the last node (one more evaluation).
"""
from __future__ import annotations

import abc
from typing import Any

import torch

from .common import Run
from .schedules import SCHEDULES, Node, data_prediction, nodes, time_steps
from .spec import Option, choice, flag, positive


def grid_options(schedule: str, denoise: bool = True) -> dict[str, Option]:
    """Options of every fixed-grid method: the named schedule (used when no explicit grid is
    given; ``schedule`` is the method's default), Karras' ρ and the final denoise."""
    return {"schedule": choice(schedule, SCHEDULES.names), "rho": positive(7.0), "denoise": flag(denoise)}


class GridStepper(abc.ABC):
    """The update of a fixed-grid method on ``grid`` (nodes t_0 = t_start > ... > t_n = eps):
    ``start`` maps x to the method's state, ``step(i, state)`` advances it from node i to i + 1 and
    ``finish`` maps the last state back to x at t_n. A stepper may step on a coarser ``self.grid``
    with the same ends (singlestep DPM-Solver groups intervals into steps)."""

    def __init__(self, run: Run, grid: list[Node], **options: Any) -> None:
        self.run, self.grid, self.score = run, grid, run.score

    def start(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @abc.abstractmethod
    def step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The state at node i + 1 from the state at node i."""

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return x


def grid_times(run: Run, schedule: str, rho: float) -> torch.Tensor:
    """The float64 times of the run: its explicit grid, or ``run.steps`` steps of ``schedule``."""
    if run.grid is not None:
        return run.grid
    return time_steps(run.sde, run.steps, run.eps, schedule, run.t_start, rho)


def run_grid(stepper_class: type[GridStepper], run: Run, x: torch.Tensor, *, schedule: str, rho: float, denoise: bool,
             **options: Any) -> torch.Tensor:
    """Build the grid, step through it with ``stepper_class``'s update, then denoise."""
    grid = nodes(run.sde, grid_times(run, schedule, rho))
    stepper = stepper_class(run, grid, **options)
    state = stepper.start(x)
    for i in run.stepping(len(stepper.grid) - 1):
        state = stepper.step(i, state)
    x = stepper.finish(state)
    return data_prediction(run.score, x, grid[-1]) if denoise else x


def grid_nfe(per_step: int, offset: int = 0):
    """``nfe(steps, options) = per_step · steps + offset + [denoise]``."""
    return lambda steps, options: per_step * steps + offset + int(options["denoise"])
