"""The step-count benchmark library (``sde_diffusion.evaluation.benchmark``) and its script."""
import csv
import importlib.util
import math
import os

import pytest
import torch

from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import ring
from sde_diffusion.evaluation import metrics
from sde_diffusion.evaluation.benchmark import (
    COLUMNS,
    Benchmark,
    mixture_problem,
    noise_level,
    noise_level_warning,
    parse_method,
    prior_latents,
    quality,
    reference_solution,
    time_of_noise_level,
)

MEAN = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
COV = torch.tensor([[0.04, 0.01], [0.01, 0.01]], dtype=torch.float64)


def _gaussian() -> GaussianMixture:
    return GaussianMixture([1.0], MEAN, COV[None])


def _closed_form(problem, x_start: torch.Tensor) -> torch.Tensor:
    """The PF-ODE of Gaussian data N(μ, C) in closed form. In y = x/α and σ̃ = σ/α the ODE is
    dy/dσ̃ = (y - D)/σ̃ with D = μ + C(C + σ̃²)⁻¹(y - μ), so along each eigenvector of C (eigenvalue
    λ) y - μ scales as √(λ + σ̃²); the final Tweedie step multiplies by λ/(λ + σ̃²)."""
    sde = problem.sde
    s0, s1 = noise_level(sde, problem.t_start), noise_level(sde, problem.eps)
    a0, a1 = (sde.alpha(torch.tensor(t, dtype=torch.float64)) for t in (problem.t_start, problem.eps))
    lam, u = torch.linalg.eigh(COV)
    w = ((x_start / a0 - MEAN) @ u) * torch.sqrt((lam + s1**2) / (lam + s0**2))
    if problem.denoise:
        return (w * lam / (lam + s1**2)) @ u.T + MEAN
    return a1 * (w @ u.T + MEAN)


@pytest.mark.parametrize("sde_name, denoise", [("vp", True), ("subvp", False), ("ve", False), ("cosine_vp", False)])
def test_reference_solution_matches_the_closed_form(sde_name, denoise):
    """The reference solver (dopri5 in u = log σ/α) at rtol = atol = 1e-8 reproduces the closed-form
    flow; dopri5's global error is a small multiple of the tolerance times |y| (measured 1e-7 at
    most over the four SDEs, including cosine-VP's start at |y| ≈ 2700), so 1e-6 is the bound."""
    problem = mixture_problem(_gaussian(), get_sde(sde_name), n=100, denoise=denoise, sigma_end=0.002)
    x0 = prior_latents(problem)
    x, nfe = reference_solution(problem, x0, rtol=1e-8, atol=1e-8)
    assert (x - _closed_form(problem, x0)).abs().max().item() < 1e-6
    assert nfe > 100


def test_a_late_final_denoise_under_disperses_and_is_warned_about():
    """Isotropic Gaussian data of std s = 0.1 denoised at σ/α = s: the exact flow keeps
    y - μ ~ N(0, s² + σ²) and Tweedie multiplies it by s²/(s² + σ²), so the spread ratio is
    s/√(s² + σ²) = 1/√2 (anchor-fast-solvers §6.3(c)). From 4000 samples in 2-D the RMS has relative
    standard error 1/√(2 · 8000) = 0.8%, so ±4% is a 5σ band. The warning predicts the same number;
    at σ/α = 0.002 it stays silent."""
    s = 0.1
    data = GaussianMixture([1.0], [[0.5, 0.0]], [[[s**2, 0.0], [0.0, s**2]]])
    sde = get_sde("vp")
    late = mixture_problem(data, sde, sigma_end=s, n=4000)
    message = noise_level_warning(late)
    assert message is not None and "under-disperses to 0.707" in message
    x, _ = reference_solution(late, prior_latents(late), rtol=1e-6, atol=1e-6)
    assert metrics.spread_ratio(data, x) == pytest.approx(1 / math.sqrt(2), rel=0.04)
    assert noise_level_warning(mixture_problem(data, sde, sigma_end=0.002)) is None
    assert "over-disperses to 1.414" in noise_level_warning(mixture_problem(data, sde, sigma_end=s, denoise=False))


def test_time_of_noise_level_inverts_noise_level():
    vp, ve = get_sde("vp"), get_sde("ve")
    for sigma in (80.0, 1.0, 0.002):
        assert noise_level(vp, time_of_noise_level(vp, sigma)) == pytest.approx(sigma, rel=1e-10)
    with pytest.raises(ValueError, match="exceeds the SDE's largest"):
        time_of_noise_level(ve, 80.0)


