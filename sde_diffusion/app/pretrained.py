"""``--pretrained PATH``: a diffusers ``save_pretrained`` directory (``sde_diffusion.interop``) in place
of a trained workdir for the ``sample``, ``likelihood`` and ``bench`` commands.

The model fixes the SDE (``config.sde`` and ``config.model`` are not used) and the data format: the
config's ``data.image_size``, ``data.num_channels`` and ``data.centered`` are set to the model's
(samples are mapped back from its range, test data into it), and the likelihood's start time
``eval.eps`` is raised to the model's least noisy trained time if it is below it (said on stdout).
The workdir only receives the outputs.
"""
from __future__ import annotations

import os
from typing import Optional

from ml_collections import ConfigDict

from sde_diffusion.app.workdir import TrainedRun, load_run
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.interop import from_diffusers


def adapt_config(config: ConfigDict, sde: LinearSDE, sample_shape: tuple[int, ...], data_range: tuple[float, float]) -> list[str]:
    """Set ``config.data`` to the model's format and ``eval.eps`` to at least its first time (in place);
    the notes to print. A sampling or benchmark ``eps`` below that time is an error."""
    channels, height, width = sample_shape
    if height != width:
        raise ValueError(f"the pretrained model takes {height}x{width} images; the toolkit's data are square")
    config.data.image_size, config.data.num_channels, config.data.centered = height, channels, data_range[0] < 0
    notes = []
    first = sde.default_eps
    for group in ("sampling", "bench"):
        eps = config[group].get("eps", None)
        if eps is not None and eps < first:
            raise ValueError(f"config.{group}.eps={eps:g} is below the pretrained model's least noisy time {first:g}")
    if config.eval.eps < first:
        notes.append(f"eval.eps raised from {config.eval.eps:g} to {first:g}, the pretrained model's least noisy time")
        config.eval.eps = first
    return notes


def load_source(config: ConfigDict, workdir: str, pretrained: Optional[str]) -> TrainedRun:
    """The trained run in ``workdir`` (``workdir.load_run``), or the ``pretrained`` directory's model
    (on ``config.device``, with ``config`` adapted to it by ``adapt_config``; no step or training data
    set to record)."""
    if pretrained is None:
        return load_run(config, workdir)
    sde, score_fn = from_diffusers(pretrained, device=config.device)
    for note in adapt_config(config, sde, score_fn.sample_shape, score_fn.data_range):
        print(note)
    return TrainedRun(sde, score_fn, os.path.abspath(pretrained), None, None)
