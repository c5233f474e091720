"""Best by default: the recommended sampler against the best of k-diffusion's samplers, on the same
latents in the same run.

Problem (per target): VP SDE with the target's exact score, PF-ODE from σ/α = 80 to 0.002 and a
final denoise (the step to σ = 0), 4000 latents; quality = median distance to a float64 dopri5
(rtol = atol = 1e-10) solution from the same latent, and the fraction of samples whose mixture
component differs from the reference's. The best peer at an NFE is the best, for each of the two
figures separately, of k-diffusion's euler, heun, dpm_2, lms (order 4), dpmpp_2m and dpmpp_3m_sde
(η = 0) on Karras (ρ = 7) and exponential grids with at most that many evaluations.

    python benchmarks/defaults.py                                 # ring, 8-D anisotropic, 16-D multiscale
    python benchmarks/defaults.py --targets multiscale --nfe 5 10 --method 'unipc:order=3'
    python benchmarks/defaults.py --fitted                        # also fitted schedules at 5 and 10 NFE
    python benchmarks/defaults.py --sweep --n 2000                # the sweep the defaults were chosen from
    python benchmarks/defaults.py --quick                         # smoke run

The sweep (``--sweep``) runs candidate settings over the four SDEs and the tuning targets (ring,
8-D anisotropic, 4-D anisotropic; not the held-out 16-D multiscale mixture) and ranks them by the
geometric mean, over SDEs, targets and NFEs, of the median error and of the mode-switch fraction.
Fitted schedules (``--fitted``) are fitted by ``solvers.optimize_schedule`` on latents of another seed
and scored on the benchmark's latents, with every step at the method's nominal order
(``first_order_above=inf``: the fit chooses the step lengths). ``--limits`` scores the method, at
its nominal order, on every 4-step grid (5 NFE) whose interior nodes are 3 of ``--limit-nodes``
candidates uniform in √t: the lowest median any of them reaches bounds what a fitted 5-NFE schedule
on that candidate set can do, and the grid with the lowest worst ratio to the best peer bounds the
defaults at 5 NFE. Writes ``report.md`` (``limits.md``, ``sweep.md``) to ``--out``.

    python benchmarks/defaults.py --limits --n 2000               # exhaustive over 2024 4-step grids
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Sequence
from typing import Optional

import torch

import solvers
from benchmarks.common import add_run_options, log, table, write_report
from benchmarks.peers import GRIDS, PEERS, levels_for_nfe, run_peer
from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import anisotropic, multiscale, ring
from sde_diffusion.evaluation import metrics
from sde_diffusion.evaluation.benchmark import Benchmark, mixture_problem, noise_level, parse_method

TARGETS = Registry("analytic target")
TARGETS.register("ring")(ring)
TARGETS.register("anisotropic")(anisotropic)
TARGETS.register("multiscale")(multiscale)
TARGETS.register("anisotropic4")(lambda: anisotropic(dim=4, n_modes=6, seed=2))
#: The targets the defaults are tuned on; ``multiscale`` is held out.
TUNING_TARGETS = ("ring", "anisotropic", "anisotropic4")
SWEEP_SDES = ("vp", "subvp", "ve", "cosine_vp")
SWEEP_CANDIDATES = tuple(
    f"{method}:{order}schedule={schedule}"
    for method, order in [("unipc", "prediction=noise,order=2,"), ("unipc", "prediction=data,order=2,"), ("unipc", "prediction=data,order=3,"), ("unipc", "prediction=noise,order=3,"),
                          ("unipc", "prediction=data,order=2,variant=bh1,"), ("unipc", "prediction=data,order=3,variant=bh1,"),
                          ("unipc", "prediction=data,order=3,variant=auto,"), ("dpm_solver_pp", "order=2,"), ("dpm_solver_pp", "order=3,")]
    for schedule in ("logsnr", "karras", "time_uniform", "quadratic")
)

NFE_GRID = (5, 8, 10, 15, 20, 50)
#: The defaults' target: median error and mode-switch fraction at most this times the best peer's.
RATIO_TARGET = 0.7
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002


def score(bench: Benchmark, x: torch.Tensor) -> tuple[float, float]:
    """(median distance to the reference, mode-switch fraction)."""
    return metrics.distance_to_reference(x, bench.reference)["median"], metrics.mode_switch_fraction(bench.problem.target, x, bench.reference)


class Peers:
    """Every peer run on a benchmark, cached by (peer, grid, levels)."""

    def __init__(self, bench: Benchmark) -> None:
        self.bench = bench
        self.runs: dict[tuple[str, str, int], tuple[int, float, float]] = {}

    def run(self, peer, grid: str, n: int) -> tuple[int, float, float]:
        key = (peer.name, grid, n)
        if key not in self.runs:
            p = self.bench.problem
            x, nfe = run_peer(peer, grid, n, p.sde, p.score_fn, self.bench.latents, p.t_start, SIGMA_MIN, SIGMA_MAX)
            self.runs[key] = (nfe, *score(self.bench, x))
        return self.runs[key]

    def best(self, nfe: int) -> dict[str, tuple[float, str]]:
        """The lowest median and lowest mode-switch fraction over the peers with ≤ nfe evaluations,
        each with the peer that reached it."""
        best = {"median": (math.inf, ""), "switch": (math.inf, "")}
        for peer in PEERS:
            n = levels_for_nfe(peer, nfe)
            if n < 1:
                continue
            for grid in GRIDS:
                used, median, switch = self.run(peer, grid, n)
                label = f"{peer.name}/{grid}@{used}"
                best["median"] = min(best["median"], (median, label))
                best["switch"] = min(best["switch"], (switch, label))
        return best


def ours(bench: Benchmark, spec: str, nfe: int, **options) -> tuple[int, float, float, float]:
    """(nfe, median, switch, seconds) of ``spec`` at the step count giving ``nfe`` evaluations."""
    (steps,) = bench.steps_for_nfe(spec, [nfe])
    name, variant = parse_method(spec)
    p = bench.problem
    start = time.perf_counter()
    x, used = solvers.sample(p.sde, p.score_fn, bench.latents.shape, name, steps=steps, eps=p.eps, x_T=bench.latents, **bench.options(name, variant), **options)
    seconds = time.perf_counter() - start
    return (used, *score(bench, x), seconds)


def defaults_section(bench: Benchmark, peers: Peers, spec: str, nfe_grid: Sequence[int]) -> tuple[list[str], int]:
    rows, misses = [], 0
    for nfe in nfe_grid:
        best = peers.best(nfe)
        used, median, switch, _ = ours(bench, spec, nfe)
        r_median, r_switch = median / best["median"][0], switch / max(best["switch"][0], 1.0 / bench.problem.n)
        ok = r_median <= RATIO_TARGET and r_switch <= RATIO_TARGET
        misses += not ok
        rows.append((nfe, used, median, best["median"][0], best["median"][1], r_median, switch, best["switch"][0], best["switch"][1], r_switch, "yes" if ok else "no"))
        log(rows[-1])
    header = ["NFE", "ours nfe", "ours median", "peer median", "best peer (median)", "ratio", "ours switch", "peer switch", "best peer (switch)", "ratio", f"≤ {RATIO_TARGET}"]
    return table(header, rows), misses


def nominal_options(bench: Benchmark, name: str, variant: dict) -> dict:
    """The method's options for an explicit grid: no t_start, and every step at the nominal order
    (``first_order_above=inf``: the grid sets the step lengths)."""
    options = {k: v for k, v in bench.options(name, variant).items() if k != "t_start"}
    if "first_order_above" in solvers.METHODS.get(name).options:
        options["first_order_above"] = math.inf
    return options


def fitted_section(bench: Benchmark, peers: Peers, spec: str, fit_seed: int, n_fit: int) -> tuple[list[str], int]:
    """Fitted schedules at 5 and 10 NFE against the best peer at 10 and 20 NFE (median)."""
    name, variant = parse_method(spec)
    p = bench.problem
    options = nominal_options(bench, name, variant)
    rows, misses = [], 0
    for nfe, peer_nfe in ((5, 10), (10, 20)):
        g = torch.Generator().manual_seed(fit_seed)
        start = time.perf_counter()
        times = solvers.optimize_schedule(p.sde, p.score_fn, (p.target.dim,), name, nfe, t_start=p.t_start, eps=p.eps, n_samples=n_fit, generator=g, **options)
        fit_seconds = time.perf_counter() - start
        x, used = solvers.sample(p.sde, p.score_fn, bench.latents.shape, name, x_T=bench.latents, schedule=times, **options)
        median, switch = score(bench, x)
        best = peers.best(peer_nfe)
        ok = median <= best["median"][0]
        misses += not ok
        levels = ", ".join(f"{noise_level(p.sde, float(t)):.3g}" for t in times)
        rows.append((nfe, used, median, switch, peer_nfe, best["median"][0], best["median"][1], median / best["median"][0], "yes" if ok else "no", round(fit_seconds, 1), levels))
        log(rows[-1])
    header = ["NFE", "ours nfe", "fitted median", "fitted switch", "peer NFE", "peer median", "best peer", "ratio", "≤ 1", "fit s", "σ/α of the fitted times"]
    return table(header, rows), misses


def limits_section(args: argparse.Namespace, reference_tol: float) -> list[str]:
    """Every 4-step grid of the candidate nodes (module docstring), scored on every target."""
    spec = args.method or solvers.RECOMMENDED[0]
    name, variant = parse_method(spec)
    benches = {}
    for target in args.targets:
        problem = mixture_problem(TARGETS.get(target)(), get_sde("vp"), sigma_start=SIGMA_MAX, sigma_end=SIGMA_MIN, n=args.n, seed=args.seed, name=target)
        bench = Benchmark(problem, reference_tol=reference_tol)
        peers = Peers(bench)
        benches[target] = (bench, peers.best(5), peers.best(10))
    p = benches[args.targets[0]][0].problem  # every target shares the SDE, the interval and the options
    options = nominal_options(benches[args.targets[0]][0], name, variant)
    roots = torch.linspace(math.sqrt(p.t_start), math.sqrt(p.eps), args.limit_nodes + 2, dtype=torch.float64)[1:-1]
    combos = list(itertools.combinations(range(args.limit_nodes), 3))
    scores = {}
    for combo in combos:
        times = torch.cat([torch.tensor([p.t_start], dtype=torch.float64), roots[list(combo)] ** 2, torch.tensor([p.eps], dtype=torch.float64)])
        for target, (bench, _, _) in benches.items():
            x, _ = solvers.sample(p.sde, bench.problem.score_fn, bench.latents.shape, name, x_T=bench.latents, schedule=times, **options)
            scores[combo, target] = score(bench, x)

    def ratios(combo: tuple[int, ...], target: str) -> tuple[float, float]:
        (median, switch), (bench, best5, _) = scores[combo, target], benches[target]
        return median / best5["median"][0], switch / max(best5["switch"][0], 1.0 / bench.problem.n)

    rows = []
    for target, (_, best5, best10) in benches.items():
        lowest = min(scores[c, target][0] for c in combos)
        rows.append((target, best5["median"][0], best10["median"][0], lowest, lowest / best10["median"][0],
                     min(ratios(c, target)[0] for c in combos), min(ratios(c, target)[1] for c in combos)))
    worst, combo = min((max(max(ratios(c, t)) for t in benches), c) for c in combos)
    levels = ", ".join(f"{noise_level(p.sde, float(t)):.3g}" for t in [p.t_start, *(roots[list(combo)] ** 2).tolist(), p.eps])
    header = ["target", "peer median @5", "peer median @10", "lowest median @5", "/ peer @10", "lowest median / peer @5", "lowest switch / peer @5"]
    return [f"## Every 4-step grid: `{spec}` at its nominal order, {len(combos)} grids ({args.limit_nodes} candidate nodes uniform in √t)", ""] + table(header, rows) + [
        "", f"Lowest worst ratio to the best peer at 5 NFE over both figures and every target: {worst:.3g}, on the grid σ/α = {levels}.", ""]


def sweep_section(args: argparse.Namespace, reference_tol: float) -> list[str]:
    """Every candidate over SDEs × tuning targets × NFEs; ranked by the geometric means."""
    logs: dict[str, list[tuple[float, float]]] = {c: [] for c in SWEEP_CANDIDATES}
    for sde_name in SWEEP_SDES:
        sde = get_sde(sde_name)
        top = noise_level(sde, sde.T)
        for target in TUNING_TARGETS:
            problem = mixture_problem(TARGETS.get(target)(), sde, sigma_start=min(SIGMA_MAX, top), sigma_end=SIGMA_MIN, n=args.n, seed=args.seed, name=target)
            bench = Benchmark(problem, reference_tol=reference_tol)
            for spec in SWEEP_CANDIDATES:
                for nfe in args.nfe:
                    _, median, switch, _ = ours(bench, spec, nfe)
                    logs[spec].append((math.log(max(median, 1e-12)), math.log(max(switch, 1.0 / args.n))))
                    log((sde_name, target, spec, nfe, median, switch))
    ranked = sorted(((math.exp(sum(m for m, _ in v) / len(v)), math.exp(sum(s for _, s in v) / len(v)), spec) for spec, v in logs.items()))
    rows = [(spec, median, switch) for median, switch, spec in ranked]
    return [f"## Sweep: {', '.join(SWEEP_SDES)} × {', '.join(TUNING_TARGETS)} × NFE {', '.join(map(str, args.nfe))}", ""] + table(["setting", "geo-mean median", "geo-mean switch"], rows) + [""]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="+", default=TARGETS.names(), choices=TARGETS.names())
    p.add_argument("--nfe", nargs="+", type=int, default=list(NFE_GRID))
    p.add_argument("--method", default=None, help="method spec (default: solvers.RECOMMENDED with no options)")
    p.add_argument("--n", type=int, default=4000, help="latents per target")
    p.add_argument("--seed", type=int, default=0, help="seed of the benchmark latents")
    p.add_argument("--sweep", action="store_true", help="only the sweep over SDEs and tuning targets")
    p.add_argument("--fitted", action="store_true", help="also fit schedules at 5 and 10 NFE")
    p.add_argument("--limits", action="store_true", help="only the exhaustive search over 4-step grids")
    p.add_argument("--limit-nodes", type=int, default=24, help="candidate interior nodes of --limits")
    p.add_argument("--fit-seed", type=int, default=1000, help="seed of the latents schedules are fitted on")
    p.add_argument("--n-fit", type=int, default=256, help="latents schedules are fitted on")
    add_run_options(p, "defaults", "300 latents, 5 and 10 NFE, looser reference")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    reference_tol = 1e-10
    if args.quick:
        args.n, args.nfe, reference_tol = 300, [5, 10], 1e-7
    if args.sweep:
        lines = ["# Sweep of default settings", "", f"{args.n} latents per problem; σ/α min({SIGMA_MAX:g}, σ/α(T)) → {SIGMA_MIN:g}, then the final denoise.", ""]
        lines += sweep_section(args, reference_tol)
        return write_report(args.out, lines, "sweep.md")
    if args.limits:
        lines = ["# What any 4-step grid can do", "", f"{args.n} latents per target (seed {args.seed}); σ/α {SIGMA_MAX:g} → {SIGMA_MIN:g}, then the final denoise.", ""]
        lines += limits_section(args, reference_tol)
        return write_report(args.out, lines, "limits.md")
    spec = args.method or solvers.RECOMMENDED[0]
    lines = ["# Defaults against k-diffusion", "", f"Method `{spec}`; {args.n} latents per target (seed {args.seed}); σ/α {SIGMA_MAX:g} → {SIGMA_MIN:g}, then the final denoise.", ""]
    misses = 0
    for target in args.targets:
        problem = mixture_problem(TARGETS.get(target)(), get_sde("vp"), sigma_start=SIGMA_MAX, sigma_end=SIGMA_MIN, n=args.n, seed=args.seed, name=target)
        bench = Benchmark(problem, reference_tol=reference_tol)
        peers = Peers(bench)
        print(f"## {target}", flush=True)
        section, missed = defaults_section(bench, peers, spec, args.nfe)
        lines += [f"## {target} (reference: {bench.reference_nfe} NFE, error ≈ {bench.reference_error:.2g})", ""] + section + [""]
        misses += missed
        if args.fitted:
            section, missed = fitted_section(bench, peers, spec, args.fit_seed, args.n_fit)
            lines += [f"Fitted schedules on {target} (fitted on {args.n_fit} latents of seed {args.fit_seed}):", ""] + section + [""]
            misses += missed
    lines.append(f"Targets missed: {misses}.")
    return write_report(args.out, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
