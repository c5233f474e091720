"""The main job (``make demo``): the toolkit end to end on scikit-learn's 8×8 digits, on the CPU.

1. trains the VP-SDE U-Net of ``configs/vp/digits.py`` (a finished run in the workdir is reused);
2. samples it with a fast ODE solver at a small NFE and with predictor–corrector, grids side by side;
3. reports the test-set NLL in bits/dim through the probability-flow ODE, with its standard error and
   NFE, next to the DDPM bound (the ``likelihood`` command);
4. runs a step-count benchmark of five solvers at NFE 5, 10, 20, 50, scored by the Fréchet distance
   and KID on the features of a classifier trained on the digits' training split (the ``bench``
   command);
5. writes ``report.md`` in the run directory (``runs/demo_digits``) with the images and plots.

``python -m sde_diffusion.app.demo [--workdir DIR]``; delete the directory to train from scratch.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from sde_diffusion.app.build import build_sde, draw_samples
from sde_diffusion.app.config import apply_overrides, load_config
from sde_diffusion.app.evaluate import bench_command, likelihood_command
from sde_diffusion.app.plotting import image_grids_png
from sde_diffusion.app.train import init_state, train, train_step
from sde_diffusion.app.workdir import load_score_fn, write_samples
from sde_diffusion.data import datasets
from sde_diffusion.evaluation.benchmark import BenchmarkResult
from sde_diffusion.training import losses

CONFIG = "configs/vp/digits.py"
#: The fast solver of the sample grids.
FAST_SOLVER = "dpm_solver_pp"
#: Wall time of the stages after training, in units of one training step timed at the start
#: (measured on a 2-core CPU; the ratio carries over to a busier or faster CPU, where both scale).
STAGE_COST = {"samples": 250.0, "likelihood": 1100.0, "bench": 1250.0, "report": 5.0}
#: Training's cost per step in the same units (the snapshots every 500 steps add about 10%).
TRAIN_COST = 1.1


@dataclass(frozen=True)
class Plan:
    """What the demo runs; the defaults are ``make demo`` (tests run a smaller plan)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    n_samples: int = 64
    fast_steps: int = 9
    nll_points: Optional[int] = None
    elbo_terms: int = 100
    nll_tol: float = 1e-3
    bench_methods: tuple[str, ...] = ("dpm_solver_pp", "unipc", "heun", "ddim", "euler_maruyama")
    bench_nfe: tuple[int, ...] = (5, 10, 20, 50)
    bench_samples: int = 500


def calibrate(config: Any) -> float:
    """Seconds of one training step (``train.train_step``: loss, backward, optimiser, EMA) of the
    config's model and batch, on a throwaway state (the median of three after a warm-up)."""
    state = init_state(config)
    loss_fn = losses.get_loss_fn(build_sde(config), config.training)
    x = datasets.get_dataset(config.data)[0][: config.training.batch_size].to(config.device)
    times = []
    for _ in range(4):
        start = time.perf_counter()
        train_step(state, loss_fn, x, config.optim, config.training.n_iters)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[1]


class Stages:
    """Prints each stage as it starts and records its wall time."""

    def __init__(self, total: int) -> None:
        self.total, self.seconds, self.start = total, {}, time.perf_counter()

    def run(self, name: str, title: str, fn: Any, *args: Any) -> Any:
        print(f"\n[{len(self.seconds) + 1}/{self.total}] {title}  ({time.perf_counter() - self.start:.0f} s elapsed)", flush=True)
        start = time.perf_counter()
        out = fn(*args)
        self.seconds[name] = time.perf_counter() - start
        return out


def sample_grids(config: Any, workdir: str, plan: Plan) -> dict[str, Any]:
    """``plan.n_samples`` samples with ``FAST_SOLVER`` at ``plan.fast_steps`` steps and with the
    config's predictor–corrector sampler, from the same seed; one PNG with both grids."""
    sde, score_fn = load_score_fn(config, workdir)
    panels, out = [], {}
    fast = apply_overrides(config, {"sampling.method": FAST_SOLVER, "sampling.steps": plan.fast_steps})
    for tag, cfg in (("fast", fast), ("pc", config)):
        start = time.perf_counter()
        x, nfe = draw_samples(cfg, sde, score_fn, plan.n_samples, config.seed, progress=True)
        seconds = time.perf_counter() - start
        label = f"{cfg.sampling.method}, {nfe} NFE, {seconds:.1f} s"
        write_samples(os.path.join(workdir, "samples", f"demo_{tag}"), x, label)
        panels.append((label, x.clamp(0, 1)))
        out[tag] = {"method": cfg.sampling.method, "nfe": nfe, "seconds": seconds}
    out["png"] = image_grids_png(os.path.join(workdir, "samples", "demo_side_by_side.png"), panels)
    return out


