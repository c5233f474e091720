"""Step-count benchmark on an analytic target with its exact score (``sde_diffusion.evaluation.benchmark``).

    python benchmarks/steps.py                               # 2-D ring, VP, full grid, 4000 samples
    python benchmarks/steps.py --plot docs/steps_ring_vp.png # ... and the README's plot
    python benchmarks/steps.py --sigma-start 80 --sigma-end 0.002 --methods heun dpm_solver_pp
    python benchmarks/steps.py --quick                       # smoke run in seconds
    python benchmarks/steps.py --target digits --n 1000 --reference-tol 1e-6 --nfe-grid 5 10 20 50 100 \
        --methods dpm_solver_pp unipc heun ddim euler_maruyama   # 8×8 digit images: FD and KID columns

Writes ``table.md``, ``table.csv`` and ``quality_vs_nfe.png`` to ``--out`` (default
``benchmarks/results/<target>_<sde>``). Wall times are per call on one thread; compare them only
between rows of one run on a quiet machine.

The ``digits`` target is an image law with an exact score: narrow Gaussians (std half a grey level) at
the first 200 training digits in model space. Its rows add the Fréchet distance and KID against the
digits' test set on the features of a classifier trained on their training split (cached in the
output directory), with exact samples of the mixture as the floor.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, Optional

import torch

from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import SDES, get_sde
from sde_diffusion.core.targets import anisotropic, ring
from sde_diffusion.data import datasets
from sde_diffusion.evaluation.benchmark import NFE_GRID, TOLERANCES, Benchmark, mixture_problem, write_report
from sde_diffusion.evaluation.features import FeatureNetSettings, feature_fn, load_or_train_feature_net
from sde_diffusion.evaluation.image_metrics import ImageMetrics

#: The digits as the data layer loads them (centred to (-1, 1), the default split).
DIGITS = SimpleNamespace(dataset="digits", centered=True, seed=0, test_fraction=0.2)
#: Components of the digit mixture (each costs B·D² per score evaluation).
DIGIT_COMPONENTS = 200


def digit_mixture() -> GaussianMixture:
    """Narrow Gaussians N(x_k, (Δ/2)² I) at the first ``DIGIT_COMPONENTS`` training digits x_k, Δ the bin
    width of a grey level, equally weighted, in the 64-d model space."""
    train = datasets.get_dataset(DIGITS)[0][:DIGIT_COMPONENTS].reshape(DIGIT_COMPONENTS, -1).to(torch.float64)
    cov = (datasets.bin_width(DIGITS) / 2) ** 2 * torch.eye(train.shape[1], dtype=torch.float64)
    return GaussianMixture(torch.ones(DIGIT_COMPONENTS), train, cov.expand(DIGIT_COMPONENTS, -1, -1).clone())


def digit_metrics(out_dir: str) -> ImageMetrics:
    """FD and KID against the digits' test set on the features of the classifier trained on their
    training split (cached as ``out_dir/feature_classifier.pt``); flat samples are reshaped to 8×8
    images and rounded to the grey levels, as the data are stored."""
    train, test = datasets.get_dataset(DIGITS)
    train_labels, test_labels = datasets.get_labels(DIGITS)
    net, info = load_or_train_feature_net(
        os.path.join(out_dir, "feature_classifier.pt"), train, train_labels, test, test_labels, num_classes=10,
        settings=FeatureNetSettings(jitter=datasets.bin_width(DIGITS)), log=print,
    )
    quantize = datasets.get_quantizer(DIGITS)
    return ImageMetrics(feature_fn(net), test, preprocess=lambda x: quantize(x.reshape(-1, *test.shape[1:])), info=info)


TARGETS = Registry("analytic target")
TARGETS.register("ring")(ring)
TARGETS.register("anisotropic")(anisotropic)
TARGETS.register("digits")(digit_mixture)

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
    out_dir = args.out or os.path.join("benchmarks", "results", name)
    target = TARGETS.get(args.target)()
    images: dict[str, Any] = {}
    if args.target == "digits":
        floor = target.sample(args.n, torch.Generator().manual_seed(args.seed + 3))
        images = {"image_metrics": digit_metrics(out_dir), "floor_samples": floor}
    problem = mixture_problem(
        target, get_sde(args.sde), sigma_start=args.sigma_start, sigma_end=args.sigma_end,
        eps=args.eps, n=args.n, seed=args.seed, denoise=args.denoise, name=name, **images,
    )
    bench = Benchmark(problem, reference_tol=args.reference_tol)
    result = bench.sweep(args.methods, nfe_grid=args.nfe_grid, tolerances=args.tolerances, log=lambda line: print(line, flush=True))
    paths = write_report(result, out_dir, plot_path=args.plot)
    for path in paths.values():
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
