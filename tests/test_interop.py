"""Pretrained diffusers models under the toolkit: small randomly initialised ``UNet2DModel``s built
from configs (nothing is downloaded), run through diffusers' own scheduler loops and through the
toolkit's samplers from the same latent, timesteps and noise.

Tolerance of the loop comparisons. Both loops run in float32 and differ only in how they round: the
toolkit folds each step's coefficients in float64 and rounds them once, diffusers computes them in
float32 from its float32 ᾱ table, and the score passes through -ε/σ and back. Each step therefore
differs by a few float32 ulps of the state, carried on (and through the network, whose input moves by
as much) to the end; we allow 8 ulps (2⁻²⁴ · 8) per step of the largest |x|, summed over the steps.
A one-timestep shift of the time map, or ᾱ off by one step, moves the result by orders of magnitude
more (``test_loop_tolerance_detects_a_shifted_time_map``).
"""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import solvers
from sde_diffusion.core.sde_lib import VESDE, DiscreteVPSDE, get_sde
from sde_diffusion.evaluation.benchmark import Benchmark, Problem
from sde_diffusion.evaluation.benchmark.problem import TOLERANCE_OPTIONS
from sde_diffusion.evaluation.elbo import vlb
from sde_diffusion.evaluation.likelihood import log_likelihood
from sde_diffusion.interop import from_diffusers, from_k_diffusion, load_pretrained

diffusers = pytest.importorskip("diffusers")
from diffusers.models.unets.unet_2d import UNet2DOutput  # noqa: E402

ULP = 2.0**-24
SHAPE = (2, 3, 8, 8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny networks run fastest on one thread (and the comparisons need no more)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_unet(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    config = dict(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    return diffusers.UNet2DModel(**{**config, **kwargs}).eval()


def tiny_ve_unet(seed: int = 0) -> nn.Module:
    """NCSN++'s layout in miniature: Fourier σ embedding, skip down/up blocks."""
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 32),
        time_embedding_type="fourier", down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"), norm_num_groups=8,
    ).eval()


def latent(seed: int = 1) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def loop_tolerance(x: torch.Tensor, steps: int) -> float:
    return 8 * ULP * steps * float(x.abs().max())


SCHEDULES = [
    dict(beta_schedule="linear", beta_start=1e-3, beta_end=0.2),
    dict(beta_schedule="scaled_linear", beta_start=0.0085, beta_end=0.12),
    dict(beta_schedule="squaredcos_cap_v2"),
]


# --- the SDE of a DDPM chain ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "schedule",
    [dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
     dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
     dict(beta_schedule="squaredcos_cap_v2")],
    ids=lambda s: s["beta_schedule"],
)
def test_discrete_vp_is_the_scheduler_table(schedule):
    """``from_diffusers`` builds DiscreteVPSDE on the scheduler's own float32 ᾱ: α(t_k)² = ᾱ_k at
    t_k = (k+1)/N to float64 rounding, its chain times are t_k and τ(t_k) = k. The SDE built by name
    computes the same betas in float64: it agrees to the float32 cumulative product's rounding
    (N = 1000 products of 1 - β, ≤ 1000 ulps relative in the worst case)."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, **schedule)
    sde, _ = from_diffusers(tiny_unet(), sched)
    table = sched.alphas_cumprod.double()
    t_k = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    assert torch.allclose(sde.alpha(t_k) ** 2, table, rtol=1e-12, atol=0)
    assert torch.allclose(sde.chain_times(), t_k, rtol=0, atol=1e-12)
    assert torch.allclose(sde.timestep(t_k), torch.arange(1000, dtype=torch.float64), atol=1e-9)
    by_name = get_sde("discrete_vp", N=1000, **{k: v for k, v in sched.config.items() if k in ("beta_schedule", "beta_start", "beta_end")})
    assert torch.allclose(by_name.alpha(t_k) ** 2, table, rtol=1000 * ULP, atol=0)


def test_fractional_times_interpolate_log_alpha_bar():
    """Between timesteps, log ᾱ is linear in τ = N t - 1 (checked against numpy's interpolation of the
    table with ᾱ_{-1} = 1), and β(t) = -d log ᾱ/dt is the chain's -N log(1 - β_k) on each segment."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=50, beta_start=1e-3, beta_end=0.2)
    sde, _ = from_diffusers(tiny_unet(), sched)
    t = torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_table = np.concatenate([[0.0], np.log(sched.alphas_cumprod.double().numpy())])
    expected = np.interp(50 * t.numpy() - 1, np.arange(-1, 50), log_table)
    assert np.allclose(2 * sde.log_alpha(t).numpy(), expected, rtol=1e-12, atol=1e-14)
    j = torch.floor(50 * t).long()
    assert torch.allclose(sde.g2(t), -50 * torch.from_numpy(log_table[j + 1] - log_table[j]), rtol=1e-12)
    # diffusers' float32 ᾱ_j/ᾱ_{j-1} is 1 - β_j to a few ulps: |Δ log| ≤ 4 ulps, times N
    assert torch.allclose(sde.g2(t), -50 * torch.log(1 - sched.betas.double()[j]), rtol=0, atol=50 * 4 * ULP)


