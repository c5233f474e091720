"""Every classic sampler, on VP, sub-VP and VE, draws the 2-D ring mixture (8 modes, radius 2, std 0.1,
weights ∝ 1..8) from its exact score.

Tolerances for n = 2000 samples against m = 4000 true samples (all seeds fixed):

* Energy distance (V-statistic). Its null expectation is the floor E|X-X'| (1/n + 1/m) = 1.78e-3.
  Measured over 200 independent exact sample sets against this truth set: ED/floor has mean 0.86,
  sd 0.59, 99th percentile 2.6, maximum 3.2. We require ED ≤ 4 floor. What plausible bugs give
  (same n, m): ring radius off by 5% → 5.5; mode weights tilted by ±30% (TV 0.05) → 4.8; uniform
  weights → 106. (A spread error of 20% gives only 0.5: the energy distance does not see the scale of
  the modes, hence the spread check below.)
* Mode weights: with modes 15 standard deviations apart, assigning a sample to its most probable mode
  is exact, so for exact samples χ² = n Σ_k (ŵ_k - w_k)² / w_k ~ χ²_7 and we require χ² ≤ 24.3, its
  99.9% quantile. Weights tilted by ±15% add n·0.15²·Σ w_k l_k² ≈ 19 (l = linspace(-1, 1, 8)) to its
  mean of 7 and fail; uniform weights give ≈ 1000.
* Spread (RMS whitened distance to the assigned mode; 1 for exact samples): its null sd at this n is
  0.011 (measured), so 4 SE = 0.044; the methods' own discretisation biases at these settings are
  below 0.06 (measured: DDIM η = 1 at 100 steps 0.94 (VP), Euler on the probability-flow ODE 0.975,
  Langevin correctors at r = 0.16 up to 1.025, whose unadjusted steps inflate a Gaussian's variance by
  1/(1 - r²)). We require |spread - 1| ≤ 0.1, which a 20% spread error (0.8 or 1.2) fails.

Step counts are each method's defaults (N = 1000 for the SDE samplers and DDPM, 100 for DDIM and for the
annealed-Langevin levels, adaptive dopri5 at 1e-5 for the ODE).
"""
import math

import pytest
import torch

import solvers
from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import ring
from sde_diffusion.evaluation import metrics

N_SAMPLES, N_TRUE = 2000, 4000
MIX = ring()
TRUTH = MIX.sample(N_TRUE, torch.Generator().manual_seed(123))
FLOOR = metrics.energy_noise_floor(MIX.sample(20000, torch.Generator().manual_seed(7)), N_SAMPLES, N_TRUE)
CHI2_7_999 = 24.32

METHODS = ("euler_maruyama", "pc", "ddim", "annealed_langevin", "ode")
STANDARD = [(name, method, {}) for name in ("vp", "subvp", "ve") for method in METHODS] + [("vp", "ddpm", {})]
VARIANTS = [  # every predictor, corrector and option value not exercised above
    ("vp", "pc", {"predictor": "ancestral_sampling", "corrector": "ald"}),
    ("ve", "pc", {"predictor": "ancestral_sampling", "corrector": "none"}),
    ("ve", "pc", {"predictor": "reverse_diffusion", "corrector": "none"}),
    ("subvp", "pc", {"predictor": "reverse_diffusion", "corrector": "none", "probability_flow": True}),
    ("ve", "euler_maruyama", {"probability_flow": True}),
    ("vp", "ddim", {"eta": 1.0}),
    ("ve", "ddim", {"eta": 1.0}),
    ("subvp", "ode", {"solver": "rk4"}),
    ("cosine_vp", "ddim", {}),  # its top level lies beyond T: a raw score there shifts every mode weight (χ² 55)
]


