"""Glue from a config to working objects: the SDE, the network, a trained score function, and the
``sample`` command that writes samples of a trained run.

Workdir layout (score_sde's): ``checkpoints/ckpt_<step>.pt``, ``tensorboard/``, ``samples/`` and
``config.json`` (the resolved config of the last training run).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Optional

import numpy as np
import torch
from ml_collections import ConfigDict
from torch import nn

import solvers
from sde_diffusion import models
from sde_diffusion.app.plotting import image_grid_png, scatter_png
from sde_diffusion.conditioning.guidance import classifier_free_guidance
from sde_diffusion.core import distributed
from sde_diffusion.core.sde_lib import LinearSDE, sde_from_config
from sde_diffusion.data import datasets
from sde_diffusion.training.checkpoints import latest_checkpoint, load_checkpoint
from sde_diffusion.training.ema import EMA

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Groups of the config a checkpoint must have been trained with to be loaded.
MODEL_GROUPS = ("sde", "model")
#: ``config.sampling.class_label`` asking for every class, one grid row each.
ALL_CLASSES = -1


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


def build_sde(config: ConfigDict) -> LinearSDE:
    return sde_from_config(config.sde)


def build_model(config: ConfigDict) -> nn.Module:
    return models.create_model(config.model).to(config.device)


def check_compatible(config: ConfigDict, trained: ConfigDict, source: str) -> None:
    """Raise ``ValueError`` if the ``sde`` or ``model`` groups differ from those ``source`` was
    trained with, naming every differing field."""
    diffs = []
    for group in MODEL_GROUPS:
        now, then = json.loads(config[group].to_json()), json.loads(trained[group].to_json())
        diffs += [f"{group}.{k}: {then.get(k)!r} there, {now.get(k)!r} here" for k in sorted(now.keys() | then.keys()) if now.get(k) != then.get(k)]
    if diffs:
        raise ValueError(f"the config does not match the one {source} was trained with: " + "; ".join(diffs))


def latest_state(workdir: str) -> tuple[Optional[str], Optional[dict]]:
    """``(path, state)`` of the latest checkpoint of ``workdir`` (tensors on the CPU), or (None, None).
    In a multi-process run rank 0 reads it and sends it to every process, so only the disk of rank 0,
    which writes the checkpoints, needs to hold them."""

    def read() -> tuple[Optional[str], Optional[dict]]:
        path = latest_checkpoint(checkpoint_dir(workdir))
        return path, None if path is None else load_checkpoint(path, map_location="cpu")

    return distributed.from_main(read)


def load_score_fn(config: ConfigDict, workdir: str) -> tuple[LinearSDE, ScoreFn]:
    """``(sde, score_fn)`` of the run in ``workdir``, with the EMA weights of its latest checkpoint
    (in eval mode, without gradients)."""
    path, state = latest_state(workdir)
    if path is None:
        raise ValueError(f"no checkpoint in {checkpoint_dir(workdir)!r}; train first")
    check_compatible(config, ConfigDict(json.loads(state["config"])), path)
    sde, model = build_sde(config), build_model(config)
    model.load_state_dict(state["model"])
    ema = EMA(model, config.training.ema_rate)
    ema.load_state_dict(state["ema"])
    ema.copy_to(model)
    model.eval().requires_grad_(False)
    return sde, models.get_score_fn(sde, model)


def sample_shape(config: ConfigDict, n: int) -> tuple[int, ...]:
    """``(n, *shape of one data point)``, read off the test set."""
    return (n, *datasets.get_dataset(config.data)[1].shape[1:])


def sample_labels(config: ConfigDict, n: int) -> Optional[torch.Tensor]:
    """The class of each of n samples per ``config.sampling.class_label``: None (unconditional), a class
    k (all n of class k), or ``ALL_CLASSES`` = -1 (n // C of each class 0, ..., C-1 in turn, so that a
    grid of n // C images per row has one row per class)."""
    label = config.sampling.get("class_label", None)
    if label is None:
        return None
    if label == ALL_CLASSES:
        num_classes = config.model.num_classes
        return torch.arange(num_classes, device=config.device).repeat_interleave(n // num_classes)
    return torch.full((n,), label, dtype=torch.long, device=config.device)


def draw_samples(config: ConfigDict, sde: LinearSDE, score_fn: ScoreFn, n: int, seed: int, progress: bool) -> tuple[torch.Tensor, int]:
    """n samples with ``config.sampling``, mapped back to data space: ``(x, nfe)``. With a
    ``class_label`` the class-conditional ``score_fn(x, t, labels)`` is sampled with classifier-free
    guidance of weight ``guidance_scale`` (``sample_labels``; each of the nfe evaluations is one network
    call on the doubled batch when the weight is not 0)."""
    labels = sample_labels(config, n)
    if labels is not None:
        score_fn = classifier_free_guidance(score_fn, labels, config.sampling.guidance_scale)
        n = labels.shape[0]
    sampler = solvers.get_sampler(config.sampling, sde)
    g = torch.Generator(config.device).manual_seed(seed)
    x, nfe = sampler(score_fn, sample_shape(config, n), generator=g, device=config.device, progress=progress)
    return datasets.get_inverse_scaler(config.data)(x), nfe


def write_samples(path_stem: str, x: torch.Tensor, title: str, nrow: Optional[int] = None) -> list[str]:
    """``<stem>.npz`` with the samples and ``<stem>.png``: a scatter plot of 2-D points or an image
    grid (values clipped to [0, 1], ``nrow`` images per row, default ⌈√B⌉)."""
    os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
    np.savez(path_stem + ".npz", samples=x.detach().cpu().numpy())
    if x.ndim == 2:
        png = scatter_png(path_stem + ".png", [(title, x)])
    else:
        png = image_grid_png(path_stem + ".png", x.clamp(0, 1), title, nrow)
    return [png, path_stem + ".npz"]


def sample_command(config: ConfigDict, workdir: str, tag: Optional[str] = None) -> list[str]:
    """The ``sample`` command: ``config.sampling.n_samples`` samples of the trained run with
    ``config.sampling``, written to ``workdir/samples/<tag>.{png,npz}``; returns the paths."""
    sde, score_fn = load_score_fn(config, workdir)
    x, nfe = draw_samples(config, sde, score_fn, config.sampling.n_samples, config.seed, progress=True)
    tag = tag or config.sampling.method
    title = f"{config.sampling.method}, {nfe} NFE"
    label = config.sampling.get("class_label", None)
    if label is not None:
        classes = "a row per class" if label == ALL_CLASSES else f"class {label}"
        title += f", {classes}, w = {config.sampling.guidance_scale:g}"
    nrow = x.shape[0] // config.model.num_classes if label == ALL_CLASSES else None
    return write_samples(os.path.join(workdir, "samples", tag), x, title, nrow)


def describe(paths: list[str]) -> str:
    return "\n".join(f"  wrote {p}" for p in paths)