# --- loops against diffusers' schedulers -------------------------------------------------------------
def diffusers_loop(unet, sched, x, steps, generator=None, **step_kwargs):
    sched.set_timesteps(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, generator=generator, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s["beta_schedule"])
def test_ddim_reproduces_ddim_scheduler(prediction_type, schedule):
    """DDIM (η = 0) over every level of an N = 20 chain equals ``DDIMScheduler`` with 20 steps
    (timesteps 19, ..., 0, then ᾱ = 1: ``set_alpha_to_one``) from the same latent; clipping off."""
    unet = tiny_unet()
    sched = diffusers.DDIMScheduler(num_train_timesteps=20, prediction_type=prediction_type, clip_sample=False, **schedule)
    x = latent()
    expected = diffusers_loop(unet, sched, x, 20)
    sde, score_fn = from_diffusers(unet, sched)
    ours, nfe = solvers.sample(sde, score_fn, SHAPE, "ddim", steps=20, x_T=x)
    assert nfe == 20
    assert torch.allclose(ours, expected, rtol=0, atol=loop_tolerance(expected, 20))


@pytest.mark.parametrize("spacing, t_start, eps", [("leading", 0.91, 0.01), ("trailing", 1.0, 0.1)])
def test_strided_ddim_reproduces_ddim_scheduler(spacing, t_start, eps):
    """DDIM (η = 0) with 10 of an N = 100 chain's timesteps: diffusers' ``leading`` timesteps 90, 80, ..., 0
    (``trailing``: 99, 89, ..., 9), each stepping to t - 10 and the last to ᾱ = 1, are the uniform grid
    t = (τ + 1)/100 from 0.91 to 0.01 (1.0 to 0.1) followed by the final denoise. A DDIM step is the
    first-order data-prediction step x' = (σ'/σ) x + α' (1 - e^{-h}) x̂_0 (Lu et al. 2022b, §4), so
    DPM-Solver++ of order 1 on that grid is the scheduler's loop."""
    unet = tiny_unet()
    sched = diffusers.DDIMScheduler(num_train_timesteps=100, beta_start=1e-4, beta_end=0.1, clip_sample=False, timestep_spacing=spacing)
    x = latent()
    expected = diffusers_loop(unet, sched, x, 10)
    assert sched.timesteps.tolist() == [round(100 * (t_start - 0.1 * i)) - 1 for i in range(10)]
    sde, score_fn = from_diffusers(unet, sched)
    ours, nfe = solvers.sample(sde, score_fn, SHAPE, "dpm_solver_pp", steps=9, eps=eps, t_start=t_start, x_T=x, order=1,
                               schedule="time_uniform")
    assert nfe == 10
    assert torch.allclose(ours, expected, rtol=0, atol=loop_tolerance(expected, 10))


