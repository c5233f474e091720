"""Exact identities of the classic samplers: chain levels carry the chain's kernels, predictor steps equal
score_sde's discretisations, DDIM(η = 1) is DDPM(β̃), the probability-flow ODE inverts itself and is one
ODE for VP and sub-VP, and the Langevin step-size rules. Float64 throughout, so where two computations
are algebraically equal only rounding (≈ 1e-16 per operation) separates them."""
import math

import pytest
import torch

import solvers
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import anisotropic, ring
from solvers.common import tweedie_denoise
from solvers.ddpm import chain_levels, strided_levels
from solvers.langevin import ald_step_size, snr_step_size
from solvers.pc import PREDICTORS, chain_times
from solvers.schedules import time_steps

F64 = torch.float64


@pytest.mark.parametrize("name", ["vp", "cosine_vp", "ve", "subvp"])
def test_chain_levels_carry_the_chain_kernels(name):
    """At t_k = t(λ_k) the SDE's kernel is level k's: α(t_k) = α_k and σ(t_k) = σ_k to 1e-9 relative
    (the inverse map t(λ) loses a few digits of the 1e-16 rounding where dλ/dt is large). Levels clamped
    to T must really lie beyond it (α_k ≤ α(T)); VP has a handful (ᾱ_N = e^{-10.12} < ᾱ(1) = e^{-10.05})."""
    sde = get_sde(name)
    lv = chain_levels(sde)
    t = torch.tensor(lv.t[1:], dtype=F64)
    alpha, sigma = torch.tensor(lv.alpha[1:], dtype=F64), torch.tensor(lv.sigma[1:], dtype=F64)
    inside = t < sde.T
    assert int((~inside).sum()) <= 5
    assert bool((alpha[~inside] <= sde.alpha(sde.T) * (1 + 1e-12)).all())
    assert torch.allclose(sde.alpha(t[inside]), alpha[inside], rtol=1e-9, atol=0)
    assert torch.allclose(sde.sigma(t[inside]), sigma[inside], rtol=1e-9, atol=0)
    assert lv.t[1:] == sorted(lv.t[1:]) and lv.t[0] == 0.0 and lv.sigma[0] == 0.0


