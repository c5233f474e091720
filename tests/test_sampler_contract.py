"""The sampler contract, checked for every registered method (``solvers.available()``: a new method is
covered without editing this file).

Each method runs on the exact score of the 2-D ring under a VP SDE with N = 25 (so that the chain
methods walk 25 levels), on 4 samples, with 3 steps where it takes steps and loose tolerances
(0.2) where it is adaptive, to keep the whole file fast. The option settings are generated from the
method's spec: its defaults, then each option changed alone to every other value it allows
(choices, booleans) or to the finite closed ends of its range, so that every declared capability is
checked where it can flip.
"""
from __future__ import annotations

import math

import pytest
import torch

import solvers
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import ring

N = 25
STEPS = 3
LOOSE = {"rtol": 0.2, "atol": 0.2}
SDE = get_sde("vp", N=N)
RING = ring()
SCORE = RING.score_fn(SDE)
NAMES = sorted(solvers.available())


class Recorder:
    """The exact score, recording the time of every call."""

    def __init__(self, fail_at: int | None = None, bad_shape: bool = False) -> None:
        self.times: list[torch.Tensor] = []
        self.fail_at, self.bad_shape = fail_at, bad_shape

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.times.append(t.clone())
        score = SCORE(x, t)
        if self.bad_shape:
            return score[:, :1]
        if self.fail_at is not None and len(self.times) > self.fail_at:
            return torch.full_like(score, float("nan"))
        return score


def alternatives(option: solvers.spec.Option) -> list:
    """Values other than the default that ``option`` allows: its other choices, the other boolean,
    the finite closed ends of its range."""
    allowed = option.allowed()
    if allowed is not None:
        return [v for v in allowed if v != option.default]
    if option.kind is bool:
        return [not option.default]
    ends = [(option.low, option.low_open), (option.high, option.high_open)]
    values = [int(v) if option.kind is int else v for v, is_open in ends if math.isfinite(v) and not is_open]
    return [v for v in values if v != option.default and option.accepts(v)]


def settings(name: str) -> list[dict]:
    """The defaults, then each option changed alone, over the loose tolerances of an adaptive method."""
    spec = solvers.METHODS.get(name)
    changes = [{}] + [{key: value} for key, option in spec.options.items() for value in alternatives(option)]
    return [{**base(name, change), **change} for change in changes]


def base(name: str, change: dict) -> dict:
    spec = solvers.METHODS.get(name)
    return {k: v for k, v in LOOSE.items() if k in spec.options and spec.is_adaptive(change)}


def steps_for(name: str, options: dict) -> int | None:
    """STEPS where the method takes steps for these options (None: its own, e.g. the SDE's levels)."""
    spec = solvers.METHODS.get(name)
    if "steps" not in spec.takes or spec.is_adaptive(options) or spec.default_steps is None:
        return None
    return None if spec.steps_for(SDE, None, spec.resolve(options)) == N - 1 else STEPS


CASES = [(name, options) for name in NAMES for options in settings(name)]


def case_id(case) -> str:
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


def run(name: str, options: dict, *, seed: int = 0, shape=(4, 2), score=None, x_T=None, **kwargs):
    score = Recorder() if score is None else score
    x, nfe, info = solvers.sample(SDE, score, shape, name, x_T=x_T, generator=torch.Generator().manual_seed(seed),
                                  return_info=True, **options, **kwargs)
    return x, nfe, info, score


def expected_steps(name: str, options: dict) -> int | None:
    spec = solvers.METHODS.get(name)
    return None if spec.is_adaptive(options) else spec.steps_for(SDE, steps_for(name, options), spec.resolve(options))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_reproducible_counted_and_declared(case):
    """Same generator → bit-identical samples; counted NFE (independently, and as returned) equals
    the declared ``nfe(steps, options)`` where one is declared; the callback fires once per step with
    step, t, x, denoised; declared determinism equals the measured one (same x_T, another generator)."""
    name, options = case
    spec = solvers.METHODS.get(name)
    x_T = SDE.prior_sampling((4, 2), torch.Generator().manual_seed(11))
    seen: list[dict] = []
    steps = {"steps": steps_for(name, options)}
    a, nfe, info, score = run(name, options, x_T=x_T, callback=seen.append, **steps)
    b, _, _, _ = run(name, options, x_T=x_T, **steps)
    c, _, _, _ = run(name, options, x_T=x_T, seed=1, **steps)
    assert torch.equal(a, b) and a.shape == (4, 2) and bool(torch.isfinite(a).all())
    assert nfe == len(score.times)
    resolved = spec.resolve(options)
    steps = expected_steps(name, options)
    declared = spec.nfe(steps, resolved) if steps is not None else None
    if declared is not None:
        assert nfe == declared
    assert [s["step"] for s in seen] == list(range(info["steps"])) and info["steps"] > 0
    if steps is not None:
        assert info["steps"] == spec.steps_taken(steps, resolved)
    for s in seen:
        assert s["x"].shape == s["denoised"].shape == (4, 2) and s["t"].shape == (4,)
    assert spec.is_deterministic(options) == torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_images_and_default_steps(name):
    """(B, C, H, W) data give the (B, d) samples reshaped (to float32 rounding: the Langevin step's
    norms and the adaptive error norms run over all non-batch dimensions, in another order), and a
    run without steps takes the method's declared ``default_steps`` with its declared NFE."""
    options = base(name, {})
    vec, _, _, _ = run(name, options, steps=steps_for(name, options))
    img, _, _, _ = run(name, options, steps=steps_for(name, options), shape=(4, 2, 1, 1))
    assert img.shape == (4, 2, 1, 1)
    torch.testing.assert_close(img.reshape(4, 2), vec, rtol=1e-4, atol=1e-4)
    spec = solvers.METHODS.get(name)
    _, nfe, info, _ = run(name, options)
    steps = spec.steps_for(SDE, None, spec.resolve(options))
    assert solvers.available()[name]["default_steps"] in (spec.default_steps, repr(spec.default_steps))
    if not spec.is_adaptive(options):
        assert info["steps"] == spec.steps_taken(steps, spec.resolve(options))
        declared = spec.nfe(steps, spec.resolve(options))
        assert declared is None or nfe == declared


