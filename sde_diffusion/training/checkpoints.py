"""Checkpoint files ``<dir>/ckpt_<step>.pt``: atomic, checksummed writes; the newest valid one; keep the last k.

A checkpoint is ``torch.save``'s archive followed by a trailer line holding the SHA-256 of the archive
(``torch.load`` reads the file as it is: the zip archive is located from its end record and ignores
what follows). It is written to a temporary file in the same directory, flushed and fsync'ed, then
renamed over its final name with ``os.replace`` (atomic on POSIX), so a crash while writing leaves
every earlier checkpoint untouched and never a truncated ``ckpt_<step>.pt``, only a temporary
``.ckpt_<step>.*.tmp`` (``remove_temporaries``). ``load_checkpoint`` verifies the checksum, so a file
damaged later (a disk fault, a copy cut short, an overwrite) is reported as such instead of failing
inside ``torch.load``; ``load_latest`` then falls back to the newest valid checkpoint.
"""
from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import tempfile
from typing import Any, Optional

import torch

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
#: The trailer: this prefix, the archive's SHA-256 in hex, a newline.
TRAILER_PREFIX = b"\nsde-diffusion checkpoint sha256="
_TRAILER_LEN = len(TRAILER_PREFIX) + 64 + 1
#: The suffix a damaged checkpoint is renamed with by ``set_aside``.
CORRUPT_SUFFIX = ".corrupt"


class CorruptCheckpointError(ValueError):
    """A checkpoint file is damaged: empty, truncated or not what ``save_checkpoint`` wrote."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped for an older, valid one."""


def checkpoint_path(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"ckpt_{step}.pt")


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every checkpoint file in ``ckpt_dir``, by increasing step (not verified)."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = ((_NAME.match(name), name) for name in os.listdir(ckpt_dir))
    return sorted((int(m.group(1)), os.path.join(ckpt_dir, name)) for m, name in found if m)


def latest_checkpoint(ckpt_dir: str) -> Optional[str]:
    """Path of the checkpoint file with the largest step, or None when there is none (not verified)."""
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1][1] if ckpts else None


def save_checkpoint(ckpt_dir: str, step: int, state: dict[str, Any], keep: int) -> str:
    """Write ``state`` atomically as ``ckpt_<step>.pt`` with its checksum and delete all but the
    ``keep`` newest checkpoint files."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    os.makedirs(ckpt_dir, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    archive = buffer.getbuffer()
    path = checkpoint_path(ckpt_dir, step)
    fd, tmp = tempfile.mkstemp(prefix=f".ckpt_{step}.", suffix=".tmp", dir=ckpt_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(archive)
            f.write(_trailer(archive))
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
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain Python values only) after
    verifying its checksum. Raises ``CorruptCheckpointError`` naming the file for an empty,
    truncated or altered one; a file without a trailer (written before checksums) is loaded if
    ``torch.load`` can read it."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise CorruptCheckpointError(f"checkpoint {path} is empty", path)
    archive, digest = _split(data)
    if digest is None and TRAILER_PREFIX in data[-65536:]:
        raise CorruptCheckpointError(f"checkpoint {path} has a damaged checksum trailer ({len(data)} bytes): cut short or appended to", path)
    if digest is not None and hashlib.sha256(archive).hexdigest() != digest:
        raise CorruptCheckpointError(f"checkpoint {path} fails its checksum ({len(data)} bytes): it was altered or damaged after it was written", path)
    try:
        return torch.load(io.BytesIO(archive), map_location=map_location, weights_only=True)
    except Exception as err:
        if digest is None:
            raise CorruptCheckpointError(f"checkpoint {path} is truncated or not a checkpoint ({len(data)} bytes, no checksum trailer, unreadable: {type(err).__name__})", path) from None
        raise ValueError(f"checkpoint {path} is intact (its checksum matches) but cannot be loaded by this version of the code ({type(err).__name__})") from None


def load_latest(ckpt_dir: str, map_location: Optional[str | torch.device] = "cpu") -> tuple[Optional[str], Optional[dict[str, Any]], list[CorruptCheckpointError]]:
    """``(path, state, skipped)``: the newest checkpoint of ``ckpt_dir`` that loads, and the errors of
    the newer, damaged ones skipped on the way; ``(None, None, [])`` without checkpoints. Raises
    ``CorruptCheckpointError`` listing every file when all are damaged; an intact checkpoint that
    cannot be loaded raises at once (older ones would fail alike)."""
    skipped: list[CorruptCheckpointError] = []
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, load_checkpoint(path, map_location), skipped
        except CorruptCheckpointError as err:
            skipped.append(err)
    if skipped:
        raise CorruptCheckpointError(f"no valid checkpoint in {ckpt_dir}: " + "; ".join(map(str, skipped)), skipped[0].path)
    return None, None, []


def set_aside(path: str) -> str:
    """Rename a damaged checkpoint to ``<path>.corrupt`` (kept for inspection, no longer a checkpoint
    that a new one of its step would overwrite or keep-last-k would delete); the new path."""
    target = path + CORRUPT_SUFFIX
    os.replace(path, target)
    return target


def remove_temporaries(ckpt_dir: str) -> list[str]:
    """Delete the temporary files of checkpoint writes that were interrupted (the writer was killed
    before renaming them); their paths. Only for the directory's one writer, before it writes."""
    stale = sorted(glob.glob(os.path.join(glob.escape(ckpt_dir), ".ckpt_*.tmp")))
    for path in stale:
        os.remove(path)
    return stale


def check_writable(ckpt_dir: str) -> None:
    """Create ``ckpt_dir`` if needed and write, fsync and delete a file in it; raise ``ValueError``
    naming the directory and the reason if that fails (read-only, immutable, full, not a directory)."""
    try:
        os.makedirs(ckpt_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", suffix=".tmp", dir=ckpt_dir)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as err:
        raise ValueError(f"checkpoint directory {ckpt_dir!r} is not writable: {err.strerror or err}") from None


def _trailer(archive: memoryview | bytes) -> bytes:
    return TRAILER_PREFIX + hashlib.sha256(archive).hexdigest().encode() + b"\n"


def _split(data: bytes) -> tuple[memoryview, Optional[str]]:
    """The archive and the hex digest of its trailer (None without one)."""
    tail = data[-_TRAILER_LEN:]
    if len(data) > _TRAILER_LEN and tail.startswith(TRAILER_PREFIX) and tail.endswith(b"\n"):
        return memoryview(data)[:-_TRAILER_LEN], tail[len(TRAILER_PREFIX):-1].decode("ascii", "replace")
    return memoryview(data), None


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
