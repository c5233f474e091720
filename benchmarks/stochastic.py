"""Stochastic samplers against the component-fit floor: the fewest evaluations at which each comes
within 1.5x of what exact samples score.

Statistic (``metrics.component_fit_divergence``): samples are shared among the mixture's components
by their true posterior responsibilities, each component's mean and covariance are fitted, and the
weight-averaged KL divergence of the fits from the true components is added to the mode-weight total
variation. The floor is the same statistic for exact samples of the same size, averaged over
replicates. Problem: VP SDE, exact score, from T to eps = 1e-3 with the final denoise.

    python benchmarks/stochastic.py                          # 8-D anisotropic and 16-D multiscale
    python benchmarks/stochastic.py --targets anisotropic --n 4000 --seeds 2
    python benchmarks/stochastic.py --quick
    python benchmarks/stochastic.py --samplers Gotta-Go-Fast --limits

A sampler's statistic at an NFE is the mean over ``--seeds`` runs; the ladder of step counts (or of
tolerances for Gotta-Go-Fast) is climbed until the mean is within the factor. Gotta-Go-Fast's NFE
counts batched score calls (each iteration evaluates every sample, finished or not); the details
also give its mean evaluations per sample. ``--limits`` adds the fixed-grid stochastic improved
Euler (Gotta-Go-Fast's integrator without its step control) on each named schedule: the NFE at
which the best grid gets within the factor bounds what a step-size controller of that pair needs
(within the grid families tried).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any, Optional

import torch

import solvers
from benchmarks.common import add_run_options, log, table, write_report
from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import LinearSDE, get_sde
from sde_diffusion.core.targets import anisotropic, multiscale
from sde_diffusion.evaluation import metrics
from solvers.adaptive import improved_euler_step
from solvers.schedules import SCHEDULES, data_prediction, nodes, time_steps

TARGETS = Registry("analytic target")
TARGETS.register("anisotropic")(anisotropic)
TARGETS.register("multiscale")(multiscale)

FACTOR = 1.5
STEP_LADDER = (5, 8, 10, 15, 20, 30, 40, 60, 80, 100, 150, 200, 300, 500, 1000)
#: sampler label -> (method, options, swept setting: "steps" or a tolerance option name).
SAMPLERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "Euler–Maruyama": ("euler_maruyama", {}, "steps"),
    "PC (reverse diffusion + Langevin)": ("pc", {}, "steps"),
    "SDE-DPM-Solver++(2M)": ("sde_dpm_solver_pp", {}, "steps"),
    "EDM stochastic": ("edm", {}, "steps"),
    "Restart": ("restart", {}, "steps"),
    "Gotta-Go-Fast": ("gotta_go_fast", {}, "rtol"),
    "Gotta-Go-Fast, batch-shared step (RMS)": ("gotta_go_fast", {"error_norm": "rms"}, "rtol"),
}
TOLERANCE_LADDER = (0.5, 0.4, 0.3, 0.25, 0.2, 0.17, 0.15, 0.12, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01, 0.005)
#: Steps of the fixed-grid improved Euler in ``--limits`` (NFE = 2 steps + 1).
LIMIT_STEPS = (4, 6, 8, 10, 11, 12, 13, 14, 15, 16, 18, 20, 23, 25, 28, 30, 35, 40, 45, 50, 60, 75, 100, 150, 200, 300, 400)


def fit_statistic(target: GaussianMixture, x: torch.Tensor) -> dict[str, float]:
    """The component-fit statistic of x (infinite for non-finite samples)."""
    x = x.to(torch.float64)
    return metrics.component_fit_divergence(target, x) if bool(torch.isfinite(x).all()) else {"total": float("inf"), "kl": float("inf")}


def per_sample_nfe(info: dict[str, Any], n: int, nfe: int) -> float:
    """Gotta-Go-Fast's mean evaluations per sample (2 per attempted step, and the denoise); nfe otherwise."""
    if "iterations" not in info:
        return float(nfe)
    return 2 * (info["accepted"] + info["rejected"]) / n + (nfe - 2 * info["iterations"])


def evaluate(target, sde, method: str, options: dict[str, Any], n: int, seeds: int) -> tuple[int, float, float, float]:
    """(NFE, mean total, mean KL part, evaluations per sample) over ``seeds`` runs of n samples; the
    two counts are the largest over the runs."""
    totals, kls, nfes, per_sample = [], [], [], []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(100 + seed)
        try:
            x, nfe, info = solvers.sample(sde, target.score_fn(sde), (n, target.dim), method, generator=g, return_info=True, **options)
        except ValueError as error:
            print(f"  skipped {method} {options}: {error}", flush=True)
            return -1, float("nan"), float("nan"), float("nan")
        fit = fit_statistic(target, x)
        totals.append(fit["total"])
        kls.append(fit["kl"])
        nfes.append(nfe)
        per_sample.append(per_sample_nfe(info, n, nfe))
    return max(nfes), sum(totals) / seeds, sum(kls) / seeds, max(per_sample)


