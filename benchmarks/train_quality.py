"""Training quality and throughput (issue §8).

    python -m benchmarks.train_quality [--train-seconds 120] [--clock wall|cpu] [--seed 42] [--n 10000]
                                       [--reps 5] [--seeds 3] [--threads N] [--skip-quality]

1. Ring quality: the residual MLP of ``configs/vp/ring.py`` is trained from scratch (its ``n_iters``
   steps, with the config's seed or ``--seed``), timed by ``--clock``; the model rows pass only if that
   took at most ``--train-seconds``. Then ``--seeds`` sets of ``--n`` samples are drawn with the
   config's PC sampler and with the probability-flow ODE (dopri5, rtol = atol = 1e-5) from the EMA
   weights, and, from the same latents, with the exact mixture score (what the sampler alone
   achieves). Criteria: energy distance to ``--n`` true samples ≤ 2× the noise floor, and mode-weight
   total variation ≤ 0.02. The noise floor is the
   expected true-vs-true energy distance at the same size, E|X-X'|(1/n + 1/n) (``metrics``): its
   realisations spread over a factor of about 6 on the ring (multinomial noise of the mode weights),
   so the expectation is estimated from 2n true points, a few realisations are printed beside it, and
   the samples' energy distance is averaged over ``--reps`` independent true sets and the ``--seeds``
   sample sets (both have the same multinomial noise; one set alone passes or fails by luck). The
   criteria are applied to these averages; per-seed figures are printed beside them.
2. Throughput: training steps per second (loss, backward, clipping, Adam, EMA) for the ring MLP and
   the digits U-Net at their configs' batch sizes, after warm-up steps, per second of elapsed time and
   per CPU second of the process.

Prints a table and writes ``benchmarks/results/train_quality.json``. Timings depend on the machine and
its load: run on a quiet machine before quoting them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable

import torch

from sde_diffusion.app.build import build_sde, draw_samples
from sde_diffusion.app.config import apply_overrides, load_config
from sde_diffusion.app.train import init_state, train, train_step
from sde_diffusion.app.workdir import load_score_fn
from sde_diffusion.core.targets import ring
from sde_diffusion.data import datasets
from sde_diffusion.evaluation.metrics import energy_distance, energy_noise_floor, mode_weight_tv, sample_tv_bound
from sde_diffusion.training import losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RING, DIGITS = (os.path.join(ROOT, "configs", "vp", f"{name}.py") for name in ("ring", "digits"))
#: ``wall``: elapsed time; ``cpu``: CPU seconds of this process, a stand-in for the elapsed time on a quiet
#: machine when the benchmark shares a busy one (with ``--threads 1``).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
SAMPLERS = {"pc": {}, "ode": {"sampling.method": "ode", "sampling.ode.rtol": 1e-5, "sampling.ode.atol": 1e-5, "sampling.ode.denoise": True}}


def train_timed(config_path: str, workdir: str, seed: int, clock: Callable[[], float]) -> tuple[int, float]:
    """Train the config's run from scratch with ``seed`` (its ``n_iters`` steps, no sample snapshots);
    returns (steps, training seconds of ``clock``)."""
    shutil.rmtree(workdir, ignore_errors=True)
    config = load_config(config_path, {"seed": seed, "training.sample_freq": 0, "training.progress": False})
    start = clock()
    steps = train(config, workdir).step
    return steps, clock() - start


def ring_quality(args: argparse.Namespace) -> dict:
    """Train, then score ``--n`` samples per sampler against ``--reps`` independent true sets."""
    workdir = os.path.join(ROOT, "runs", "train_quality_ring")
    steps, seconds = train_timed(RING, workdir, args.seed, CLOCKS[args.clock])
    in_budget = seconds <= args.train_seconds
    print(f"ring MLP (seed {args.seed}): {steps} steps in {seconds:.0f} s ({args.clock} clock, {args.threads} threads),"
          f" {'within' if in_budget else 'OVER'} the {args.train_seconds:.0f} s budget")
    target = ring()
    g = torch.Generator().manual_seed(2024)
    truths = [target.sample(args.n, g) for _ in range(args.reps)]
    floors = [energy_distance(t, target.sample(args.n, g)) for t in truths]
    floor = energy_noise_floor(target.sample(2 * args.n, g), args.n, args.n)
    out = {"seed": args.seed, "train_steps": steps, "train_seconds": seconds, "clock": args.clock, "n": args.n, "noise_floor": floor,
           "noise_floor_reps": floors, "tv_sampling_bound_4sigma": sample_tv_bound(target, args.n)}
    print(f"  noise floor: {floor:.2e} = E|X-X'|(1/n + 1/n), the expected true-vs-true energy distance; {args.reps}"
          f" realisations: mean {sum(floors) / len(floors):.2e}, {min(floors):.1e} to {max(floors):.1e}")
    base = load_config(RING, {"seed": args.seed})
    sde, model_score = load_score_fn(base, workdir)
    for tag, overrides in SAMPLERS.items():
        config = apply_overrides(base, overrides)
        out[tag] = {}
        for score, score_fn in (("model", model_score), ("exact", target.score_fn(sde))):
            start, eds, tvs = time.perf_counter(), [], []
            for seed in range(7, 7 + args.seeds):
                x, nfe = draw_samples(config, sde, score_fn, args.n, seed=seed, progress=True)
                eds.append([energy_distance(x, t) for t in truths])
                tvs.append(mode_weight_tv(target, x))
            ed, tv = sum(map(sum, eds)) / (args.seeds * args.reps), sum(tvs) / len(tvs)
            row = out[tag][score] = {"nfe": nfe, "seconds_per_seed": (time.perf_counter() - start) / args.seeds,
                                     "energy": ed, "energy_reps": eds, "energy_over_floor": ed / floor,
                                     "energy_over_floor_per_seed": [sum(e) / len(e) / floor for e in eds],
                                     "mode_tv": tv, "mode_tv_per_seed": tvs,
                                     "pass": ed <= 2 * floor and tv <= 0.02 and (in_budget or score == "exact")}
            per_seed = ", ".join(f"{r:.2f}" for r in row["energy_over_floor_per_seed"])
            print(f"  {tag}, {score} score: NFE {nfe}, energy {ed:.2e} = {ed / floor:.2f}× floor (per seed {per_seed}),"
                  f" mode TV {tv:.4f} (max {max(tvs):.4f}) -> {'PASS' if row['pass'] else 'FAIL'}")
    return out


def throughput(config_path: str, warmup: int, steps: int) -> dict:
    """Training steps per second at the config's batch size: ``steps`` timed after ``warmup``."""
    config = load_config(config_path)
    state = init_state(config)
    loss_fn = losses.get_loss_fn(build_sde(config), config.training)
    data = datasets.get_dataset(config.data)[0]
    dequantize = datasets.get_dequantizer(config.data)
    bs, rows = config.training.batch_size, losses.rows_per_step(config.training)

    def step() -> None:
        batch = data[torch.randint(data.shape[0], (rows,), generator=state.data_generator)]
        train_step(state, loss_fn, batch if dequantize is None else dequantize(batch, state.noise_generator), config.optim,
                   config.training.n_iters)

    for _ in range(warmup):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    rate, cpu_rate = steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)
    n_params = sum(p.numel() for p in state.model.parameters())
    return {"model": config.model.name, "params": n_params, "batch_size": bs, "steps_per_s": rate,
            "samples_per_s": rate * bs, "steps_per_cpu_s": cpu_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=load_config(RING).seed, help="training seed")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="how training is timed")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=5, help="independent true sample sets")
    parser.add_argument("--seeds", type=int, default=3, help="independent sample sets per sampler")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-quality", action="store_true", help="only measure throughput")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads}
    if not args.skip_quality:
        result["ring"] = ring_quality(args)
    result["throughput"] = {name: throughput(path, warmup=5, steps=30) for name, path in (("ring_mlp", RING), ("digits_unet", DIGITS))}
    print(f"throughput ({args.threads} threads):")
    for name, row in result["throughput"].items():
        print(f"  {name}: {row['params']} parameters, batch {row['batch_size']}: {row['steps_per_s']:.1f} steps/s"
              f" ({row['samples_per_s']:.0f} samples/s); {row['steps_per_cpu_s']:.1f} steps per CPU second")
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    path = os.path.join(ROOT, "benchmarks", "results", "train_quality.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
