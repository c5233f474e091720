"""The classic samplers through ``solvers.sample``: nfe is the exact count of score calls for every method
and option, ``score_fn`` gets (B,) times inside [0, T], bad input is refused early with the known names,
runs are reproducible from a generator, images and vectors give the same numbers, and the progress bar
and ``get_sampler`` change nothing. A small SDE (N = 50) and batch keep each run to milliseconds."""
import pytest
import torch
from ml_collections import ConfigDict

import solvers
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import ring

N = 50
MIX = ring()


class Counter:
    """The exact mixture score, counting calls and checking the time argument."""

    def __init__(self, sde):
        self.sde, self.calls = sde, 0

    def __call__(self, x, t):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        assert 0.0 <= float(t.min()) and float(t.max()) <= self.sde.T
        self.calls += 1
        return MIX.score(x, t, self.sde)


def run(name, method, shape=(8, 2), seed=0, **kwargs):
    sde = get_sde(name, N=N)
    counter = Counter(sde)
    x, nfe = solvers.sample(sde, counter, shape, method, generator=torch.Generator().manual_seed(seed), **kwargs)
    return x, nfe, counter.calls


# (method, options, expected nfe with N = 50); S = steps, chain predictors walk N - 1 = 49 transitions.
NFE_CASES = [
    ("euler_maruyama", {}, N + 1),
    ("euler_maruyama", {"steps": 7, "denoise": False}, 7),
    ("euler_maruyama", {"steps": 7, "probability_flow": True}, 8),
    ("pc", {}, 2 * N + 1),
    ("pc", {"steps": 7, "n_steps_each": 3}, 7 * 4 + 1),
    ("pc", {"predictor": "reverse_diffusion"}, 2 * (N - 1) + 1),
    ("pc", {"predictor": "reverse_diffusion", "corrector": "none", "probability_flow": True, "denoise": False}, N - 1),
    ("pc", {"predictor": "ancestral_sampling", "corrector": "ald", "n_steps_each": 2}, 3 * (N - 1) + 1),
    ("pc", {"predictor": "none", "corrector": "langevin", "steps": 7, "n_steps_each": 2}, 7 * 2 + 1),
    ("pc", {"predictor": "none", "corrector": "none", "steps": 7}, 1),
    ("ddpm", {}, N),
    ("ddpm", {"steps": 10, "variance": "beta_tilde", "stride": "linear"}, 10),
    ("ddim", {}, N),
    ("ddim", {"steps": 10, "eta": 0.5}, 10),
    ("annealed_langevin", {"steps": 5, "n_steps_each": 3}, 16),
    ("annealed_langevin", {"steps": 5, "n_steps_each": 3, "denoise": False}, 15),
    ("ode", {"solver": "euler", "steps": 10}, 10),
    ("ode", {"solver": "midpoint", "steps": 10}, 20),
    ("ode", {"solver": "rk4", "steps": 10, "denoise": True}, 41),
    ("ode", {"solver": "rk4"}, 400),
    ("ode", {}, None),
    ("ode", {"solver": "bosh3", "rtol": 1e-3, "atol": 1e-3}, None),
]


@pytest.mark.parametrize(
    "name, method, options, expected",
    [(name, *case) for name in ("vp", "ve") for case in NFE_CASES if (name, case[0]) != ("ve", "ddpm")],
)
def test_nfe_is_the_number_of_score_calls(name, method, options, expected):
    """Returned nfe == calls seen by an independent counter == the method's formula (adaptive solvers:
    counted only; they must still call the score)."""
    _, nfe, calls = run(name, method, **options)
    assert nfe == calls
    assert nfe == expected if expected is not None else nfe > 10


@pytest.mark.parametrize("tol", [1e-3, 1e-5])
def test_encode_counts_its_calls(tol):
    """``encode`` returns the exact count too, and a tighter tolerance costs more evaluations."""
    sde = get_sde("vp", N=N)
    counter = Counter(sde)
    z, nfe = solvers.encode(sde, counter, MIX.sample(8, torch.Generator().manual_seed(0)), rtol=tol, atol=tol)
    assert nfe == counter.calls > 0 and z.shape == (8, 2)