def likelihood(config: Any, workdir: str, plan: Plan) -> dict[str, float]:
    """The ``likelihood`` command on the test set: Hutchinson's trace (one Rademacher probe per
    image; its noise is inside the standard error) at rtol = atol = ``plan.nll_tol``, and the DDPM
    bound from ``plan.elbo_terms`` Monte-Carlo terms."""
    n = plan.nll_points or datasets.get_dataset(config.data)[1].shape[0]
    overrides = {
        "eval.n_samples": n, "eval.batch_size": n, "eval.trace": "hutchinson", "eval.rtol": plan.nll_tol,
        "eval.atol": plan.nll_tol, "eval.elbo": True, "eval.elbo_terms": plan.elbo_terms,
    }
    return likelihood_command(apply_overrides(config, overrides), workdir)


def benchmark(config: Any, workdir: str, plan: Plan) -> BenchmarkResult:
    """The ``bench`` command: ``plan.bench_methods`` at ``plan.bench_nfe``, ``plan.bench_samples``
    samples per row, FD and KID against the test set, without the reference solution."""
    overrides = {
        "bench.methods": plan.bench_methods, "bench.nfe_grid": plan.bench_nfe, "bench.n_samples": plan.bench_samples,
        "bench.reference_tol": None,
    }
    return bench_command(apply_overrides(config, overrides), workdir)


def fd_table(result: BenchmarkResult) -> list[str]:
    """FD by method (rows) and NFE (columns) as aligned text."""
    nfes = sorted({r.nfe for r in result.rows})
    methods = sorted({r.method for r in result.rows})
    fd = {(r.method, r.nfe): r.fd for r in result.rows}
    lines = [f"{'FD at NFE':<16}" + "".join(f"{n:>9}" for n in nfes)]
    lines += [f"{m:<16}" + "".join(f"{fd[(m, n)]:>9.2f}" if (m, n) in fd else f"{'':>9}" for n in nfes) for m in methods]
    return lines


def next_commands(workdir: str) -> list[str]:
    return [
        "train another SDE:   python -m sde_diffusion train --config configs/ve/digits.py --workdir runs/ve_digits",
        f"change the solver:   python -m sde_diffusion sample --config {CONFIG} --workdir {workdir} --config.sampling.method=unipc --config.sampling.steps=20",
        f"full benchmark:      python -m sde_diffusion bench --config {CONFIG} --workdir {workdir} --config.bench.n_samples=1000",
        f"TensorBoard:         tensorboard --logdir {os.path.join(workdir, 'tensorboard')}",
    ]


