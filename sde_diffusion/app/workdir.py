"""A run directory (score_sde's layout): ``checkpoints/ckpt_<step>.pt``, ``tensorboard/``,
``samples/`` and ``config.json`` (the resolved config of the last training run); reading the trained
score function back from it and writing samples into it."""
from __future__ import annotations

import json
import os
import warnings
from typing import Optional

import numpy as np
import torch
from ml_collections import ConfigDict

from sde_diffusion import models
from sde_diffusion.app.build import build_model, build_sde
from sde_diffusion.app.plotting import image_grid_png, scatter_png
from sde_diffusion.core import distributed
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.training.checkpoints import CheckpointWarning, load_latest, set_aside
from sde_diffusion.training.ema import EMA

#: Groups of the config a checkpoint must have been trained with to be loaded.
MODEL_GROUPS = ("sde", "model")
def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


def check_compatible(config: ConfigDict, trained: ConfigDict, source: str) -> None:
    """Raise ``ValueError`` if the ``sde`` or ``model`` groups differ from those ``source`` was
    trained with, naming every differing field."""
    diffs = []
    for group in MODEL_GROUPS:
        now, then = json.loads(config[group].to_json()), json.loads(trained[group].to_json())
        diffs += [f"{group}.{k}: {then.get(k)!r} there, {now.get(k)!r} here" for k in sorted(now.keys() | then.keys()) if now.get(k) != then.get(k)]
    if diffs:
        raise ValueError(f"the config does not match the one {source} was trained with: " + "; ".join(diffs))


def latest_state(workdir: str, set_aside_damaged: bool = False) -> tuple[Optional[str], Optional[dict]]:
    """``(path, state)`` of the newest valid checkpoint of ``workdir`` (tensors on the CPU), or
    (None, None) without checkpoints. A damaged newer checkpoint is skipped with a
    ``CheckpointWarning`` naming it, and with ``set_aside_damaged`` (the run's writer) renamed to
    ``<name>.corrupt`` so that it is kept, not overwritten; nothing is deleted. Raises
    ``CorruptCheckpointError`` if every checkpoint is damaged. In a multi-process run rank 0 reads
    and sends the state to every process, so only the disk of rank 0, which writes the checkpoints,
    needs to hold them."""

    def read() -> tuple[Optional[str], Optional[dict]]:
        path, state, skipped = load_latest(checkpoint_dir(workdir), map_location="cpu")
        for err in skipped:
            kept = f"; renamed it {os.path.basename(set_aside(err.path))}" if set_aside_damaged else ""
            warnings.warn(f"{err}{kept}; using {path} (step {state['step']}) instead", CheckpointWarning, stacklevel=2)
        return path, state

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
