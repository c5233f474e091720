"""Step-count benchmark on an analytic target with its exact score (``sde_diffusion.evaluation.benchmark``).

    python benchmarks/steps.py                               # 2-D ring, VP, full grid, 4000 samples
    python benchmarks/steps.py --plot docs/steps_ring_vp.png # ... and the README's plot
    python benchmarks/steps.py --sigma-start 80 --sigma-end 0.002 --methods heun dpm_solver_pp
    python benchmarks/steps.py --quick                       # smoke run in seconds

Writes ``table.md``, ``table.csv`` and ``quality_vs_nfe.png`` to ``--out`` (default
``benchmarks/results/<target>_<sde>``). Wall times are per call on one thread; compare them only
between rows of one run on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Optional

import torch

from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import SDES, get_sde
from sde_diffusion.core.targets import anisotropic, ring
from sde_diffusion.evaluation.benchmark import NFE_GRID, TOLERANCES, Benchmark, mixture_problem, write_report

TARGETS = Registry("analytic target")
TARGETS.register("ring")(ring)
TARGETS.register("anisotropic")(anisotropic)

#: --quick: few samples, a short grid and a cheaper reference.
QUICK = {"n": 256, "nfe_grid": (5, 20), "tolerances": (1e-2,), "reference_tol": 1e-7}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="ring", choices=TARGETS.names())
    p.add_argument("--sde", default="vp", choices=SDES.names())
    p.add_argument("--methods", nargs="*", default=None, help="method specs, e.g. heun 'euler_maruyama:probability_flow=True' (default: all)")
    p.add_argument("--n", type=int, default=4000, help="samples per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nfe-grid", type=int, nargs="+", default=list(NFE_GRID))
    p.add_argument("--tolerances", type=float, nargs="+", default=list(TOLERANCES))
    p.add_argument("--sigma-start", type=float, default=None, help="start at noise level σ/α (default: at T)")
    p.add_argument("--sigma-end", type=float, default=None, help="end at noise level σ/α (default: at --eps)")
    p.add_argument("--eps", type=float, default=None, help="end time (default: the SDE's default eps)")
    p.add_argument("--no-denoise", dest="denoise", action="store_false", help="no final Tweedie step")
    p.add_argument("--reference-tol", type=float, default=1e-10)
    p.add_argument("--out", default=None, help="output directory (default benchmarks/results/<target>_<sde>)")
    p.add_argument("--plot", default=None, help="also write the plot here (e.g. docs/steps_ring_vp.png)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, str]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.nfe_grid, args.tolerances, args.reference_tol = QUICK["n"], QUICK["nfe_grid"], QUICK["tolerances"], QUICK["reference_tol"]
    name = f"{args.target}_{args.sde}"
    problem = mixture_problem(
        TARGETS.get(args.target)(), get_sde(args.sde), sigma_start=args.sigma_start, sigma_end=args.sigma_end,
        eps=args.eps, n=args.n, seed=args.seed, denoise=args.denoise, name=name,
    )
    bench = Benchmark(problem, reference_tol=args.reference_tol)
    result = bench.sweep(args.methods, nfe_grid=args.nfe_grid, tolerances=args.tolerances, log=lambda line: print(line, flush=True))
    paths = write_report(result, args.out or os.path.join("benchmarks", "results", name), plot_path=args.plot)
    for path in paths.values():
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
