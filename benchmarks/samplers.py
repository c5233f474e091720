"""Sampler benchmark: every method at its default settings on the 2-D ring mixture with its exact score.

    python benchmarks/samplers.py                         # VP, batches 1000 and 10000, all methods
    python benchmarks/samplers.py --sde ve --batch 1000 --methods pc ode
    python benchmarks/samplers.py --quick                 # smoke run in seconds

For each method and batch size it prints nfe, wall time, the energy distance to true samples (with
its noise floor E|X-X'| (1/n + 1/m) for scale) and the sampler's own overhead per score call: wall time
minus the time spent inside ``score_fn``, divided by nfe. Run on a quiet machine with one thread; the
best of ``--repeats`` runs is reported.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Optional

import torch

import solvers
from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.sde_lib import SDES, LinearSDE, get_sde
from sde_diffusion.core.targets import ring
from sde_diffusion.evaluation.metrics import energy_distance, energy_noise_floor


class TimedScore:
    """The exact mixture score, timing every call."""

    def __init__(self, mixture: GaussianMixture, sde: LinearSDE) -> None:
        self.score_fn = mixture.score_fn(sde)
        self.seconds = 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.score_fn(x, t)
        self.seconds += time.perf_counter() - start
        return out


def reference_overhead_ms(batch: int, steps: int = 1000) -> float:
    """Per-step cost of a bare Euler loop x ← x + (x - D(x))/σ · (σ' - σ) with a free denoiser D = 0
    (k-diffusion's ``sample_euler`` reduced to its update): the floor any Python sampling loop pays."""
    x = torch.randn(batch, 2)
    sigmas = torch.linspace(80.0, 0.002, steps + 1).tolist()
    start = time.perf_counter()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = torch.zeros_like(x)
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    return 1e3 * (time.perf_counter() - start) / steps


def run(method: str, sde: LinearSDE, mixture: GaussianMixture, batch: int, seed: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` wall time and overhead of one method; energy distance of the first run."""
    truth = mixture.sample(batch, torch.Generator().manual_seed(seed + 1))
    best: dict[str, float] = {}
    for _ in range(repeats):
        score = TimedScore(mixture, sde)
        start = time.perf_counter()
        x, nfe = solvers.sample(sde, score, (batch, 2), method, generator=torch.Generator().manual_seed(seed))
        wall = time.perf_counter() - start
        if not best or wall < best["wall_s"]:
            best = {"nfe": nfe, "wall_s": wall, "overhead_ms": 1e3 * (wall - score.seconds) / nfe}
        best.setdefault("energy", energy_distance(x, truth))
    return best


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sde", default="vp", choices=SDES.names())
    p.add_argument("--methods", nargs="*", default=None, help="method names (default: every registered method)")
    p.add_argument("--batch", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="SDE with N = 50 and batch 256: a smoke run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sde = get_sde(args.sde, N=50) if args.quick else get_sde(args.sde)
    batches = [256] if args.quick else args.batch
    mixture = ring()
    methods = args.methods or sorted(solvers.available())
    print(f"ring mixture, exact score, {sde!r}, {args.threads} thread(s), best of {args.repeats}")
    for batch in batches:
        floor = energy_noise_floor(mixture.sample(20000, torch.Generator().manual_seed(args.seed + 2)), batch, batch)
        reference = min(reference_overhead_ms(batch) for _ in range(3))
        print(f"\nbatch {batch}x2 (energy-distance noise floor {floor:.2e}; bare Euler loop {reference:.3f} ms/step)")
        print(f"{'method':22s} {'nfe':>6s} {'wall s':>8s} {'energy':>9s} {'overhead ms/call':>17s}")
        for method in methods:
            try:
                row = run(method, sde, mixture, batch, args.seed, args.repeats)
            except ValueError as err:
                print(f"{method:22s} n/a: {err}")
                continue
            print(f"{method:22s} {row['nfe']:6d} {row['wall_s']:8.2f} {row['energy']:9.2e} {row['overhead_ms']:17.3f}")


if __name__ == "__main__":
    main()