@pytest.mark.parametrize(
    "name, method, options, message",
    [
        ("vp", "no_such_method", {}, "known: .*ddim.*euler_maruyama.*ode.*pc"),
        ("vp", "pc", {"predictor": "heun"}, "option predictor .*allowed: one of ancestral_sampling, euler_maruyama, none, reverse_diffusion"),
        ("vp", "pc", {"corrector": "mala"}, "option corrector .*allowed: one of ald, langevin, none"),
        ("vp", "pc", {"snr": 0.0}, r"option snr .*allowed: a number in \(0, inf\)"),
        ("vp", "pc", {"snr": float("nan")}, r"bad value nan for option snr"),
        ("vp", "pc", {"n_steps_each": 0}, "option n_steps_each .*allowed: an integer >= 1"),
        ("vp", "pc", {"predictor": "reverse_diffusion", "steps": 10}, "steps must be N - 1.*got steps=10 \\(N - 1 = 49\\)"),
        ("vp", "pc", {"predictor": "reverse_diffusion", "eps": 1e-3}, "eps, t_start and schedule are not taken"),
        ("subvp", "pc", {"predictor": "ancestral_sampling"}, "needs an SDE with a discrete chain"),
        ("vp", "pc", {"predictor": "ancestral_sampling", "probability_flow": True}, "no probability-flow form"),
        ("vp", "euler_maruyama", {"snr": 0.1}, "unknown option.*snr.*known: denoise, probability_flow"),
        ("ve", "ddpm", {}, "needs an SDE with a DDPM chain"),
        ("subvp", "ddpm", {}, "needs an SDE with a DDPM chain"),
        ("vp", "ddpm", {"variance": "learned"}, "option variance .*allowed: one of beta, beta_tilde"),
        ("vp", "ddpm", {"schedule": [1.0, 0.5]}, "does not take schedule"),
        ("vp", "ddim", {"eta": 1.5}, r"option eta .*allowed: a number in \[0, 1\]"),
        ("vp", "ddim", {"stride": "cubic"}, "option stride .*allowed: one of linear, quadratic"),
        ("vp", "ddim", {"steps": N + 1}, "at most the chain's N = 50"),
        ("vp", "annealed_langevin", {"sigma_min": 2.0, "sigma_max": 1.0}, "needs 0 < sigma_min < sigma_max"),
        ("vp", "annealed_langevin", {"eps": 1e-3}, "does not take eps"),
        ("vp", "annealed_langevin", {"step_lr": -1.0}, "option step_lr .*allowed: a number in \\(0, inf\\)"),
        ("vp", "ode", {"solver": "rk45"}, "bad value 'rk45' for option solver .*allowed: one of .*dopri5.*rk4"),
        ("vp", "ode", {"steps": 10}, "no steps or schedule with an adaptive solver"),
        ("vp", "ode", {"rtol": 0.0}, "option rtol .*allowed: a number in \\(0, inf\\)"),
        ("vp", "ode", {"solver": "euler", "steps": 0}, "steps must be an integer >= 1"),
        ("ve", "ode", {"eps": 0.0}, r"needs eps > 0 with variable 'log_sigma'.*got eps = 0.0"),
        ("vp", "ode", {"variable": "lambda"}, "option variable .*allowed: one of log_sigma, t"),
    ],
)
def test_bad_input_raises_value_error(name, method, options, message):
    with pytest.raises(ValueError, match=message):
        run(name, method, **options)


STOCHASTIC = [
    ("euler_maruyama", {}),
    ("pc", {}),
    ("pc", {"predictor": "ancestral_sampling", "corrector": "ald"}),
    ("ddpm", {}),
    ("ddim", {"eta": 1.0}),
    ("annealed_langevin", {"steps": 5}),
]
EVERY = STOCHASTIC + [("ddim", {}), ("ode", {}), ("ode", {"solver": "rk4", "steps": 10})]


@pytest.mark.parametrize("method, options", STOCHASTIC)
def test_generator_makes_runs_reproducible(method, options):
    """The same seed gives bit-identical samples; another seed gives different ones."""
    a, _, _ = run("vp", method, seed=1, **options)
    b, _, _ = run("vp", method, seed=1, **options)
    c, _, _ = run("vp", method, seed=2, **options)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("method, options", EVERY)
def test_images_and_vectors_give_the_same_samples(method, options):
    """Data of shape (B, 2, 1, 1) gives the (B, 2) samples reshaped, to float32 rounding (the norms of
    the Langevin step are over all non-batch dimensions)."""
    vec, _, _ = run("vp", method, shape=(8, 2), **options)
    img, _, _ = run("vp", method, shape=(8, 2, 1, 1), **options)
    assert img.shape == (8, 2, 1, 1)
    assert torch.allclose(img.reshape(8, 2), vec, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method, options", EVERY)
def test_progress_bar_changes_nothing(method, options):
    quiet, _, _ = run("vp", method, **options)
    shown, _, _ = run("vp", method, progress=True, **options)
    assert torch.equal(quiet, shown)


def test_x_T_is_the_starting_point():
    """A given x_T is decoded as is: the ODE from x_T and from 2 x_T differ, and the default (prior) draw
    is what the generator gives."""
    sde = get_sde("vp", N=N)
    x_T = sde.prior_sampling((8, 2), torch.Generator().manual_seed(0))
    a, _, _ = run("vp", "ddim", x_T=x_T)
    b, _, _ = run("vp", "ddim", x_T=2 * x_T)
    c, _, _ = run("vp", "ddim", seed=0)
    assert not torch.allclose(a, b) and torch.equal(a, c)


def test_get_sampler_reads_method_options_from_config():
    """``config.sampling.<method>`` holds the options; the configured sampler equals a direct call."""
    sde = get_sde("vp", N=N)
    pc_options = {"predictor": "none", "corrector": "ald", "n_steps_each": 2}
    cfg = ConfigDict({"method": "pc", "steps": 7, "eps": 1e-3, "pc": pc_options})
    sampler = solvers.get_sampler(cfg, sde)
    x, nfe = sampler(MIX.score_fn(sde), (8, 2), generator=torch.Generator().manual_seed(0))
    y, _, _ = run("vp", "pc", steps=7, eps=1e-3, predictor="none", corrector="ald", n_steps_each=2)
    assert nfe == 7 * 2 + 1 and torch.equal(x, y)


def test_available_lists_the_classic_methods_with_defaults():
    methods = solvers.available()
    assert {"pc", "euler_maruyama", "ddpm", "ddim", "annealed_langevin", "ode"} <= set(methods)
    assert methods["pc"]["options"]["snr"] == 0.16 and methods["ode"]["options"]["solver"] == "dopri5"
    assert methods["ode"]["deterministic"] and not methods["pc"]["deterministic"]
