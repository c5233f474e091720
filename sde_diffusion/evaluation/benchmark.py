"""The step-count benchmark: every sampler across an NFE grid on one problem, scored against a
high-accuracy probability-flow ODE solution from the same latents and against the true law.

A ``Problem`` says what is sampled (SDE, score, start and end times, final denoise, number of
samples, seed, and what is known about the target). A ``Benchmark`` holds the problem's matched
latents, its reference solution and its true samples (each computed once), and runs methods:

    bench = Benchmark(mixture_problem(ring(), get_sde("vp"), sigma_start=80, sigma_end=0.002))
    row = bench.run("euler_maruyama:probability_flow=True", steps=100)
    result = bench.sweep()                 # every method of solvers.available()
    write_report(result, "benchmarks/results/ring_vp")

Fixed-step methods are run at the step counts whose counted NFE best matches each target of the
NFE grid (NFE is affine in ``steps`` for every method, so two probe runs on a tiny batch fix the
map); adaptive methods (``Method.is_adaptive`` of the run's options) are swept over their
tolerances ``rtol`` = ``atol`` instead. Deterministic methods (``Method.is_deterministic`` of the
run's options) are also scored against the reference: median and RMS distance and the fraction of
samples that changed mode (RMS alone is dominated by those few). Every row gets the distribution metrics of ``sde_diffusion.evaluation.metrics``.

Under torchrun the runs on all latents and the reference are split across the processes
(``solve_split``) and every process scores the gathered samples, so all of them return the same rows.
"""
from __future__ import annotations

import ast
import csv
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, Optional

import torch
from torchdiffeq import odeint

import solvers
from sde_diffusion.core import distributed
from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.parameterization import data_from_score
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.evaluation import metrics
from solvers.common import CountedScore, full_time, tweedie_denoise

#: The issue's NFE grid for fixed-step methods.
NFE_GRID = (5, 10, 20, 50, 100, 200, 500, 1000)
#: Tolerances for adaptive methods (every tolerance option of a method is set to the value).
TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
#: Option names that make a method adaptive.
TOLERANCE_OPTIONS = ("rtol", "atol")
#: Warn when a final denoise at eps would shrink the finest mode's spread by more than this.
SPREAD_TOLERANCE = 0.01
#: Step counts of the two probe runs that measure nfe(steps) = a + b·steps.
PROBE_STEPS = (10, 20)
#: Default cap on the score evaluations of one run (twice the grid's largest NFE).
MAX_NFE = 2 * max(NFE_GRID)

LogDensity = Callable[[torch.Tensor], torch.Tensor]


