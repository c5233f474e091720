"""Predictor–corrector sampling (Song et al. 2021, §4.2, Alg. 1): registries of predictors and correctors,
the ``pc`` method and its special case ``euler_maruyama``.

A predictor's factory ``(sde, times, probability_flow) -> step`` gives its step
``(x, score at t_i, i, generator) -> x at t_{i+1}`` on the grid ``times`` (None: x does not move); a
chain predictor walks the SDE's discrete levels, which are then the grid. A corrector factory
``(sde, times, snr) -> step size (score, noise, i) -> ε`` gives the Langevin step size at ``times[i]``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch

from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import LinearSDE

from .common import Run, full_time, noise_like
from .ddpm import chain_levels
from .grid import GridStepper, grid_options, run_grid
from .langevin import ald_step_size, langevin_step, snr_step_size
from .schedules import Node
from .spec import (
    FIXED_GRID,
    N_STEPS,
    Requirement,
    StepsOfSDE,
    choice,
    flag,
    integer,
    number,
    register_method,
)

PredictorStep = Callable[[torch.Tensor, torch.Tensor, int, Optional[torch.Generator]], torch.Tensor]
CorrectorStepSize = Callable[[torch.Tensor, torch.Tensor, int], float]


@dataclass(frozen=True)
class Predictor:
    """``make(sde, times, probability_flow)``: the step on the grid ``times`` (None: x does not move,
    corrector-only sampling); ``chain``: the predictor walks the SDE's discrete levels N, ..., 1,
    which are its grid."""

    make: Callable[[LinearSDE, list[float], bool], Optional[PredictorStep]]
    chain: bool = False


PREDICTORS: Registry[Predictor] = Registry("predictor")
CORRECTORS: Registry[Callable[..., Optional[CorrectorStepSize]]] = Registry("corrector")


def _affine_step(keep: list[float], drift: list[float], std: list[float]) -> PredictorStep:
    """The step x ← keep_i x + drift_i s + std_i z of the Euler–Maruyama and reverse-diffusion
    predictors (no noise is drawn where std_i = 0)."""

    def step(x: torch.Tensor, score: torch.Tensor, i: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        x = torch.add(keep[i] * x, score, alpha=drift[i])
        return x.add_(noise_like(x, generator), alpha=std[i]) if std[i] > 0 else x

    return step


def euler_maruyama_predictor(sde: LinearSDE, ts: list[float], probability_flow: bool) -> PredictorStep:
    """Euler–Maruyama on the reverse SDE, or Euler on the probability-flow ODE (Song et al. 2021, eqs. 6,
    13), h = t_i - t_{i+1}:
      x ← x - h [f(t_i) x - c g(t_i)² s] + g̃ √h z = (1 - h f) x + c h g² s + g̃ √h z,
    c = 1, g̃ = g (SDE);  c = ½, g̃ = 0 (ODE): ``LinearSDE.reverse_drift`` with its coefficients
    computed once per grid."""
    grid = torch.tensor(ts[:-1], dtype=torch.float64)
    h = [t - t_next for t, t_next in zip(ts[:-1], ts[1:])]
    f, g2 = sde.f(grid).tolist(), sde.g2(grid).tolist()
    c = 0.5 if probability_flow else 1.0
    keep = [1.0 - h_i * f_i for h_i, f_i in zip(h, f)]
    drift = [c * h_i * g2_i for h_i, g2_i in zip(h, g2)]
    std = [0.0 if probability_flow else math.sqrt(h_i * g2_i) for h_i, g2_i in zip(h, g2)]
    return _affine_step(keep, drift, std)


PREDICTORS.register("euler_maruyama")(Predictor(euler_maruyama_predictor))


def chain_times(sde: LinearSDE) -> list[float]:
    """The times of the levels k = N, ..., 1 a chain predictor visits: N - 1 transitions, the one from
    level 1 to the data being the final Tweedie step (see ``pc``)."""
    lv = chain_levels(sde)
    return [lv.t[k] for k in range(sde.N, 0, -1)]


def reverse_diffusion_predictor(sde: LinearSDE, ts: list[float], probability_flow: bool) -> PredictorStep:
    """Reverse diffusion (Song et al. 2021, eq. 46): undoes the forward step x_k = a_k x_{k-1} + G_k z of
    the SDE's discretisation, from level k to k - 1:
      x ← x - (a_k - 1) x + c G_k² s_k + g̃ G_k z,   a_k = α_k / α_{k-1},  G_k² = σ_k² - a_k² σ_{k-1}²,
    (c, g̃ as in ``euler_maruyama_predictor``; s_k the level's score, ``Levels.level_score``). DDPM:
    a_k = √(1 - β_k), G_k² = β_k; SMLD: a_k = 1, G_k² = σ_k² - σ_{k-1}², the coefficients of
    ``sde.discretize``; sub-VP: its exact kernel at kT/N. A first-order reversal, accurate for small steps
    (G_k² ≪ 1); the cosine-VP chain's last step, clipped at β_N = 0.999, is not (x ← 1.97 x + ...): use
    ``ancestral_sampling`` there."""
    lv, ks = chain_levels(sde), range(sde.N, 0, -1)
    c = 0.5 if probability_flow else 1.0
    keep, drift, std = [], [], []
    for k in ks[:-1]:
        a_k = lv.alpha[k] / lv.alpha[k - 1]
        G2 = lv.sigma[k] ** 2 - a_k**2 * lv.sigma[k - 1] ** 2
        score_scale, score_shift = lv.level_score(k)
        keep.append(2.0 - a_k + c * G2 * score_shift)
        drift.append(c * G2 * score_scale)
        std.append(0.0 if probability_flow else math.sqrt(G2))
    return _affine_step(keep, drift, std)


PREDICTORS.register("reverse_diffusion")(Predictor(reverse_diffusion_predictor, chain=True))


def ancestral_sampling_predictor(sde: LinearSDE, ts: list[float], probability_flow: bool) -> PredictorStep:
    """Ancestral sampling of the SDE's discrete chain (Song et al. 2021, eq. 47; ``sde.chain.ancestral_step``),
    from level k to k - 1, with s_k the level's score (``Levels.level_score``):
      DDPM: x ← (x + β_k s_k) / √(1 - β_k) + √β_k z,
      SMLD: x ← x + (σ_k² - σ_{k-1}²) s_k + √(σ_{k-1}² (σ_k² - σ_{k-1}²) / σ_k²) z."""
    lv, ks = chain_levels(sde), list(range(sde.N, 0, -1))
    index = [torch.tensor(k - 1) for k in ks[:-1]]
    level_score = [lv.level_score(k) for k in ks[:-1]]

    def step(x: torch.Tensor, score: torch.Tensor, i: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        scale, shift = level_score[i]
        if (scale, shift) != (1.0, 0.0):
            score = scale * score + shift * x
        return sde.chain.ancestral_step(x, score, index[i], noise_like(x, generator))[0]

    return step


PREDICTORS.register("ancestral_sampling")(Predictor(ancestral_sampling_predictor, chain=True))
#: No predictor: time advances on the grid, x moves only by the corrector (corrector-only sampling).
PREDICTORS.register("none")(Predictor(lambda sde, ts, probability_flow: None))


@CORRECTORS.register("langevin")
def langevin_corrector(sde: LinearSDE, times: list[float], snr: float) -> CorrectorStepSize:
    """Langevin corrector with Song et al.'s SNR rule ε = 2 α_i (r ‖z‖ / ‖s‖)² (Algs. 4–5), α_i =
    ``sde.langevin_alpha(t_i)`` (1 - β_i for the VP family and sub-VP, 1 for VE)."""
    alphas = sde.langevin_alpha(torch.tensor(times, dtype=torch.float64)).tolist()
    return lambda score, noise, i: snr_step_size(score, noise, snr, alphas[i])


@CORRECTORS.register("ald")
def ald_corrector(sde: LinearSDE, times: list[float], snr: float) -> CorrectorStepSize:
    """NCSN's annealed-Langevin rule as a corrector (score_sde's ``ald``): ε = 2 α_i (r σ(t_i))², a step
    size fixed by the noise level."""
    grid = torch.tensor(times, dtype=torch.float64)
    sizes = [ald_step_size(s, snr, a) for s, a in zip(sde.sigma(grid).tolist(), sde.langevin_alpha(grid).tolist())]
    return lambda score, noise, i: sizes[i]


@CORRECTORS.register("none")
def no_corrector(sde: LinearSDE, times: list[float], snr: float) -> None:
    """No corrector."""
    return None


class PC(GridStepper):
    """The predictor from t_i to t_{i+1}, then ``n_steps_each`` Langevin steps at t_{i+1}."""

    def __init__(self, run: Run, grid: list[Node], predictor: str, corrector: str, snr: float, n_steps_each: int,
                 probability_flow: bool) -> None:
        super().__init__(run, grid)
        self.times = [node.t for node in grid]
        self.predict = PREDICTORS.get(predictor).make(run.sde, self.times, probability_flow)
        self.step_size = CORRECTORS.get(corrector)(run.sde, self.times, snr)
        self.n_steps_each = n_steps_each

    def step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.predict is not None:
            x = self.predict(x, self.score(x, full_time(x, self.times[i])), i, self.run.generator)
        if self.step_size is not None:
            t = full_time(x, self.times[i + 1])
            for _ in range(self.n_steps_each):
                score, z = self.score(x, t), noise_like(x, self.run.generator)
                x = langevin_step(x, score, self.step_size(score, z, i + 1), z)
        return x


def is_chain(options: dict[str, Any]) -> bool:
    return PREDICTORS.get(options["predictor"]).chain


def _walks_the_chain_as_given(run: Run, options: dict[str, Any]) -> bool:
    as_given = run.steps == run.sde.N - 1 and not {"eps", "t_start", "schedule"} & run.given
    return not is_chain(options) or (as_given and options["schedule"] == PC_OPTIONS["schedule"].default)


#: A chain predictor's grid is the SDE's levels: steps = N - 1 transitions, no t_start, eps or schedule.
CHAIN_GRID = Requirement(
    _walks_the_chain_as_given,
    "the SDE's discrete levels with a chain predictor (reverse_diffusion, ancestral_sampling): steps must be N - 1"
    " (or None) and eps, t_start and schedule are not taken",
    lambda run: f"steps={run.steps} (N - 1 = {run.sde.N - 1}); given: {', '.join(sorted(run.given)) or 'no eps, t_start, grid'}",
)
#: Ancestral sampling needs the chain it samples, and has no probability-flow form.
ANCESTRAL = Requirement(
    lambda run, options: options["predictor"] != "ancestral_sampling" or run.sde.chain is not None,
    "an SDE with a discrete chain (DDPM for vp, SMLD for ve) for predictor 'ancestral_sampling'; use 'reverse_diffusion'"
    " or 'euler_maruyama'",
)


def _check_pc(options: dict[str, Any]) -> None:
    if options["predictor"] == "ancestral_sampling" and options["probability_flow"]:
        raise ValueError("predictor 'ancestral_sampling' has no probability-flow form; use 'reverse_diffusion'")


def _pc_deterministic(options: dict[str, Any]) -> bool:
    """No noise: no corrector, and a predictor that draws none (``none``, or a probability-flow one)."""
    return options["corrector"] == "none" and (options["predictor"] == "none" or options["probability_flow"])


def _pc_nfe(steps: int, options: dict[str, Any]) -> int:
    per_step = int(options["predictor"] != "none") + options["n_steps_each"] * int(options["corrector"] != "none")
    return steps * per_step + int(options["denoise"])


#: Defaults: the Euler–Maruyama predictor runs on any grid and every SDE; score_sde's snr 0.16.
PC_OPTIONS = {
    "predictor": choice("euler_maruyama", PREDICTORS.names),
    "corrector": choice("langevin", CORRECTORS.names),
    "snr": number(0.16, 0.0, math.inf, low_open=True, high_open=True),
    "n_steps_each": integer(1),
    "probability_flow": flag(False),
    **grid_options("time_uniform"),
}


@register_method(
    "pc",
    FIXED_GRID,
    options=PC_OPTIONS,
    default_steps=StepsOfSDE("N (N - 1 with a chain predictor)", lambda sde, options: sde.N - 1 if is_chain(options) else sde.N),
    deterministic=_pc_deterministic,
    nfe=_pc_nfe,
    requires=(CHAIN_GRID, ANCESTRAL),
    check=_check_pc,
)
def pc(run: Run, x: torch.Tensor, *, predictor: str, schedule: str, rho: float, denoise: bool, **options: Any) -> torch.Tensor:
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1).

    For i = 0, ..., S-1 the predictor moves x from t_i to t_{i+1}, then ``n_steps_each`` corrector steps
    x ← x + ε s + √(2ε) z run at t_{i+1}; ``denoise`` ends with the Tweedie step x̂_0 = (x + σ² s) / α at
    t_S (one more score evaluation).

    The grid is the run's (S = ``steps``, default N, uniform in t from t_start to eps unless
    ``schedule`` says otherwise) for ``euler_maruyama`` and ``none``; for the chain predictors
    ``reverse_diffusion`` and ``ancestral_sampling``, the SDE's discrete levels N, ..., 1 (S = N - 1),
    where the final Tweedie step at level 1 is exactly the chain's last, noise-free transition to the
    data ((x + β_1 s)/√(1 - β_1) for DDPM, x + σ_1² s for SMLD). Predictor ``none`` gives
    corrector-only sampling (annealed Langevin on the SDE's levels). nfe = S ([predictor ≠ none] +
    n_steps_each [corrector ≠ none]) + [denoise].
    """
    if PREDICTORS.get(predictor).chain:
        run.grid = torch.tensor(chain_times(run.sde), dtype=torch.float64)
    return run_grid(PC, run, x, predictor=predictor, schedule=schedule, rho=rho, denoise=denoise, **options)