@pytest.mark.parametrize("variance, variance_type", [("beta_tilde", "fixed_small"), ("beta", "fixed_large")])
def test_ancestral_sampling_reproduces_ddpm_scheduler(variance, variance_type):
    """DDPM ancestral sampling over an N = 20 chain equals ``DDPMScheduler`` with the same noise: both
    draw one standard normal of the sample's shape after every step but the last, from the same
    generator (σ² = β̃_k is ``fixed_small``, β_k ``fixed_large``)."""
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(num_train_timesteps=20, beta_start=1e-3, beta_end=0.2, clip_sample=False, variance_type=variance_type)
    x = latent()
    expected = diffusers_loop(unet, sched, x, 20, generator=torch.Generator().manual_seed(7))
    sde, score_fn = from_diffusers(unet, sched)
    ours, nfe = solvers.sample(sde, score_fn, SHAPE, "ddpm", steps=20, x_T=x, variance=variance,
                               generator=torch.Generator().manual_seed(7))
    assert nfe == 20
    assert torch.allclose(ours, expected, rtol=0, atol=loop_tolerance(expected, 20))


def test_dpm_solver_pp_2m_reproduces_dpm_solver_multistep_scheduler():
    """DPM-Solver++(2M) equals ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2) with 10 steps
    on an N = 51 chain: diffusers' ``linspace`` timesteps 50, 45, ..., 5 are t = (τ + 1)/51, a uniform
    grid from 1 to 6/51 (9 steps), and its last step to σ = 0 (``final_sigmas_type="zero"``) is the final
    denoise. Both take a first-order step first; diffusers' lower-order final step is that last step to
    σ = 0, so the toolkit's ``lower_order_final`` is off. The toolkit's second-order term is the Taylor
    one, α_t (e^{-h} - 1 + h) D₁/h₀, which diffusers calls ``solver_type="heun"``."""
    unet = tiny_unet()
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=51, beta_start=1e-3, beta_end=0.2,
                                                  solver_order=2, solver_type="heun")
    x = latent()
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == list(range(50, 0, -5))
    expected = diffusers_loop(unet, sched, x, 10)
    sde, score_fn = from_diffusers(unet, sched)
    ours, nfe = solvers.sample(sde, score_fn, SHAPE, "dpm_solver_pp", steps=9, eps=6 / 51, x_T=x, order=2,
                               lower_order_final=False, schedule="time_uniform")
    assert nfe == 10
    assert torch.allclose(ours, expected, rtol=0, atol=loop_tolerance(expected, 10))


def test_loop_tolerance_detects_a_shifted_time_map():
    """The tolerance is tight enough to see an off-by-one time map: calling the network at τ + 1
    instead of τ moves the DDIM result by far more than the allowance."""
    unet = tiny_unet()
    sched = diffusers.DDIMScheduler(num_train_timesteps=20, beta_start=1e-3, beta_end=0.2, clip_sample=False)
    x = latent()
    expected = diffusers_loop(unet, sched, x, 20)
    sde, score_fn = from_diffusers(unet, sched)
    right = score_fn.timestep
    score_fn.timestep = lambda t: (right(t) + 1.0).clamp(max=19.0)
    shifted, _ = solvers.sample(sde, score_fn, SHAPE, "ddim", steps=20, x_T=x)
    assert float((shifted - expected).abs().max()) > 100 * loop_tolerance(expected, 20)


# --- parameterisations ---------------------------------------------------------------------------------
class Reparameterised(nn.Module):
    """The ε-network ``base`` re-expressed as a v- or x_0-network: with ᾱ(τ) interpolated log-linearly
    in the timestep from the scheduler's table, x̂_0 = (x - √(1-ᾱ) ε̂)/√ᾱ and v̂ = √ᾱ ε̂ - √(1-ᾱ) x̂_0."""

    def __init__(self, base: nn.Module, alphas_cumprod: torch.Tensor, kind: str) -> None:
        super().__init__()
        self.base, self.kind, self.config = base, kind, base.config
        self.log_table = np.concatenate([[0.0], np.log(alphas_cumprod.double().numpy())])

    def forward(self, sample, timestep, class_labels=None):
        eps = self.base(sample, timestep).sample
        tau = timestep.double().numpy()
        abar = torch.from_numpy(np.exp(np.interp(tau, np.arange(-1, len(self.log_table) - 1), self.log_table)))
        a, s = abar.sqrt().float()[:, None, None, None], (1 - abar).sqrt().float()[:, None, None, None]
        x0 = (sample - s * eps) / a
        return UNet2DOutput(sample=x0 if self.kind == "sample" else a * eps - s * x0)


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_reparameterised_twins_have_the_same_score(kind):
    """An ε-model and its v- / x_0-twin give the same score at trained timesteps and between them.
    The twin divides by √ᾱ (up to 1/√ᾱ_{N-1} ≈ 15 here) and multiplies back, so the float32
    comparison allows 1e-5 relative to the score's largest entry."""
    base = tiny_unet()
    kwargs = dict(num_train_timesteps=50, beta_start=1e-3, beta_end=0.1)
    eps_sched = diffusers.DDPMScheduler(**kwargs)
    twin_sched = diffusers.DDPMScheduler(**kwargs, prediction_type=kind)
    _, eps_score = from_diffusers(base, eps_sched)
    _, twin_score = from_diffusers(Reparameterised(base, eps_sched.alphas_cumprod, kind), twin_sched)
    x = latent()
    with torch.no_grad():
        for t in (torch.tensor([1.0, 0.5]), torch.tensor([0.3137, 0.02 + 1e-3]), torch.tensor([0.0201, 0.777])):
            a, b = eps_score(x, t), twin_score(x, t)
            assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max())), t


