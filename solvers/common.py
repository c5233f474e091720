"""Pieces every sampler shares: the guarded, counted score; the run a method gets (with the one
per-step loop that reports progress, checks the score and calls the callback); noise; the final
denoise."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from sde_diffusion.core.parameterization import data_from_score
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import finite_bounds

#: The non-finite flags of the score calls are read back (one host sync) every this many steps,
#: before every callback and at the end of a run.
CHECK_EVERY = 8

StepCallback = Callable[[dict[str, Any]], Any]


class NonFiniteScoreError(FloatingPointError):
    """The score function returned NaN or infinity; sampling stopped."""


class CountedScore:
    """Wraps ``score_fn`` and counts every call: ``nfe`` is exact by construction."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.score_fn(x, t)


class GuardedScore(CountedScore):
    """A counted score that checks the output's shape on the first call (``ValueError``) and flags
    non-finite outputs on the device, without a host sync: each call keeps the output's
    ``finite_bounds`` (its min and max); ``check`` reads them back and raises
    ``NonFiniteScoreError`` naming the method, the step and t of the first bad call. It also keeps
    the first call of the current step and the latest call, the (x, t, s) from which the per-step
    callback's x̂_0 is computed."""

    def __init__(self, score_fn: ScoreFn, method: str) -> None:
        super().__init__(score_fn)
        self.method = method
        self.step = 0
        self.bounds: list[torch.Tensor] = []
        self.calls: list[tuple[int, torch.Tensor]] = []
        self.first: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self.last: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        score = super().__call__(x, t)
        if self.nfe == 1 and (not isinstance(score, torch.Tensor) or score.shape != x.shape):
            got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
            raise ValueError(f"{self.method}: score_fn returned shape {got}, expected {tuple(x.shape)} (the shape of x)")
        self.bounds += finite_bounds(score.detach())  # kept until the next check: no autograd graph with them
        self.calls.append((self.step, t))
        self.last = (x, t, score)
        if self.first is None:
            self.first = self.last
        return score

    def begin_step(self, step: int) -> None:
        self.step, self.first = step, None

    def check(self) -> None:
        """Raise ``NonFiniteScoreError`` if a call since the last check returned NaN or infinity."""
        if not self.bounds:
            return
        finite = torch.isfinite(torch.stack(self.bounds).view(-1, 2)).all(dim=1)
        if not bool(finite.all()):
            step, t = self.calls[int((~finite).nonzero()[0, 0])]
            lo, hi = float(t.min()), float(t.max())
            when = f"t = {lo:.6g}" if lo == hi else f"t in [{lo:.6g}, {hi:.6g}]"
            raise NonFiniteScoreError(f"{self.method}: score_fn returned a non-finite value (NaN or inf) at step {step}, {when}; sampling stopped")
        self.bounds, self.calls = [], []


@dataclass
class Run:
    """One call of ``solvers.sample`` as a method sees it: the SDE, the guarded score, the resolved
    shared arguments and the per-step loop.

    ``steps`` is the resolved step count (None for adaptive methods), ``t_start`` and ``eps`` the
    ends of the interval as floats, ``grid`` the explicit decreasing times given as ``schedule=``
    (float64, from t_start to eps) or None, ``given`` the shared arguments the caller set."""

    sde: LinearSDE
    score: GuardedScore
    steps: Optional[int]
    eps: float
    t_start: float
    grid: Optional[torch.Tensor]
    generator: Optional[torch.Generator]
    progress: bool = False
    callback: Optional[StepCallback] = None
    given: frozenset[str] = frozenset()
    completed: int = field(default=0, init=False)

    def stepping(self, n: int) -> Iterator[int]:
        """The one loop of every stepped method: ``for i in run.stepping(n): <update x>``, with the
        progress bar, the score checks and the callback after each step."""
        for i in tqdm(range(n), desc=self.score.method, leave=False) if self.progress else range(n):
            self.score.begin_step(i)
            yield i
            self.step_done(i)

    def begin_step(self, step: int) -> None:
        """For methods that loop themselves (adaptive steps): a new attempt of step ``step``."""
        self.score.begin_step(step)

    def step_done(self, step: int, at: str = "first") -> None:
        """After a completed step: the score check (every ``CHECK_EVERY`` steps) and the callback with
        the step's ``at`` = "first" (or "last") score call."""
        self.completed += 1
        if self.callback is None:
            if step % CHECK_EVERY == CHECK_EVERY - 1:
                self.score.check()
            return
        self.score.check()
        record = self.score.first if at == "first" else self.score.last
        if record is None:
            return
        x, t, s = record
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        self.callback({"step": step, "t": t, "x": x, "denoised": data_from_score(s, x, alpha.to(x.dtype), sigma.to(x.dtype))})


def noise_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard normal noise of x's shape, dtype and device, drawn from ``generator``."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def full_time(x: torch.Tensor, t: float) -> torch.Tensor:
    """A ``(B,)`` time tensor of value t in x's dtype."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def tweedie_denoise(sde: LinearSDE, score_fn: ScoreFn, x: torch.Tensor, t: float) -> torch.Tensor:
    """One final denoising step x̂_0 = (x + σ(t)² ∇log p_t(x)) / α(t) (Tweedie's formula),
    costing one score evaluation."""
    tt = full_time(x, t)
    alpha, sigma = sde.alpha(tt), sde.sigma(tt)
    return data_from_score(score_fn(x, tt), x, alpha, sigma)