@pytest.mark.parametrize("name", NAMES)
def test_t_start_and_eps_are_honoured_or_refused(name):
    """A method taking t_start makes its first score call there (a stochastic one may first raise
    the noise level, as EDM's churn does, and call it above t_start), one taking eps its last (the
    final denoise, or the last level, at eps); one that does not take them refuses them."""
    spec = solvers.METHODS.get(name)
    for arg, value in (("t_start", 0.5), ("eps", 0.01)):
        if arg not in spec.takes:
            with pytest.raises(ValueError, match=f"does not take {arg}"):
                run(name, {}, **{arg: value})
            continue
        options = {**base(name, {}), **({"denoise": True} if "denoise" in spec.options else {})}
        _, _, _, score = run(name, options, steps=steps_for(name, options), **{arg: value})
        times = score.times[0] if arg == "t_start" else score.times[-1]
        if arg == "t_start" and not spec.is_deterministic(options) and bool((times > value).all()):
            assert bool((times <= SDE.T).all())
            continue
        torch.testing.assert_close(times, torch.full_like(times, value))


@pytest.mark.parametrize("name", [n for n in NAMES if "schedule" in solvers.METHODS.get(n).takes])
def test_explicit_grid(name):
    """``schedule=`` as a decreasing tensor: the score is called at its first time first and at its
    last time last, over len - 1 intervals (in the declared number of steps); ends that disagree with given t_start / eps are refused."""
    spec = solvers.METHODS.get(name)
    grid = torch.tensor([0.8, 0.4, 0.2, 0.05])
    options = {"solver": "rk4"} if "solver" in spec.options else {}
    try:
        _, _, info, score = run(name, {**options, "denoise": True}, schedule=grid)
    except ValueError as err:
        assert "schedule" in str(err)
        return
    assert info["steps"] == spec.steps_taken(3, spec.resolve({**options, "denoise": True}))
    if spec.is_deterministic(options) or not bool((score.times[0] > 0.8).all()):  # see the t_start test
        torch.testing.assert_close(score.times[0], torch.full_like(score.times[0], 0.8))
    torch.testing.assert_close(score.times[-1], torch.full_like(score.times[-1], 0.05))
    with pytest.raises(ValueError, match="disagrees with the explicit schedule"):
        run(name, options, schedule=grid, t_start=0.9)
    with pytest.raises(ValueError, match="strictly decreasing"):
        run(name, options, schedule=[0.5, 0.6, 0.1])


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_name_the_option_and_what_is_allowed(name):
    spec = solvers.METHODS.get(name)
    known = ", ".join(sorted(spec.options))
    with pytest.raises(ValueError, match=f"unknown option.*no_such_option.*{name}.*known: {known}"):
        run(name, {"no_such_option": 1})
    for key, option in spec.options.items():
        if option.allowed() is not None or option.kind is bool:
            bad = "not-a-choice"
        elif math.isfinite(option.high):
            bad = option.high + 1
        else:
            bad = option.low - 1 if math.isfinite(option.low) else float("nan")
        with pytest.raises(ValueError, match=rf"bad value .* for option {key} of method '{name}'; allowed: {option.describe()}".replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
            run(name, {key: bad})


@pytest.mark.reliability
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_and_misshaped_scores_are_errors(name):
    """A score that turns NaN after its first calls stops sampling with ``NonFiniteScoreError``
    naming the method, the step and t; a score of the wrong shape is a ValueError on the first call."""
    score = Recorder(fail_at=3)
    options = base(name, {})
    with pytest.raises(solvers.NonFiniteScoreError, match=rf"{name}: score_fn returned a non-finite value .* at step \d+, t"):
        run(name, options, score=score)
    # stopped within CHECK_EVERY steps of the NaN (a step costs at most 2 + n_steps_each evaluations)
    assert len(score.times) <= 3 + 12 * solvers.common.CHECK_EVERY
    with pytest.raises(ValueError, match=r"score_fn returned shape \(4, 1\), expected \(4, 2\)"):
        run(name, options, score=Recorder(bad_shape=True))


@pytest.mark.parametrize("name", NAMES)
def test_callback_exception_propagates(name):
    class Stop(Exception):
        pass

    def callback(info):
        raise Stop

    score, options = Recorder(), base(name, {})
    with pytest.raises(Stop):
        run(name, options, score=score, callback=callback)
    _, full, info, _ = run(name, options)
    assert info["steps"] == 1 or len(score.times) < full


@pytest.mark.reliability
def test_ode_encode_and_likelihood_name_a_non_finite_score():
    """The probability-flow ODE paths outside ``sample`` report a NaN score as such, not as a bad time
    or a bad x (the adaptive step size turns NaN first)."""
    from sde_diffusion.evaluation.likelihood import log_likelihood

    x0 = RING.sample(4, torch.Generator().manual_seed(0))
    with pytest.raises(solvers.NonFiniteScoreError, match="encode: score_fn returned a non-finite value"):
        solvers.encode(SDE, Recorder(fail_at=2), x0, rtol=1e-3, atol=1e-3)
    with pytest.raises(solvers.NonFiniteScoreError, match="log_likelihood: score_fn returned a non-finite value"):
        log_likelihood(SDE, Recorder(fail_at=2), x0.double(), rtol=1e-3, atol=1e-3)
