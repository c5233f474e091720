"""The ``schedule`` command: step schedules fitted to a trained run (``solvers.optimize_schedule``),
stored in ``workdir/schedules/<method>_nfe<N>.json`` and used by ``sample`` when
``config.sampling.fitted_schedule`` names one."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import torch
from ml_collections import ConfigDict

import solvers
from sde_diffusion.app.build import sample_shape
from sde_diffusion.app.pretrained import load_source


def schedule_dir(workdir: str) -> str:
    return os.path.join(workdir, "schedules")


def schedule_name(method: str, nfe: int) -> str:
    return f"{method}_nfe{nfe}"


def method_options(config: ConfigDict) -> dict[str, Any]:
    """The options of ``config.sampling.method`` as given in its group, without the named schedule
    (the fitted times replace it)."""
    group = config.sampling.get(config.sampling.method, None)
    options = dict(group.items()) if group is not None else {}
    options.pop("schedule", None)
    return options


def schedule_command(config: ConfigDict, workdir: str, pretrained: Optional[str] = None) -> list[str]:
    """Fit a schedule for ``config.sampling.method`` (with its options, ``t_start`` and ``eps``) at
    every NFE of ``config.schedule.nfe`` on ``config.schedule.n_samples`` latents, and write each to
    ``workdir/schedules/`` (of the trained run, or of the ``pretrained`` diffusers directory); returns
    the paths."""
    run = load_source(config, workdir, pretrained)
    sde, score_fn = run.sde, run.score_fn
    method, options = config.sampling.method, method_options(config)
    shape = sample_shape(config, 1)[1:]
    paths = []
    for nfe in config.schedule.nfe:
        g = torch.Generator().manual_seed(config.schedule.seed)
        start = time.perf_counter()
        times = solvers.optimize_schedule(
            sde, score_fn, shape, method, nfe, t_start=config.sampling.get("t_start", None), eps=config.sampling.eps,
            n_samples=config.schedule.n_samples, generator=g, dtype=torch.float32, **options,
        )
        record = {
            "method": method,
            "options": options,
            "nfe": nfe,
            "times": times.tolist(),
            "sigma_over_alpha": (sde.sigma(times) / sde.alpha(times)).tolist(),
            "n_samples": config.schedule.n_samples,
            "seed": config.schedule.seed,
            "seconds": time.perf_counter() - start,
            "produced_by": "solvers.optimize_schedule via python -m sde_diffusion schedule",
        }
        path = os.path.join(schedule_dir(workdir), schedule_name(method, nfe) + ".json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1)
        levels = ", ".join(f"{s:.3g}" for s in record["sigma_over_alpha"])
        print(f"{schedule_name(method, nfe)}: fitted in {record['seconds']:.1f} s; σ/α = {levels}")
        paths.append(path)
    return paths


def stored_schedule(config: ConfigDict, workdir: str) -> Optional[torch.Tensor]:
    """The times of the stored schedule ``config.sampling.fitted_schedule`` names (None when it is
    empty), checked against the sampling method and options it was fitted for."""
    name = config.sampling.get("fitted_schedule", "")
    if not name:
        return None
    path = os.path.join(schedule_dir(workdir), name + ".json")
    if not os.path.exists(path):
        stored = sorted(f[:-5] for f in os.listdir(schedule_dir(workdir))) if os.path.isdir(schedule_dir(workdir)) else []
        raise ValueError(f"no stored schedule {name!r} in {schedule_dir(workdir)!r} (stored: {', '.join(stored) or 'none'}); run the schedule command")
    with open(path, encoding="utf-8") as fh:
        record = json.load(fh)
    if record["method"] != config.sampling.method or record["options"] != method_options(config):
        raise ValueError(
            f"schedule {name!r} was fitted for {record['method']} with {record['options']}, not for "
            f"{config.sampling.method} with {method_options(config)}"
        )
    return torch.tensor(record["times"], dtype=torch.float64)
