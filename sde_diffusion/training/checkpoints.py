"""Checkpoint files ``<dir>/ckpt_<step>.pt``: atomic writes, the latest one, keep the last k.

A checkpoint is written to a temporary file in the same directory, flushed and fsync'ed, then
renamed over its final name with ``os.replace`` (atomic on POSIX), so a crash while writing leaves
every earlier checkpoint untouched and never a truncated ``ckpt_<step>.pt``. The latest checkpoint
is the one with the largest step among the complete files; temporaries are ignored.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Optional

import torch

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_path(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"ckpt_{step}.pt")


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every complete checkpoint in ``ckpt_dir``, by increasing step."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = ((_NAME.match(name), name) for name in os.listdir(ckpt_dir))
    return sorted((int(m.group(1)), os.path.join(ckpt_dir, name)) for m, name in found if m)


def latest_checkpoint(ckpt_dir: str) -> Optional[str]:
    """Path of the checkpoint with the largest step, or None when there is none."""
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1][1] if ckpts else None


def save_checkpoint(ckpt_dir: str, step: int, state: dict[str, Any], keep: int) -> str:
    """Write ``state`` atomically as ``ckpt_<step>.pt`` and delete all but the ``keep`` newest."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    os.makedirs(ckpt_dir, exist_ok=True)
    path = checkpoint_path(ckpt_dir, step)
    fd, tmp = tempfile.mkstemp(prefix=f".ckpt_{step}.", suffix=".tmp", dir=ckpt_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_dir(ckpt_dir)
    for _, old in list_checkpoints(ckpt_dir)[:-keep]:
        os.remove(old)
    return path


def load_checkpoint(path: str, map_location: Optional[str | torch.device] = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain Python values only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _fsync_dir(path: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
