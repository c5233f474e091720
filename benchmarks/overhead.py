"""Per-NFE overhead: ``unipc`` and ``heun`` against k-diffusion's ``sample_dpmpp_2m`` and
``sample_heun`` with a trivial model, so that the time measured is the samplers' own work.

Problem: data N(0, I) under the VP SDE, whose marginals are all N(0, I) (α² + σ² = 1): the exact score
is s(x, t) = -x and the exact EDM denoiser D(x̃; σ̃) = x̃/(1 + σ̃²), one tensor operation each. Both
sides start from the same latents on the same Karras grid (``get_sigmas_karras``, ρ = 7, σ/α 80 →
0.002, then 0): ours gets the grid's times as ``schedule=`` and the method's default options, the peer
the σ grid; progress bars are off on both sides. NFE is counted on both sides (``solvers.sample``'s
count; a counter around the peer's model). Time per NFE = the median over ``--repeats`` timed runs of
one call's wall time (``time.perf_counter``, after ``--warmup`` untimed runs, ours and the peer's runs
interleaved) divided by its NFE (``--no-memo``: UniPC's memoised step coefficients are cleared
before each of our runs, as on a first call with a grid); the ratio of the median thread CPU times (``time.thread_time``) is
given as well, as it is less disturbed by other processes on a shared machine. Both sides return ≈ the latent (the PF-ODE of this problem is
dx/dt = 0); the report gives the largest deviation as a check that the two compute the same thing.

    python benchmarks/overhead.py                         # 1 thread
    python benchmarks/overhead.py --threads 0             # torch's default thread count
    python benchmarks/overhead.py --batches 1000 --repeats 5 --quick

Writes ``report.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Optional

import torch

import solvers
from benchmarks.common import add_run_options, log, table, write_report
from benchmarks.peers import load_sampling
from sde_diffusion.core.sde_lib import get_sde
from solvers.unipc import unipc_coefficients

#: (our method, k-diffusion sampler) pairs compared.
PAIRS = (("unipc", "sample_dpmpp_2m"), ("heun", "sample_heun"))
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002


class Counted:
    """A k-diffusion model that counts its calls."""

    def __init__(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.model, self.nfe = model, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.model(x, sigma)


def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """∇log N(x; 0, I) = -x, the exact score of every VP marginal of N(0, I) data."""
    return -x


def denoiser(x_tilde: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """D(x̃; σ̃) = x̃/(1 + σ̃²), the exact denoiser of N(0, I) data (σ̃ is k-diffusion's (B,) level)."""
    return x_tilde * (1.0 / (1.0 + float(sigma[0]) ** 2))


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds by ``time.perf_counter``, this thread's CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def compare(method: str, peer: str, batch: int, levels: int, warmup: int, repeats: int, memo: bool = True) -> tuple:
    """One row: NFE, µs/NFE (wall, median), the ratio by wall and by CPU time, and the deviation
    from the latent, of ours and of the peer."""
    kd = load_sampling()
    sde = get_sde("vp")
    sigmas = kd.get_sigmas_karras(levels, SIGMA_MIN, SIGMA_MAX)
    times = sde.t_of_lambda(-torch.log(sigmas[:-1].to(torch.float64)))
    z = torch.randn((batch, 2), generator=torch.Generator().manual_seed(0))
    x_tilde = z / float(sde.alpha(times[0]))
    counted = Counted(denoiser)
    sampler = getattr(kd, peer)

    def ours() -> tuple[torch.Tensor, int]:
        if not memo:
            unipc_coefficients.cache_clear()
        return solvers.sample(sde, score, z.shape, method, schedule=times, x_T=z)

    def theirs() -> torch.Tensor:
        counted.nfe = 0
        return sampler(counted, x_tilde, sigmas, disable=True)

    x_ours, nfe_ours = ours()
    x_peer = theirs()
    nfe_peer = counted.nfe
    for _ in range(warmup):
        ours()
        theirs()
    runs = [(timed(ours), timed(theirs)) for _ in range(repeats)]  # interleaved, so both see the same load
    wall_ours, wall_peer = (statistics.median(r[k][0] for r in runs) for k in (0, 1))
    cpu_ours, cpu_peer = (statistics.median(r[k][1] for r in runs) for k in (0, 1))
    ratio = (wall_ours / nfe_ours) / (wall_peer / nfe_peer)
    cpu_ratio = (cpu_ours / nfe_ours) / (cpu_peer / nfe_peer)
    dev_ours, dev_peer = float((x_ours - z).abs().max()), float((x_peer - z).abs().max())
    return (method, peer.removeprefix("sample_"), f"{batch}×2", nfe_ours, nfe_peer, wall_ours / nfe_ours * 1e6, wall_peer / nfe_peer * 1e6,
            ratio, "yes" if ratio <= 1.0 else "no", cpu_ratio, dev_ours, dev_peer)


def model_cost(batch: int, calls: int = 2000) -> tuple[float, float]:
    """µs per call (wall, best of 5) of the two trivial models alone."""
    x, t, sigma = torch.randn(batch, 2), torch.full((batch,), 0.5), torch.full((batch,), 1.0)

    def per_call(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], level: torch.Tensor) -> float:
        return min(timed(lambda: [model(x, level) for _ in range(calls)])[0] for _ in range(5)) / calls * 1e6

    return per_call(score, t), per_call(denoiser, sigma)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", nargs="+", type=int, default=[1000, 10000])
    p.add_argument("--levels", type=int, default=21, help="Karras grid levels (before the appended 0)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=101, help="timed runs per side (the median is reported)")
    add_run_options(p, "overhead", "1 warm-up, 3 repeats", threads_help="torch threads (0: torch's default)")
    p.add_argument("--no-memo", action="store_true", help="clear UniPC's memoised coefficients before each of our runs")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.warmup, args.repeats = 1, 3
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    rows, models = [], []
    for batch in args.batches:
        models.append((f"{batch}×2", *model_cost(batch)))
        for method, peer in PAIRS:
            rows.append(compare(method, peer, batch, args.levels, args.warmup, args.repeats, memo=not args.no_memo))
            log(rows[-1])
    met = sum(r[8] == "yes" for r in rows)
    header = ["method", "peer", "batch", "ours NFE", "peer NFE", "ours µs/NFE", "peer µs/NFE", "ratio", "meets (≤ 1)", "CPU-time ratio",
              "ours max |x - z|", "peer max |x - z|"]
    lines = [
        "# Per-NFE overhead against k-diffusion",
        "",
        f"Trivial model (N(0, I) data, VP SDE); Karras grid of {args.levels} levels, σ/α {SIGMA_MAX:g} → {SIGMA_MIN:g} → 0; "
        f"median of {args.repeats} timed runs after {args.warmup} warm-ups; {torch.get_num_threads()} torch threads"
        f"{'; UniPC coefficients recomputed on every run (--no-memo)' if args.no_memo else ''}.",
        "",
        *table(header, rows),
        "",
        f"Met: {met} of {len(rows)}.",
        "",
        "The models alone (µs per call):",
        "",
        *table(["batch", "score -x", "denoiser x̃/(1 + σ̃²)"], models),
    ]
    return write_report(args.out, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
