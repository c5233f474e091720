"""A run directory (score_sde's layout): ``checkpoints/ckpt_<step>.pt``, ``tensorboard/``,
``samples/`` and ``config.json`` (the resolved config of the last training run); reading the trained
score function back from it, writing samples into it, the locks that keep two processes from
writing the same output, and the record of what produced a results file."""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

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


@dataclass
class TrainedRun:
    """A trained score function and where it came from: a workdir's checkpoint, its step and the data
    set it was trained on (or a pretrained model's directory, with no step or data set known)."""

    sde: LinearSDE
    score_fn: ScoreFn
    checkpoint: str
    step: Optional[int]
    dataset: Optional[str]


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
    """``(sde, score_fn)`` of the run in ``workdir`` (``load_run``)."""
    run = load_run(config, workdir)
    return run.sde, run.score_fn


def load_run(config: ConfigDict, workdir: str) -> TrainedRun:
    """The run in ``workdir`` with the EMA weights of its latest checkpoint (in eval mode, without
    gradients), its step and the data set it was trained on."""
    path, state = latest_state(workdir)
    if path is None:
        raise ValueError(f"no checkpoint in {checkpoint_dir(workdir)!r}; train first")
    trained = ConfigDict(json.loads(state["config"]))
    check_compatible(config, trained, path)
    sde, model = build_sde(config), build_model(config)
    model.load_state_dict(state["model"])
    ema = EMA(model, config.training.ema_rate)
    ema.load_state_dict(state["ema"])
    ema.copy_to(model)
    model.eval().requires_grad_(False)
    return TrainedRun(sde, models.get_score_fn(sde, model), path, int(state["step"]), trained.data.dataset)


def write_samples(path_stem: str, x: torch.Tensor, title: str, nrow: Optional[int] = None) -> list[str]:
    """``<stem>.npz`` with the samples and ``<stem>.png``: a scatter plot of 2-D points or an image
    grid (values clipped to [0, 1], ``nrow`` images per row, default ⌈√B⌉)."""
    os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
    np.savez(path_stem + ".npz", samples=x.detach().cpu().numpy())
    return [plot_samples(path_stem + ".png", x, title, nrow), path_stem + ".npz"]


def plot_samples(path: str, x: torch.Tensor, title: str, nrow: Optional[int] = None) -> str:
    """A PNG of samples: a scatter plot of 2-D points or an image grid (``write_samples``)."""
    if x.ndim == 2:
        return scatter_png(path, [(title, x)])
    return image_grid_png(path, x.clamp(0, 1), title, nrow)


# --- writing into a run directory -------------------------------------------------------------------
class WorkdirLockedError(RuntimeError):
    """Another live process holds the lock on the output this process would write."""


def lock_path(workdir: str, output: str) -> str:
    """``workdir/.locks/<output>.lock``: the lock of one output of the run (``locked``)."""
    return os.path.join(workdir, ".locks", f"{output}.lock")


def ensure_writable(workdir: str) -> str:
    """Create ``workdir`` if needed and check that files can be written into it, before any work is
    done; raise ``ValueError`` naming it and why not."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir!r} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as err:
        raise ValueError(f"--workdir {workdir!r} is not a writable directory: {err.strerror or err}") from None
    return workdir


@contextmanager
def locked(path: str, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a file holding the holder's pid, host and ``what``) while
    writing the output it guards. A lock held by a live process raises ``WorkdirLockedError`` naming
    that process; the kernel drops the lock of a process that died (``flock``), so a lock file left
    by a dead process is taken over, with a note naming it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirLockedError(f"{path} is locked by {_holder(fd) or 'a process that is starting'}; wait for it to finish or stop it") from None
        stale = _holder(fd)
        if stale:
            print(f"note: took over the lock {path} left by {stale}, which is no longer running", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": what}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """The process recorded in a lock file, e.g. ``"pid 123 on host (train)"``; "" when empty."""
    raw = os.pread(fd, 4096, 0)
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on {info['host']} ({info['command']})"
    except (ValueError, KeyError, TypeError):
        return f"another process (lock file content {raw[:80]!r})" if raw else ""


def main_locked(path: str, what: str) -> contextlib.ExitStack:
    """``locked`` taken now on rank 0 of a multi-process job (the process that writes) and released
    when the returned stack closes; a refusal is raised on every process."""
    stack = contextlib.ExitStack()

    def take() -> None:
        stack.enter_context(locked(path, what))

    distributed.from_main(take)
    return stack


def provenance(config: ConfigDict, run: TrainedRun, command: str, **details: Any) -> dict[str, Any]:
    """What produced a results file: the command, the data set, the checkpoint and its step, the
    seed, the time, any ``details`` (method and options) and the whole config."""
    return {
        "command": command,
        "dataset": config.data.dataset,
        "trained_on": run.dataset,
        "checkpoint": os.path.abspath(run.checkpoint),
        "checkpoint_step": run.step,
        "seed": config.seed,
        **details,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "config": json.loads(config.to_json()),
    }
