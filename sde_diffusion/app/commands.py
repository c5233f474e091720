"""The ``sample`` command: samples of a trained run written into its workdir, in batches.

``config.sampling.n_samples`` samples are drawn in batches of ``config.sampling.batch_size``; batch i
has its own generator, seeded ``config.seed + i · 2³²``, so the samples do not depend on how many
processes draw them nor on where a run stopped. Each finished batch is written at once to
``samples/<tag>.parts/batch_<i>.npz`` (atomically), so a crash loses at most the batches in flight and a
rerun with the same settings draws only the missing ones; at the end the parts are streamed into
``samples/<tag>.npz`` (``samples``, and ``meta``: JSON saying what produced them) next to a plot, and
removed. Under torchrun the batches are dealt out to the processes in turn and rank 0 writes them.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import zipfile
from typing import Any, Optional

import numpy as np
import torch
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from sde_diffusion.app.build import draw_samples, sample_count, sample_shape
from sde_diffusion.app.plotting import individual_pngs
from sde_diffusion.app.pretrained import load_source
from sde_diffusion.app.resources import check_disk, check_memory
from sde_diffusion.app.workdir import TrainedRun, lock_path, main_locked, plot_samples, provenance
from sde_diffusion.conditioning.guidance import ALL_CLASSES
from sde_diffusion.core import distributed

#: Offset between the seeds of consecutive batches (beyond any seed offset in use).
BATCH_SEED_STRIDE = 2**32
#: At most this many images go into the grid PNG (the .npz holds them all).
GRID_IMAGES = 256


def sample_command(config: ConfigDict, workdir: str, tag: Optional[str] = None, pretrained: Optional[str] = None) -> list[str]:
    """The ``sample`` command (module docstring): ``config.sampling.n_samples`` samples of the trained
    run (or of the ``pretrained`` diffusers directory) with ``config.sampling``, written to
    ``workdir/samples/<tag>.{png,npz}`` (``tag``: the method) and, with ``sampling.save_individual``,
    one PNG per image in ``samples/<tag>/``; returns the paths.
    Raises ``FloatingPointError`` if a batch comes out non-finite, keeping the batches before it."""
    s = config.sampling
    stem = os.path.join(workdir, "samples", tag or s.method)
    # A pretrained model sets config.data to its format, which the checks below read; a workdir's
    # checkpoint is loaded after them.
    run = load_source(config, workdir, pretrained) if pretrained is not None else None
    n, shape = sample_count(config, s.n_samples), sample_shape(config, 1)[1:]
    if s.save_individual and len(shape) != 3:
        raise ValueError(f"config.sampling.save_individual writes images; config.data.dataset={config.data.dataset!r} has points of shape {shape}")
    check_memory("sampling.batch_size", min(s.batch_size, n), shape, config.device)
    distributed.from_main(lambda: _check_disk(stem, n, shape))
    run = run or load_source(config, workdir, None)
    with main_locked(lock_path(workdir, f"sample_{os.path.basename(stem)}"), "sample"):
        parts = BatchStore(stem + ".parts", _batch_key(config, run))
        todo = distributed.from_main(lambda: parts.missing(n, s.batch_size))
        main, world = distributed.is_main(), distributed.world_size()
        bar = tqdm(total=n, initial=n - sum(_rows(i, n, s.batch_size).stop - i * s.batch_size for i in todo),
                   desc=f"sampling ({s.method})", unit="sample", disable=not main, dynamic_ncols=True)
        if main and len(todo) < math.ceil(n / s.batch_size):
            bar.write(f"continuing {parts.directory}: {len(todo)} of {math.ceil(n / s.batch_size)} batches left")
        with bar:
            for start in range(0, len(todo), world):
                mine = todo[start + distributed.rank()] if start + distributed.rank() < len(todo) else None
                drawn = distributed.gather_outcomes(functools.partial(_draw_batch, config, run, mine, n, parts, main))
                for batch in filter(None, drawn):
                    if main:
                        parts.write(*batch, individual=stem if s.save_individual else None)
                    bar.update(batch[1].shape[0])
        if not main:
            return []
        meta = provenance(config, run, "sample", method=s.method, options=s[s.method].to_dict(), steps=s.steps, eps=s.eps,
                          n_samples=n, batch_size=s.batch_size, batch_seeds=f"config.seed + i * {BATCH_SEED_STRIDE} for batch i",
                          class_label=s.class_label, guidance_scale=s.guidance_scale)
        paths = parts.finish(stem, n, shape, meta, _title(config, parts.nfe(n, s.batch_size)), _grid(config, n))
        return paths + ([stem] if s.save_individual else [])


def _check_disk(stem: str, n: int, shape: tuple[int, ...]) -> None:
    """The parts and the final npz of n samples must fit on the disk (rank 0 writes them)."""
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    check_disk("sampling.n_samples", n, shape, os.path.dirname(stem), copies=2)


def _rows(i: int, n: int, batch_size: int) -> slice:
    return slice(i * batch_size, min(n, (i + 1) * batch_size))


def _draw_batch(config: ConfigDict, run: TrainedRun, i: Optional[int], n: int, parts: BatchStore, progress: bool) -> Optional[tuple[int, np.ndarray, int]]:
    """Batch i as ``(i, samples, nfe)`` (None for a process with no batch this round); raises
    ``FloatingPointError`` if any sample is not finite."""
    if i is None:
        return None
    s = config.sampling
    rows = _rows(i, n, s.batch_size)
    x, nfe = draw_samples(config, run.sde, run.score_fn, s.n_samples, config.seed + i * BATCH_SEED_STRIDE, progress, rows=rows)
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise FloatingPointError(
            f"sampling with {s.method!r} gave {bad} non-finite values in batch {i} (samples {rows.start}..{rows.stop - 1});"
            f" nothing was written for it, the batches before it are kept in {parts.directory}. Check the checkpoint"
            f" {run.checkpoint} and config.sampling (a smaller step, another method)"
        )
    return i, x.detach().cpu().float().numpy(), nfe


def _batch_key(config: ConfigDict, run: TrainedRun) -> dict[str, Any]:
    """Everything that decides what batch i holds; parts drawn with another key are not reused."""
    s = config.sampling
    return {
        "checkpoint": os.path.abspath(run.checkpoint), "checkpoint_step": run.step, "seed": config.seed,
        "method": s.method, "options": s[s.method].to_dict(), "steps": s.steps, "eps": s.eps, "batch_size": s.batch_size,
        "class_label": s.class_label, "guidance_scale": s.guidance_scale, "data": json.loads(config.data.to_json()),
    }


def _title(config: ConfigDict, nfe: float) -> str:
    s = config.sampling
    title = f"{s.method}, {nfe:g} NFE"
    if s.class_label is not None:
        classes = "a row per class" if s.class_label == ALL_CLASSES else f"class {s.class_label}"
        title += f", {classes}, w = {s.guidance_scale:g}"
    return title


def _grid(config: ConfigDict, n: int) -> tuple[np.ndarray, Optional[int]]:
    """Indices of the images of the grid PNG and images per row: the first ``GRID_IMAGES``, or for
    every class in turn up to ⌊GRID_IMAGES / C⌋ of each, one row per class."""
    if config.sampling.class_label != ALL_CLASSES:
        return np.arange(min(n, GRID_IMAGES)), None
    classes = config.model.num_classes
    per, shown = n // classes, min(n // classes, GRID_IMAGES // classes)
    return (np.arange(classes)[:, None] * per + np.arange(shown)).ravel(), shown


class BatchStore:
    """The finished batches of one ``sample`` output: ``<dir>/batch_<i>.npz`` (samples and NFE) and
    ``<dir>/key.json``, the settings they were drawn with."""

    def __init__(self, directory: str, key: dict[str, Any]) -> None:
        self.directory, self.key = directory, key

    def path(self, i: int) -> str:
        return os.path.join(self.directory, f"batch_{i:06d}.npz")

    def missing(self, n: int, batch_size: int) -> list[int]:
        """Indices of the batches of n samples not yet on disk (all of them for a new output). Parts
        drawn with other settings raise ``ValueError`` naming the differences."""
        key_path = os.path.join(self.directory, "key.json")
        if os.path.exists(key_path):
            with open(key_path, encoding="utf-8") as fh:
                old = json.load(fh)
            diffs = [f"{k}: {old.get(k)!r} there, {self.key[k]!r} here" for k in self.key if old.get(k) != json.loads(json.dumps(self.key[k]))]
            if diffs:
                raise ValueError(f"{self.directory} holds batches of an interrupted run with other settings ({'; '.join(diffs)});"
                                 " rerun with those settings to finish it, or delete it to start over")
        else:
            os.makedirs(self.directory, exist_ok=True)
            _write_atomic(key_path, json.dumps(self.key, indent=2).encode())
        return [i for i in range(math.ceil(n / batch_size)) if self._rows_on_disk(i) != _rows(i, n, batch_size).stop - i * batch_size]

    def _rows_on_disk(self, i: int) -> Optional[int]:
        if not os.path.exists(self.path(i)):
            return None
        with np.load(self.path(i)) as part:
            return part["samples"].shape[0]

    def write(self, i: int, x: np.ndarray, nfe: int, individual: Optional[str] = None) -> None:
        """Batch i; with ``individual`` (the output stem) first one PNG per image in ``<stem>/``."""
        if individual is not None:
            individual_pngs(individual, x, first_index=i * self.key["batch_size"])
        with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".tmp", delete=False) as fh:
            np.savez(fh, samples=x, nfe=np.int64(nfe))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(fh.name, self.path(i))

    def nfe(self, n: int, batch_size: int) -> float:
        """Mean NFE per batch."""
        counts = []
        for i in range(math.ceil(n / batch_size)):
            with np.load(self.path(i)) as part:
                counts.append(int(part["nfe"]))
        return sum(counts) / len(counts)

    def finish(self, stem: str, n: int, shape: tuple[int, ...], meta: dict[str, Any], title: str, grid: tuple[np.ndarray, Optional[int]]) -> list[str]:
        """Stream the batches into ``<stem>.npz`` (one batch in memory at a time), plot, and remove
        the parts; returns the paths written."""
        batch_size = self.key["batch_size"]
        tmp = stem + ".npz.tmp"
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            with zf.open("samples.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_2_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n, *shape)})
                for i in range(math.ceil(n / batch_size)):
                    with np.load(self.path(i)) as part:
                        fh.write(np.ascontiguousarray(part["samples"], dtype=np.float32).tobytes())
            with zf.open("meta.npy", "w") as fh:
                np.save(fh, np.array(json.dumps(meta)))
        os.replace(tmp, stem + ".npz")
        index, nrow = grid if len(shape) == 3 else (np.arange(n), None)
        shown = torch.from_numpy(np.concatenate([self._take(i, index, batch_size) for i in range(math.ceil(n / batch_size))]))
        if len(shape) == 3 and shown.shape[0] < n:
            title += f" (first {shown.shape[0]} of {n})"
        png = plot_samples(stem + ".png", shown, title, nrow)
        shutil.rmtree(self.directory)
        return [png, stem + ".npz"]

    def _take(self, i: int, index: np.ndarray, batch_size: int) -> np.ndarray:
        """The samples of batch i among ``index`` (global sample indices)."""
        local = index[(index >= i * batch_size) & (index < (i + 1) * batch_size)] - i * batch_size
        with np.load(self.path(i)) as part:
            return part["samples"][local]


def _write_atomic(path: str, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".tmp", delete=False) as fh:
        fh.write(data)
    os.replace(fh.name, path)


def describe(paths: list[str]) -> str:
    return "\n".join(f"  wrote {p}" for p in paths)
