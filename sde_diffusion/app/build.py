"""From a config to working objects: the SDE, the network, the shape and labels of samples, and
drawing samples with ``config.sampling``."""
from __future__ import annotations

from typing import Optional

import torch
from ml_collections import ConfigDict
from torch import nn

import solvers
from sde_diffusion import models
from sde_diffusion.conditioning.guidance import ALL_CLASSES, classifier_free_guidance
from sde_diffusion.core.sde_lib import LinearSDE, sde_from_config
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.data import datasets


def build_sde(config: ConfigDict) -> LinearSDE:
    return sde_from_config(config.sde)


def build_model(config: ConfigDict) -> nn.Module:
    return models.create_model(config.model).to(config.device)


def sample_shape(config: ConfigDict, n: int) -> tuple[int, ...]:
    """``(n, *shape of one data point)``, from the data set's record (``datasets.data_shape``)."""
    return (n, *datasets.data_shape(config.data))


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


def sample_count(config: ConfigDict, n: int) -> int:
    """How many samples asking for n gives: n, or C·(n // C) for every class in turn (``sample_labels``)."""
    labels = sample_labels(config, n)
    return n if labels is None else labels.shape[0]


def draw_samples(
    config: ConfigDict, sde: LinearSDE, score_fn: ScoreFn, n: int, seed: int, progress: bool, rows: Optional[slice] = None
) -> tuple[torch.Tensor, int]:
    """n samples with ``config.sampling``, mapped back to data space: ``(x, nfe)``; with ``rows``
    only those rows of the ``sample_count(config, n)`` (a batch of the ``sample`` command). With a
    ``class_label`` the class-conditional ``score_fn(x, t, labels)`` is sampled with classifier-free
    guidance of weight ``guidance_scale`` (``sample_labels``; each of the nfe evaluations is one network
    call on the doubled batch when the weight is not 0)."""
    labels = sample_labels(config, n)
    rows = rows or slice(0, sample_count(config, n))
    n = len(range(sample_count(config, n))[rows])
    if labels is not None:
        score_fn = classifier_free_guidance(score_fn, labels[rows], config.sampling.guidance_scale)
    sampler = solvers.get_sampler(config.sampling, sde)
    g = torch.Generator(config.device).manual_seed(seed)
    x, nfe = sampler(score_fn, sample_shape(config, n), generator=g, device=config.device, progress=progress)
    return datasets.get_inverse_scaler(config.data)(x), nfe