# --- score-SDE VE ---------------------------------------------------------------------------------------
def test_ve_wrapper_gives_the_pipelines_score():
    """For every noise level σ_i at which ``ScoreSdeVePipeline`` calls its network (the scheduler's
    ``sigmas``, σ_min (σ_max/σ_min)^t from t = 1 to ``sampling_eps``), the wrapped model at the time whose
    VE kernel std is σ_i returns the network's output there, which the pipeline uses as the score.
    The time carries σ_i to float64 rounding, so the two agree to float32 rounding of the network."""
    unet = tiny_ve_unet()
    sched = diffusers.ScoreSdeVeScheduler(num_train_timesteps=20, sigma_min=0.01, sigma_max=50.0)
    sched.set_timesteps(20)
    sched.set_sigmas(20)
    sde, score_fn = from_diffusers(unet, sched)
    assert isinstance(sde, VESDE) and (sde.sigma_min, sde.sigma_max) == (0.01, 50.0) and score_fn.data_range == (0.0, 1.0)
    x = 5 * latent()
    with torch.no_grad():
        for sigma in sched.sigmas[[0, 3, 10, 19]]:
            t = sde.t_of_lambda(-torch.log(sigma.double()))
            assert float(t) >= sde.default_eps - 1e-12
            ours = score_fn(x, t.expand(2))
            pipeline = unet(x, sigma.expand(2)).sample
            assert torch.allclose(ours, pipeline, rtol=0, atol=1e-5 * float(pipeline.abs().max())), float(sigma)
    with pytest.raises(ValueError, match="outside the model's range"):
        score_fn(x, torch.full((2,), 0.5 * sde.default_eps))


# --- k-diffusion denoisers --------------------------------------------------------------------------------
class EpsDenoiser:
    """k-diffusion's ``DiscreteEpsDDPMDenoiser``: D(x, σ) = x - σ ε̂(x/√(σ²+1), t(σ)), t(σ) the
    fractional index found by linear interpolation in log σ over σ_k = √((1-ᾱ_k)/ᾱ_k)."""

    def __init__(self, unet, alphas_cumprod):
        self.unet = unet
        self.log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log().double()
        self.sigma_min, self.sigma_max = float(self.log_sigmas[0].exp()), float(self.log_sigmas[-1].exp())

    def sigma_to_t(self, sigma):
        return torch.from_numpy(np.interp(sigma.double().log().numpy(), self.log_sigmas.numpy(), np.arange(len(self.log_sigmas))))

    def __call__(self, x, sigma):
        c_in = (sigma**2 + 1) ** -0.5
        return x - sigma[:, None, None, None] * self.unet(x * c_in[:, None, None, None], self.sigma_to_t(sigma).float()).sample