def test_parse_method():
    assert parse_method("euler_maruyama") == ("euler_maruyama", {})
    assert parse_method("pc: snr=0.2, corrector=none,probability_flow=True") == (
        "pc",
        {"snr": 0.2, "corrector": "none", "probability_flow": True},
    )
    assert parse_method("unipc:first_order_above=inf") == ("unipc", {"first_order_above": math.inf})
    with pytest.raises(ValueError, match="write name:key=value"):
        parse_method("pc:snr")


@pytest.fixture(scope="module")
def ring_bench():
    return Benchmark(mixture_problem(ring(), get_sde("vp"), n=1000), reference_tol=1e-8)


def test_steps_for_nfe_hits_the_targets(ring_bench):
    """Euler–Maruyama with the final denoise costs steps + 1 evaluations; the fitted map gives the
    step counts, and the runs count exactly the targeted NFE."""
    steps = ring_bench.steps_for_nfe("euler_maruyama", [5, 10, 20])
    assert steps == [4, 9, 19]
    assert ring_bench.run("euler_maruyama", steps=4, deterministic=False).nfe == 5


def test_determinism_is_measured(ring_bench):
    assert not ring_bench.is_deterministic("euler_maruyama")
    assert ring_bench.is_deterministic("euler_maruyama:probability_flow=True")


def test_deterministic_rows_converge_to_the_reference_at_first_order(ring_bench):
    """Euler on the PF-ODE is first order: halving the step halves the median distance to the
    reference from the same latents (ratio 2 up to O(h) corrections, measured 1.97 at 100 → 200
    steps). The latents must be matched for this: independent latents would give distances of the
    order of the mode spacing (~1.5) whatever the steps."""
    rows = [ring_bench.run("euler_maruyama:probability_flow=True", steps=s) for s in (100, 200)]
    assert rows[0].median_dist / rows[1].median_dist == pytest.approx(2.0, rel=0.1)
    assert rows[1].median_dist < 0.01 and rows[1].mode_switch < 0.01
    assert rows[1].rms_dist > 3 * rows[1].median_dist  # RMS is dominated by the few mode switches


def test_quality_of_the_reference_itself(ring_bench):
    """The reference scores zero distance and no mode switch against itself, and as exact PF-ODE
    samples its distribution metrics match exact samples': mode TV within the 4σ sampling bound and
    spread within 5% (relative SE 1/√(2·2000) = 1.6%) of 1."""
    ref = ring_bench.reference
    q = quality(ref, target=ring_bench.problem.target, true_samples=ring_bench.true_samples, reference=ref)
    assert q["median_dist"] == 0.0 and q["rms_dist"] == 0.0 and q["mode_switch"] == 0.0
    assert q["mode_tv"] < metrics.sample_tv_bound(ring_bench.problem.target, 1000)
    assert q["spread"] == pytest.approx(1.0, abs=0.05)


def test_sweep_skips_methods_that_cannot_start_late_and_rejects_unknown_names():
    """Annealed Langevin's levels are its own (no t_start) and PC's chain predictors walk the SDE's
    levels: both are skipped with the reason; Euler–Maruyama starts at t_start like every other."""
    problem = mixture_problem(ring(), get_sde("vp"), sigma_start=80.0, n=100)
    result = Benchmark(problem).sweep(["annealed_langevin", "pc:predictor=reverse_diffusion"], nfe_grid=(5,))
    assert result.rows == [] and "takes no t_start" in result.skipped[0][1]
    assert "eps, t_start and schedule are not taken" in result.skipped[1][1]
    with pytest.raises(ValueError, match="unknown sampling method 'nope'"):
        Benchmark(problem).sweep(["nope"])


def _steps_script():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "steps.py")
    spec = importlib.util.spec_from_file_location("benchmarks_steps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_script_run_writes_the_report(tmp_path):
    """``benchmarks/steps.py --quick`` on three kinds of method: stochastic (steps, no reference
    distances), deterministic (steps, with distances) and adaptive (tolerances)."""
    methods = ["euler_maruyama", "euler_maruyama:probability_flow=True", "ode"]
    with pytest.warns(UserWarning, match="under-disperses to 0.498"):
        paths = _steps_script().main(["--quick", "--methods", *methods, "--eps", "0.05", "--out", str(tmp_path)])
    with open(paths["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == COLUMNS
    by_method = {m: [r for r in rows if r["method"] == m] for m in methods}
    assert [int(r["nfe"]) for r in by_method["euler_maruyama"]] == [5, 20]
    assert all(r["median_dist"] == "" for r in by_method["euler_maruyama"])
    assert all(float(r["median_dist"]) > 0 for r in by_method["euler_maruyama:probability_flow=True"])
    assert [r["setting"] for r in by_method["ode"]] == ["tol=0.01"]
    with open(paths["markdown"], encoding="utf-8") as fh:
        table = fh.read()
    assert "**Warning:** the last noise level σ/α = 0.174" in table  # eps = 0.05 is too early
    with open(paths["plot"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