@pytest.mark.parametrize(
    "steps, stride", [(1, "quadratic"), (7, "linear"), (100, "quadratic"), (1000, "linear"), (1000, "quadratic")]
)
def test_strided_levels(steps, stride):
    """S steps visit S + 1 strictly decreasing levels from N to 1, then 0; S = N visits them all."""
    tau = strided_levels(1000, steps, stride)
    assert len(tau) == steps + 1 and tau[0] == 1000 and tau[-1] == 0
    assert tau[-2] == (1000 if steps == 1 else 1)
    assert all(a > b for a, b in zip(tau[:-1], tau[1:]))


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_diffusion_is_score_sde_discretisation(name, probability_flow, gen):
    """The reverse-diffusion step from level k equals x - rev_f + rev_G z of
    ``sde.reverse(score_fn, probability_flow).discretize`` at the time score_sde maps to chain index
    k - 1 (t = (k - 1) T / (N - 1)), with the same noise z: to 1e-12 (rounding only). (Levels above the
    SDE's T, VP's top 4, first convert the score at T to the level's: ``Levels.level_score``.)"""
    sde = get_sde(name)
    step = PREDICTORS.get("reverse_diffusion").make(sde, chain_times(sde), probability_flow)
    x, score = torch.randn(16, 2, generator=gen, dtype=F64), torch.randn(16, 2, generator=gen, dtype=F64)
    for i in (10, 400, sde.N - 2):
        k = sde.N - i
        ours = step(x, score, i, torch.Generator().manual_seed(i))
        rev_f, rev_G = sde.reverse(lambda x, t: score, probability_flow).discretize(x, (k - 1) * sde.T / (sde.N - 1))
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=F64)
        assert torch.allclose(ours, x - rev_f + rev_G[:, None] * z, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_euler_maruyama_step_is_reverse_sde_drift(name, gen):
    """One Euler–Maruyama predictor step equals x - h·drift + g √h z with (drift, g) from
    ``sde.reverse(score_fn).sde`` at t_i, h = t_i - t_{i+1}: to 1e-12 relative."""
    sde = get_sde(name)
    times = time_steps(sde, 50, 1e-3, "time_uniform").tolist()
    step = PREDICTORS.get("euler_maruyama").make(sde, times, False)
    x, score = torch.randn(16, 2, generator=gen, dtype=F64), torch.randn(16, 2, generator=gen, dtype=F64)
    for i in (0, 25, 49):
        t, t_next = times[i], times[i + 1]
        ours = step(x, score, i, torch.Generator().manual_seed(i))
        drift, g = sde.reverse(lambda x, t: score).sde(x, t)
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=F64)
        ref = x - (t - t_next) * drift + g[:, None] * math.sqrt(t - t_next) * z
        assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_final_tweedie_step_is_the_chains_last_transition(name, gen):
    """The chain predictors end with the Tweedie step at level 1, which must be the chain's own
    noise-free last transition: (x + β_1 s)/√(1 - β_1) (DDPM) or x + σ_1² s (SMLD), to 1e-12."""
    sde = get_sde(name)
    x, score = torch.randn(16, 2, generator=gen, dtype=F64), torch.randn(16, 2, generator=gen, dtype=F64)
    denoised = tweedie_denoise(sde, lambda x, t: score, x, chain_levels(sde).t[1])
    _, mean = sde.chain.ancestral_step(x, score, torch.tensor(0), torch.zeros_like(x))
    assert torch.allclose(denoised, mean, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps, stride", [(1000, "quadratic"), (50, "quadratic"), (50, "linear")])
def test_ddim_eta_one_is_ddpm_beta_tilde(steps, stride):
    """Same x_T and generator seed: DDIM(η = 1) and DDPM(σ² = β̃) draw the same noise in the same order and
    are algebraically one update, so their trajectories agree to rounding (≤ 1e-10 after ≤ 1000 steps in
    float64). DDPM(σ² = β) on the same noise differs by O(0.1): the comparison can fail."""
    sde, mix = get_sde("vp"), ring()
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)

    def run(method, **options):
        x, _ = solvers.sample(sde, mix.score_fn(sde), x_T.shape, method, steps=steps, x_T=x_T,
                              generator=torch.Generator().manual_seed(1), stride=stride, **options)
        return x

    ddim = run("ddim", eta=1.0)
    assert (ddim - run("ddpm", variance="beta_tilde")).abs().max() <= 1e-10
    assert (ddim - run("ddpm", variance="beta")).abs().max() > 1e-2


@pytest.mark.parametrize(
    "method, options",
    [
        ("ddim", {}),
        ("ddim", {"steps": 20}),
        ("ode", {}),
        ("ode", {"solver": "rk4", "steps": 20}),
        ("euler_maruyama", {"probability_flow": True, "steps": 50}),
    ],
)
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_deterministic_methods_ignore_the_generator(method, options, name):
    """From the same x_T, two generators give bit-identical samples for η = 0 DDIM and the ODE samplers;
    the same run with the stochastic Euler–Maruyama differs (so the comparison can fail)."""
    sde, mix = get_sde(name, N=100), ring()
    x_T = sde.prior_sampling((32, 2), torch.Generator().manual_seed(0))

    def run(method, seed, **opts):
        gen = torch.Generator().manual_seed(seed)
        return solvers.sample(sde, mix.score_fn(sde), x_T.shape, method, x_T=x_T, generator=gen, **opts)[0]

    assert torch.equal(run(method, 1, **options), run(method, 2, **options))
    assert not torch.equal(run("euler_maruyama", 1, steps=50), run("euler_maruyama", 2, steps=50))


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_encode_then_ode_returns_the_data(name):
    """x_0 → z by ``encode`` and back by ``ode`` at rtol = atol = 1e-8 (dopri5): the round trip is two
    solves whose global errors are ~tol times the flow's amplification; measured max 1.3e-5 (VP), below
    the required 1e-4 on 200 points. The latents follow the prior: their std is prior_std within
    4 standard errors of a 400-number sample (4/√800 = 14%)."""
    sde, mix = get_sde(name), ring()
    x0 = mix.sample(200, torch.Generator().manual_seed(3), dtype=F64)
    z, nfe_encode = solvers.encode(sde, mix.score_fn(sde), x0, rtol=1e-8, atol=1e-8)
    x1, nfe_decode = solvers.sample(sde, mix.score_fn(sde), x0.shape, "ode", x_T=z, rtol=1e-8, atol=1e-8)
    assert float((x1 - x0).norm(dim=1).max()) <= 1e-4
    assert abs(float(z.std()) / sde.prior_std - 1) <= 4 / math.sqrt(800)
    assert nfe_encode > 0 and nfe_decode > 0


