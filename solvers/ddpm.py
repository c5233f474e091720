"""Discrete-chain samplers: DDPM ancestral sampling (Ho et al. 2020) and DDIM (Song, Meng & Ermon 2021),
on the noise levels of the SDE's discretisation (``chain_levels``, also walked by the PC chain predictors).
A given ``t_start`` or ``eps`` becomes a level of its own (the SDE's kernel there), the chain's levels
between them the others (``run_levels``)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sde_diffusion.core.discrete import DDPMChain
from sde_diffusion.core.sde_lib import LinearSDE

from .common import Run, full_time, noise_like
from .spec import DISCRETE_CHAIN, N_STEPS, Requirement, StepsOfSDE, choice, number, register_method

#: DDPM reverse variances σ_k² (Ho et al. 2020, §3.2): the forward β_k or the posterior β̃_k.
VARIANCES = ("beta", "beta_tilde")


@dataclass(frozen=True)
class Levels:
    """Levels k = 0..N of an SDE's discretisation, x_k = α_k x_0 + σ_k ε, as float64 Python lists:
    level 0 is the data (α = 1, σ = 0), ``t[k]`` the time at which the score of level k is evaluated
    (``t[0] = 0``) and ``score_alpha[k]``, ``score_sigma[k]`` the SDE's kernel α(t_k), σ(t_k) that score
    belongs to: the level's own (α_k, σ_k) except at levels beyond the SDE's T."""

    alpha: list[float]
    sigma: list[float]
    t: list[float]
    score_alpha: list[float]
    score_sigma: list[float]

    def level_score(self, k: int) -> tuple[float, float]:
        """(a, b) such that a s + b x is level k's score given the score s at t_k: the Tweedie estimate
        x̂_0 = (x + σ(t_k)² s) / α(t_k) put back through level k's kernel, s_k = (α_k x̂_0 - x) / σ_k²;
        exactly (1, 0) where t_k is not clamped (there the two kernels are one by construction)."""
        if (self.score_alpha[k], self.score_sigma[k]) == (self.alpha[k], self.sigma[k]):
            return 1.0, 0.0
        ratio = self.alpha[k] / self.score_alpha[k]
        return ratio * self.score_sigma[k] ** 2 / self.sigma[k] ** 2, (ratio - 1.0) / self.sigma[k] ** 2


def chain_levels(sde: LinearSDE) -> Levels:
    """The N + 1 levels of the SDE's discrete chain.

    DDPM chain (VP, cosine VP): α_k = √ᾱ_k, σ_k = √(1 - ᾱ_k) (Ho et al. 2020, eq. 4). SMLD chain (VE):
    α_k = 1, σ_k = the chain's (k-1)-th noise level (Song & Ermon 2019). No chain (sub-VP): the SDE's own
    kernel at t_k = k T / N. A chain level's time is the t with the same half log-SNR,
    t_k = t(λ_k), λ_k = log(α_k / σ_k): for these SDEs equal λ means an equal kernel (α² + σ² = 1 for the VP
    family, α = 1 for VE), so the exact score at t_k is the exact score of the chain's marginal at level k.
    The top levels of a DDPM chain can be noisier than the SDE at T (VP: 4 levels, ᾱ_N = e^{-10.12} against
    ᾱ(1) = e^{-10.05}; cosine VP: its last level, whose β is clipped to 0.999, ᾱ_N = 2e-9 against 1e-6):
    their t_k is clamped to T and samplers use the score there through its Tweedie estimate of x_0
    (``level_score``), which does not depend on the kernel it came from.
    """
    if sde.chain is not None:
        alpha, sigma = sde.chain.kernel()
        t = sde.chain_times()
    else:
        t = torch.arange(1, sde.N + 1, dtype=torch.float64) * (sde.T / sde.N)
        alpha, sigma = sde.alpha(t), sde.sigma(t)
    clamped = t == sde.T
    score_alpha = torch.where(clamped, sde.alpha(t), alpha)
    score_sigma = torch.where(clamped, sde.sigma(t), sigma)
    return Levels(
        [1.0] + alpha.tolist(),
        [0.0] + sigma.tolist(),
        [0.0] + t.tolist(),
        [1.0] + score_alpha.tolist(),
        [0.0] + score_sigma.tolist(),
    )


def run_levels(run: Run) -> Levels:
    """The levels of a chain run: the chain's levels strictly between the given eps and t_start, with
    a given t_start as the top level and a given eps as the lowest (each with the SDE's own kernel
    there); without either, the whole chain."""
    lv = chain_levels(run.sde)
    t_start = run.t_start if "t_start" in run.given else None
    eps = run.eps if "eps" in run.given else None
    if t_start is None and eps is None:
        return lv
    keep = [k for k in range(1, len(lv.t)) if (eps is None or lv.t[k] > eps) and (t_start is None or lv.t[k] < t_start)]
    ends = [t for t in (eps, t_start) if t is not None]
    own = torch.tensor(ends, dtype=torch.float64)
    alpha, sigma = dict(zip(ends, run.sde.alpha(own).tolist())), dict(zip(ends, run.sde.sigma(own).tolist()))
    low = [eps] if eps is not None else []
    high = [t_start] if t_start is not None else []
    alphas = [1.0] + [alpha[t] for t in low] + [lv.alpha[k] for k in keep] + [alpha[t] for t in high]
    sigmas = [0.0] + [sigma[t] for t in low] + [lv.sigma[k] for k in keep] + [sigma[t] for t in high]
    score_alphas = [1.0] + [alpha[t] for t in low] + [lv.score_alpha[k] for k in keep] + [alpha[t] for t in high]
    score_sigmas = [0.0] + [sigma[t] for t in low] + [lv.score_sigma[k] for k in keep] + [sigma[t] for t in high]
    return Levels(alphas, sigmas, [0.0] + low + [lv.t[k] for k in keep] + high, score_alphas, score_sigmas)


#: Level selections τ for fewer steps than levels (Song, Meng & Ermon 2021, App. D.2): evenly spaced in
#: k, or in √k, denser near the data (VP's levels are evenly spaced in t; VE's are already even in
#: log σ; README, "Fast solvers: measured choices").
STRIDES = ("linear", "quadratic")


def strided_levels(n_levels: int, steps: int, stride: str) -> list[int]:
    """Levels τ_S > ... > τ_1 = 1 > τ_0 = 0 of an S-step run over the chain's levels N..1, spaced evenly
    in k ("linear") or in √k ("quadratic", rounded, then pushed up where rounding repeats a level). The
    last step goes from level 1 to the data, a Tweedie step from the least noisy level whatever S;
    S = N visits every level."""
    if steps > n_levels:
        raise ValueError(f"steps must be at most the chain's N = {n_levels} levels, got {steps}")
    power = 1 if stride == "linear" else 2
    u = torch.linspace(n_levels ** (1 / power), 1, steps, dtype=torch.float64) ** power
    tau = torch.floor(u + 0.5).long().tolist()
    for j in range(steps - 2, -1, -1):
        tau[j] = max(tau[j], tau[j + 1] + 1)
    return tau + [0]


def _posterior_walk(run: Run, x: torch.Tensor, lv: Levels, tau: list[int], coefs: list[tuple[float, float, float]]) -> torch.Tensor:
    """The update DDPM and DDIM share, down the levels τ: a draw from a Gaussian whose mean is affine in
    the Tweedie estimate x̂_0 = (x + σ(t)² s) / α(t) and in x,
      x ← c_0 x̂_0 + c_x x + σ z = (c_0/α + c_x) x + (c_0 σ²/α) s + σ z,
    (c_0, c_x, σ) = ``coefs[i]`` (no noise is drawn where σ = 0); the second form, with its two
    coefficients folded before the loop, is what runs."""
    folded = [
        (c0 / lv.score_alpha[k] + cx, c0 * lv.score_sigma[k] ** 2 / lv.score_alpha[k], std)
        for (c0, cx, std), k in zip(coefs, tau)
    ]
    for i in run.stepping(len(folded)):
        a, b, std = folded[i]
        x = a * x + b * run.score(x, full_time(x, lv.t[tau[i]]))
        if std > 0:
            x = x + std * noise_like(x, run.generator)
    return x


def chain_steps(run: Run, lv: Levels) -> int:
    """The run's steps; a default larger than the levels a given t_start / eps leave is capped to them."""
    n_levels = len(lv.t) - 1
    return run.steps if "steps" in run.given else min(run.steps, n_levels)


