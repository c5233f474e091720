"""The SDE library against first principles: Monte-Carlo simulation of the forward SDE, the
DDPM chain, Bayes' rule and the published check values (checklist §4, §5.1)."""
import math

import pytest
import torch
from ml_collections import ConfigDict

from sde_diffusion.core.sde_lib import SDES, VESDE, VPSDE, CosineVPSDE, SubVPSDE, get_sde, sde_from_config

ALL = ["vp", "subvp", "ve", "cosine_vp", "discrete_vp"]
T_GRID = torch.tensor([1e-4, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("name", ALL)
def test_kernel_matches_forward_simulation(name, gen):
    """Simulate dx = f x dt + g dw from a point x0 with fine Euler–Maruyama steps and compare the
    empirical mean/std at t = 0.4 and t = 0.9 with marginal_prob (before cosine-VP's β(t) blows up
    near t = 1, where explicit Euler–Maruyama with this step would be unstable).

    n = 20000 paths: the standard error of the empirical mean is σ/√n ≈ 0.0071 σ and that of the
    empirical std σ/√(2n) ≈ 0.005 σ; Euler–Maruyama with M = 2000 steps has weak error O(1/M) on a
    linear SDE (relative ≲ 1e-3 here, β ≤ 20). Tolerance: 5 standard errors + 2e-3 relative.
    A wrong kernel (e.g. sub-VP's std taken as √(1-α²)) is off by far more. VE's σ_min correction is
    too small to see at these times and is checked separately below."""
    sde = get_sde(name)
    n, M = 20000, 2000
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    dt = 1.0 / M
    checkpoints = {int(0.4 * M): 0.4, int(0.9 * M): 0.9}
    for i in range(int(0.9 * M)):
        t = torch.full((n,), i * dt, dtype=torch.float64)
        drift, g = sde.sde(x, t)
        x = x + drift * dt + g[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        if i + 1 in checkpoints:
            tc = checkpoints[i + 1]
            mean, std = sde.marginal_prob(x0[None], tc)
            emp_mean, emp_std = x.mean(0), x.std(0)
            s = float(std[0])
            assert torch.allclose(emp_mean, mean[0], atol=5 * s / math.sqrt(n) + 2e-3 * s), (tc, emp_mean, mean)
            assert torch.allclose(emp_std, std.expand(2), rtol=5 / math.sqrt(2 * n) + 2e-3), (tc, emp_std, std)


def test_ve_kernel_std_is_exact_at_small_t(gen):
    """For VE the variance accumulated from t = 0 is σ(t)² − σ_min², not σ(t)² (score_sde's
    approximation). At t = 0.05 with σ_min = 0.01, σ_max = 50: σ(t) = 0.01526 while the exact std is
    0.01153, a 32% difference that 20000 exact Gaussian increments resolve easily (SE 0.5%)."""
    sde = VESDE()
    n, M = 20000, 200
    x = torch.zeros(n, 1, dtype=torch.float64)
    ts = torch.linspace(0, 0.05, M + 1, dtype=torch.float64)
    for a, b in zip(ts[:-1], ts[1:]):
        # exact increment of Brownian motion with variance σ(b)² − σ(a)²
        var = (sde.noise_level(b) ** 2 - sde.noise_level(a) ** 2)
        x = x + var.sqrt() * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    exact = float(sde.sigma(0.05))
    assert abs(float(x.std()) / exact - 1) < 5 / math.sqrt(2 * n)
    assert abs(exact - float(sde.noise_level(0.05))) > 0.2 * exact


@pytest.mark.parametrize("name", ALL)
def test_drift_and_diffusion_are_consistent_with_kernel(name):
    """A linear SDE's kernel obeys d log α/dt = f(t) and dσ²/dt = 2 f σ² + g²; check both by central
    finite differences (h = 1e-6 in float64: truncation O(h²) ≈ 1e-12, rounding ≈ 1e-10 relative),
    at times half-way between discrete_vp's timesteps k/1000, where its β(t) jumps."""
    sde = get_sde(name)
    t = torch.linspace(0.0105, 0.9905, 50, dtype=torch.float64)
    h = 1e-6
    dlog_alpha = (sde.log_alpha(t + h) - sde.log_alpha(t - h)) / (2 * h)
    dvar = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    assert torch.allclose(dlog_alpha, sde.f(t), rtol=1e-6, atol=1e-6)
    assert torch.allclose(dvar, 2 * sde.f(t) * sde.sigma(t) ** 2 + sde.g2(t), rtol=1e-5, atol=1e-6)


def test_vp_preserves_unit_variance(gen):
    """Var x_t = α² Var x_0 + σ² = 1 for unit-variance data, at every t (analytic, to rounding) and
    along the DDPM chain (Monte Carlo: 1000 steps from N(0,1) data; the sample variance of n = 50000
    draws has SE √(2/n) = 0.0063, tolerance 5 SE)."""
    sde = VPSDE()
    assert torch.allclose(sde.alpha(T_GRID) ** 2 + sde.sigma(T_GRID) ** 2, torch.ones_like(T_GRID), atol=1e-12)
    n = 50000
    x = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    for i in range(sde.N):
        f, G = sde.chain.discretize(x, torch.full((n,), i))
        x = x + f + G[:, None] * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    assert abs(float(x.var()) - 1.0) < 5 * math.sqrt(2 / n)


def test_subvp_variance_below_vp():
    vp, sub = VPSDE(), SubVPSDE()
    t = T_GRID[T_GRID > 0]
    assert bool((sub.sigma(t) ** 2 < vp.sigma(t) ** 2).all())
    assert torch.allclose(sub.sigma(t), vp.sigma(t) ** 2, rtol=1e-12)  # (1 − α²) = σ_VP²
    assert torch.allclose(sub.alpha(t), vp.alpha(t))


def test_vp_discretize_is_one_ddpm_step(gen):
    """x + f + G z must equal √(1−β_i) x + √β_i z with β = linspace(1e-4, 0.02, 1000) (Ho et al.)."""
    sde = VPSDE()
    assert torch.allclose(sde.chain.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), atol=1e-15)
    x = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    z = torch.randn_like(x)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    f, G = sde.discretize(x, t)
    idx = torch.tensor([0, 250, 500, 749, 999])  # round(t · 999)
    beta = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)[idx].view(-1, 1, 1, 1)
    assert torch.allclose(x + f + G.view(-1, 1, 1, 1) * z, torch.sqrt(1 - beta) * x + beta.sqrt() * z, atol=1e-14)


def test_published_schedule_values():
    """Checklist §4: ᾱ_1000 = 4.0358e-5 for the linear schedule; cosine (T = 1000): ᾱ_500 ≈ 0.4938,
    β_1 ≈ 4.13e-5, β_T clipped to 0.999."""
    vp = VPSDE()
    assert abs(float(vp.chain.alphas_cumprod[-1]) - 4.0358e-5) < 5e-9
    abar = vp.chain.alphas_cumprod
    for k, ref in [(1, 0.9999), (10, 0.998105), (100, 0.897018), (250, 0.524085), (500, 0.0785872), (750, 0.00335055)]:
        assert abs(float(abar[k - 1]) - ref) < 2e-6 * max(1, ref / 1e-3)
    cos = CosineVPSDE()
    assert abs(float(cos.chain.alphas_cumprod[499]) - 0.4938) < 1e-4
    assert abs(float(cos.chain.betas[0]) - 4.13e-5) < 1e-7
    assert float(cos.chain.betas[-1]) == pytest.approx(0.999)


def test_discrete_chain_tracks_continuous_vp():
    """ᾱ_i of the DDPM chain vs exp(−∫_0^{i/N} β): gap below 1e-3 at N = 1000 (checklist: 8.1e-4),
    shrinking with N (first order in 1/N)."""
    gaps = []
    for N in (1000, 4000):
        sde = VPSDE(N=N)
        t = torch.arange(1, N + 1, dtype=torch.float64) / N
        gaps.append(float((sde.chain.alphas_cumprod - sde.alpha(t) ** 2).abs().max()))
    assert gaps[0] < 1e-3
    assert gaps[1] < gaps[0] / 3


def test_ddpm_posterior_matches_bayes_rule():
    """q(x_{t−1} | x_t, x_0) ∝ q(x_t | x_{t−1}) q(x_{t−1} | x_0), evaluated on a fine 1-D grid and
    integrated numerically, against the closed form at t = 500, x_0 = 0.7, x_t = 0.3 (checklist
    §5.2 item 6: mean 0.300381, variance 0.0100314; the erroneous √ᾱ_t coefficient gives 0.0862)."""
    c = VPSDE().chain
    k = 499  # DDPM step t = 500
    x0, xt = 0.7, 0.3
    grid = torch.linspace(-2, 2, 400001, dtype=torch.float64)
    log_prior = -0.5 * (grid - c.alphas_cumprod_prev[k].sqrt() * x0) ** 2 / (1 - c.alphas_cumprod_prev[k])
    log_lik = -0.5 * (xt - c.alphas[k].sqrt() * grid) ** 2 / c.betas[k]
    w = torch.exp(log_prior + log_lik - (log_prior + log_lik).max())
    w = w / torch.trapezoid(w, grid)
    mean = torch.trapezoid(w * grid, grid)
    var = torch.trapezoid(w * (grid - mean) ** 2, grid)
    m, v = c.posterior(torch.tensor([[x0]], dtype=torch.float64), torch.tensor([[xt]], dtype=torch.float64), torch.tensor([k]))
    assert float(m) == pytest.approx(float(mean), abs=1e-8)
    assert float(v) == pytest.approx(float(var), rel=1e-6)
    assert float(m) == pytest.approx(0.300381, abs=1e-6)
    assert float(v) == pytest.approx(0.0100314, rel=1e-5)
    assert float(c.posterior_variance[0]) == 0.0  # β̃_1 = 0 since ᾱ_0 = 1


@pytest.mark.parametrize("sde_name,clamped", [("vp", 4), ("cosine_vp", 1), ("ve", 1)])
def test_chain_times_reproduce_the_chain_kernels(sde_name, clamped):
    """t_k is the time whose kernel is the chain's: α(t_k)² = ᾱ_k (DDPM) and σ(t_k) = σ_k (SMLD)
    to rtol 1e-9, except the last ``clamped`` levels, which lie beyond T (ᾱ_N < α(T)² since
    Σ log(1-β_k) < -Σ β_k; σ_N = σ_max > σ(T) = √(σ_max² - σ_min²)) and are evaluated at T.
    Times increase with k and t_1 ≈ 1/N for VP (β_1 = β_min/N ⇒ ᾱ_1 ≈ α(1/N)²)."""
    sde = get_sde(sde_name)
    t = sde.chain_times()
    inside = t < sde.T
    assert int((~inside).sum()) == clamped and bool((~inside[:-clamped]).sum() == 0)
    assert bool((t[1:] >= t[:-1]).all())
    if sde_name == "ve":
        target, value = sde.chain.sigmas, sde.sigma(t)
    else:
        target, value = sde.chain.alphas_cumprod, sde.alpha(t) ** 2
    assert torch.allclose(value[inside], target[inside], rtol=1e-9)
    if sde_name == "vp":
        assert abs(float(t[0]) * sde.N - 1) < 0.1


@pytest.mark.parametrize("name", ALL)
def test_lambda_and_inverse(name):
    sde = get_sde(name)
    t = torch.linspace(1e-5, 1.0, 200, dtype=torch.float64)
    lam = sde.lambda_(t)
    assert bool((lam[1:] < lam[:-1]).all()), "λ(t) must be strictly decreasing"
    assert torch.allclose(sde.t_of_lambda(lam), t, rtol=1e-9, atol=1e-11)
    assert torch.allclose(torch.exp(lam), sde.alpha(t) / sde.sigma(t), rtol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_prior_logp_matches_torch_distributions(name, gen):
    sde = get_sde(name)
    z = sde.prior_sampling((6, 3, 4, 4), generator=gen, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, torch.tensor(sde.prior_std, dtype=torch.float64)).log_prob(z).sum(dim=(1, 2, 3))
    assert torch.allclose(sde.prior_logp(z), ref, rtol=1e-12)
    assert z.std().item() == pytest.approx(sde.prior_std, rel=0.2)


@pytest.mark.parametrize("name", ALL)
def test_any_rank_and_float_time(name, gen):
    """(B, d) and (B, C, H, W) give the same numbers as the flattened data; a float t broadcasts."""
    sde = get_sde(name)
    x = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    d4, g4 = sde.sde(x, t)
    d2, g2 = sde.sde(x.reshape(4, -1), 0.3)
    assert torch.allclose(d4.reshape(4, -1), d2) and torch.allclose(g4, g2)
    m4, s4 = sde.marginal_prob(x, 0.3)
    assert torch.allclose(m4, sde.alpha(0.3) * x) and s4.shape == (4,)


@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_sde_drift(probability_flow, gen):
    """Reverse drift f − c g² s with c = 1 (SDE) or ½ (PF-ODE, zero diffusion), and the reverse
    discretisation f_i − c G_i² s."""
    sde = VPSDE()
    x = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)

    def score(x, t):
        return -x / (1 + t[:, None])

    rsde = sde.reverse(score, probability_flow)
    drift, diffusion = rsde.sde(x, t)
    c = 0.5 if probability_flow else 1.0
    assert torch.allclose(drift, sde.f(t)[:, None] * x - c * sde.g2(t)[:, None] * score(x, t))
    assert torch.allclose(diffusion, torch.zeros(3, dtype=torch.float64) if probability_flow else sde.g2(t).sqrt())
    f, G = rsde.discretize(x, t)
    f0, G0 = sde.discretize(x, t)
    assert torch.allclose(f, f0 - c * G0[:, None] ** 2 * score(x, t))


def test_chain_times_need_a_chain():
    with pytest.raises(ValueError, match="has no discrete chain"):
        SubVPSDE().chain_times()


def test_langevin_alpha_everywhere():
    """Every SDE carries what the Langevin corrector needs (score_sde's sub-VP crashes here)."""
    t = torch.tensor([0.5], dtype=torch.float64)
    vp, sub, ve = VPSDE(), SubVPSDE(), VESDE()
    assert float(vp.langevin_alpha(t)) == pytest.approx(1 - float(vp.chain.betas[500]))
    assert float(sub.langevin_alpha(t)) == pytest.approx(1 - float(sub.beta(t)) / 1000)
    assert float(ve.langevin_alpha(t)) == 1.0


def test_registry_and_config():
    assert set(SDES.names()) == set(ALL)
    sde = sde_from_config(ConfigDict({"name": "ve", "sigma_max": 10.0, "N": 10}))
    assert isinstance(sde, VESDE) and sde.sigma_max == 10.0 and len(sde.chain.sigmas) == 10
    with pytest.raises(ValueError, match="unknown SDE 'vpp'; known: cosine_vp, discrete_vp, subvp, ve, vp"):
        get_sde("vpp")
    with pytest.raises(ValueError, match="needs a 'name'"):
        sde_from_config(ConfigDict({"beta_min": 0.1}))
    with pytest.raises(ValueError, match="sigma_max"):
        get_sde("vp", sigma_max=3.0)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: VPSDE(beta_min=20.0, beta_max=0.1), "beta_min must be < beta_max, got beta_min=20.0"),
        (lambda: SubVPSDE(beta_min=1.0, beta_max=1.0), "beta_min must be < beta_max"),
        (lambda: VPSDE(beta_min=-0.1), "beta_min must be > 0, got -0.1"),
        (lambda: VPSDE(beta_max=float("nan")), "must be finite"),
        (lambda: VESDE(sigma_min=0.0), "sigma_min must be > 0, got 0.0"),
        (lambda: VESDE(sigma_min=60.0), "sigma_min must be < sigma_max, got sigma_min=60.0"),
        (lambda: VPSDE(N=0), "N must be an integer >= 1, got 0"),
        (lambda: VESDE(N=2.5), "N must be an integer >= 1, got 2.5"),
        (lambda: VPSDE(N=10), r"beta_max / N < 1"),
        (lambda: CosineVPSDE(s=2.0), "s must lie in"),
    ],
)
def test_bad_parameters(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("t, message", [(-0.1, "must lie in \\[0, 1.0\\], got -0.1"), (1.5, "got 1.5"), (float("nan"), "must be finite")])
def test_bad_time(t, message):
    sde = VPSDE()
    with pytest.raises(ValueError, match=message):
        sde.marginal_prob(torch.zeros(2, 2), t)


def test_non_finite_inputs_rejected():
    with pytest.raises(ValueError, match="z contains 1 non-finite"):
        VPSDE().prior_logp(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="lambda must not be NaN"):
        VPSDE().t_of_lambda(torch.tensor([float("nan")]))