def _marginal_latents(sde, mix, t: float, n: int, seed: int) -> torch.Tensor:
    """n exact draws of p_t: α(t) x_0 + σ(t) ε with x_0 from the mixture (float64)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = mix.sample(n, gen, dtype=F64)
    return float(sde.alpha(t)) * x0 + float(sde.sigma(t)) * torch.randn(x0.shape, generator=gen, dtype=F64)


@pytest.mark.parametrize("target", ["ring", "anisotropic"])
@pytest.mark.parametrize("name", ["vp", "ve", "cosine_vp"])
def test_ode_error_falls_with_the_tolerance(name, target):
    """``ode`` (dopri5, in u = log σ/α) from T to eps on exact scores: the median distance to a float64
    reference (the ODE in t at rtol = atol = 1e-10, an independent form and variable) falls at every
    decade of rtol = atol from 1e-3 to 1e-6, by at least 2× per decade and 20× per two decades. A
    tolerance-proportional solver's global error falls ~10× per decade; measured on these 200 points
    2.5–61× per decade (single decades jitter with the accepted step sequence) and ≥ 90× per two
    decades. The reference's own error (~1e-8) is far below the 1e-6 run's (≥ 1.7e-7)."""
    sde, mix = get_sde(name), {"ring": ring, "anisotropic": anisotropic}[target]()
    score = mix.score_fn(sde)
    x_T = _marginal_latents(sde, mix, sde.T, 200, seed=5)
    reference, _ = solvers.sample(sde, score, x_T.shape, "ode", x_T=x_T, rtol=1e-10, atol=1e-10, variable="t")
    errors = []
    for tol in (1e-3, 1e-4, 1e-5, 1e-6):
        x, _ = solvers.sample(sde, score, x_T.shape, "ode", x_T=x_T, rtol=tol, atol=tol)
        errors.append(float((x - reference).norm(dim=1).median()))
    assert all(b <= a / 2 for a, b in zip(errors, errors[1:])), errors
    assert all(c <= a / 20 for a, c in zip(errors, errors[2:])), errors


def test_ode_from_t_start():
    """From t_start = 0.5 with exact draws of p_0.5 (VP, ring), ``ode`` at rtol = atol = 1e-6 ends within
    a median 5e-6 of the ODE in t solved at 1e-10 from the same t_start (measured 3e-7); the same
    latents run from T instead end a median 0.03 away, so the comparison can fail."""
    sde, mix = get_sde("vp"), ring()
    score = mix.score_fn(sde)
    x_mid = _marginal_latents(sde, mix, 0.5, 200, seed=6)
    reference, _ = solvers.sample(sde, score, x_mid.shape, "ode", x_T=x_mid, t_start=0.5, rtol=1e-10, atol=1e-10, variable="t")
    x, _ = solvers.sample(sde, score, x_mid.shape, "ode", x_T=x_mid, t_start=0.5, rtol=1e-6, atol=1e-6)
    assert float((x - reference).norm(dim=1).median()) <= 5e-6
    from_T, _ = solvers.sample(sde, score, x_mid.shape, "ode", x_T=x_mid, rtol=1e-6, atol=1e-6)
    assert float((from_T - reference).norm(dim=1).median()) > 1e-3


@pytest.mark.parametrize("variable", ["log_sigma", "t"])
def test_adaptive_ode_evaluates_inside_the_interval_and_ends_on_eps(variable):
    """dopri5's steps stop exactly at eps (torchdiffeq's ``step_t``): every score call lies in
    [eps, t_start], and the only calls at eps (to rounding) are the final step's last two stages
    (c = 1, the 7th the first-same-as-last). A step past eps would have several stages clamped to eps,
    to be interpolated back. Encoding likewise ends on T."""
    sde, mix = get_sde("vp"), ring()
    calls: list[torch.Tensor] = []

    def score(x, t):
        calls.append(t)
        return mix.score(x, t, sde)

    def at(t_end: float) -> list[int]:
        return [i for i, t in enumerate(calls) if float((t - t_end).abs().max()) <= 1e-9 * t_end]

    x_T = _marginal_latents(sde, mix, 0.7, 64, seed=7)
    solvers.sample(sde, score, x_T.shape, "ode", x_T=x_T, t_start=0.7, eps=1e-3, rtol=1e-4, atol=1e-4, variable=variable)
    t = torch.stack(calls)
    assert float(t.min()) >= 1e-3 * (1 - 1e-9) and float(t.max()) <= 0.7 * (1 + 1e-9)
    assert at(1e-3) == [len(calls) - 2, len(calls) - 1]
    calls.clear()
    solvers.encode(sde, score, mix.sample(64, torch.Generator().manual_seed(8), dtype=F64), eps=1e-3, rtol=1e-4, atol=1e-4, variable=variable)
    t = torch.stack(calls)
    assert float(t.min()) >= 1e-3 * (1 - 1e-9) and float(t.max()) <= sde.T
    assert at(sde.T) == [len(calls) - 2, len(calls) - 1]


def test_vp_and_subvp_ode_are_one_ode():
    """VP and sub-VP have the same α(t); in x̃ = x/α and σ̃ = σ/α both probability-flow ODEs are
    dx̃/dσ̃ = -σ̃ ∇log p̃_σ̃(x̃). Matched latents (the same standardised draw, x_T = σ(T) z) run to the same
    end level λ(eps) agree up to solver error, which scales with the tolerance: measured max
    difference 1.6e-4 at rtol = atol = 1e-6 and 1.6e-5 at 1e-7 (500 points); we require 1e-4 at 1e-7."""
    vp, subvp, mix = get_sde("vp"), get_sde("subvp"), ring()
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    eps_vp = 1e-3
    eps_subvp = float(subvp.t_of_lambda(vp.lambda_(eps_vp)))
    out = []
    for sde, eps in ((vp, eps_vp), (subvp, eps_subvp)):
        x_T = z * sde.sigma(sde.T)
        x, _ = solvers.sample(sde, mix.score_fn(sde), z.shape, "ode", x_T=x_T, eps=eps, rtol=1e-7, atol=1e-7)
        out.append(x / sde.alpha(eps))
    assert float((out[0] - out[1]).norm(dim=1).max()) <= 1e-4


def test_snr_step_size_averages_norms_over_the_batch():
    """ε = 2 α (r mean‖z‖ / mean‖s‖)²: score norms 1 and 3 (mean 2), noise norms 2 and 4 (mean 3) give
    2·0.9·(0.16·3/2)² = 0.10368; per-sample norms would give a different value."""
    score = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=F64)
    noise = torch.tensor([[0.0, 2.0], [4.0, 0.0]], dtype=F64)
    assert float(snr_step_size(score, noise, 0.16, 0.9)) == pytest.approx(2 * 0.9 * (0.16 * 3 / 2) ** 2, rel=1e-12)
    assert ald_step_size(0.5, 0.16, 0.9) == pytest.approx(2 * 0.9 * (0.16 * 0.5) ** 2, rel=1e-12)
