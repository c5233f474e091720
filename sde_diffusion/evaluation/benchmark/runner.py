"""Running methods on a ``Problem``: matched latents, NFE fitted to the grid, counted and budgeted
score evaluations, one ``Row`` per run."""
from __future__ import annotations

import ast
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Optional

import torch

import solvers
from sde_diffusion.core import distributed
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.evaluation import metrics
from sde_diffusion.evaluation.benchmark.problem import (
    MAX_NFE,
    NFE_GRID,
    PROBE_STEPS,
    TOLERANCE_OPTIONS,
    TOLERANCES,
    Problem,
    noise_level_warning,
    prior_latents,
    quality,
    reference_solution,
)
from solvers.common import CountedScore


def solve_split(solve: Callable[[torch.Tensor], tuple[torch.Tensor, int]], x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``solve(x) -> (samples, nfe)`` with the rows of x split across the processes of a torchrun job:
    each solves its contiguous block, and the samples are gathered in order on every process. The NFE
    is the largest of the processes': the same for fixed steps, while an adaptive solver steps for the
    hardest sample of its block as a single process does for that of the whole batch. An exception on
    any process is raised on all (``distributed.gather_outcomes``)."""
    rows = distributed.local_rows(x.shape[0])

    def solve_block() -> tuple[torch.Tensor, int]:
        y, nfe = solve(x[rows])
        return y.cpu(), nfe

    parts = distributed.gather_outcomes(solve_block)
    return torch.cat([y for y, _ in parts]).to(x.device), max(nfe for _, nfe in parts)


@dataclass
class Row:
    """One benchmark run. Distance columns are None for stochastic methods, target columns for
    problems without an analytic target."""

    method: str
    setting: str
    nfe: int
    seconds: float
    deterministic: bool
    steps: Optional[int] = None
    tol: Optional[float] = None
    median_dist: Optional[float] = None
    rms_dist: Optional[float] = None
    mode_switch: Optional[float] = None
    energy: Optional[float] = None
    mode_tv: Optional[float] = None
    spread: Optional[float] = None
    off_manifold: Optional[float] = None
    mean_logp: Optional[float] = None
    fd: Optional[float] = None
    kid: Optional[float] = None
    kid_se: Optional[float] = None


@dataclass
class BenchmarkResult:
    """Rows of a sweep, methods or settings that could not run (with the reason), warnings, and the
    problem's description (including the reference's accuracy and the energy noise floor)."""

    problem: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class NFEBudgetExceeded(RuntimeError):
    """A run needed more score evaluations than the benchmark allows (an adaptive method at a tight
    tolerance); the run is abandoned and recorded as skipped."""


class BudgetedScore(CountedScore):
    """A counted score that raises ``NFEBudgetExceeded`` on the call past ``budget``."""

    def __init__(self, score_fn: ScoreFn, budget: int) -> None:
        super().__init__(score_fn)
        self.budget = budget

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.nfe >= self.budget:
            raise NFEBudgetExceeded(f"stopped after {self.budget} score evaluations (max_nfe)")
        return super().__call__(x, t)


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``"name:key=value,key=value"`` (values as Python literals, then as floats such as
    ``inf``, else strings) -> (name, options), e.g. ``"euler_maruyama:probability_flow=True"``."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad method option {item!r} in {spec!r}; write name:key=value,key=value")
        options[key.strip()] = literal(value.strip())
    return name.strip(), options


def literal(value: str) -> Any:
    """A Python literal, else a float (``inf``, ``nan``), else the string itself."""
    for parse in (ast.literal_eval, float):
        try:
            return parse(value)
        except (ValueError, SyntaxError):
            continue
    return value


def is_adaptive(spec: str) -> bool:
    """Whether ``spec`` ("name" or "name:key=value,...") is swept over tolerances, not steps, as its
    method declares for those options."""
    name, options = parse_method(spec)
    return solvers.METHODS.get(name).is_adaptive(options)


class Benchmark:
    """A problem with its matched latents, reference solution and true samples (each computed once
    on first use), and the runs over it. ``reference_tol`` None skips the reference solution and
    with it the distance columns (a trained image model's reference costs hundreds of NFE)."""

    def __init__(
        self, problem: Problem, *, reference_tol: Optional[float] = 1e-10, reference_method: str = "dopri5", max_nfe: int = MAX_NFE
    ) -> None:
        self.problem = problem
        self.max_nfe = max_nfe
        self.reference_tol = reference_tol
        self.reference_method = reference_method
        self.reference_nfe: Optional[int] = None
        self.reference_error: Optional[float] = None

    @cached_property
    def latents(self) -> torch.Tensor:
        return prior_latents(self.problem)

    @cached_property
    def reference(self) -> torch.Tensor:
        """The reference solution; its error is estimated by the median distance to a solution at a
        100× looser tolerance (an upper bound for the tighter one when the solver converges)."""
        p, tol = self.problem, self.reference_tol
        x, self.reference_nfe = solve_split(lambda x_T: reference_solution(p, x_T, rtol=tol, atol=tol, method=self.reference_method), self.latents)
        coarse, _ = solve_split(lambda x_T: reference_solution(p, x_T, rtol=100 * tol, atol=100 * tol, method=self.reference_method), self.latents)
        self.reference_error = metrics.distance_to_reference(coarse, x)["median"]
        return x.to(p.dtype)

    @cached_property
    def true_samples(self) -> Optional[torch.Tensor]:
        p = self.problem
        if p.true_samples is not None:
            return p.true_samples
        if p.target is None:
            return None
        g = torch.Generator().manual_seed(p.seed + 1)
        return p.target.sample(p.n, g, dtype=p.dtype).to(p.device)

    # --- running one method -------------------------------------------------------------------------
    def options(self, method: str, variant: dict[str, Any], tol: Optional[float] = None) -> dict[str, Any]:
        """The arguments a run of ``method`` gets: the problem's ``t_start`` where the method takes
        it, its ``denoise``, the tolerance ``tol`` for every tolerance option, then ``variant``."""
        spec = solvers.METHODS.get(method)
        accepted = spec.options
        p = self.problem
        opts: dict[str, Any] = {}
        if "t_start" in spec.takes:
            opts["t_start"] = p.t_start
        elif p.t_start != p.sde.T:
            raise ValueError(f"method {method!r} takes no t_start and always starts at T = {p.sde.T}, not at {p.t_start:.4g}")
        if "denoise" in accepted:
            opts["denoise"] = p.denoise
        if tol is not None:
            opts.update({k: tol for k in TOLERANCE_OPTIONS if k in accepted})
        return {**opts, **variant}

    def _sample(self, spec: str, x_T: torch.Tensor, steps: Optional[int], tol: Optional[float], seed: int) -> tuple[torch.Tensor, int]:
        name, variant = parse_method(spec)
        g = torch.Generator(device=x_T.device).manual_seed(seed)
        p, score = self.problem, BudgetedScore(self.problem.score_fn, self.max_nfe)
        eps = p.eps if "eps" in solvers.METHODS.get(name).takes else None
        return solvers.sample(p.sde, score, x_T.shape, name, steps=steps, eps=eps, x_T=x_T, generator=g, **self.options(name, variant, tol))

    def is_deterministic(self, spec: str, tol: Optional[float] = None) -> bool:
        """Whether ``spec``'s samples depend on x_T alone, as its method declares for its options."""
        name, variant = parse_method(spec)
        return solvers.METHODS.get(name).is_deterministic(variant)

    def steps_for_nfe(self, spec: str, targets: Sequence[int]) -> list[int]:
        """Distinct step counts whose NFE is nearest to each target: nfe(steps) = a + b·steps is
        fitted from two probe runs on a tiny batch (exact, since NFE is affine in steps)."""
        x_T = self.latents[:2]
        (s1, s2) = PROBE_STEPS
        n1 = self._sample(spec, x_T, s1, None, seed=0)[1]
        n2 = self._sample(spec, x_T, s2, None, seed=0)[1]
        slope = (n2 - n1) / (s2 - s1)
        if slope <= 0:
            raise ValueError(f"method {spec!r}: NFE does not grow with steps ({n1} at {s1}, {n2} at {s2})")
        offset = n1 - slope * s1
        steps = [max(1, round((target - offset) / slope)) for target in targets]
        return sorted(set(steps))

    def run(self, spec: str, *, steps: Optional[int] = None, tol: Optional[float] = None, deterministic: Optional[bool] = None) -> Row:
        """One run of ``spec`` (``"name"`` or ``"name:key=value,..."``) on all latents, timed and
        scored. ``deterministic`` (measured when None) selects the reference distances."""
        if deterministic is None:
            deterministic = self.is_deterministic(spec, tol)
        p = self.problem
        start = time.perf_counter()
        x, nfe = solve_split(lambda x_T: self._sample(spec, x_T, steps, tol, seed=distributed.rank_seed(p.seed + 2)), self.latents)
        seconds = time.perf_counter() - start
        scores = quality(
            x,
            target=p.target,
            true_samples=self.true_samples,
            reference=self.reference if deterministic and self.reference_tol is not None else None,
            image_metrics=p.image_metrics,
            log_density=p.log_density,
        )
        setting = f"tol={tol:g}" if tol is not None else f"steps={steps}"
        return Row(method=spec, setting=setting, nfe=nfe, seconds=seconds, deterministic=deterministic, steps=steps, tol=tol, **scores)

    # --- the sweep ----------------------------------------------------------------------------------
    def sweep(
        self,
        methods: Optional[Sequence[str]] = None,
        *,
        nfe_grid: Sequence[int] = NFE_GRID,
        tolerances: Sequence[float] = TOLERANCES,
        log: Optional[Callable[[str], None]] = None,
    ) -> BenchmarkResult:
        """Every method (default: all of ``solvers.available()``) over the NFE grid, or over the
        tolerances for adaptive ones. A method or setting that raises ``ValueError`` (e.g. it cannot
        start at t_start, or needs more steps) or needs more than ``max_nfe`` score evaluations is
        recorded in ``skipped`` with the message."""
        if not (nfe_grid and tolerances):
            raise ValueError(f"need a non-empty NFE grid and tolerance list, got {list(nfe_grid)} and {list(tolerances)}")
        specs = list(methods) if methods is not None else solvers.METHODS.names()
        for spec in specs:
            solvers.METHODS.get(parse_method(spec)[0])  # unknown names fail before any run
        result = BenchmarkResult(problem=self.problem.describe())
        message = noise_level_warning(self.problem)
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=2)
            result.warnings.append(message)
        for spec in specs:
            for row in self._sweep_method(spec, nfe_grid, tolerances, result):
                result.rows.append(row)
                if log is not None:
                    log(format_row(row))
        result.problem.update(self._summary())
        return result

    def _sweep_method(self, spec: str, nfe_grid: Sequence[int], tolerances: Sequence[float], result: BenchmarkResult) -> list[Row]:
        """The rows of one method. Tolerances run from loose to tight and stop at the first run over
        the NFE budget, as tighter ones cost more."""
        try:
            adaptive = is_adaptive(spec)
            settings = [(None, tol) for tol in sorted(tolerances, reverse=True)] if adaptive else [(s, None) for s in self.steps_for_nfe(spec, nfe_grid)]
            deterministic = self.is_deterministic(spec, settings[0][1])
        except (ValueError, NFEBudgetExceeded) as err:
            result.skipped.append((spec, str(err)))
            return []
        rows = []
        for steps, tol in settings:
            try:
                rows.append(self.run(spec, steps=steps, tol=tol, deterministic=deterministic))
            except (ValueError, NFEBudgetExceeded) as err:
                result.skipped.append((f"{spec} ({'tol' if tol is not None else 'steps'}={tol if tol is not None else steps})", str(err)))
                if isinstance(err, NFEBudgetExceeded):
                    break
        return rows

    def _summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.reference_nfe is not None:
            out.update(reference_nfe=self.reference_nfe, reference_tol=self.reference_tol, reference_error=self.reference_error)
        if self.true_samples is not None:
            out["energy_noise_floor"] = metrics.energy_noise_floor(self.true_samples, self.problem.n, self.true_samples.shape[0])
        if self.problem.target is not None:
            out["mode_tv_noise"] = metrics.sample_tv_bound(self.problem.target, self.problem.n, z=math.sqrt(2 / math.pi))
        p = self.problem
        if p.image_metrics is not None and p.floor_samples is not None:
            floor = p.image_metrics(p.floor_samples)
            out.update(fd_floor=floor["fd"], kid_floor=floor["kid"], kid_floor_se=floor["kid_se"], n_floor=p.floor_samples.shape[0])
        return out

def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_row(row: Row) -> str:
    """One line for logs."""
    return "  ".join(f"{k}={fmt(v)}" for k, v in asdict(row).items() if v is not None and k not in ("steps", "tol"))
