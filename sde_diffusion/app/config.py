"""Experiment configs (ml_collections): the default config, which is also the schema, loading,
overrides and validation.

Groups, as score_sde users know them: ``training``, ``optim``, ``data``, ``model``, ``sde``,
``sampling``, ``eval``, ``bench`` (plus ``seed`` and ``device``). Three groups are generated from the
code so that every constructor argument and sampler option is reachable from the config and new ones
appear without editing this file:

* ``sde``: ``name`` plus the keyword arguments of that SDE's constructor (``sde_group``);
* ``model``: ``name`` plus the network's constructor arguments, ``parameterization`` and
  ``sigma_data`` among them (``model_group``);
* ``sampling``: ``method``, ``steps``, ``eps``, ``t_start``, ``n_samples``, ``class_label``,
  ``guidance_scale`` plus one group per registered sampling method holding its options, e.g.
  ``sampling.ode.rtol`` (``sampling_group``), generated from the method's declared spec, which also
  validates them.

``validate`` checks a config against this schema: an unknown field or a value of the wrong type or
outside its range raises ``ValueError`` naming the dotted path and what is allowed.
"""
from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import inspect
import math
import os
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import ml_collections
import torch
from ml_collections.config_dict import placeholder

import solvers
from sde_diffusion import models
from sde_diffusion.conditioning.guidance import ALL_CLASSES
from sde_diffusion.core.sde_lib import SDES, sde_from_config
from sde_diffusion.data import datasets
from sde_diffusion.evaluation.benchmark import NFE_GRID, TOLERANCES
from sde_diffusion.training import losses
from sde_diffusion.training.optim import OPTIMIZERS, SCHEDULES
from sde_diffusion.training.precision import PRECISIONS
from solvers.api import GENERAL_FIELDS

#: Fields of ``config.sampling`` besides the per-method groups.
SAMPLING_FIELDS = GENERAL_FIELDS + ("n_samples", "batch_size", "save_individual", "class_label", "guidance_scale")
#: Groups whose fields come from a registry, not from the default config.
GENERATED_GROUPS = ("sde", "model", "sampling")