@register_method(
    "euler_maruyama",
    FIXED_GRID,
    options={"probability_flow": flag(False), **grid_options("time_uniform")},
    default_steps=N_STEPS,
    deterministic=lambda options: options["probability_flow"],
    nfe=lambda steps, options: steps + int(options["denoise"]),
)
def euler_maruyama(run: Run, x: torch.Tensor, *, probability_flow: bool, **grid: Any) -> torch.Tensor:
    """Euler–Maruyama on the reverse SDE, or Euler on the probability-flow ODE (Song et al. 2021, eqs. 6, 13).

    On ``steps`` (default N) steps from t_start to eps (uniform in t unless ``schedule`` says
    otherwise), h = t_i - t_{i+1}:
      x ← x - h [f(t_i) x - c g(t_i)² s(x, t_i)] + g̃(t_i) √h z,   c = 1, g̃ = g (SDE);  c = ½, g̃ = 0 (ODE),
    that is ``pc`` with the ``euler_maruyama`` predictor and no corrector. ``denoise`` adds a final Tweedie
    step at eps (one more score evaluation).
    """
    return run_grid(PC, run, x, predictor="euler_maruyama", corrector="none", snr=PC_OPTIONS["snr"].default,
                    n_steps_each=1, probability_flow=probability_flow, **grid)