def test_k_diffusion_denoiser_matches_the_diffusers_wrapper():
    """At the chain's levels, the ε-network wrapped as a k-diffusion denoiser gives (i) under the
    chain's VP SDE the same score as ``from_diffusers``, and (ii) under the default VE SDE on
    [σ_min, σ_max] of its table the same score in VE coordinates: s_VE(x/α) = α s_VP(x), x_VE = x/α."""
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(num_train_timesteps=50, beta_start=1e-3, beta_end=0.2)
    vp, vp_score = from_diffusers(unet, sched)
    denoiser = EpsDenoiser(unet, sched.alphas_cumprod)
    _, kd_vp_score = from_k_diffusion(denoiser, vp)
    ve, kd_ve_score = from_k_diffusion(denoiser)
    assert isinstance(ve, VESDE) and ve.sigma_min == denoiser.sigma_min
    x = latent()
    with torch.no_grad():
        for k in (0, 17, 49):
            t = torch.full((2,), (k + 1) / 50, dtype=torch.float64)
            alpha = float(vp.alpha(t[0]))
            reference = vp_score(x, t)
            assert torch.allclose(kd_vp_score(x, t), reference, rtol=0, atol=1e-5 * float(reference.abs().max()))
            t_ve = ve.t_of_lambda(vp.lambda_(t))
            ve_score = kd_ve_score(x / alpha, t_ve)
            assert torch.allclose(ve_score, alpha * reference, rtol=0, atol=1e-5 * alpha * float(reference.abs().max()))


# --- every sampler, the likelihood, the ELBO, the benchmark -------------------------------------------
@pytest.fixture(scope="module")
def wrapped():
    sched = diffusers.DDPMScheduler(num_train_timesteps=50, beta_start=1e-3, beta_end=0.2)
    return from_diffusers(tiny_unet(), sched)


@pytest.mark.parametrize("method", sorted(solvers.available()))
def test_every_sampler_runs_on_a_wrapped_model(method, wrapped):
    """Each registered method samples the wrapped model within the trained timesteps (t ≥ 1/N)."""
    sde, score_fn = wrapped
    known = solvers.available()[method]["options"]
    tolerances = [name for name in TOLERANCE_OPTIONS if name in known]
    adaptive = bool(tolerances)
    options = {name: 1e-2 for name in tolerances}
    if "sigma_min" in known:  # annealed Langevin's lowest level: the first timestep's
        options["sigma_min"] = float(sde.sigma(sde.default_eps) / sde.alpha(sde.default_eps))
    x, nfe = solvers.sample(sde, score_fn, SHAPE, method, steps=None if adaptive else 4, x_T=latent(),
                            generator=torch.Generator().manual_seed(0), **options)
    assert x.shape == SHAPE and bool(torch.isfinite(x).all()) and nfe >= 1


def test_likelihood_elbo_and_benchmark_run_on_a_wrapped_model(wrapped):
    """The PF-ODE likelihood (Hutchinson trace), the DDPM bound and one benchmark row all run on the
    wrapped model and give finite numbers (loose tolerances and a Monte-Carlo bound of 5 terms: this
    checks the plumbing, not the numbers)."""
    sde, score_fn = wrapped
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    logp, _, nfe = log_likelihood(sde, score_fn, x0, trace="hutchinson", n_probes=1, generator=gen, rtol=1e-2, atol=1e-2,
                                  eps=sde.default_eps)
    assert logp.shape == (2,) and bool(torch.isfinite(logp).all()) and nfe > 0
    bound = vlb(sde, score_fn, x0, generator=gen, n_terms=5)
    assert bool(torch.isfinite(bound.nll).all())
    bench = Benchmark(Problem(sde, score_fn, SHAPE[1:], n=4, dtype=torch.float32, name="tiny unet"), reference_tol=1e-3)
    row = bench.run("ddim", steps=5)
    assert row.nfe == 5


def test_time_below_the_first_timestep_is_refused(wrapped):
    sde, score_fn = wrapped
    with pytest.raises(ValueError, match="below 1/N = 0.02, timestep 0"):
        score_fn(latent(), torch.full((2,), 0.01))


# --- saved directories and bad input ---------------------------------------------------------------------
def test_saved_model_and_pipeline_directories_load(tmp_path):
    """A UNet saved with its scheduler config beside it, and a whole ``DDPMPipeline``, load from disk
    and give the module's own score."""
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(num_train_timesteps=50, beta_start=1e-3, beta_end=0.2, prediction_type="v_prediction")
    unet.save_pretrained(tmp_path / "model")
    sched.save_config(tmp_path / "model")
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    _, reference = from_diffusers(unet, sched)
    x, t = latent(), torch.tensor([0.5, 0.9])
    with torch.no_grad():
        for path in (tmp_path / "model", tmp_path / "pipe"):
            sde, score_fn = from_diffusers(str(path))
            assert isinstance(sde, DiscreteVPSDE) and score_fn.parameterization == "velocity"
            assert score_fn.sample_shape == (3, 8, 8)
            assert torch.equal(score_fn(x, t), reference(x, t))
    model, scheduler_config = load_pretrained(tmp_path / "pipe")
    assert scheduler_config["prediction_type"] == "v_prediction"


