"""The ``likelihood`` and ``bench`` commands of the CLI and the config groups they read.

``python -m sde_diffusion likelihood --config ... --workdir ...`` prints the test NLL of the trained
run in nats and bits/dim with standard errors and NFE and writes ``eval/likelihood_<dataset>.json``
(``likelihood_command``);
``python -m sde_diffusion bench ...`` runs the step-count benchmark on it (``bench_command``). The
work is done by ``evaluate_likelihood`` and ``sde_diffusion.evaluation.benchmark``, which take any score
function, so the exact scores of analytic mixtures exercise the same code. Under torchrun both split
their samples across the processes (``sde_diffusion.core.distributed``) and rank 0 prints and writes.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import ml_collections
import torch
from tqdm.auto import tqdm

from sde_diffusion.app.pretrained import load_source
from sde_diffusion.app.resources import check_memory
from sde_diffusion.app.workdir import lock_path, main_locked, provenance
from sde_diffusion.core import distributed
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.targets import ring
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.data import datasets
from sde_diffusion.data.datasets import dequantize
from sde_diffusion.evaluation.benchmark import (
    Benchmark,
    BenchmarkResult,
    Problem,
    time_of_noise_level,
    write_report,
)
from sde_diffusion.evaluation.elbo import vlb
from sde_diffusion.evaluation.features import (
    FeatureNetSettings,
    feature_fn,
    inception_features,
    load_or_train_feature_net,
)
from sde_diffusion.evaluation.image_metrics import ImageMetrics
from sde_diffusion.evaluation.likelihood import bits_per_dim, log_likelihood

#: Toy data sets that are analytic mixtures: the benchmark adds mode, spread and true-density columns.
ANALYTIC_TARGETS = {"ring": ring}


def evaluate_likelihood(
    sde: LinearSDE,
    score_fn: ScoreFn,
    data: torch.Tensor,
    *,
    levels: Optional[int] = None,
    low: float = 0.0,
    high: float = 1.0,
    batch_size: int = 500,
    repeats: int = 1,
    seed: int = 0,
    elbo: bool = False,
    elbo_terms: Optional[int] = None,
    progress: bool = False,
    **ode_options: Any,
) -> dict[str, float]:
    """Mean test NLL of ``data`` through the PF-ODE (``log_likelihood`` with ``ode_options``).

    Quantised data (``levels`` bins tiling [low, high], values at the bin centres) are dequantised
    uniformly over their bins (``datasets.dequantize``) ``repeats`` times and reported in bits/dim of the discrete data
    (``bits_per_dim``); continuous data in bits/dim of the density, -log p/(D ln 2). Standard errors
    are over test points (of each point's mean over repeats). With ``elbo`` the DDPM bound
    (``elbo.vlb``) of the undequantised data is reported too: a bound on the same discrete NLL (the
    discretised decoder integrates over the same bins), or on the density.

    Under torchrun each process evaluates its contiguous block of ``data`` (``distributed.local_rows``)
    with its own seed (``distributed.rank_seed``); the per-point values are gathered after every
    process's last solve, and every process returns the report of all points. ``progress`` shows a
    bar over the test points (rank 0).
    """

    g = torch.Generator(device=data.device).manual_seed(distributed.rank_seed(seed))
    dim = data[0].numel()
    local = data[distributed.local_rows(data.shape[0])]
    batches = [local[s : s + batch_size] for s in range(0, local.shape[0], batch_size)]
    report: dict[str, float] = {"n": data.shape[0], "dim": dim}
    if elbo:
        bound = torch.cat([vlb(sde, score_fn, b, levels=levels, low=low, high=high, n_terms=elbo_terms, generator=g).nll for b in batches])
        bound = distributed.gather_cat(bound.detach().cpu().to(torch.float64))
        report.update(_summary("elbo_nll", bound), **_summary("elbo_bpd", bound / (dim * math.log(2))))
    width = (high - low) / levels if levels is not None else 0.0
    repeats = repeats if levels is not None else 1
    nll, nfe = torch.zeros(local.shape[0], dtype=torch.float64), []
    bar = tqdm(total=repeats * local.shape[0], desc="log-likelihood", unit="point", disable=not (progress and distributed.is_main()), dynamic_ncols=True)
    with bar:
        for _ in range(repeats):
            logps = []
            for batch in batches:
                logp, _, calls = log_likelihood(sde, score_fn, dequantize(batch, width, g), generator=g, **ode_options)
                logps.append(logp.detach().cpu().to(torch.float64))
                nfe.append(calls)
                bar.update(batch.shape[0])
            nll -= torch.cat(logps) / repeats
    nll, nfe = distributed.gather_cat(nll), sum(distributed.all_gather_objects(nfe), [])
    bpd = bits_per_dim(-nll, dim, levels, high - low) if levels is not None else nll / (dim * math.log(2))
    report.update(_summary("nll", nll), **_summary("bpd", bpd), nfe=sum(nfe) / len(nfe))
    return report


def _summary(name: str, values: torch.Tensor) -> dict[str, float]:
    """Mean and its standard error over test points."""
    se = float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else math.nan
    return {name: float(values.mean()), f"{name}_se": se}


def format_likelihood(report: dict[str, float]) -> str:
    lines = [
        f"test NLL over {report['n']} points (D = {report['dim']}): {report['nll']:.4f} ± {report['nll_se']:.4f} nats,"
        f" {report['bpd']:.4f} ± {report['bpd_se']:.4f} bits/dim; {report['nfe']:.1f} NFE per batch"
    ]
    if "elbo_nll" in report:
        lines.append(
            f"DDPM bound: {report['elbo_nll']:.4f} ± {report['elbo_nll_se']:.4f} nats, {report['elbo_bpd']:.4f} ± {report['elbo_bpd_se']:.4f} bits/dim"
        )
    return "\n".join(lines)


def _data_range(data_config: Any) -> tuple[Optional[int], float, float]:
    """(K, low, high) of quantised data in model space, (None, 0, 1) for continuous data."""

    width = datasets.bin_width(data_config)
    if width == 0.0:
        return None, 0.0, 1.0
    scaler = datasets.get_scaler(data_config)
    low, high = (float(scaler(torch.tensor(v))) for v in (0.0, 1.0))
    return round((high - low) / width), low, high


def likelihood_path(workdir: str, dataset: str) -> str:
    """``workdir/eval/likelihood_<dataset>.json``: one results file per evaluated data set, so that
    evaluating a run on another data set (e.g. out of distribution) never replaces its results."""
    return os.path.join(workdir, "eval", f"likelihood_{dataset}.json")


def likelihood_command(config: ml_collections.ConfigDict, workdir: str, pretrained: Optional[str] = None) -> dict[str, float]:
    """Test NLL of the trained run in ``workdir``, or of the ``pretrained`` diffusers directory
    (``config.eval``), on ``config.data``; printed and written to ``likelihood_path`` with the record
    of what produced it (``workdir.provenance``)."""

    run = load_source(config, workdir, pretrained)
    e = config.eval
    path = likelihood_path(workdir, config.data.dataset)
    main = distributed.is_main()
    if main and run.dataset not in (None, config.data.dataset):
        print(f"note: the run was trained on {run.dataset!r}; evaluating it on config.data.dataset={config.data.dataset!r}")
    test = datasets.held_out(config.data, e.n_samples).to(config.device)
    check_memory("eval.batch_size", min(e.batch_size, test.shape[0]), tuple(test.shape[1:]), config.device)
    levels, low, high = _data_range(config.data)
    options = dict(trace=e.trace, n_probes=e.n_probes, probe=e.probe, rtol=e.rtol, atol=e.atol, method=e.method, eps=e.eps)
    with main_locked(lock_path(workdir, f"likelihood_{config.data.dataset}"), "likelihood"):
        report = evaluate_likelihood(
            run.sde, run.score_fn, test, levels=levels, low=low, high=high, batch_size=e.batch_size, repeats=e.dequant_repeats,
            seed=config.seed, elbo=e.elbo, elbo_terms=e.elbo_terms, progress=True, **options,
        )
        if main:
            print(format_likelihood(report))
            meta = provenance(config, run, "likelihood", method=e.method, options=json.loads(e.to_json()))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                json.dump({**report, "produced_by": meta}, fh, indent=2)
            print(f"  wrote {path}")
    return report


# --- benchmark --------------------------------------------------------------------------------------
def bench_command(config: ml_collections.ConfigDict, workdir: str, pretrained: Optional[str] = None) -> BenchmarkResult:
    """The step-count benchmark on the trained run in ``workdir``, or on the ``pretrained`` diffusers
    directory (``config.bench``); the report goes to ``workdir/bench/`` with ``produced_by.json``. True
    samples are the test set; the data set's analytic mixture, if it has one, adds the mode, spread and
    true-density columns; image data add FD and KID (``build_image_metrics``), with training images as
    the floor."""

    run = load_source(config, workdir, pretrained)
    sde, score_fn = run.sde, run.score_fn
    b = config.bench
    test = datasets.held_out(config.data, b.n_samples).to(config.device)
    check_memory("bench.n_samples", b.n_samples, tuple(test.shape[1:]), config.device)
    target = ANALYTIC_TARGETS[config.data.dataset]() if config.data.dataset in ANALYTIC_TARGETS else None
    width = datasets.bin_width(config.data)
    metrics = build_image_metrics(config, workdir, log=print if distributed.is_main() else None)
    problem = Problem(
        sde=sde,
        score_fn=score_fn,
        shape=datasets.data_shape(config.data),
        target=target,
        true_samples=test,
        t_start=None if b.sigma_start is None else time_of_noise_level(sde, b.sigma_start),
        eps=b.eps if b.sigma_end is None else time_of_noise_level(sde, b.sigma_end),
        denoise=b.denoise,
        n=b.n_samples,
        seed=config.seed,
        dtype=torch.float32,
        device=config.device,
        fine_scale=b.fine_scale if b.fine_scale is not None else (width or None),
        log_density=_model_log_density(sde, score_fn, config) if b.nll_samples > 0 else None,
        log_density_label="model log-likelihood (PF-ODE)" if b.nll_samples > 0 else "true log-density",
        name=f"{config.data.dataset}, {sde!r}, {os.path.basename(os.path.normpath(pretrained or workdir))}",
        image_metrics=metrics,
        floor_samples=None if metrics is None else datasets.get_dataset(config.data)[0][: b.n_samples],
    )
    main = distributed.is_main()
    with main_locked(lock_path(workdir, "bench"), "bench"):
        result = Benchmark(problem, reference_tol=b.reference_tol).sweep(
            list(b.methods) or None, nfe_grid=b.nfe_grid, tolerances=b.tolerances, log=print if main else None
        )
        if main:
            out = os.path.join(workdir, "bench")
            paths = list(write_report(result, out).values())
            meta = provenance(config, run, "bench", methods=list(b.methods) or "all registered", options=json.loads(b.to_json()))
            paths.append(os.path.join(out, "produced_by.json"))
            with open(paths[-1], "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=2)
            for path in paths:
                print(f"  wrote {path}")
    return result


def build_image_metrics(config: ml_collections.ConfigDict, workdir: str, log: Optional[Any] = print) -> Optional[ImageMetrics]:
    """FD and KID against the test set for image data (``config.bench.image_metrics``), None for
    other data: on the FID Inception-v3 when ``bench.inception_weights`` is set, else on the feature
    classifier trained on the labelled training split, cached at ``<workdir>/eval/feature_classifier.pt``
    with its test accuracy (``features.load_or_train_feature_net``). Samples are first rounded to the
    data's grey levels (``datasets.get_quantizer``), as the data are stored."""
    train, test = datasets.get_dataset(config.data)
    quantize = datasets.get_quantizer(config.data)
    b = config.bench
    if not b.image_metrics or train.ndim != 4 or quantize is None:
        return None
    if b.inception_weights is not None:
        inverse = datasets.get_inverse_scaler(config.data)
        info = {"network": "FID Inception-v3", "layer": "pool3 (2048)", "weights": b.inception_weights}
        return ImageMetrics(inception_features(b.inception_weights, device=config.device), test, preprocess=lambda x: inverse(quantize(x)), info=info)
    num_classes = datasets.num_classes(config.data)
    if not num_classes:
        return None
    train_labels, test_labels = datasets.get_labels(config.data)
    path = os.path.join(workdir, "eval", "feature_classifier.pt") if distributed.is_main() else None
    net, info = load_or_train_feature_net(
        path, train, train_labels, test, test_labels, num_classes=num_classes,
        settings=FeatureNetSettings(jitter=datasets.bin_width(config.data)), log=log,
    )
    return ImageMetrics(feature_fn(net), test, preprocess=quantize, info=info)


def _model_log_density(sde: LinearSDE, score_fn: ScoreFn, config: ml_collections.ConfigDict):
    """``x -> log p_model(x)`` on the first ``bench.nll_samples`` of x (PF-ODE, ``config.eval``)."""
    e, k = config.eval, config.bench.nll_samples

    def log_density(x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device=x.device).manual_seed(config.seed)
        opts = dict(trace=e.trace, n_probes=e.n_probes, probe=e.probe, rtol=e.rtol, atol=e.atol, method=e.method, eps=e.eps)
        return log_likelihood(sde, score_fn, x[:k], generator=g, **opts)[0]

    return log_density