def climb(target, sde, method: str, options: dict[str, Any], setting: str, n: int, seeds: int, floor: float, max_nfe: int) -> tuple[Optional[int], list[tuple]]:
    """The first rung of the ladder whose mean statistic is within FACTOR of the floor."""
    ladder = STEP_LADDER if setting == "steps" else TOLERANCE_LADDER
    rows = []
    for value in ladder:
        nfe, total, kl, per_sample = evaluate(target, sde, method, {**options, setting: value}, n, seeds)
        if nfe < 0:
            continue
        rows.append((value, nfe, per_sample, total, kl, total / floor))
        log(rows[-1])
        if total <= FACTOR * floor:
            return nfe, rows
        if nfe > max_nfe:
            break
    return None, rows


def fixed_grid_improved_euler(sde: LinearSDE, target: GaussianMixture, n: int, times: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """n samples by ``improved_euler_step`` on the grid ``times`` (T to eps) and the final denoise."""
    score_fn = target.score_fn(sde)
    x = sde.prior_sampling((n, target.dim), generator=generator)
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        dw = math.sqrt(t - t_next) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        _, x = improved_euler_step(sde, score_fn, x, torch.full((n,), t, dtype=torch.float64), torch.full((n,), t_next, dtype=torch.float64), dw)
    return data_prediction(score_fn, x, nodes(sde, times[-1:])[0])


def grid_limits(target: GaussianMixture, sde: LinearSDE, n: int, seeds: int, floor: float, max_nfe: int) -> tuple[list[tuple], list[tuple]]:
    """Per schedule, the first step count of LIMIT_STEPS at which the fixed-grid improved Euler's
    mean statistic is within FACTOR of the floor: (summary rows, detail rows)."""
    summary, details = [], []
    for schedule in SCHEDULES.names():
        reached, tried = None, 0
        for steps in LIMIT_STEPS:
            nfe = 2 * steps + 1
            if nfe > max_nfe:
                break
            tried = nfe
            fits = [fit_statistic(target, fixed_grid_improved_euler(sde, target, n, time_steps(sde, steps, sde.default_eps, schedule), torch.Generator().manual_seed(100 + seed))) for seed in range(seeds)]
            total, kl = sum(f["total"] for f in fits) / seeds, sum(f["kl"] for f in fits) / seeds
            details.append((schedule, steps, nfe, total, kl, total / floor))
            log(details[-1])
            if total <= FACTOR * floor:
                reached = nfe
                break
        summary.append((schedule, reached if reached is not None else f"> {tried}"))
    return summary, details


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="+", default=TARGETS.names(), choices=TARGETS.names())
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--n", type=int, default=4000, help="samples per run")
    p.add_argument("--seeds", type=int, default=2, help="runs averaged per setting")
    p.add_argument("--replicates", type=int, default=10, help="exact-sample replicates of the floor")
    p.add_argument("--max-nfe", type=int, default=1000)
    add_run_options(p, "stochastic", "500 samples, 1 seed, 3 replicates, NFE ≤ 40")
    p.add_argument("--limits", action="store_true", help="also the fixed-grid improved Euler on every named schedule")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.seeds, args.replicates, args.max_nfe = 500, 1, 3, 40
    sde = get_sde("vp")
    lines = ["# Stochastic samplers against the component-fit floor", "", f"VP, exact score, T → eps = {sde.default_eps:g} with the final denoise; n = {args.n}, {args.seeds} seeds per setting; criterion: mean ≤ {FACTOR} × floor.", ""]
    for name in args.targets:
        target = TARGETS.get(name)()
        floor = metrics.component_fit_floor(target, args.n, args.replicates, torch.Generator().manual_seed(7))
        print(f"## {name}: floor {floor:.4g}", flush=True)
        summary, details = [], []
        for label in args.samplers:
            method, options, setting = SAMPLERS[label]
            reached, rows = climb(target, sde, method, options, setting, args.n, args.seeds, floor, args.max_nfe)
            summary.append((label, reached if reached is not None else f"> {rows[-1][1] if rows else '?'}"))
            details += [(label, *r) for r in rows]
        em = dict(summary).get("Euler–Maruyama")
        lines += [f"## {name} (d = {target.dim}): floor {floor:.4g} ({args.replicates} replicates of {args.n} exact samples)", ""]
        lines += table(["sampler", f"NFE to ≤ {FACTOR} × floor"], summary) + [""]
        for label, reached in summary:
            if label.startswith("Gotta-Go-Fast") and isinstance(em, int) and isinstance(reached, int):
                lines += [f"{label} / Euler–Maruyama NFE: {reached / em:.2f} (target ≤ 1/3)."]
        lines += [""] + table(["sampler", "setting", "nfe", "per-sample nfe", "statistic", "KL part", "/ floor"], details) + [""]
        if args.limits:
            limits, limit_rows = grid_limits(target, sde, args.n, args.seeds, floor, args.max_nfe)
            lines += ["Fixed-grid stochastic improved Euler (Gotta-Go-Fast's step without its control), per schedule:", ""]
            lines += table(["schedule", f"NFE to ≤ {FACTOR} × floor"], limits) + [""]
            lines += table(["schedule", "steps", "nfe", "statistic", "KL part", "/ floor"], limit_rows) + [""]
    return write_report(args.out, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
