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

A sampler's statistic at an NFE is the mean over ``--seeds`` runs; the ladder of step counts (or of
tolerances for Gotta-Go-Fast) is climbed until the mean is within the factor. Gotta-Go-Fast's NFE
counts batched score calls (each iteration evaluates every sample, finished or not).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

import torch

import solvers
from benchmarks.common import log, table, write_report
from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import anisotropic, multiscale
from sde_diffusion.evaluation import metrics

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
    "Gotta-Go-Fast": ("gotta_go_fast", {}, "eps_rel"),
}
TOLERANCE_LADDER = (0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 0.005)


def evaluate(target, sde, method: str, options: dict[str, Any], n: int, seeds: int) -> tuple[int, float, float]:
    """(NFE, mean total, mean KL part) over ``seeds`` runs of n samples."""
    totals, kls, nfes = [], [], []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(100 + seed)
        try:
            x, nfe = solvers.sample(sde, target.score_fn(sde), (n, target.dim), method, generator=g, **options)
        except ValueError:
            return -1, float("nan"), float("nan")
        x = x.to(torch.float64)
        fit = metrics.component_fit_divergence(target, x) if bool(torch.isfinite(x).all()) else {"total": float("inf"), "kl": float("inf")}
        totals.append(fit["total"])
        kls.append(fit["kl"])
        nfes.append(nfe)
    return max(nfes), sum(totals) / seeds, sum(kls) / seeds


def climb(target, sde, method: str, options: dict[str, Any], setting: str, n: int, seeds: int, floor: float, max_nfe: int) -> tuple[Optional[int], list[tuple]]:
    """The first rung of the ladder whose mean statistic is within FACTOR of the floor."""
    ladder = STEP_LADDER if setting == "steps" else TOLERANCE_LADDER
    rows = []
    for value in ladder:
        nfe, total, kl = evaluate(target, sde, method, {**options, setting: value}, n, seeds)
        if nfe < 0:
            continue
        rows.append((value, nfe, total, kl, total / floor))
        log(rows[-1])
        if total <= FACTOR * floor:
            return nfe, rows
        if nfe > max_nfe:
            break
    return None, rows


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="+", default=TARGETS.names(), choices=TARGETS.names())
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--n", type=int, default=4000, help="samples per run")
    p.add_argument("--seeds", type=int, default=2, help="runs averaged per setting")
    p.add_argument("--replicates", type=int, default=10, help="exact-sample replicates of the floor")
    p.add_argument("--max-nfe", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "stochastic"))
    p.add_argument("--quick", action="store_true", help="smoke run: 500 samples, 1 seed, 3 replicates, NFE ≤ 40")
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
        em, ggf = dict(summary).get("Euler–Maruyama"), dict(summary).get("Gotta-Go-Fast")
        lines += [f"## {name} (d = {target.dim}): floor {floor:.4g} ({args.replicates} replicates of {args.n} exact samples)", ""]
        lines += table(["sampler", f"NFE to ≤ {FACTOR} × floor"], summary) + [""]
        if isinstance(em, int) and isinstance(ggf, int):
            lines += [f"Gotta-Go-Fast / Euler–Maruyama NFE: {ggf / em:.2f} (target ≤ 1/3).", ""]
        lines += table(["sampler", "setting", "nfe", "statistic", "KL part", "/ floor"], details) + [""]
    return write_report(args.out, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
