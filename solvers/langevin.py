"""Langevin dynamics: the update, its step-size rules (shared with the PC correctors), and NCSN's annealed
Langevin sampler."""
from __future__ import annotations

import math

import torch

from .common import Run, full_time, noise_like, tweedie_denoise
from .spec import DISCRETE_CHAIN, flag, integer, number, positive, register_method


def langevin_step(x: torch.Tensor, score: torch.Tensor, step_size: float, noise: torch.Tensor) -> torch.Tensor:
    """One unadjusted Langevin step x ← x + ε ∇log p(x) + √(2ε) z (Song et al. 2021, Algs. 4–5)."""
    return torch.add(x, score, alpha=step_size).add_(noise, alpha=math.sqrt(2 * step_size))


def snr_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float, alpha: float) -> float:
    """Song et al.'s (2021, Algs. 4–5) rule ε = 2 α (r ‖z‖ / ‖s‖)² for a target signal-to-noise ratio r.

    ‖·‖ are per-sample norms averaged over the batch, as in score_sde. Per-sample norms would make ε a
    function of x, which biases the stationary law (the Fokker–Planck flux gains a p ∇ε term) and blows
    up in low dimension, where ‖s‖ → 0 at every mode centre; the batch average is nearly a constant of
    the step for large batches, at the price of a weak coupling between the samples of a batch.
    """
    noise_norm = float(torch.linalg.vector_norm(noise.flatten(1), dim=1).mean())
    score_norm = float(torch.linalg.vector_norm(score.flatten(1), dim=1).mean())
    return 2 * alpha * (snr * noise_norm / score_norm) ** 2


def ald_step_size(sigma: float, snr: float, alpha: float) -> float:
    """NCSN's step rule as score_sde's ``ald`` corrector writes it, ε = 2 α (r σ)², with σ the kernel std
    σ(t) of x itself (the score's scale is 1/σ², so (r σ)² is a step at signal-to-noise ratio r; σ/α would be
    the level of x/α and miss the α² of the change of variables). ``annealed_langevin``'s
    α_i/2 = ε σ_i² / (2 σ_L²) is this rule with r = √ε / (2 σ_L), α = 1."""
    return 2 * alpha * (snr * sigma) ** 2


def _check_levels(options: dict[str, object]) -> None:
    sigma_min, sigma_max = options["sigma_min"], options["sigma_max"]
    if sigma_max is not None and not sigma_min < sigma_max:
        raise ValueError(f"annealed_langevin needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


@register_method(
    "annealed_langevin",
    DISCRETE_CHAIN,
    options={
        "n_steps_each": integer(10),
        "step_lr": positive(1e-4),
        "sigma_min": positive(0.01),
        "sigma_max": number(None, 0.0, math.inf, low_open=True, high_open=True, optional=True),
        "denoise": flag(True),
    },
    default_steps=100,
    takes=("steps",),
    nfe=lambda steps, options: steps * options["n_steps_each"] + int(options["denoise"]),
    check=_check_levels,
)
def annealed_langevin(run: Run, x: torch.Tensor, *, n_steps_each: int, step_lr: float, sigma_min: float,
                      sigma_max: float | None, denoise: bool) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) on geometric noise levels.

    On L = ``steps`` (default 100) levels σ_1 = ``sigma_max`` > ... > σ_L = ``sigma_min``, ``n_steps_each``
    steps per level:
      x ← x + (α_i/2) s(x, σ_i) + √α_i z,   α_i = ε σ_i² / σ_L²   (ε = ``step_lr``).

    Levels are noise levels of x/α, i.e. half log-SNRs λ = -log σ: the chain runs on x̃ = x/α with score
    α(t_i) ∇log p_{t_i}(α(t_i) x̃) at t_i = t(λ_i), the exact score of p_0 * N(0, σ_i²) for every SDE here
    (VE: α = 1 and σ is the kernel std). ``sigma_max`` defaults to the SDE's top level e^{-λ(T)}, ``sigma_min``
    to NCSN's 0.01; the prior draw is rescaled to std σ_1. ``step_lr`` is tuned for σ_L = 0.01 (what
    matters is ε/σ_L²: scale ε by σ_L² if you change σ_L). ``denoise`` ends with the Tweedie step
    x̃ + σ_L² s (Song & Ermon 2020). The levels are set by ``sigma_max`` / ``sigma_min``, so ``t_start``
    and ``eps`` are not taken.
    """
    sde = run.sde
    top = math.exp(-float(sde.lambda_(sde.T)))
    sigma_max = top if sigma_max is None else float(sigma_max)
    if not sigma_min < sigma_max:
        raise ValueError(f"annealed_langevin needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    sigmas = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), run.steps, dtype=torch.float64))
    t = sde.t_of_lambda(-torch.log(sigmas)).clamp(0.0, sde.T)
    ts, alphas, sigmas = t.tolist(), sde.alpha(t).tolist(), sigmas.tolist()
    x = x * (sigmas[0] / sde.prior_std)
    for i in run.stepping(run.steps):
        step_size = step_lr * sigmas[i] ** 2 / sigmas[-1] ** 2 / 2
        tt = full_time(x, ts[i])
        for _ in range(n_steps_each):
            score = alphas[i] * run.score(alphas[i] * x, tt)
            x = langevin_step(x, score, step_size, noise_like(x, run.generator))
    return tweedie_denoise(sde, run.score, alphas[-1] * x, ts[-1]) if denoise else x