def time_of_noise_level(sde: LinearSDE, sigma: float) -> float:
    """The time t at which σ(t)/α(t) = ``sigma`` (the EDM/VE noise level), i.e. λ(t) = -log σ."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"noise level must be a positive number, got {sigma}")
    top = noise_level(sde, sde.T)
    if sigma > top:
        raise ValueError(f"noise level {sigma} exceeds the SDE's largest σ(T)/α(T) = {top:.4g}")
    return float(sde.t_of_lambda(torch.tensor(-math.log(sigma), dtype=torch.float64)))


def noise_level(sde: LinearSDE, t: float) -> float:
    """σ(t)/α(t), the noise level in the EDM/VE parameterisation (x/α = x_0 + (σ/α) ε)."""
    tt = torch.tensor(float(t), dtype=torch.float64)
    return float(sde.sigma(tt) / sde.alpha(tt))


@dataclass
class Problem:
    """One benchmark problem.

    Attributes:
      sde, score_fn: the forward SDE and a score ``score_fn(x, t)`` (exact or trained).
      shape: per-sample shape, e.g. ``(2,)``.
      target: an analytic mixture (enables mode, spread and true log-density metrics).
      true_samples: samples of the data law for the energy distance (default: drawn from target).
      t_start: integration starts here (default T); methods without a ``t_start`` option need T.
      eps: integration ends here (default the SDE's ``default_eps``).
      denoise: final Tweedie step at eps, passed to every method with a ``denoise`` option.
      n, seed: number of samples and the seed of latents, true samples and sampler noise.
      dtype, device: of latents and samples (float64 for analytic targets, so that the 1000-NFE rows
        are not floored by float32 round-off).
      fine_scale: the data's finest length scale for the noise-level warning (default: the target's
        smallest per-mode standard deviation).
      log_density: ``x -> log p(x)`` for the ``mean_logp`` column (default: the analytic target's
        true density; for a trained checkpoint, the model's likelihood), named by log_density_label.
      name: used in reports.
    """

    sde: LinearSDE
    score_fn: ScoreFn
    shape: tuple[int, ...]
    target: Optional[GaussianMixture] = None
    true_samples: Optional[torch.Tensor] = None
    t_start: Optional[float] = None
    eps: Optional[float] = None
    denoise: bool = True
    n: int = 4000
    seed: int = 0
    dtype: torch.dtype = torch.float64
    device: str = "cpu"
    fine_scale: Optional[float] = None
    log_density: Optional[LogDensity] = None
    log_density_label: str = "true log-density"
    name: str = "problem"

    def __post_init__(self) -> None:
        self.shape = tuple(self.shape)
        self.t_start = self.sde.T if self.t_start is None else float(self.t_start)
        self.eps = self.sde.default_eps if self.eps is None else float(self.eps)
        if not 0.0 <= self.eps < self.t_start <= self.sde.T:
            raise ValueError(f"need 0 <= eps < t_start <= T = {self.sde.T}, got eps={self.eps}, t_start={self.t_start}")
        if not isinstance(self.n, int) or self.n < 2:
            raise ValueError(f"n must be an integer >= 2, got {self.n!r}")
        if self.target is not None and self.fine_scale is None:
            self.fine_scale = float(self.target.eigvals.min().sqrt())
        if self.target is not None and self.log_density is None:
            self.log_density = self.target.log_prob

    def describe(self) -> dict[str, Any]:
        """The problem's settings as plain values, for reports."""
        return {
            "name": self.name,
            "sde": repr(self.sde),
            "t_start": self.t_start,
            "eps": self.eps,
            "sigma_start": noise_level(self.sde, self.t_start),
            "sigma_end": noise_level(self.sde, self.eps) if self.eps > 0 else 0.0,
            "denoise": self.denoise,
            "n": self.n,
            "seed": self.seed,
            "dtype": str(self.dtype).replace("torch.", ""),
            "fine_scale": self.fine_scale,
            "mean_logp": self.log_density_label if self.log_density is not None else None,
        }


def mixture_problem(
    target: GaussianMixture,
    sde: LinearSDE,
    *,
    sigma_start: Optional[float] = None,
    sigma_end: Optional[float] = None,
    **kwargs: Any,
) -> Problem:
    """A problem with the exact score of ``target`` under ``sde``. The interval may be given as
    noise levels σ/α (``sigma_start=80, sigma_end=0.002`` is EDM's) instead of times."""
    for sigma, key in ((sigma_start, "t_start"), (sigma_end, "eps")):
        if sigma is not None:
            if kwargs.get(key) is not None:
                raise ValueError(f"give either {key} or its noise level, not both")
            kwargs[key] = time_of_noise_level(sde, sigma)
    return Problem(sde=sde, score_fn=target.score_fn(sde), shape=(target.dim,), target=target, **kwargs)


def noise_level_warning(problem: Problem) -> Optional[str]:
    """A warning when the last nonzero noise level σ/α (at eps, where every grid ends) is not small
    against the data's fine scale s.

    At σ/α = σ the exact flow has spread a mode of std s to √(s² + σ²); the final denoise
    E[x_0 | x] multiplies offsets from the mode by s²/(s² + σ²), leaving std s²/√(s² + σ²), i.e. a
    spread ratio s/√(s² + σ²) (anchor-fast-solvers §6.3(c): diffusers' defaults, σ ≈ 0.08–0.17
    against s = 0.1, give 0.63–0.77). Without a final denoise the ratio is √(s² + σ²)/s instead.
    """
    if problem.fine_scale is None or problem.eps == 0.0:
        return None
    sigma, s = noise_level(problem.sde, problem.eps), problem.fine_scale
    ratio = s / math.hypot(s, sigma)
    if 1.0 - ratio <= SPREAD_TOLERANCE:
        return None
    effect = f"under-disperses to {ratio:.3f}" if problem.denoise else f"over-disperses to {1 / ratio:.3f}"
    return (
        f"the last noise level σ/α = {sigma:.3g} (at eps = {problem.eps:.3g}) is not small against the data's fine "
        f"scale {s:.3g}: the final step {effect} of the true per-mode spread; lower eps"
    )


def prior_latents(problem: Problem) -> torch.Tensor:
    """The matched latents x(t_start) ~ N(0, σ(t_start)² I) (the prior's draw rescaled to the start
    time's kernel std, as in EDM), from ``problem.seed``."""
    g = torch.Generator().manual_seed(problem.seed)
    z = problem.sde.prior_sampling((problem.n, *problem.shape), generator=g, dtype=torch.float64)
    scale = float(problem.sde.sigma(torch.tensor(problem.t_start, dtype=torch.float64))) / problem.sde.prior_std
    return (scale * z).to(device=problem.device, dtype=problem.dtype)


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


def reference_solution(
    problem: Problem, x_start: torch.Tensor, *, rtol: float = 1e-10, atol: float = 1e-10, method: str = "dopri5"
) -> tuple[torch.Tensor, int]:
    """The PF-ODE solved to high accuracy from ``x_start`` at t_start to eps (then the final Tweedie
    step if ``problem.denoise``): ``(x, nfe)``.

    It is solved in the EDM/DPM-Solver variables y = x/α and u = log(σ/α) = -λ, where the PF-ODE of
    every linear SDE reads dy/du = y - D(α y, t(u)) with D = x̂_0 the Tweedie denoiser (Karras et al.
    2022, eq. 4 with σ(t) = t, s(t) = 1, after dσ = σ du). The right-hand side is smooth in u and
    the variables differ from those of the samplers, so the reference is an independent solution.
    The state is float64 whatever ``problem.dtype``; the score is called in ``problem.dtype``.
    """
    if problem.eps <= 0.0:
        raise ValueError("the reference needs eps > 0 (the ODE in log σ/α ends at σ > 0)")
    sde, counted = problem.sde, CountedScore(problem.score_fn)

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return counted(x.to(problem.dtype), t.to(problem.dtype)).to(torch.float64)

    def velocity(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = sde.t_of_lambda(-u)
        alpha, sigma = sde.alpha(t), sde.sigma(t)
        x = alpha * y
        return y - data_from_score(score(x, full_time(x, float(t))), x, alpha, sigma)

    t0 = torch.tensor(problem.t_start, dtype=torch.float64)
    t1 = torch.tensor(problem.eps, dtype=torch.float64)
    u_span = torch.stack([-sde.lambda_(t0), -sde.lambda_(t1)])
    with torch.no_grad():
        y = odeint(velocity, x_start.to(torch.float64) / sde.alpha(t0), u_span, rtol=rtol, atol=atol, method=method)[-1]
        x = sde.alpha(t1) * y
        if problem.denoise:
            x = tweedie_denoise(sde, score, x, problem.eps)
    return x, counted.nfe


def quality(
    x: torch.Tensor,
    *,
    target: Optional[GaussianMixture] = None,
    true_samples: Optional[torch.Tensor] = None,
    reference: Optional[torch.Tensor] = None,
    log_density: Optional[LogDensity] = None,
) -> dict[str, float]:
    """Quality of samples x: distance to the matched ``reference`` (median, RMS, mode switches),
    energy distance to ``true_samples``, and for an analytic ``target`` the mode-weight TV, spread
    ratio and off-manifold fraction; ``mean_logp`` from ``log_density``."""
    out: dict[str, float] = {}
    if reference is not None:
        dist = metrics.distance_to_reference(x, reference)
        out["median_dist"], out["rms_dist"] = dist["median"], dist["rms"]
        if target is not None:
            out["mode_switch"] = metrics.mode_switch_fraction(target, x, reference)
    if true_samples is not None:
        out["energy"] = metrics.energy_distance(x, true_samples)
    if target is not None:
        out["mode_tv"] = metrics.mode_weight_tv(target, x)
        out["spread"] = metrics.spread_ratio(target, x)
        out["off_manifold"] = metrics.off_manifold_fraction(target, x)
    if log_density is not None:
        out["mean_logp"] = float(log_density(x).mean())
    return out


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
    """``"name"`` or ``"name:key=value,key=value"`` (values as Python literals, else strings) ->
    (name, options), e.g. ``"euler_maruyama:probability_flow=True"``."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad method option {item!r} in {spec!r}; write name:key=value,key=value")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return name.strip(), options


def is_adaptive(spec: str) -> bool:
    """Whether ``spec`` ("name" or "name:key=value,...") is swept over tolerances, not steps, as its
    method declares for those options."""
    name, options = parse_method(spec)
    return solvers.METHODS.get(name).is_adaptive(options)


class Benchmark:
    """A problem with its matched latents, reference solution and true samples (each computed once
    on first use), and the runs over it."""

    def __init__(
        self, problem: Problem, *, reference_tol: float = 1e-10, reference_method: str = "dopri5", max_nfe: int = MAX_NFE
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
        """The arguments a run of ``method`` gets: the problem's ``t_start`` and ``eps`` where the
        method takes them, its ``denoise``, the tolerance ``tol`` for every tolerance option, then
        ``variant``."""
        spec = solvers.METHODS.get(method)
        accepted = spec.options
        p = self.problem
        opts: dict[str, Any] = {}
        if "t_start" in spec.takes:
            opts["t_start"] = p.t_start
        elif p.t_start != p.sde.T:
            raise ValueError(f"method {method!r} takes no t_start and always starts at T = {p.sde.T}, not at {p.t_start:.4g}")
        if "eps" in spec.takes:
            opts["eps"] = p.eps
        if "denoise" in accepted:
            opts["denoise"] = p.denoise
        if tol is not None:
            opts.update({k: tol for k in TOLERANCE_OPTIONS if k in accepted})
        return {**opts, **variant}

    def _sample(self, spec: str, x_T: torch.Tensor, steps: Optional[int], tol: Optional[float], seed: int) -> tuple[torch.Tensor, int]:
        name, variant = parse_method(spec)
        g = torch.Generator(device=x_T.device).manual_seed(seed)
        p, score = self.problem, BudgetedScore(self.problem.score_fn, self.max_nfe)
        return solvers.sample(p.sde, score, x_T.shape, name, steps=steps, x_T=x_T, generator=g, **self.options(name, variant, tol))

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
            reference=self.reference if deterministic else None,
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
        return out


# --- output -----------------------------------------------------------------------------------------
COLUMNS = [f.name for f in fields(Row)]
#: Quality columns plotted against NFE: (column, title, y limits or None for automatic).
PLOTS = (
    ("median_dist", "median distance to reference", None),
    ("rms_dist", "RMS distance to reference", None),
    ("mode_switch", "mode-switch fraction", None),
    ("energy", "energy distance to true samples", None),
    ("mode_tv", "mode-weight TV", None),
    ("spread", "per-mode spread ratio (1 is exact)", (0.25, 4.0)),
)
MARKERS = "os^vD<>ph*"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_row(row: Row) -> str:
    """One line for logs."""
    return "  ".join(f"{k}={_fmt(v)}" for k, v in asdict(row).items() if v is not None and k not in ("steps", "tol"))


def markdown_table(result: BenchmarkResult) -> str:
    """The report: problem, warnings, skipped methods and the table (methods by name, then NFE)."""
    rows = sorted(result.rows, key=lambda r: (r.method, r.nfe))
    shown = [c for c in COLUMNS if c not in ("steps", "tol") and any(getattr(r, c) is not None for r in rows)]
    lines = ["# Step-count benchmark", "", "| problem | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in result.problem.items()]
    lines += [""] + [f"**Warning:** {w}" for w in result.warnings]
    if result.skipped:
        lines += ["", "Skipped:", ""] + [f"- `{spec}`: {reason}" for spec, reason in result.skipped]
    if not rows:
        return "\n".join(lines + ["", "No method ran."]) + "\n"
    lines += ["", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(getattr(r, c)) for c in shown) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(result: BenchmarkResult, path: str) -> str:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in result.rows)
    return path


def plot_quality(result: BenchmarkResult, path: str) -> str:
    """Quality against NFE, one line per method, log axes (zeros fall off the log axes, and spread
    ratios outside [0.25, 4] off the plot; the table has every value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PLOTS if any(getattr(r, p[0]) is not None for r in result.rows)]
    methods = sorted({r.method for r in result.rows})
    colors = plt.get_cmap("tab20")(torch.linspace(0, 1, max(len(methods), 2)).tolist())
    styles = {m: {"color": c, "marker": MARKERS[i % len(MARKERS)]} for i, (m, c) in enumerate(zip(methods, colors))}
    ncols = min(3, max(len(panels), 1))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.8 * nrows), squeeze=False, sharex=True)
    for ax, (column, title, ylim) in zip(axes.flat, panels):
        for method in methods:
            pts = sorted((r.nfe, getattr(r, column)) for r in result.rows if r.method == method and getattr(r, column) is not None)
            if pts:
                ax.plot(*zip(*pts), ms=4, lw=1.2, **styles[method])
        _reference_lines(ax, column, result.problem)
        ax.set_xscale("log")
        ax.set_yscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("NFE")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], ms=4, **styles[m]) for m in methods]
    fig.legend(handles, methods, loc="center right", fontsize=8)
    fig.suptitle(f"{result.problem.get('name', '')}: quality against NFE (dashed: exact samples / reference accuracy)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.8, 0.96))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _reference_lines(ax: Any, column: str, problem: dict[str, Any]) -> None:
    """Dashed lines at what exact samples would score: the energy noise floor, the expected mode-TV
    of n exact samples, spread 1, and the bound on the reference's own error."""
    level = {
        "energy": problem.get("energy_noise_floor"),
        "mode_tv": problem.get("mode_tv_noise"),
        "spread": 1.0,
        "median_dist": problem.get("reference_error"),
    }.get(column)
    if level:
        ax.axhline(level, color="k", ls="--", lw=0.8)


def write_report(result: BenchmarkResult, out_dir: str, *, plot_path: Optional[str] = None) -> dict[str, str]:
    """``table.md``, ``table.csv`` and ``quality_vs_nfe.png`` in ``out_dir`` (the plot also at
    ``plot_path`` if given); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"markdown": os.path.join(out_dir, "table.md"), "csv": os.path.join(out_dir, "table.csv")}
    with open(paths["markdown"], "w", encoding="utf-8") as fh:
        fh.write(markdown_table(result))
    write_csv(result, paths["csv"])
    paths["plot"] = plot_quality(result, os.path.join(out_dir, "quality_vs_nfe.png"))
    if plot_path is not None:
        paths["readme_plot"] = plot_quality(result, plot_path)
    return paths
