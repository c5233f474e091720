"""Likelihood accuracy against NFE: ``log_likelihood`` with the exact trace, the exact score and the
true log p_T as prior, against the analytic log p_eps of the target, over a grid of tolerances.

    python benchmarks/likelihood_accuracy.py                  # ring (400 points) and 8-D anisotropic (200), 3 seeds
    python benchmarks/likelihood_accuracy.py --settings bosh3:3e-3:3e-3 --seeds 20 --targets ring
    python benchmarks/likelihood_accuracy.py --quick

Targets: mean absolute error ≤ 0.003 nats per point at ≤ 60 NFE on the ring and ≤ 0.01 at ≤ 80 NFE
on the 8-D mixture, on every seed. Settings: dopri5 and bosh3 (Bogacki–Shampine 3(2), 3 evaluations
per step) over a grid of tolerances. Writes ``report.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

import torch

from benchmarks.common import add_run_options, write_report
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import anisotropic, ring
from sde_diffusion.evaluation.likelihood import log_likelihood

#: target name -> (mixture factory, points, MAE target, NFE budget).
TARGETS = {"ring": (ring, 400, 0.003, 60), "anisotropic": (anisotropic, 200, 0.01, 80)}
#: (torchdiffeq method, rtol, atol).
SETTINGS = (
    ("dopri5", 1e-3, 1e-3), ("dopri5", 1e-4, 1e-3), ("dopri5", 3e-4, 1e-3), ("dopri5", 1e-4, 1e-4), ("dopri5", 3e-5, 3e-5),
    ("dopri5", 1e-5, 1e-5), ("bosh3", 5e-3, 5e-3), ("bosh3", 3e-3, 3e-3), ("bosh3", 2e-3, 2e-3), ("bosh3", 1e-3, 1e-3),
    ("bosh3", 5e-4, 5e-4),
)
EPS = 1e-5


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sde", default="vp")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--settings", nargs="+", help="method:rtol:atol to run instead of the built-in grid")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    add_run_options(p, "likelihood_accuracy", "40 points, 1 seed, two settings")
    return p.parse_args(argv)


def _setting(text: str) -> tuple[str, float, float]:
    method, rtol, atol = text.split(":")
    return method, float(rtol), float(atol)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sde = get_sde(args.sde)
    settings = SETTINGS if args.settings is None else tuple(_setting(text) for text in args.settings)
    settings = settings[:2] if args.quick else settings
    seeds = 1 if args.quick else args.seeds
    lines = ["# Likelihood accuracy (exact trace, exact score, true p_T)", "", f"SDE {args.sde}, eps = {EPS:g}; MAE per point against the analytic log p_eps.", ""]
    for name in args.targets:
        factory, n, target_mae, budget = TARGETS[name]
        mix, n = factory(), (40 if args.quick else n)
        rows = []
        for method, rtol, atol in settings:
            nfes, maes = [], []
            for seed in range(seeds):
                x = mix.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
                exact = mix.log_prob(x, EPS, sde)
                logp, _, nfe = log_likelihood(sde, mix.score_fn(sde), x, method=method, rtol=rtol, atol=atol, eps=EPS, prior_logp=lambda z, mix=mix: mix.log_prob(z, sde.T, sde))
                nfes.append(nfe)
                maes.append(float((logp - exact).abs().mean()))
            ok = max(nfes) <= budget and max(maes) <= target_mae
            rows.append(f"| {method} | {rtol:g} | {atol:g} | {', '.join(map(str, nfes))} | {', '.join(f'{m:.2g}' for m in maes)} | {'yes' if ok else 'no'} |")
            print(rows[-1], flush=True)
        lines += [f"## {name} ({n} points per seed; target MAE ≤ {target_mae:g} at ≤ {budget} NFE)", "", "| method | rtol | atol | NFE per seed | MAE per seed | meets |", "|---|---|---|---|---|---|"] + rows + [""]
    return write_report(args.out, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
