"""The probability-flow ODE in log σ/α against the ODE in t: error against tolerance and NFE for the
same error, ``ode`` (dopri5) with ``variable="log_sigma"`` and ``variable="t"``.

    python benchmarks/ode_variable.py                      # 5 SDEs x 3 targets, 1000 latents
    python benchmarks/ode_variable.py --from-T             # from T to the SDE's default eps instead
    python benchmarks/ode_variable.py --quick

Problem: the exact score of the ring, the 8-D anisotropic and the 16-D multiscale mixtures, PF-ODE
from σ/α = 80 to 0.002 (EDM's interval), latents drawn from the exact marginal at σ/α = 80, float64;
quality = median distance to a dopri5 reference at rtol = atol = 1e-11 from the same latents.
For each variable: NFE and median error at rtol = atol = 10^(-k/2), k = 6..14; how often the error
grows when the tolerance is tightened; and the NFE needed for a median error ≤ 1e-3, 1e-4, 1e-5 (at
the loosest tolerance from which every tighter one meets it), with the ratio t / log_sigma.
Writes ``report.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Optional

import torch

import solvers
from benchmarks.common import add_run_options, write_report
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import anisotropic, multiscale, ring

TARGETS = {"ring": ring, "anisotropic": anisotropic, "multiscale": multiscale}
SDES = ("vp", "subvp", "ve", "cosine_vp", "discrete_vp")
VARIABLES = ("log_sigma", "t")
TOLERANCES = tuple(10 ** (-k / 2) for k in range(6, 15))
THRESHOLDS = (1e-3, 1e-4, 1e-5)
SIGMA_START, SIGMA_END = 80.0, 0.002


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sdes", default=",".join(SDES))
    p.add_argument("--targets", default=",".join(TARGETS))
    add_run_options(p, "ode_variable", "100 latents, VP, the ring, three tolerances")
    p.add_argument("--from-T", action="store_true", help="from T to the SDE's default eps, not σ/α 80 → 0.002")
    return p.parse_args(argv)


def sweep(sde, score, x_T: torch.Tensor, t_start: float, eps: float, variable: str, reference: torch.Tensor,
          tolerances: Sequence[float]) -> list[tuple[float, int, float]]:
    """(tol, nfe, median error) of ``ode`` in ``variable`` at each tolerance."""
    rows = []
    for tol in tolerances:
        x, nfe = solvers.sample(sde, score, x_T.shape, "ode", x_T=x_T, t_start=t_start, eps=eps, rtol=tol, atol=tol,
                                variable=variable)
        rows.append((tol, nfe, float((x - reference).norm(dim=1).median())))
    return rows


def reliable_nfe(rows: list[tuple[float, int, float]], threshold: float) -> Optional[int]:
    """The NFE at the loosest tolerance from which every tighter one of the sweep has error ≤ threshold
    (what a user choosing a tolerance can count on; a lucky loose tolerance does not count)."""
    for i, (_, nfe, _) in enumerate(rows):
        if all(err <= threshold for _, _, err in rows[i:]):
            return nfe
    return None


def reversals(rows: list[tuple[float, int, float]]) -> int:
    """How often the error grows when the tolerance is tightened by √10."""
    return sum(b[2] > a[2] for a, b in zip(rows, rows[1:]))


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    n = 100 if args.quick else args.n
    sdes = ("vp",) if args.quick else tuple(args.sdes.split(","))
    targets = ("ring",) if args.quick else tuple(args.targets.split(","))
    tolerances = TOLERANCES[::4] if args.quick else TOLERANCES
    f64 = torch.float64
    lines = ["# PF-ODE variable: log σ/α against t (dopri5, exact scores)", "",
             f"{'T → default eps' if args.from_T else f'σ/α {SIGMA_START:g} → {SIGMA_END:g}'}, {n} latents from the exact marginal (seed {args.seed}), float64; "
             "median distance to a dopri5 reference at 1e-11.", ""]
    summary = ["| SDE | target | variable | error grows at a tighter tolerance | " + " | ".join(f"NFE for ≤ {e:g}" for e in THRESHOLDS) + " |",
               "|---|---|---|---|" + "---|" * len(THRESHOLDS)]
    detail = ["| SDE | target | variable | " + " | ".join(f"{tol:.0e}" for tol in tolerances) + " |",
              "|---|---|---|" + "---|" * len(tolerances)]
    for sde_name in sdes:
        sde = get_sde(sde_name)
        t_start = sde.T if args.from_T else min(sde.T, float(sde.t_of_lambda(-math.log(SIGMA_START))))
        eps = sde.default_eps if args.from_T else float(sde.t_of_lambda(-math.log(SIGMA_END)))
        for target in targets:
            mix = TARGETS[target]()
            gen = torch.Generator().manual_seed(args.seed)
            x0 = mix.sample(n, gen, dtype=f64)
            x_T = float(sde.alpha(t_start)) * x0 + float(sde.sigma(t_start)) * torch.randn(x0.shape, generator=gen, dtype=f64)
            score = mix.score_fn(sde)
            reference, _ = solvers.sample(sde, score, x_T.shape, "ode", x_T=x_T, t_start=t_start, eps=eps, rtol=1e-11, atol=1e-11)
            sweeps = {v: sweep(sde, score, x_T, t_start, eps, v, reference, tolerances) for v in VARIABLES}
            nfes = {v: [reliable_nfe(sweeps[v], e) for e in THRESHOLDS] for v in VARIABLES}
            for v in VARIABLES:
                cells = []
                for i, hit in enumerate(nfes[v]):
                    ratio = "" if v == "log_sigma" or hit is None or nfes["log_sigma"][i] is None else f" ({hit / nfes['log_sigma'][i]:.2f}×)"
                    cells.append("—" if hit is None else f"{hit}{ratio}")
                summary.append(f"| {sde_name} | {target} | {v} | {reversals(sweeps[v])} of {len(tolerances) - 1} | " + " | ".join(cells) + " |")
                detail.append(f"| {sde_name} | {target} | {v} | " + " | ".join(f"{nfe}: {err:.1e}" for _, nfe, err in sweeps[v]) + " |")
                print(summary[-1], flush=True)
    lines += ["## NFE for a median error (ratio to log_sigma)", ""] + summary
    lines += ["", "## NFE: median error at each rtol = atol", ""] + detail
    return write_report(args.out, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
