"""Predictor–corrector sampling (Song et al. 2021, §4.2, Alg. 1): registries of predictors and correctors
and the ``pc`` method.

A predictor factory ``(sde, steps, eps, probability_flow) -> Predictor`` fixes the time grid and returns
its step ``(x, score at t_i, i, generator) -> x at t_{i+1}``; a corrector factory
``(sde, times, snr) -> step size (score, noise, i) -> ε`` gives the Langevin step size at ``times[i]``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.utils import check_positive_int

from .common import ScoreFn, full_time, noise_like, progress_range, tweedie_denoise, uniform_time_grid
from .ddpm import Levels, chain_levels
from .langevin import ald_step_size, langevin_step, snr_step_size
from .registry import register_method

PredictorStep = Callable[[torch.Tensor, torch.Tensor, int, Optional[torch.Generator]], torch.Tensor]
CorrectorStepSize = Callable[[torch.Tensor, torch.Tensor, int], float]


@dataclass(frozen=True)
class Predictor:
    """``times``: the grid t_0 = T (or the chain's top level) > ... > t_S; ``step``: None when x does
    not move (corrector-only sampling)."""

    times: list[float]
    step: Optional[PredictorStep]


PREDICTORS: Registry[Callable[..., Predictor]] = Registry("predictor")
CORRECTORS: Registry[Callable[..., Optional[CorrectorStepSize]]] = Registry("corrector")


def _affine_step(keep: list[float], drift: list[float], std: list[float]) -> PredictorStep:
    """The step x ← keep_i x + drift_i s + std_i z of the Euler–Maruyama and reverse-diffusion
    predictors (no noise is drawn where std_i = 0)."""

    def step(x: torch.Tensor, score: torch.Tensor, i: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        x = torch.add(keep[i] * x, score, alpha=drift[i])
        return x.add_(noise_like(x, generator), alpha=std[i]) if std[i] > 0 else x

    return step


@PREDICTORS.register("euler_maruyama")
def euler_maruyama_predictor(sde: LinearSDE, steps: Optional[int], eps: float, probability_flow: bool) -> Predictor:
    """Euler–Maruyama on the reverse SDE, or Euler on the probability-flow ODE (Song et al. 2021, eqs. 6,
    13), on ``steps`` (default N) uniform steps from T to eps, h = t_i - t_{i+1}:
      x ← x - h [f(t_i) x - c g(t_i)² s] + g̃ √h z = (1 - h f) x + c h g² s + g̃ √h z,
    c = 1, g̃ = g (SDE);  c = ½, g̃ = 0 (ODE)."""
    ts = uniform_time_grid(sde, steps or sde.N, eps)
    grid = torch.tensor(ts[:-1], dtype=torch.float64)
    h = [t - t_next for t, t_next in zip(ts[:-1], ts[1:])]
    f, g2 = sde.f(grid).tolist(), sde.g2(grid).tolist()
    c = 0.5 if probability_flow else 1.0
    keep = [1.0 - h_i * f_i for h_i, f_i in zip(h, f)]
    drift = [c * h_i * g2_i for h_i, g2_i in zip(h, g2)]
    std = [0.0 if probability_flow else math.sqrt(h_i * g2_i) for h_i, g2_i in zip(h, g2)]
    return Predictor(ts, _affine_step(keep, drift, std))


def _chain_walk(sde: LinearSDE, steps: Optional[int], name: str) -> tuple[Levels, list[int]]:
    """The levels of the SDE's discretisation and the levels k = N, ..., 1 a chain predictor visits: N - 1
    transitions (from ks[:-1]), the one from level 1 to the data being the final Tweedie step (see ``pc``)."""
    if steps not in (None, sde.N - 1):
        raise ValueError(
            f"predictor {name!r} walks the SDE's {sde.N} discrete levels, so steps must be N - 1 = {sde.N - 1}"
            f" (or None); got {steps}"
        )
    return chain_levels(sde), list(range(sde.N, 0, -1))


@PREDICTORS.register("reverse_diffusion")
def reverse_diffusion_predictor(sde: LinearSDE, steps: Optional[int], eps: float, probability_flow: bool) -> Predictor:
    """Reverse diffusion (Song et al. 2021, eq. 46): undoes the forward step x_k = a_k x_{k-1} + G_k z of
    the SDE's discretisation, from level k to k - 1:
      x ← x - (a_k - 1) x + c G_k² s_k + g̃ G_k z,   a_k = α_k / α_{k-1},  G_k² = σ_k² - a_k² σ_{k-1}²,
    (c, g̃ as in ``euler_maruyama_predictor``; s_k the level's score, ``Levels.level_score``). DDPM:
    a_k = √(1 - β_k), G_k² = β_k; SMLD: a_k = 1, G_k² = σ_k² - σ_{k-1}², the coefficients of
    ``sde.discretize``; sub-VP: its exact kernel at kT/N. A first-order reversal, accurate for small steps
    (G_k² ≪ 1); the cosine-VP chain's last step, clipped at β_N = 0.999, is not (x ← 1.97 x + ...): use
    ``ancestral_sampling`` there."""
    lv, ks = _chain_walk(sde, steps, "reverse_diffusion")
    c = 0.5 if probability_flow else 1.0
    keep, drift, std = [], [], []
    for k in ks[:-1]:
        a_k = lv.alpha[k] / lv.alpha[k - 1]
        G2 = lv.sigma[k] ** 2 - a_k**2 * lv.sigma[k - 1] ** 2
        score_scale, score_shift = lv.level_score(k)
        keep.append(2.0 - a_k + c * G2 * score_shift)
        drift.append(c * G2 * score_scale)
        std.append(0.0 if probability_flow else math.sqrt(G2))
    return Predictor([lv.t[k] for k in ks], _affine_step(keep, drift, std))


@PREDICTORS.register("ancestral_sampling")
def ancestral_sampling_predictor(sde: LinearSDE, steps: Optional[int], eps: float, probability_flow: bool) -> Predictor:
    """Ancestral sampling of the SDE's discrete chain (Song et al. 2021, eq. 47; ``sde.chain.ancestral_step``),
    from level k to k - 1, with s_k the level's score (``Levels.level_score``):
      DDPM: x ← (x + β_k s_k) / √(1 - β_k) + √β_k z,
      SMLD: x ← x + (σ_k² - σ_{k-1}²) s_k + √(σ_{k-1}² (σ_k² - σ_{k-1}²) / σ_k²) z."""
    if sde.chain is None:
        raise ValueError(
            f"predictor 'ancestral_sampling' needs an SDE with a discrete chain (DDPM for vp, SMLD for ve);"
            f" {sde!r} has none: use 'reverse_diffusion' or 'euler_maruyama'"
        )
    if probability_flow:
        raise ValueError("predictor 'ancestral_sampling' has no probability-flow form; use 'reverse_diffusion'")
    lv, ks = _chain_walk(sde, steps, "ancestral_sampling")
    index = [torch.tensor(k - 1) for k in ks[:-1]]
    level_score = [lv.level_score(k) for k in ks[:-1]]

    def step(x: torch.Tensor, score: torch.Tensor, i: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        scale, shift = level_score[i]
        if (scale, shift) != (1.0, 0.0):
            score = scale * score + shift * x
        return sde.chain.ancestral_step(x, score, index[i], noise_like(x, generator))[0]

    return Predictor([lv.t[k] for k in ks], step)


@PREDICTORS.register("none")
def no_predictor(sde: LinearSDE, steps: Optional[int], eps: float, probability_flow: bool) -> Predictor:
    """No predictor: time advances on ``steps`` (default N) uniform steps from T to eps, x moves only by
    the corrector (corrector-only sampling)."""
    return Predictor(uniform_time_grid(sde, steps or sde.N, eps), None)


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


#: Defaults: the Euler–Maruyama predictor runs on any grid and every SDE; score_sde's snr 0.16.
PC_OPTIONS = {
    "predictor": "euler_maruyama",
    "corrector": "langevin",
    "snr": 0.16,
    "n_steps_each": 1,
    "probability_flow": False,
    "denoise": True,
}


@register_method("pc", options=PC_OPTIONS)
def pc(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *,
    steps: Optional[int],
    eps: float,
    generator: Optional[torch.Generator],
    progress: bool,
    predictor: str,
    corrector: str,
    snr: float,
    n_steps_each: int,
    probability_flow: bool,
    denoise: bool,
) -> torch.Tensor:
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1).

    For i = 0, ..., S-1 the predictor moves x from t_i to t_{i+1}, then ``n_steps_each`` corrector steps
    x ← x + ε s + √(2ε) z run at t_{i+1}; ``denoise`` ends with the Tweedie step x̂_0 = (x + σ² s) / α at
    t_S (one more score evaluation).

    The grid is the predictor's: S = ``steps`` (default N) uniform steps from T to eps for
    ``euler_maruyama`` and ``none``; for the chain predictors ``reverse_diffusion`` and
    ``ancestral_sampling``, the SDE's discrete levels N, ..., 1 (S = N - 1, ``eps`` unused), where the
    final Tweedie step at level 1 is exactly the chain's last, noise-free transition to the data
    ((x + β_1 s)/√(1 - β_1) for DDPM, x + σ_1² s for SMLD). Predictor ``none`` gives corrector-only
    sampling (annealed Langevin on the SDE's levels). nfe = S ([predictor ≠ none] +
    n_steps_each [corrector ≠ none]) + [denoise].
    """
    check_positive_int(n_steps_each, "n_steps_each")
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    pred = PREDICTORS.get(predictor)(sde, steps, eps, probability_flow)
    ts = pred.times
    step_size = CORRECTORS.get(corrector)(sde, ts, snr)
    for i in progress_range(len(ts) - 1, progress):
        if pred.step is not None:
            x = pred.step(x, score_fn(x, full_time(x, ts[i])), i, generator)
        if step_size is not None:
            t = full_time(x, ts[i + 1])
            for _ in range(n_steps_each):
                score, z = score_fn(x, t), noise_like(x, generator)
                x = langevin_step(x, score, step_size(score, z, i + 1), z)
    return tweedie_denoise(sde, score_fn, x, ts[-1]) if denoise else x