def test_bad_inputs_are_named(tmp_path):
    unet = tiny_unet()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_diffusers(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a diffusers save_pretrained directory"):
        from_diffusers(str(tmp_path))
    unet.save_pretrained(tmp_path / "alone")
    with pytest.raises(ValueError, match="no scheduler"):
        from_diffusers(str(tmp_path / "alone"))
    config = json.loads((tmp_path / "alone" / "config.json").read_text())
    (tmp_path / "alone" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="describes a 'UNet2DConditionModel'; only UNet2DModel"):
        from_diffusers(str(tmp_path / "alone"), scheduler={"num_train_timesteps": 10})
    with pytest.raises(ValueError, match="prediction_type 'flow_prediction' is not supported"):
        from_diffusers(unet, {"prediction_type": "flow_prediction"})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        from_diffusers(unet, diffusers.DDPMScheduler(rescale_betas_zero_snr=True))
    with pytest.raises(ValueError, match="Fourier embedding"):
        from_diffusers(unet, diffusers.ScoreSdeVeScheduler())
    with pytest.raises(ValueError, match="needs sigma_min and sigma_max"):
        from_k_diffusion(lambda x, s: x)
    with pytest.raises(ValueError, match="alphas_cumprod must decrease strictly"):
        DiscreteVPSDE(N=3, alphas_cumprod=[0.9, 0.5, 0.0])
    with pytest.raises(ValueError, match="unknown beta schedule 'sigmoid'"):
        DiscreteVPSDE(beta_schedule="sigmoid")
    assert math.isclose(get_sde("discrete_vp", N=10).default_eps, 0.1)


# --- the command line ------------------------------------------------------------------------------------
def test_saved_pipeline_samples_and_gets_a_likelihood_through_the_cli(tmp_path):
    """``sample`` and ``likelihood --pretrained DIR`` (real subprocesses) on a saved 8×8 grey ε-model
    with the digits config: the samples are the in-process DDIM run from the config's seed, mapped
    from the model's [-1, 1] back to [0, 1] (float32 rounding across processes); the likelihood of 4 test digits is finite, starting at the model's first timestep."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    unet = tiny_unet(in_channels=1, out_channels=1)
    pipe = tmp_path / "pipe"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=50, beta_start=1e-3, beta_end=0.2)).save_pretrained(pipe)
    digits = os.path.join(root, "configs", "vp", "digits.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(command, *overrides):
        out = subprocess.run([sys.executable, "-m", "sde_diffusion", command, "--config", digits, "--workdir", str(tmp_path / "out"),
                              "--pretrained", str(pipe), *overrides], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    cli("sample", "--config.sampling.method=ddim", "--config.sampling.steps=10", "--config.sampling.n_samples=4")
    samples = torch.from_numpy(np.load(tmp_path / "out" / "samples" / "ddim.npz")["samples"])
    sde, score_fn = from_diffusers(str(pipe))
    x, _ = solvers.sample(sde, score_fn, (4, 1, 8, 8), "ddim", steps=10, generator=torch.Generator().manual_seed(42))
    assert torch.allclose(samples, (x + 1) / 2, rtol=1e-5, atol=1e-5 * float(x.abs().max()))  # config.seed = 42
    assert (tmp_path / "out" / "samples" / "ddim.png").is_file()
    stdout = cli("likelihood", "--config.eval.n_samples=4", "--config.eval.batch_size=4", "--config.eval.trace=hutchinson",
                 "--config.eval.rtol=1e-2", "--config.eval.atol=1e-2")
    assert "eval.eps raised from 1e-05 to 0.02" in stdout
    report = json.loads((tmp_path / "out" / "eval" / "likelihood_digits.json").read_text())
    assert report["n"] == 4 and math.isfinite(report["bpd"]) and report["nfe"] > 0