DDPM_CHAIN = Requirement(lambda run, options: isinstance(run.sde.chain, DDPMChain),
                         "an SDE with a DDPM chain (vp, cosine_vp); use ddim or pc")


@register_method(
    "ddpm",
    DISCRETE_CHAIN,
    options={"variance": choice("beta", VARIANCES), "stride": choice("quadratic", STRIDES)},
    default_steps=N_STEPS,
    takes=("steps", "eps", "t_start"),
    nfe=lambda steps, options: steps,
    requires=(DDPM_CHAIN,),
)
def ddpm(run: Run, x: torch.Tensor, *, variance: str, stride: str) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Alg. 2) on the VP chain, respaced to ``steps`` levels.

    With τ from ``strided_levels`` (default: all N levels; else chosen by ``stride``), ᾱ = α_{τ_j}²,
    ᾱ' = α_{τ_{j-1}}² and the respaced β = 1 - ᾱ/ᾱ' (Nichol & Dhariwal 2021, §4; β = β_k when S = N), each
    step draws from the posterior q(x' | x, x̂_0) (eqs. 6–7) at the Tweedie estimate x̂_0:
      x ← √ᾱ' β / (1 - ᾱ) x̂_0 + √(1 - β) (1 - ᾱ') / (1 - ᾱ) x + σ z,
      σ² = β ("beta") or β̃ = β (1 - ᾱ') / (1 - ᾱ) ("beta_tilde"),
    Alg. 2's ε-form update written with x̂_0 = (x - √(1-ᾱ) ε̂)/√ᾱ. The last step (to ᾱ_0 = 1) adds no
    noise and returns x̂_0.
    """
    lv = run_levels(run)
    tau = strided_levels(len(lv.t) - 1, chain_steps(run, lv), stride)
    coefs = []
    for k, k_next in zip(tau[:-1], tau[1:]):
        abar, abar_next = lv.alpha[k] ** 2, lv.alpha[k_next] ** 2
        beta = 1.0 - abar / abar_next
        var = beta if variance == "beta" else beta * (1.0 - abar_next) / (1.0 - abar)
        c0 = math.sqrt(abar_next) * beta / (1.0 - abar)
        cx = math.sqrt(1.0 - beta) * (1.0 - abar_next) / (1.0 - abar)
        coefs.append((c0, cx, math.sqrt(var) if k_next > 0 else 0.0))
    return _posterior_walk(run, x, lv, tau, coefs)


@register_method(
    "ddim",
    DISCRETE_CHAIN,
    options={"eta": number(0.0, 0.0, 1.0), "stride": choice("quadratic", STRIDES)},
    default_steps=StepsOfSDE("min(100, N)", lambda sde, options: min(100, sde.N)),
    takes=("steps", "eps", "t_start"),
    deterministic=lambda options: options["eta"] == 0.0,
    nfe=lambda steps, options: steps,
)
def ddim(run: Run, x: torch.Tensor, *, eta: float, stride: str) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eqs. 12, 16) on ``steps`` levels of the SDE's chain, η ∈ [0, 1].

    In (α, σ) form on ``steps`` (default min(100, N)) levels chosen by ``stride``, of the chain of VP,
    cosine VP or VE (sub-VP: its kernel at t = kT/N). From level τ to τ', with the Tweedie estimate x̂_0:
      ε̂ = (x - α x̂_0) / σ,  x ← α' x̂_0 + √(σ'² - c²) ε̂ + c z,   c = η σ'/σ √(σ² - (α/α')² σ'²)
    (VP: c = η √((1-ᾱ')/(1-ᾱ)) √(1 - ᾱ/ᾱ'); VE: the SMLD posterior std), i.e. the mean of q_σ(x' | x, x̂_0)
    (eq. 7) = (α' - √(σ'² - c²) α/σ) x̂_0 + √(σ'² - c²)/σ x. η = 0 is deterministic (no noise is drawn);
    η = 1 draws its noise as ``ddpm`` with β̃ does, so both give the same trajectory. The last step, to
    level 0, returns x̂_0 (at level 1, or at a given eps).
    """
    lv = run_levels(run)
    tau = strided_levels(len(lv.t) - 1, chain_steps(run, lv), stride)
    coefs = []
    for k, k_next in zip(tau[:-1], tau[1:]):
        a, s, a_next, s_next = lv.alpha[k], lv.sigma[k], lv.alpha[k_next], lv.sigma[k_next]
        c = eta * s_next / s * math.sqrt(max(s**2 - (a / a_next) ** 2 * s_next**2, 0.0))
        direction = math.sqrt(max(s_next**2 - c**2, 0.0))
        coefs.append((a_next - direction * a / s, direction / s, c))
    return _posterior_walk(run, x, lv, tau, coefs)