# --- generated groups ------------------------------------------------------------------------------
def _kwargs_group(kind: str, obj: Callable[..., Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``obj`` (a class or function) with their defaults, updated by
    ``given``; an unknown name or a missing required argument raises ``ValueError``."""
    params = _keyword_params(obj)
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} for {kind}; allowed: {', '.join(params)}")
    out = {**params, **given}
    missing = [k for k, v in out.items() if v is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"{kind} needs a value for {', '.join(missing)}")
    return out


def _keyword_params(obj: Callable[..., Any]) -> dict[str, Any]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {
        name: p.default
        for name, p in inspect.signature(target).parameters.items()
        if name != "self" and p.kind not in skip
    }


def _config_value(value: Any) -> Any:
    """A config value; None becomes a placeholder so that it can still be overridden from the
    command line (ml_collections cannot override a plain None)."""
    if value is None:
        return placeholder(object)
    return tuple(value) if isinstance(value, list) else value


def _group(fields: Mapping[str, Any]) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({k: _config_value(v) for k, v in fields.items()})


def sde_group(name: str = "vp", **kwargs: Any) -> ml_collections.ConfigDict:
    """``config.sde``: the SDE's name and all its constructor arguments (defaults updated by kwargs)."""
    return _group({"name": name, **_kwargs_group(f"SDE {name!r}", SDES.get(name), kwargs)})


def model_group(name: str = "mlp", **kwargs: Any) -> ml_collections.ConfigDict:
    """``config.model``: the network's name and all its constructor arguments, which include
    ``parameterization`` and ``sigma_data`` (defaults updated by kwargs)."""
    return _group({"name": name, **_kwargs_group(f"model {name!r}", models.MODELS.get(name), kwargs)})


def sampling_group(
    method: str,
    steps: Optional[int] = None,
    eps: Optional[float] = None,
    t_start: Optional[float] = None,
    n_samples: int = 1000,
    class_label: Optional[int] = None,
    guidance_scale: float = 0.0,
    batch_size: int = 1000,
    save_individual: bool = False,
    **options: Any,
) -> ml_collections.ConfigDict:
    """``config.sampling``: the method, shared settings and one group per registered method holding
    its options with their defaults; ``options`` updates the chosen method's group. A class-conditional
    model samples ``class_label`` (None: unconditional; -1: every class, a grid row each) with
    classifier-free guidance weight ``guidance_scale`` (``sde_diffusion.conditioning.guidance``). The
    ``sample`` command draws ``n_samples`` in batches of ``batch_size`` and, with ``save_individual``,
    also writes one PNG per image."""
    methods = solvers.available()
    if method not in methods:
        raise ValueError(f"unknown sampling method {method!r}; known: {', '.join(sorted(methods))}")
    group = ml_collections.ConfigDict(
        {"method": method, "steps": placeholder(int), "eps": placeholder(float), "t_start": placeholder(float),
         "n_samples": n_samples,
         "batch_size": batch_size, "save_individual": save_individual, "class_label": placeholder(int),
         "guidance_scale": float(guidance_scale)}
    )
    group.steps, group.eps, group.t_start, group.class_label = steps, eps, t_start, class_label
    for name in methods:
        if name in SAMPLING_FIELDS:
            raise ValueError(f"sampling method name {name!r} clashes with the field sampling.{name}")
        group[name] = _group(solvers.METHODS.get(name).resolve(options if name == method else {}))
    return group


# --- the default config ----------------------------------------------------------------------------
def data_group(dataset: str = "ring", path: Optional[str] = None, **fields: Any) -> ml_collections.ConfigDict:
    """``config.data``: which data set and how to read it (``sde_diffusion.data.datasets``).

    dataset: a registered data set; path: its file or directory (folder, array, cifar10, mnist);
    n_train, n_test: sizes of the toy sets; centered: model space (-1, 1) rather than (0, 1);
    uniform_dequantization: a fresh uniform draw within each grey level's bin per batch;
    random_flip: mirror training images left–right with probability ½; seed, test_fraction: the
      held-out split of data sets without their own; image_size: side of the (square) images, to which
      a folder's images are resized and centre-cropped (None: the stored size); num_channels: 1 (grey)
      or 3 (RGB); value_range: [low, high] of float arrays; num_workers: DataLoader processes reading
      training batches (0: the training process).
    """
    group = ml_collections.ConfigDict(
        {"dataset": dataset, "path": placeholder(str), "n_train": 50000, "n_test": 5000, "centered": True,
         "uniform_dequantization": False, "random_flip": False, "seed": 0, "test_fraction": 0.2,
         "image_size": placeholder(int), "num_channels": 1, "value_range": (0.0, 1.0), "num_workers": 0}
    )
    group.path, group.image_size = path, 8
    group.update(fields)
    return group


def eval_config() -> ml_collections.ConfigDict:
    """``config.eval``: the ``likelihood`` command's settings.

    batch_size, n_samples: test points per ODE solve, and how many test points (the first ones);
    trace, n_probes, probe, rtol, atol, method, eps: ``likelihood.log_likelihood``'s arguments;
    dequant_repeats: dequantisation draws per test point of quantised data (averaged per point);
    elbo: also report the DDPM bound (SDEs with a DDPM chain); elbo_terms: its diffusion terms per
      sample (None: all N, exact sum; m: unbiased Monte-Carlo estimate from m terms).
    """
    return ml_collections.ConfigDict(
        {
            "batch_size": 500,
            "n_samples": 2000,
            "trace": "exact",
            "n_probes": 1,
            "probe": "rademacher",
            "rtol": 1e-5,
            "atol": 1e-5,
            "method": "dopri5",
            "eps": 1e-5,
            "dequant_repeats": 1,
            "elbo": False,
            "elbo_terms": placeholder(int),
        }
    )


def bench_config() -> ml_collections.ConfigDict:
    """``config.bench``: the ``bench`` command's settings.

    methods: method specs (``"name"`` or ``"name:key=value,..."``; empty: all registered methods);
    nfe_grid, tolerances: the fixed-step and adaptive sweeps; n_samples: samples per row;
    sigma_start, sigma_end: the interval as noise levels σ/α (None: from T, and to ``eps``);
    eps: end time when sigma_end is None (None: the SDE's default); denoise: final Tweedie step;
    fine_scale: the data's finest scale for the noise-level warning (None: the analytic target's, or
      the bin width of quantised data); reference_tol: tolerance of the reference PF-ODE solution
      (1e-6: a float32 network's round-off stops tighter tolerances from converging);
    nll_samples: samples per row whose model log-likelihood is reported (0: off; each costs an ODE
      solve with ``config.eval``'s settings); reference_tol None: no reference solution and no
      distance columns;
    image_metrics: FD and KID against the test set for labelled image data, on the features of a
      classifier trained on the training split (cached in ``<workdir>/eval/``), or on the FID
      Inception-v3 when inception_weights names its weights file (torch-fidelity's
      ``weights-inception-2015-12-05-6726825d.pth``; never downloaded).
    """
    return ml_collections.ConfigDict(
        {
            "methods": (),
            "nfe_grid": NFE_GRID,
            "tolerances": TOLERANCES,
            "n_samples": 4000,
            "sigma_start": placeholder(float),
            "sigma_end": placeholder(float),
            "eps": placeholder(float),
            "denoise": True,
            "fine_scale": placeholder(float),
            "reference_tol": 1e-6,
            "nll_samples": 0,
            "image_metrics": True,
            "inception_weights": placeholder(str),
        }
    )


# --- likelihood -------------------------------------------------------------------------------------


def get_default_config() -> ml_collections.ConfigDict:
    """Defaults for every group: a VP SDE and a residual MLP on the 2-D ring, trained on the CPU,
    sampled by predictor–corrector: an MLP of 2 blocks of 128 with sinusoidal noise-level features, the
    stable-target loss 'stf' with the batch of 1024 as its own reference, lr 8e-3 decayed to 0 by a
    cosine over 4500 steps (the README's training section says how this recipe was chosen)."""
    config = ml_collections.ConfigDict()
    config.seed = 42
    config.device = "cpu"
    config.sde = sde_group("vp")
    config.model = model_group("mlp", dim=2, hidden=128, num_blocks=2, embedding_type="sinusoidal", embedding_dim=32)

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 1024
    training.reference_batch_size = 0
    training.n_iters = 4500
    training.loss = "stf"
    training.weighting = "sigma2"
    training.importance_sampling = False
    training.reduce = "mean"
    training.eps = 1e-5
    training.cond_drop_prob = 0.0
    training.ema_rate = 0.999
    training.log_freq = 50
    training.snapshot_freq = 1000
    training.keep_checkpoints = 3
    training.sample_freq = 2000
    training.n_snapshot_samples = 1000
    training.progress = True
    training.precision = "fp32"
    training.compile = False
    training.channels_last = False

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "adam"
    optim.lr = 8e-3
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 100
    optim.schedule = "cosine"
    optim.grad_clip = 1.0

    config.data = data_group()

    config.sampling = sampling_group("pc", n_samples=2000)

    config.eval = eval_config()
    config.bench = bench_config()
    return config


def get_digits_config() -> ml_collections.ConfigDict:
    """The defaults for scikit-learn's 8×8 digits: a small U-Net (0.65 M parameters), data centred
    to (-1, 1), 1500 steps of batch 64 at a constant lr 4e-3 (a few minutes on a 2-core CPU;
    recognisable digits from about 1000 steps on), a 16-sample snapshot every 500 steps."""
    config = get_default_config()
    config.data = data_group("digits")
    config.model = model_group("unet", image_size=8, num_channels=1, nf=32, ch_mult=(1, 2), num_res_blocks=1, dropout=0.0)
    config.training.loss = "dsm"
    config.training.batch_size = 64
    config.training.n_iters = 1500
    config.optim.lr, config.optim.schedule = 4e-3, "constant"
    config.training.snapshot_freq = 500
    config.training.sample_freq = 500
    config.training.n_snapshot_samples = 16
    config.sampling.n_samples = 64
    return config


#: score_sde's per-SDE CIFAR-10 choices: (data centred to (-1, 1), EMA rate, PC predictor, corrector).
CIFAR10_SDE_SETTINGS = {
    "vp": (True, 0.9999, "euler_maruyama", "none"),
    "subvp": (True, 0.9999, "euler_maruyama", "none"),
    "ve": (False, 0.999, "reverse_diffusion", "langevin"),
}


def cifar10_model_group(**kwargs: Any) -> ml_collections.ConfigDict:
    """score_sde's DDPM++ CIFAR-10 network: the U-Net on 32×32 RGB with nf = 128, ch_mult (1, 2, 2, 2),
    4 residual blocks per level, attention at 16×16, dropout 0.1 (kwargs override)."""
    return model_group("unet", **{"image_size": 32, "num_channels": 3, "nf": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 4,
                                  "attn_resolutions": (16,), "dropout": 0.1, **kwargs})


def get_cifar10_config(sde: str = "vp") -> ml_collections.ConfigDict:
    """CIFAR-10 (32×32 RGB) after score_sde's DDPM++ (continuous) settings (Song et al. 2021, App. H):
    the U-Net of ``cifar10_model_group``; DSM with σ² weighting and mean reduction, batch 128, Adam lr 2e-4
    with 5000 warm-up steps and gradient clipping at 1, random flips; per ``CIFAR10_SDE_SETTINGS`` the
    data range, EMA rate and PC sampler; VE has σ ∈ [0.01, 50]. The data are CIFAR-10's python-version
    directory at ``data.path``."""
    centered, ema_rate, predictor, corrector = CIFAR10_SDE_SETTINGS[sde]
    config = get_default_config()
    config.data = data_group("cifar10", image_size=32, num_channels=3, random_flip=True, centered=centered)
    config.model = cifar10_model_group()
    config.sde = sde_group(sde, sigma_min=0.01, sigma_max=50.0, N=1000) if sde == "ve" else sde_group(sde, beta_min=0.1, beta_max=20.0, N=1000)
    config.training.loss, config.training.weighting, config.training.reduce = "dsm", "sigma2", "mean"
    config.training.batch_size, config.training.n_iters, config.training.ema_rate = 128, 1300000, ema_rate
    config.training.snapshot_freq, config.training.sample_freq, config.training.n_snapshot_samples = 50000, 50000, 64
    config.optim.lr, config.optim.schedule, config.optim.warmup, config.optim.grad_clip = 2e-4, "constant", 5000, 1.0
    config.sampling = sampling_group("pc", n_samples=64, predictor=predictor, corrector=corrector, snr=0.16)
    config.eval.batch_size, config.eval.n_samples = 100, 1000
    return config


# --- validation ------------------------------------------------------------------------------------
#: A value rule: None when the value is allowed, else a description of what is allowed.
Rule = Callable[[Any], Optional[str]]


def _int_at_least(lo: int) -> Rule:
    return lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= lo else f"an integer >= {lo}"


def _interval(lo: float, hi: float, lo_open: bool = False, hi_open: bool = True) -> Rule:
    text = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def rule(v: Any) -> Optional[str]:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return text
        inside = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if inside else text

    return rule


def _one_of(names: Callable[[], list[str]]) -> Rule:
    return lambda v: None if v in names() else "one of " + ", ".join(names())


def _optional(rule: Rule) -> Rule:
    return lambda v: None if v is None or rule(v) is None else f"None or {rule(v)}"


def _device(value: Any) -> Optional[str]:
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        return "a torch device string such as 'cpu' or 'cuda:0'"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"'cpu' (this machine has no usable CUDA device: torch {torch.__version__}, CUDA build {torch.version.cuda})"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"'cuda' or 'cuda:0' .. 'cuda:{torch.cuda.device_count() - 1}' (this machine has {torch.cuda.device_count()} GPU(s))"
    return None


def _increasing_pair(value: Any) -> Optional[str]:
    finite = _interval(-math.inf, math.inf, lo_open=True)
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(finite(v) is None for v in value) and value[0] < value[1]
    return None if ok else "two finite numbers (low, high) with low < high"


POSITIVE = _interval(0.0, math.inf, lo_open=True)
NON_NEGATIVE = _interval(0.0, math.inf)
UNIT = _interval(0.0, 1.0)

#: Value rules by dotted path; names are checked against the live registries.
RULES: dict[str, Rule] = {
    "seed": _int_at_least(0),
    "device": _device,
    "training.batch_size": _int_at_least(1),
    "training.reference_batch_size": _int_at_least(0),
    "training.n_iters": _int_at_least(1),
    "training.loss": _one_of(losses.LOSSES.names),
    "training.weighting": _one_of(losses.WEIGHTINGS.names),
    "training.reduce": _one_of(lambda: list(losses.REDUCTIONS)),
    "training.eps": _interval(0.0, 1.0, lo_open=True),
    "training.cond_drop_prob": _interval(0.0, 1.0),
    "training.ema_rate": UNIT,
    "training.log_freq": _int_at_least(1),
    "training.snapshot_freq": _int_at_least(1),
    "training.keep_checkpoints": _int_at_least(1),
    "training.sample_freq": _int_at_least(0),
    "training.n_snapshot_samples": _int_at_least(1),
    "training.precision": _one_of(PRECISIONS.names),
    "optim.optimizer": _one_of(OPTIMIZERS.names),
    "optim.lr": POSITIVE,
    "optim.beta1": UNIT,
    "optim.beta2": UNIT,
    "optim.eps": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.warmup": _int_at_least(0),
    "optim.schedule": _one_of(SCHEDULES.names),
    "optim.grad_clip": NON_NEGATIVE,
    "data.dataset": _one_of(datasets.DATASETS.names),
    "data.n_train": _int_at_least(1),
    "data.n_test": _int_at_least(1),
    "data.test_fraction": _interval(0.0, 1.0, lo_open=True),
    "data.image_size": _optional(_int_at_least(1)),
    "data.num_channels": _int_at_least(1),
    "data.num_workers": _int_at_least(0),
    "data.value_range": _increasing_pair,
    "sde.name": _one_of(SDES.names),
    "model.name": _one_of(models.MODELS.names),
    "sampling.method": _one_of(lambda: sorted(solvers.available())),
    "sampling.steps": _optional(_int_at_least(1)),
    "sampling.eps": _optional(_interval(0.0, 1.0)),
    "sampling.t_start": _optional(_interval(0.0, 1.0, lo_open=True, hi_open=False)),
    "sampling.n_samples": _int_at_least(1),
    "sampling.batch_size": _int_at_least(1),
    "sampling.class_label": _optional(_int_at_least(ALL_CLASSES)),
    "sampling.guidance_scale": _interval(-math.inf, math.inf, lo_open=True),
    "eval.batch_size": _int_at_least(1),
    "eval.n_samples": _int_at_least(1),
    "eval.n_probes": _int_at_least(1),
    "eval.rtol": POSITIVE,
    "eval.atol": POSITIVE,
    "eval.eps": _interval(0.0, 1.0, lo_open=True),
    "eval.dequant_repeats": _int_at_least(1),
    "eval.elbo_terms": _optional(_int_at_least(1)),
    "bench.n_samples": _int_at_least(1),
    "bench.reference_tol": POSITIVE,
    "bench.nll_samples": _int_at_least(0),
}


def validate(config: ml_collections.ConfigDict, *, training: bool = True) -> ml_collections.ConfigDict:
    """Check ``config`` against the schema; return it unchanged or raise ``ValueError`` naming the
    first bad field (its dotted path) and what is allowed there. ``training=False`` (the commands that
    only read a trained run) skips building the training loss to check its coupling with the SDE."""
    _check_fields(config, get_default_config(), "")
    for path, rule in RULES.items():
        value = _get(config, path)
        allowed = rule(value)
        if allowed is not None:
            raise ValueError(f"bad value {value!r} for config.{path}; allowed: {allowed}")
    _check_generated(config, training)
    return config


def _check_fields(config: Any, schema: ml_collections.ConfigDict, prefix: str) -> None:
    """Unknown/missing fields and types of the fixed groups, recursively."""
    if not isinstance(config, (ml_collections.ConfigDict, dict)):
        raise ValueError(f"config.{prefix.rstrip('.')} must be a group of fields, got {config!r}")
    keys, allowed = set(config.keys()), set(schema.keys())
    if keys - allowed:
        where = f"config.{prefix.rstrip('.')}" if prefix else "the top level of the config"
        raise ValueError(f"unknown field config.{prefix}{sorted(keys - allowed)[0]}; allowed in {where}: {', '.join(sorted(allowed))}")
    if allowed - keys:
        raise ValueError(f"missing field config.{prefix}{sorted(allowed - keys)[0]}")
    for key in sorted(keys):
        path = prefix + key
        if path in GENERATED_GROUPS:
            continue
        if isinstance(schema[key], ml_collections.ConfigDict):
            _check_fields(config[key], schema[key], path + ".")
        else:
            _check_type(config[key], schema.get_type(key), path)


def _check_type(value: Any, expected: type, path: str) -> None:
    if expected is object or value is None:
        return
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if expected is tuple and isinstance(value, list):
        return
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"config.{path} must be of type {expected.__name__}, got {value!r}")


def _check_generated(config: ml_collections.ConfigDict, training: bool) -> None:
    """``sde``, ``model`` and ``sampling`` against the registries they are generated from, and the
    couplings between groups (the loss and the SDE, the data and the network)."""
    _check_fields(config.sde, sde_group(config.sde.name), "sde.")
    _check_fields(config.model, model_group(config.model.name), "model.")
    _check_fields(config.sampling, sampling_group(config.sampling.method), "sampling.")
    for name, spec in solvers.available().items():
        _check_fields(config.sampling[name], _group(spec["options"]), f"sampling.{name}.")
        try:
            solvers.METHODS.get(name).resolve(dict(config.sampling[name].items()))
        except ValueError as err:
            raise ValueError(f"bad config.sampling.{name}: {err}") from None
    builds = {"sde": lambda: sde_from_config(config.sde)}
    if training:
        builds["training"] = lambda: losses.get_loss_fn(sde_from_config(config.sde), config.training)
        builds["data"] = lambda: datasets.check(config.data, config.model.get("num_classes", 0))
    for group, build in builds.items():
        try:
            build()
        except ValueError as err:
            raise ValueError(f"bad config.{group}: {err}") from None
    for key in sorted(set(config.model.keys()) & set(config.data.keys())):
        if config.data[key] is not None and config.model[key] != config.data[key]:
            raise ValueError(f"config.model.{key}={config.model[key]!r} does not match config.data.{key}={config.data[key]!r}")
    _check_classes(config)


def _check_classes(config: ml_collections.ConfigDict) -> None:
    """A class to sample needs a class-conditional network, and guidance its unconditional score
    (condition dropout); the data's classes are checked with the data (``datasets.check``)."""
    num_classes, label = config.model.get("num_classes", 0), config.sampling.class_label
    if num_classes and config.training.loss == "stf":
        raise ValueError("config.training.loss='stf' pools its targets over the reference batch whatever their class;"
                         f" a class-conditional model (config.model.num_classes={num_classes}) needs loss 'dsm'")
    if label is None:
        return
    if not num_classes:
        raise ValueError(f"config.sampling.class_label={label} needs a class-conditional model (config.model.num_classes > 0)")
    if label >= num_classes:
        raise ValueError(f"config.sampling.class_label={label} must be < config.model.num_classes={num_classes}, or {ALL_CLASSES} for every class")
    if label == ALL_CLASSES and config.sampling.n_samples < num_classes:
        raise ValueError(f"config.sampling.class_label={ALL_CLASSES} (every class) needs n_samples >= {num_classes}, got {config.sampling.n_samples}")
    if config.sampling.guidance_scale != 0 and config.training.cond_drop_prob == 0:
        raise ValueError("config.sampling.guidance_scale != 0 needs the unconditional score, which a model learns only with config.training.cond_drop_prob > 0")


def _get(config: Any, path: str) -> Any:
    for key in path.split("."):
        config = config[key]
    return config


# --- loading and overrides -------------------------------------------------------------------------
def check_path(config: ml_collections.ConfigDict, path: str) -> None:
    """Raise ``ValueError`` unless the dotted ``path`` names a field of ``config``, naming the first
    unknown part and the fields allowed there."""
    group, keys = config, path.split(".")
    for i, key in enumerate(keys):
        where = ".".join(["config", *keys[:i]])
        if not isinstance(group, ml_collections.ConfigDict):
            raise ValueError(f"{where} is a value, not a group: config.{path} does not exist")
        if key not in group:
            raise ValueError(f"unknown field {where}.{key}; allowed in {where}: {', '.join(sorted(group.keys()))}")
        group = group[key]


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Set dotted fields, e.g. ``{"training.n_iters": 10}``, on a copy of ``config``; an unknown path
    raises ``ValueError`` naming it and the fields allowed there."""
    config = copy.deepcopy(config)
    for path, value in overrides.items():
        check_path(config, path)
        *parents, leaf = path.split(".")
        group = _get(config, ".".join(parents)) if parents else config
        group[leaf] = value
    return config


def resolve_config_path(path: str) -> str:
    """``path`` if it is a file, else the config of that name shipped with the package: the repository's
    ``configs/`` is installed as ``sde_diffusion.configs``, so ``configs/vp/digits.py`` (or
    ``vp/digits.py``) also works from an installed package or from another directory."""
    if os.path.isfile(path):
        return path
    name = path.removeprefix("configs/")
    checkout = Path(__file__).resolve().parents[2] / "configs"
    try:
        shipped = importlib.resources.files("sde_diffusion.configs")
    except ModuleNotFoundError:
        shipped = checkout
    for root in (shipped, checkout):
        if root.joinpath(name).is_file():
            return str(root.joinpath(name))
    raise ValueError(f"config file {path!r} does not exist (nor does a shipped config {name!r})")


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Run the config file's ``get_config()`` (no validation). A file that does not exist, cannot be
    compiled, fails when run, defines no ``get_config()`` or whose ``get_config()`` returns no
    ConfigDict raises ``ValueError`` naming the file (and the line)."""
    path = resolve_config_path(path)
    spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if get_config is None:
            raise ValueError(f"config file {path!r} defines no get_config()")
        config = get_config()
    except SyntaxError as err:
        raise ValueError(f"config file {path!r} line {err.lineno}: {type(err).__name__}: {err.msg}") from None
    except Exception as err:
        if isinstance(err, ValueError) and str(err).startswith(f"config file {path!r}"):
            raise
        frames = [f for f in traceback.extract_tb(err.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)]
        where = f" line {frames[-1].lineno}" if frames else ""
        raise ValueError(f"config file {path!r}{where}: {type(err).__name__}: {err}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"config file {path!r}: get_config() must return an ml_collections.ConfigDict, got {type(config).__name__}")
    return config


def list_fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """``group.field: type = value`` for every field, in order, for ``python -m sde_diffusion config``."""
    lines = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            lines += list_fields(value, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key}: {config.get_type(key).__name__} = {value!r}")
    return lines


def load_config(path: str, overrides: Optional[Mapping[str, Any]] = None) -> ml_collections.ConfigDict:
    """The config file's ``get_config()`` with dotted overrides applied, validated."""
    return validate(apply_overrides(load_config_file(path), overrides or {}))
