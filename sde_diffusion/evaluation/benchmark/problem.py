"""What a benchmark samples: the ``Problem`` (SDE, score, interval, denoise, samples, target),
its matched prior latents, the high-accuracy reference solution and the quality scores of a run."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torchdiffeq import odeint

from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.parameterization import data_from_score
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.evaluation import metrics
from sde_diffusion.evaluation.image_metrics import ImageMetrics
from solvers.common import CountedScore, full_time, tweedie_denoise

#: The default NFE grid for fixed-step methods.
NFE_GRID = (5, 10, 20, 50, 100, 200, 500, 1000)
#: Tolerances for adaptive methods (every tolerance option of a method is set to the value).
TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
#: Option names that make a method adaptive.
TOLERANCE_OPTIONS = ("rtol", "atol")
#: torchdiffeq's adaptive Runge–Kutta methods (they accept ``step_t``).
ADAPTIVE_RK = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
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
      image_metrics: FD and KID against a reference set on a feature network (the ``fd``, ``kid`` and
        ``kid_se`` columns; ``image_metrics.ImageMetrics``).
      floor_samples: data samples (e.g. training images, n of them where there are) scored by
        ``image_metrics`` in place of samples: the floor that exact samples would reach.
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
    image_metrics: Optional[ImageMetrics] = None
    floor_samples: Optional[torch.Tensor] = None
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
            **({f"features_{k}": v for k, v in self.image_metrics.describe().items()} if self.image_metrics is not None else {}),
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
    spread ratio s/√(s² + σ²). Without a final denoise the ratio is √(s² + σ²)/s instead.
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


def reference_solution(
    problem: Problem, x_start: torch.Tensor, *, rtol: float = 1e-10, atol: float = 1e-10, method: str = "dopri5"
) -> tuple[torch.Tensor, int]:
    """The PF-ODE solved to high accuracy from ``x_start`` at t_start to eps (then the final Tweedie
    step if ``problem.denoise``): ``(x, nfe)``.

    It is solved in the EDM/DPM-Solver variables y = x/α and u = log(σ/α) = -λ, where the PF-ODE of
    every linear SDE reads dy/du = y - D(α y, t(u)) with D = x̂_0 the Tweedie denoiser (Karras et al.
    2022, eq. 4 with σ(t) = t, s(t) = 1, after dσ = σ du). The right-hand side is smooth in u and
    the variables differ from those of the samplers, so the reference is an independent solution.
    The state is float64 whatever ``problem.dtype``; the score is called in ``problem.dtype``. An
    adaptive solver's last step is made to end at eps (torchdiffeq's ``step_t``), so the score is
    never probed past it (where a pretrained model has no timestep).
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
        options = {"step_t": u_span[1:]} if method in ADAPTIVE_RK else None
        y = odeint(velocity, x_start.to(torch.float64) / sde.alpha(t0), u_span, rtol=rtol, atol=atol, method=method, options=options)[-1]
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
    image_metrics: Optional[ImageMetrics] = None,
) -> dict[str, float]:
    """Quality of samples x: distance to the matched ``reference`` (median, RMS, mode switches),
    energy distance to ``true_samples``, and for an analytic ``target`` the mode-weight TV, spread
    ratio and off-manifold fraction; ``mean_logp`` from ``log_density``; FD, KID and KID's standard
    error from ``image_metrics``."""
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
    if image_metrics is not None:
        out.update(image_metrics(x))
    return out


