"""Training objectives: continuous-time denoising score matching, its stable-target variant, and
the discrete objectives (DDPM, SMLD) it generalises.

Every per-sample loss below takes a plain ``score_fn(x, t)`` (a network through
``models.get_score_fn``, or the exact score of a mixture) and returns a ``(B,)`` tensor: the
weighted squared error summed over the data dimensions. With x_t = α x_0 + σ z, z ~ N(0, I), the
target is the conditional score ∇log p_0t(x_t | x_0) = -z/σ, and

    ℓ_λ(t) = λ(t) ‖s(x_t, t) + z/σ‖² = (λ(t)/σ²) ‖σ s(x_t, t) + z‖²        (Song et al. 2021, eq. 7)

is computed in the second form, which stays O(1) as σ → 0. Since
E‖s + z/σ‖² = E‖s - ∇log p_t‖² + C(t) with C independent of s (Vincent 2011), the exact score
minimises every objective here but 'stf', whose lower-variance target z → ẑ (``stable_target``)
buys that variance with a small bias; ``get_loss_fn`` averages over the batch after dividing by the
number of dimensions (``reduce='mean'``) or not (``'sum'``; score_sde's 'sum' also halves, this
one does not).

Discrete levels are mapped to continuous time by matching the kernel: level k with kernel
(α_k, σ_k) is evaluated at t_k = t(λ_k), λ_k = log(α_k/σ_k), clamped to T — the convention
x_t = α(t_k) x_0 + σ(t_k) z then reproduces the chain's perturbation exactly, except for the last
levels beyond T (4 of 1000 for VP, whose ᾱ_N = Π(1-β_k) < e^{-Σβ_k} = α(T)², |Δλ| ≤ 0.034; the
last of cosine VP, clipped at β = 0.999; σ_N = σ_max > σ(T) for VE, relative 2e-8), which are
evaluated at T, where x_t is nearly pure noise either way (α/σ < 0.007 for VP and cosine VP).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn

from sde_diffusion.core.discrete import DDPMChain, SMLDChain
from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import append_dims, sum_except_batch
from sde_diffusion.models.embeddings import NULL_LABEL
from sde_diffusion.models.utils import get_score_fn

PerSampleLoss = Callable[[ScoreFn, torch.Tensor, Optional[torch.Generator]], torch.Tensor]
LossFn = Callable[..., torch.Tensor]

#: Each weighting λ(t) is registered as the ratio λ(t)/σ(t)² that multiplies ‖σ s + z‖².
WEIGHTINGS: Registry[Callable[[LinearSDE, torch.Tensor], torch.Tensor]] = Registry("loss weighting")


@WEIGHTINGS.register("sigma2")
def sigma2_weighting(sde: LinearSDE, t: torch.Tensor) -> torch.Tensor:
    """λ = σ²: the ε-loss ‖ε̂ - z‖² (Song et al. 2021, Sec. 3.3; DDPM's L_simple in continuous time)."""
    return torch.ones_like(t)


@WEIGHTINGS.register("likelihood")
def likelihood_weighting(sde: LinearSDE, t: torch.Tensor) -> torch.Tensor:
    """λ = g²: the weighting whose DSM loss bounds KL(p_0 ‖ p_θ) (Song et al. 2021b, Thm. 1)."""
    return sde.g2(t) / sde.sigma(t) ** 2


LOSSES: Registry[Callable[[LinearSDE, Any], PerSampleLoss]] = Registry("loss")

REDUCTIONS = ("mean", "sum")


# --- per-sample objectives ----------------------------------------------------------------------
def dsm_loss(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x0: torch.Tensor,
    t: torch.Tensor,
    z: torch.Tensor,
    weighting: str = "sigma2",
    reference: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """ℓ = (λ(t)/σ²) ‖σ s(x_t, t) + ẑ‖² summed over dimensions, shape (B,), at x_t = α x_0 + σ z:
    ẑ = z (DSM), or, given a ``reference`` batch that contains x_0, the stable target of
    ``stable_target``."""
    ratio = WEIGHTINGS.get(weighting)
    alpha, sigma = sde.alpha(t).to(x0.dtype), sde.sigma(t).to(x0.dtype)
    a, s = append_dims(alpha, x0.ndim), append_dims(sigma, x0.ndim)
    xt = a * x0 + s * z
    target = z if reference is None else stable_target(xt, alpha, sigma, reference)
    return ratio(sde, t).to(x0.dtype) * sum_except_batch((s * score_fn(xt, t) + target) ** 2)


@torch.no_grad()
def stable_target(xt: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The stable target field in noise units (Xu, Tong & Jaakkola 2023, "Stable target field for
    reduced variance score estimation in diffusion models", Sec. 3): for x_t with kernel (α, σ)
    (shapes (B,)) and the reference batch {y_j} (rows of ``reference``, x_0 among them),

        w_j ∝ p_0t(x_t | y_j) = N(x_t; α y_j, σ² I),    ẑ = (x_t - α Σ_j w_j y_j) / σ,

    so that -ẑ/σ = Σ_j w_j ∇log p_0t(x_t | y_j), the score of the perturbed empirical measure of the
    references, replaces DSM's -z/σ. Where one kernel dominates (small σ) ẑ = z; where the modes
    merge, it averages over them: lower variance, at a bias that vanishes as the reference grows.
    The logits -‖x_t - α y_j‖²/(2σ²) drop their per-row term -‖x_t‖²/(2σ²), which cancels in the
    softmax, leaving one matrix product: (α/σ²) (x_t·y_j - α ‖y_j‖²/2)."""
    x, y = xt.flatten(1), reference.flatten(1).to(xt.dtype)
    scale = (alpha / sigma**2)[:, None]
    rows = torch.cat([scale * x, -0.5 * scale * alpha[:, None]], dim=1)
    cols = torch.cat([y, (y**2).sum(1, keepdim=True)], dim=1)
    weights = torch.softmax(rows @ cols.T, dim=1)
    return ((x - alpha[:, None] * (weights @ y)) / sigma[:, None]).view_as(xt)


def ddpm_vlb_weights(chain: DDPMChain) -> torch.Tensor:
    """Weights w_k (float64, (N,)) of the ε-form of the DDPM bound L_{k-1} = w_k E‖ε - ε̂‖² + C_k
    (Ho et al. 2020, eq. 12): w_k = β_k² / (2 σ_k² α_k (1 - ᾱ_k)).

    For k ≥ 2, σ_k² = β̃_k = (1 - ᾱ_{k-1}) β_k / (1 - ᾱ_k), so w_k = β_k / (2 α_k (1 - ᾱ_{k-1})).
    At k = 1, β̃_1 = 0; the k = 1 term is L_0 = -log N(x_0; μ_θ(x_1), σ_1² I) of a Gaussian decoder
    with σ_1² = β_1, whose ε-form is the same formula with σ_1² = β_1 = 1 - ᾱ_1: w_1 = 1/(2 α_1).
    """
    w = chain.betas / (2 * chain.alphas * (1 - chain.alphas_cumprod_prev))
    w[0] = 1 / (2 * chain.alphas[0])
    return w


# --- time sampling ------------------------------------------------------------------------------
def uniform_time(
    n: int, eps: float, T: float, generator: Optional[torch.Generator], device: torch.device
) -> torch.Tensor:
    """t ~ U(eps, T), float64."""
    return eps + (T - eps) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def likelihood_importance_time(
    sde: LinearSDE, n: int, eps: float, generator: Optional[torch.Generator], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """t drawn with density p(t) ∝ g(t)²/σ(t)² on [eps, T], and the importance weight u(t)/p(t)
    of the uniform density u = 1/(T - eps) (the variance reduction of Song et al. 2021b).

    For a linear SDE g² = dσ²/dt - 2 f σ², so g²/σ² = d(log σ² - 2 log α)/dt = -2 dλ/dt: the
    proposal is uniform in λ. Hence t = t(λ), λ ~ U(λ(T), λ(eps)), normaliser
    Z = 2 (λ(eps) - λ(T)), and the weight is Z σ² / (g² (T - eps)); exact for every SDE, no grid.
    """
    lam_lo, lam_hi = sde.lambda_(torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()
    lam = lam_lo + (lam_hi - lam_lo) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    t = sde.t_of_lambda(lam).clamp(eps, sde.T)
    weight = 2 * (lam_hi - lam_lo) / ((sde.T - eps) * likelihood_weighting(sde, t))
    return t, weight


# --- the registered objectives --------------------------------------------------------------------
def _field(config: Any, name: str, default: Any) -> Any:
    return getattr(config, name, default)


def _check_continuous_only(config: Any, loss: str) -> None:
    if _field(config, "weighting", "sigma2") != "sigma2" or _field(config, "importance_sampling", False):
        raise ValueError(
            f"loss {loss!r} has its own fixed weighting; weighting='likelihood' and importance_sampling"
            " apply to loss='dsm' only (set weighting='sigma2', importance_sampling=False)"
        )


def _continuous(sde: LinearSDE, config: Any, stable: bool) -> PerSampleLoss:
    """Continuous DSM with t ~ U(eps, T), or, for the likelihood weighting with
    ``importance_sampling``, t ~ p(t) ∝ g²/σ² and the importance weight (same expectation).
    ``stable``: the rows passed in are the reference batch, of which the first ``batch_size``
    (all, when ``reference_batch_size`` is 0) are perturbed and scored."""
    weighting = _field(config, "weighting", "sigma2")
    WEIGHTINGS.get(weighting)  # unknown names fail here, not at the first training step
    importance = bool(_field(config, "importance_sampling", False))
    if importance and weighting != "likelihood":
        raise ValueError(f"importance_sampling needs weighting='likelihood', got weighting={weighting!r}")
    eps = float(_field(config, "eps", 1e-5))
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, {sde.T}), got {eps}")
    if stable:
        rows_per_step(config)  # refuses 0 < reference_batch_size < batch_size
    trained = _field(config, "batch_size", None) if stable and _field(config, "reference_batch_size", 0) else None

    def per_sample(score_fn: ScoreFn, batch: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        x0, reference = batch[:trained], batch if stable else None
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if importance:
            t, weight = likelihood_importance_time(sde, x0.shape[0], eps, generator, x0.device)
            return weight.to(x0.dtype) * dsm_loss(sde, score_fn, x0, t, z, "likelihood", reference)
        t = uniform_time(x0.shape[0], eps, sde.T, generator, x0.device)
        return dsm_loss(sde, score_fn, x0, t, z, weighting, reference)

    return per_sample


@LOSSES.register("dsm")
def _dsm(sde: LinearSDE, config: Any) -> PerSampleLoss:
    """Denoising score matching, target ẑ = z (Vincent 2011; Song et al. 2021, eq. 7)."""
    return _continuous(sde, config, stable=False)


@LOSSES.register("stf")
def _stf(sde: LinearSDE, config: Any) -> PerSampleLoss:
    """DSM with the stable target ``stable_target`` over a reference batch: ``reference_batch_size``
    rows of data per step (0: the batch itself), the first ``batch_size`` of them trained on."""
    return _continuous(sde, config, stable=True)


def _discrete(sde: LinearSDE, config: Any, loss: str, chain_type: type, vlb: bool) -> PerSampleLoss:
    _check_continuous_only(config, loss)
    if not isinstance(sde.chain, chain_type):
        raise ValueError(f"loss {loss!r} needs an SDE with a {chain_type.__name__}, got {sde!r}")
    times = sde.chain_times()
    weights = ddpm_vlb_weights(sde.chain) if vlb else torch.ones_like(times)

    def per_sample(score_fn: ScoreFn, x0: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        k = torch.randint(len(times), (x0.shape[0],), generator=generator, device=x0.device)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        w = weights.to(x0.device)[k].to(x0.dtype)
        return w * dsm_loss(sde, score_fn, x0, times.to(x0.device)[k], z, "sigma2")

    return per_sample


@LOSSES.register("ddpm")
def _ddpm(sde: LinearSDE, config: Any) -> PerSampleLoss:
    """L_simple = E_{k ~ U{1..N}} ‖ε - ε̂(√ᾱ_k x_0 + √(1-ᾱ_k) ε, k)‖² (Ho et al. 2020, eq. 14)."""
    return _discrete(sde, config, "ddpm", DDPMChain, vlb=False)


@LOSSES.register("ddpm_vlb")
def _ddpm_vlb(sde: LinearSDE, config: Any) -> PerSampleLoss:
    """E_{k ~ U{1..N}} w_k ‖ε - ε̂‖² with the bound's weights ``ddpm_vlb_weights`` (Ho et al. 2020,
    eq. 12): an unbiased estimate of (1/N) Σ_k L_{k-1} up to a model-independent constant."""
    return _discrete(sde, config, "ddpm_vlb", DDPMChain, vlb=True)


@LOSSES.register("smld")
def _smld(sde: LinearSDE, config: Any) -> PerSampleLoss:
    """E_{i ~ U{1..N}} σ_i² ‖s(x_0 + σ_i z, σ_i) + z/σ_i‖² over the geometric levels σ_i of the VE
    chain (Song & Ermon 2019, eqs. 5–6, with λ(σ) = σ², without their ½)."""
    return _discrete(sde, config, "smld", SMLDChain, vlb=False)


def get_per_sample_loss_fn(sde: LinearSDE, training_config: Any) -> PerSampleLoss:
    """``per_sample(score_fn, x0, generator) -> (B,)``: the objective ``training_config.loss`` of a
    plain score function (a model's, or an exact one), summed over dimensions, before reduction."""
    return LOSSES.get(_field(training_config, "loss", "dsm"))(sde, training_config)


def rows_per_step(training_config: Any) -> int:
    """Rows of data a training step draws: ``batch_size``, or for loss 'stf' its
    ``reference_batch_size`` when that is set (≥ ``batch_size``; the first ``batch_size`` rows are
    the ones trained on). The other losses ignore ``reference_batch_size``."""
    batch, reference = _field(training_config, "batch_size", None), _field(training_config, "reference_batch_size", 0)
    if _field(training_config, "loss", "dsm") != "stf" or not reference:
        return batch
    if batch is not None and reference < batch:
        raise ValueError(f"reference_batch_size={reference} must be 0 (the batch itself) or >= batch_size={batch}")
    return reference


def drop_labels(labels: torch.Tensor, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Condition dropout (Ho & Salimans 2022, Alg. 1): each label becomes ∅ (``NULL_LABEL``) with
    probability p, so that one network learns the conditional and the unconditional score."""
    dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < p
    return torch.where(dropped, NULL_LABEL, labels)


def get_loss_fn(sde: LinearSDE, training_config: Any) -> LossFn:
    """``loss_fn(model, batch, generator=None, labels=None) -> scalar``: the objective
    ``training_config.loss`` (``dsm`` | ``stf`` | ``ddpm`` | ``ddpm_vlb`` | ``smld``) of ``model``'s
    score on ``batch``, with fields ``weighting`` ('sigma2' | 'likelihood'), ``importance_sampling``,
    ``reduce`` ('mean' | 'sum'), ``eps`` (1e-5), and for 'stf' ``batch_size`` and
    ``reference_batch_size`` (``batch`` then has ``rows_per_step`` rows). A class-conditional model
    takes the batch's (B,) ``labels``, dropped to ∅ with probability ``cond_drop_prob`` (0). ``generator`` (on the batch's device) drives
    every random draw. ``rows`` averages over those rows of the batch only, with the random draws of the
    whole batch: one process's share of a data-parallel step (``distributed.RowShard``)."""
    per_sample = get_per_sample_loss_fn(sde, training_config)
    stable = _field(training_config, "loss", "dsm") == "stf"
    reduce = _field(training_config, "reduce", "mean")
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; known: {', '.join(REDUCTIONS)}")
    cond_drop_prob = float(_field(training_config, "cond_drop_prob", 0.0))
    if not 0.0 <= cond_drop_prob < 1.0:
        raise ValueError(f"cond_drop_prob must lie in [0, 1), got {cond_drop_prob}")

    def loss_fn(
        model: nn.Module,
        batch: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        labels: Optional[torch.Tensor] = None,
        rows: slice = slice(None),
    ) -> torch.Tensor:
        if stable and labels is not None:
            raise ValueError("loss 'stf' pools its targets over the reference batch whatever their class;"
                             " a class-conditional model needs loss 'dsm'")
        score_fn = get_score_fn(sde, model)
        y = None if labels is None else drop_labels(labels, cond_drop_prob, generator)
        losses = per_sample(lambda x, t: score_fn(x, t, y), batch, generator)[rows]
        if reduce == "mean":
            losses = losses / batch[0].numel()
        return losses.mean()

    return loss_fn