@pytest.mark.parametrize("name, method, options", STANDARD + VARIANTS)
def test_samples_match_the_ring(name, method, options):
    sde = get_sde(name)
    gen = torch.Generator().manual_seed(1)
    x, _ = solvers.sample(sde, MIX.score_fn(sde), (N_SAMPLES, 2), method, generator=gen, **options)
    energy = metrics.energy_distance(x, TRUTH)
    w = metrics.mode_weights(MIX, x)
    chi2 = float(N_SAMPLES * ((w - MIX.weights) ** 2 / MIX.weights).sum())
    spread = metrics.spread_ratio(MIX, x)
    assert energy <= 4 * FLOOR, f"energy distance {energy / FLOOR:.2f} x floor"
    assert chi2 <= CHI2_7_999, f"mode weights {w.tolist()}"
    assert abs(spread - 1) <= 0.1, f"spread {spread:.3f}"


def _gaussian_ddpm_std_ratio(chain, s2: float, variance: str) -> float:
    """Output std / s of full-chain DDPM from x_N ~ N(0, I) for data N(0, s² I) with the exact score.

    Each step is linear in x: x̂_0 = E[x_0 | x_k] = √ᾱ_k s² / v_k · x_k with v_k = ᾱ_k s² + 1 - ᾱ_k, and
    x_{k-1} = c_0 x̂_0 + c_t x_k + σ_k z with the posterior coefficients of Ho et al. (2020, eq. 7)
    (DDPM's ε-form mean is this posterior mean), so the variance obeys a scalar recursion."""
    v = 1.0
    for k in range(len(chain), 0, -1):
        abar = float(chain.alphas_cumprod[k - 1])
        gain = float(chain.posterior_mean_coef_x0[k - 1]) * math.sqrt(abar) * s2 / (abar * s2 + 1 - abar)
        gain += float(chain.posterior_mean_coef_xt[k - 1])
        var = chain.betas if variance == "beta" else chain.posterior_variance
        noise = 0.0 if k == 1 else float(var[k - 1])
        v = gain**2 * v + noise
    return math.sqrt(v / s2)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_variance_matches_the_chain_recursion(variance):
    """For Gaussian data N(0, s² I), s = 0.1, the DDPM chain's output std is known exactly (above):
    s·1.0077 for σ² = β and s·0.9631 for σ² = β̃ at N = 1000, the β̃ chain's own under-dispersion. The
    sample std of n = 8000 2-D points has relative standard error √(2 / 16000) / 2 = 0.0056; we require
    the prediction within 4 SE = 0.022. Swapping the two variances (0.045 apart) fails."""
    sde, s2 = get_sde("vp"), 0.01
    gaussian = GaussianMixture([1.0], [[0.0, 0.0]], [[[s2, 0.0], [0.0, s2]]])
    gen = torch.Generator().manual_seed(2)
    x, _ = solvers.sample(sde, gaussian.score_fn(sde), (8000, 2), "ddpm", variance=variance, generator=gen)
    ratio = math.sqrt(float(x.double().pow(2).mean()) / s2)
    assert ratio == pytest.approx(_gaussian_ddpm_std_ratio(sde.chain, s2, variance), abs=4 * 0.0056)


@pytest.mark.parametrize(
    "name, method, options",
    [("vp", "ddpm", {"variance": "beta"}), ("ve", "ddim", {"eta": 1.0, "steps": 1000})],
)
def test_ancestral_predictor_is_the_chains_ancestral_sampler(name, method, options):
    """``pc`` with the ancestral predictor and no corrector walks the same chain as DDPM(σ² = β) on VP and
    as DDIM(η = 1), i.e. SMLD ancestral sampling, on VE, drawing the same noise in the same order and
    ending with the same noise-free step: equal to float64 rounding (1e-10 after 1000 steps)."""
    sde = get_sde(name)
    x_T = sde.prior_sampling((64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(method, **opts):
        gen = torch.Generator().manual_seed(1)
        return solvers.sample(sde, MIX.score_fn(sde), x_T.shape, method, x_T=x_T, generator=gen, **opts)[0]

    pc = run("pc", predictor="ancestral_sampling", corrector="none")
    assert (pc - run(method, **options)).abs().max() <= 1e-10 * sde.prior_std