def write_report(workdir: str, facts: dict[str, Any]) -> str:
    """``workdir/report.md``: what ran, the sample grids, the likelihoods, the benchmark plot and
    table, the stage times and the next commands; images by paths relative to the report."""
    s, nll, result = facts["samples"], facts["likelihood"], facts["bench"]
    p = result.problem
    rel = lambda path: os.path.relpath(path, workdir)  # noqa: E731
    rows = sorted(result.rows, key=lambda r: (r.method, r.nfe))
    lines = [
        "# sde-diffusion demo report",
        "",
        f"A VP-SDE score model (U-Net, {facts['parameters'] / 1e6:.2f} M parameters) trained for {facts['steps']} steps on "
        f"scikit-learn's 8×8 digits ({facts['n_train']} training, {facts['n_test']} test images), config `{CONFIG}`, "
        f"on the CPU ({facts['threads']} threads); training took {facts['seconds']['train']:.0f} s in this run (a run already "
        "trained in the workdir is reused).",
        "",
        "## Samples",
        "",
        f"Left: `{s['fast']['method']}` at {s['fast']['nfe']} network evaluations (NFE). Right: predictor–corrector "
        f"(Euler–Maruyama + Langevin) at {s['pc']['nfe']} NFE. Same seed.",
        "",
        f"![samples]({rel(s['png'])})",
        "",
        "## Test-set likelihood",
        "",
        "| estimate | bits/dim | NFE |",
        "|---|---|---|",
        f"| NLL through the probability-flow ODE (uniform dequantisation, Hutchinson trace) | {nll['bpd']:.3f} ± {nll['bpd_se']:.3f} | {nll['nfe']:.0f} |",
        f"| DDPM bound (ELBO, {facts['elbo_terms']} Monte-Carlo terms of the 1000-step chain) | {nll['elbo_bpd']:.3f} ± {nll['elbo_bpd_se']:.3f} | {facts['elbo_terms']} |",
        "",
        f"Both in bits per dimension of the discrete 17-level pixels, over all {nll['n']} test images (D = {nll['dim']}), "
        "± one standard error over images (it includes the Monte-Carlo noise of the trace and of the bound's terms). "
        "Both are upper bounds on the model's discrete NLL (the ODE one through the dequantised density, Theis et al. 2016); "
        "the lower is the tighter.",
        "",
        "## Step-count benchmark",
        "",
        f"{len({r.method for r in rows})} solvers at NFE {', '.join(str(n) for n in sorted({r.nfe for r in rows}))}, "
        f"{p['n']} samples each, against the {p.get('features_n_reference')} test images. FD and KID are computed on the "
        f"{p.get('features_feature_dim')}-d penultimate features of a small classifier trained on the training split "
        f"(test accuracy {p.get('features_test_accuracy', float('nan')):.3f}); they rank samplers of this model but are "
        "not comparable with a published FID. Dashed lines: "
        f"{p.get('n_floor')} training images scored as if they were samples (FD {p.get('fd_floor', float('nan')):.2f}, "
        f"KID {p.get('kid_floor', float('nan')):.2f}).",
        "",
        f"![benchmark]({rel(facts['bench_plot'])})",
        "",
        "| method | NFE | FD | KID ± SE | seconds |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.method} | {r.nfe} | {r.fd:.2f} | {r.kid:.2f} ± {r.kid_se:.2f} | {r.seconds:.1f} |" for r in rows]
    lines += ["", f"Full table: [{rel(facts['bench_table'])}]({rel(facts['bench_table'])}).", "", "## Time", ""]
    lines += ["| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in facts["seconds"].items()]
    lines += ["", f"Load average at the start: {facts['load'][0]:.1f} (1 min), at the end: {facts['load'][1]:.1f}.", ""]
    lines += ["## Next", "", "```"] + next_commands(workdir) + ["```", ""]
    path = os.path.join(workdir, "report.md")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    return path


def main(workdir: str = "runs/demo_digits", plan: Plan = Plan()) -> dict[str, Any]:
    config = load_config(CONFIG, plan.overrides)
    load = [os.getloadavg()[0]]
    step = calibrate(config)
    estimate = step * (TRAIN_COST * config.training.n_iters + sum(STAGE_COST.values()))
    print(
        f"sde-diffusion demo: train a VP-SDE on the 8×8 digits, sample, likelihood, step-count benchmark.\n"
        f"This takes about {estimate / 60:.1f} minutes here (one training step took {step * 1000:.0f} ms;"
        f" load average {load[0]:.1f}); everything goes to {workdir}/.",
        flush=True,
    )
    stages = Stages(5)
    facts: dict[str, Any] = {"elbo_terms": plan.elbo_terms, "threads": torch.get_num_threads()}
    state = stages.run("train", f"training {config.training.n_iters} steps", train, config, workdir)
    facts.update(steps=state.step, parameters=sum(p.numel() for p in state.model.parameters()))
    train_data, test_data = datasets.get_dataset(config.data)
    facts.update(n_train=train_data.shape[0], n_test=test_data.shape[0])
    facts["samples"] = stages.run("samples", f"sampling: {FAST_SOLVER} at {plan.fast_steps} steps and predictor–corrector", sample_grids, config, workdir, plan)
    facts["likelihood"] = stages.run("likelihood", "test-set likelihood (probability-flow ODE) and the DDPM bound", likelihood, config, workdir, plan)
    facts["bench"] = stages.run("bench", f"step-count benchmark: {len(plan.bench_methods)} solvers × NFE {plan.bench_nfe}", benchmark, config, workdir, plan)
    facts.update(bench_plot=os.path.join(workdir, "bench", "quality_vs_nfe.png"), bench_table=os.path.join(workdir, "bench", "table.md"))
    load.append(os.getloadavg()[0])
    facts["seconds"], facts["load"] = stages.seconds, load
    report = stages.run("report", "report", write_report, workdir, facts)
    print_summary(facts, report, workdir, time.perf_counter() - stages.start)
    return facts


def print_summary(facts: dict[str, Any], report: str, workdir: str, total: float) -> None:
    s, nll = facts["samples"], facts["likelihood"]
    print("\n" + "=" * 88)
    print(f"trained    VP SDE, U-Net {facts['parameters'] / 1e6:.2f} M parameters, {facts['steps']} steps on {facts['n_train']} digits: {facts['seconds']['train']:.0f} s")
    print(f"samples    {s['fast']['method']} {s['fast']['nfe']} NFE ({s['fast']['seconds']:.1f} s) | predictor-corrector {s['pc']['nfe']} NFE ({s['pc']['seconds']:.1f} s): {s['png']}")
    print(f"test NLL   {nll['bpd']:.3f} ± {nll['bpd_se']:.3f} bits/dim (probability-flow ODE, {nll['nfe']:.0f} NFE, {nll['n']} images);"
          f" DDPM bound {nll['elbo_bpd']:.3f} ± {nll['elbo_bpd_se']:.3f}")
    p = facts["bench"].problem
    print(f"benchmark  Fréchet distance on classifier features ({p['n']} samples; training images score {p.get('fd_floor', float('nan')):.2f}):")
    for line in fd_table(facts["bench"]):
        print("           " + line)
    print(f"report     {report}")
    print(f"time       {total / 60:.1f} min (load average {facts['load'][0]:.1f} at the start, {facts['load'][1]:.1f} at the end)")
    print("next")
    for line in next_commands(workdir):
        print("           " + line)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/demo_digits")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args().workdir)
