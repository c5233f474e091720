"""Fast-solver benchmark on the issue's problem: the 2-D ring (8 modes on radius 2, std 0.1, weights
∝ 1..8) with its exact score, PF-ODE from σ/α = 80 to 0.002 and a final step to 0, every evaluation
counted (``sde_diffusion.benchmark``: matched latents, dopri5 reference at 1e-10, quality metrics).

    python benchmarks/fast_solvers.py                     # all sections, 4000 samples (~10 min)
    python benchmarks/fast_solvers.py --sections deterministic --n 4000
    python benchmarks/fast_solvers.py --quick             # smoke run in seconds

Sections:
  deterministic  every fast ODE solver and schedule at 10 and 20 NFE: median distance to the
                 reference and mode-switch fraction against the targets of the established
                 libraries (10 NFE: 0.042 / 4.0%, 20 NFE: 7.9e-3 / 1.0%), plus adaptive DPM-Solver
  stochastic     SDE solvers at 10 and 20 NFE: off-manifold fraction, spread, energy distance
  noise_floor    Gotta-Go-Fast against Euler–Maruyama: the fewest evaluations at which the mean
                 energy distance over seeds is within 1.5× the true-vs-true noise floor (from T,
                 as Euler–Maruyama has no t_start)
  orders         empirical orders: log2 of the error ratio from 64 to 128 steps

Writes ``report.md`` to ``--out`` (default ``benchmarks/results/fast_solvers``). Wall times are
per run on one thread; compare them only within one run on a quiet machine.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from typing import Callable, Optional, Sequence

import torch

from sde_diffusion import metrics
from sde_diffusion.benchmark import Benchmark, Row, mixture_problem, noise_level_warning
from sde_diffusion.registry import Registry
from sde_diffusion.sde_lib import get_sde
from sde_diffusion.targets import ring

#: The established libraries' best figures on this problem (anchor-fast-solvers §6.3(a)):
#: NFE -> (median distance, mode-switch fraction).
TARGETS = {10: (0.042, 0.040), 20: (7.9e-3, 0.010)}
SCHEDULES = ("logsnr", "karras", "quadratic", "time_uniform")
DETERMINISTIC = (
    "heun",
    "dpm_solver:order=2",
    "dpm_solver:order=3",
    "dpm_solver_pp:order=2",
    "dpm_solver_pp:order=3",
    "unipc:order=1",
    "unipc:order=2",
    "unipc:order=3",
    "unipc:order=2,variant=bh1",
    "unipc:order=2,prediction=data",
)
STOCHASTIC = ("sde_dpm_solver_pp", "sde_dpm_solver_pp:order=1", "edm", "edm:s_churn=2")
ADAPTIVE = ("dpm_solver_adaptive:order=2", "dpm_solver_adaptive:order=3")
ORDERS = (
    ("dpm_solver:order=1", 1),
    ("dpm_solver:order=2", 2),
    ("dpm_solver:order=3", 3),
    ("dpm_solver_pp:order=2,lower_order_final=False", 2),
    ("dpm_solver_pp:order=3,lower_order_final=False", 3),
    ("heun", 2),
    ("unipc:order=1,lower_order_final=False", 2),
    ("unipc:order=2,lower_order_final=False", 3),
    ("unipc:order=3,lower_order_final=False", 4),
)
EM_STEPS = (10, 20, 30, 40, 50, 70, 100, 150, 200, 300)
GGF_TOLERANCES = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02)

SECTIONS: Registry[Callable[[argparse.Namespace], list[str]]] = Registry("benchmark section")


def issue_problem(n: int, seed: int = 0, denoise: bool = True):
    return mixture_problem(ring(), get_sde("vp"), sigma_start=80.0, sigma_end=0.002, n=n, seed=seed, denoise=denoise, name="ring_vp_80_0.002")


def table(header: Sequence[str], rows: list[Sequence[object]]) -> list[str]:
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]


def at_nfe(bench: Benchmark, spec: str, nfe: int, deterministic: bool) -> Optional[Row]:
    """The run of ``spec`` whose NFE is nearest to ``nfe`` (None if that is off by more than 1)."""
    (steps,) = bench.steps_for_nfe(spec, [nfe])
    row = bench.run(spec, steps=steps, deterministic=deterministic)
    return row if abs(row.nfe - nfe) <= 1 else None


@SECTIONS.register("deterministic")
def deterministic_section(args: argparse.Namespace) -> list[str]:
    problem = issue_problem(args.n)
    warn(problem)
    bench = Benchmark(problem)
    lines = ["## Deterministic solvers at 10 and 20 NFE", ""]
    rows, best = [], {}
    for nfe in TARGETS:
        for method in DETERMINISTIC:
            for schedule in SCHEDULES:
                spec = f"{method}{',' if ':' in method else ':'}schedule={schedule}"
                row = at_nfe(bench, spec, nfe, deterministic=True)
                if row is None:
                    continue
                rows.append((nfe, spec, row.nfe, row.median_dist, row.mode_switch, row.spread, row.off_manifold))
                log(rows[-1])
                if row.median_dist < best.get(nfe, (math.inf,))[0] and row.mode_switch < TARGETS[nfe][1]:
                    best[nfe] = (row.median_dist, row.mode_switch, spec, row.nfe)
    lines += table(["target NFE", "method", "nfe", "median dist", "mode switch", "spread", "off-manifold"], rows)
    lines += ["", "Best (lowest median among rows under the mode-switch target):", ""]
    for nfe, (median, switch, spec, used) in sorted(best.items()):
        verdict = "beats" if median < TARGETS[nfe][0] and switch < TARGETS[nfe][1] else "does not beat"
        lines.append(f"- {nfe} NFE: `{spec}` (nfe {used}) median {median:.3g}, switches {100 * switch:.2f}% — {verdict} {TARGETS[nfe][0]:g} / {100 * TARGETS[nfe][1]:.1f}%")
    lines += ["", "Adaptive DPM-Solver (rtol = atol = tol):", ""]
    adaptive = []
    for spec in ADAPTIVE:
        for tol in (0.05, 1e-2, 1e-3, 1e-4):
            row = bench.run(spec, tol=tol, deterministic=True)
            adaptive.append((spec, tol, row.nfe, row.median_dist, row.mode_switch))
            log(adaptive[-1])
    return lines + table(["method", "tol", "nfe", "median dist", "mode switch"], adaptive)


@SECTIONS.register("stochastic")
def stochastic_section(args: argparse.Namespace) -> list[str]:
    bench = Benchmark(issue_problem(args.n))
    floor = metrics.energy_noise_floor(bench.true_samples, args.n, args.n)
    rows = []
    for nfe in TARGETS:
        for method in STOCHASTIC:
            for schedule in SCHEDULES[:3]:
                spec = f"{method}{',' if ':' in method else ':'}schedule={schedule}"
                row = at_nfe(bench, spec, nfe, deterministic=False)
                if row is not None:
                    rows.append((nfe, spec, row.nfe, row.off_manifold, row.spread, row.mode_tv, row.energy / floor))
                    log(rows[-1])
    lines = ["## Stochastic solvers at 10 and 20 NFE", "", f"Energy noise floor E|X-X'|(2/n) = {floor:.3g}.", ""]
    return lines + table(["target NFE", "method", "nfe", "off-manifold", "spread", "mode TV", "energy / floor"], rows)


def nfe_to_floor(benches: list[Benchmark], specs: Sequence[tuple[str, dict]], factor: float = 1.5) -> tuple[list[tuple], Optional[int]]:
    """Mean NFE, energy/floor, mode TV and spread over the seeds' benchmarks for each (spec, run
    kwargs), and the smallest mean NFE whose mean energy is within ``factor`` of the floor."""
    rows, reached = [], None
    for spec, kwargs in specs:
        runs = [b.run(spec, deterministic=False, **kwargs) for b in benches]
        ratio = sum(r.energy / metrics.energy_noise_floor(b.true_samples, b.problem.n, b.problem.n) for r, b in zip(runs, benches)) / len(runs)
        nfe = sum(r.nfe for r in runs) / len(runs)
        rows.append((f"{spec} {runs[0].setting}" if runs[0].steps else spec, nfe, ratio, sum(r.mode_tv for r in runs) / len(runs), sum(r.spread for r in runs) / len(runs)))
        log(rows[-1])
        if ratio <= factor and (reached is None or nfe < reached):
            reached = round(nfe)
    return rows, reached


@SECTIONS.register("noise_floor")
def noise_floor_section(args: argparse.Namespace) -> list[str]:
    benches = [Benchmark(mixture_problem(ring(), get_sde("vp"), n=args.n, seed=s, name="ring_vp")) for s in range(args.seeds)]
    em_rows, em_nfe = nfe_to_floor(benches, [("euler_maruyama", {"steps": n}) for n in EM_STEPS])
    ggf_rows, ggf_nfe = nfe_to_floor(benches, [(f"gotta_go_fast:eps_rel={r}", {}) for r in GGF_TOLERANCES])
    lines = ["## Gotta-Go-Fast against Euler–Maruyama at the noise floor", ""]
    lines += [f"VP from T to eps = 1e-3 with the final denoise, n = {args.n}, {args.seeds} seeds; criterion: mean energy ≤ 1.5 × floor.", ""]
    lines += table(["method", "mean nfe", "energy / floor", "mode TV", "spread"], em_rows + ggf_rows)
    ratio = f"{ggf_nfe / em_nfe:.2f}" if em_nfe and ggf_nfe else "n/a"
    lines += ["", f"Euler–Maruyama reaches the floor at {em_nfe} NFE, Gotta-Go-Fast at {ggf_nfe} (ratio {ratio}; the target is ≤ 0.2)."]
    return lines


@SECTIONS.register("orders")
def orders_section(args: argparse.Namespace) -> list[str]:
    bench = Benchmark(issue_problem(min(args.n, 200), denoise=False))
    rows = []
    for spec, order in ORDERS:
        errors = [bench.run(spec, steps=n, deterministic=True).median_dist for n in (64, 128)]
        rows.append((spec, order, errors[0], errors[1], math.log2(errors[0] / errors[1])))
        log(rows[-1])
    return ["## Empirical orders (no final denoise)", ""] + table(["method", "theory", "error at 64", "error at 128", "slope"], rows)


def warn(problem) -> None:
    message = noise_level_warning(problem)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=2)


def log(row: Sequence[object]) -> None:
    print("  ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row), flush=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", nargs="+", default=SECTIONS.names(), choices=SECTIONS.names())
    p.add_argument("--n", type=int, default=4000, help="samples per run")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the noise-floor comparison")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "fast_solvers"))
    p.add_argument("--quick", action="store_true", help="smoke run: 200 samples, 1 seed")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.seeds = 200, 1
    lines = ["# Fast-solver benchmark", "", f"n = {args.n} samples per run.", ""]
    for name in args.sections:
        lines += SECTIONS.get(name)(args) + [""]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "report.md")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
