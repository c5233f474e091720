"""The pieces the per-step overhead work rests on: the Vandermonde solve of UniPC's coefficients,
the allocation-free finite check, UniPC's one-combination step against the textbook predictor then
corrector, and the overhead benchmark's report."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import solvers
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import ring
from sde_diffusion.core.utils import finite_bounds
from solvers.dpm_solver import PREDICTIONS, step_orders
from solvers.schedules import data_prediction, nodes, noise_prediction, time_steps
from solvers.unipc import solve_vandermonde, unipc_weights


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_vandermonde_solve_matches_a_dense_solve(k):
    """Nodes like UniPC's r (earlier nodes < 0, the new one at 1); both solves are float64 on a system
    with condition number < 1e3, so they agree to ~1e-12 (tolerance 1e-9)."""
    g = torch.Generator().manual_seed(k)
    for _ in range(20):
        rs = (torch.rand(k, generator=g, dtype=torch.float64) * -3.0 - 0.1).tolist()
        rs[0] = 1.0
        rhs = torch.randn(k, generator=g, dtype=torch.float64)
        lhs = torch.tensor([[r**i for r in rs] for i in range(k)], dtype=torch.float64)
        expected = torch.linalg.solve(lhs, rhs)
        got = torch.tensor(solve_vandermonde(rs, rhs.tolist()), dtype=torch.float64)
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_finite_bounds_flag_exactly_the_non_finite_tensors(dtype):
    x = torch.randn(50, 3).to(dtype)
    assert all(bool(torch.isfinite(v)) for v in finite_bounds(x))
    for bad in (math.nan, math.inf, -math.inf):
        y = x.clone()
        y[17, 1] = bad
        assert not all(bool(torch.isfinite(v)) for v in finite_bounds(y))


def test_finite_bounds_of_empty_and_integer_tensors_are_finite():
    for x in (torch.zeros(0, 2), torch.arange(6), torch.ones(3, dtype=torch.bool)):
        assert all(bool(torch.isfinite(v)) for v in finite_bounds(x))


def textbook_unipc(sde, score_fn, x, grid, order, kind, variant):
    """UniP then UniC as two separate updates in the module's difference form (the corrected x
    starts the next step); no final denoise."""
    prediction = PREDICTIONS[kind]
    model = data_prediction if kind == "data" else noise_prediction
    orders = step_orders(grid, order, True, solvers.available()["unipc"]["options"]["first_order_above"])
    history, x_start = [], None

    def update(x, s, t, m_s, others):
        w_x, w = unipc_weights(s, t, [n for n, _ in others], prediction, variant)
        out = w_x * x + w[0] * m_s
        for w_k, (_, m) in zip(w[1:], others):
            out = out + w_k * m
        return out

    for i in range(len(grid) - 1):
        m = model(score_fn, x, grid[i])
        if history:
            s, m_s = history[0]
            x = update(x_start, s, grid[i], m_s, [(grid[i], m)] + history[1 : orders[i - 1]])
        history = ([(grid[i], m)] + history)[:order]
        x_start = x
        x = update(x, grid[i], grid[i + 1], m, history[1 : orders[i]])
    return x


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("kind", ["data", "noise"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_single_combination_equals_predictor_then_corrector(kind, order, variant):
    """In float64 the step written as one linear combination (solvers.unipc.UniPC) equals UniP then
    UniC computed separately, to rounding (~1e-13 relative; tolerance 1e-10)."""
    sde, target = get_sde("vp"), ring()
    score_fn = target.score_fn(sde)
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0)).to(torch.float64)
    times = time_steps(sde, 7, 1e-3, "quadratic")
    expected = textbook_unipc(sde, score_fn, x_T, nodes(sde, times), order, kind, variant)
    got, nfe = solvers.sample(sde, score_fn, x_T.shape, "unipc", schedule=times, x_T=x_T, order=order, prediction=kind, variant=variant, denoise=False)
    assert nfe == 7
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(importlib.util.find_spec("k_diffusion") is None, reason="k-diffusion (benchmark peer) not installed")
def test_overhead_benchmark_writes_its_table(tmp_path):
    from benchmarks import overhead

    path = overhead.main(["--batches", "20", "--levels", "6", "--quick", "--out", str(tmp_path)])
    text = open(path, encoding="utf-8").read()
    assert "| unipc | dpmpp_2m | 20×2 | 6 | 6 |" in text and "| heun | heun | 20×2 | 11 | 11 |" in text
    assert "Command: `python" in text and "threads" in text
