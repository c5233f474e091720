"""The ``sample`` command: samples of a trained run written into its workdir."""
from __future__ import annotations

import os
from typing import Optional

from ml_collections import ConfigDict

from sde_diffusion.app.build import draw_samples
from sde_diffusion.app.schedules import stored_schedule
from sde_diffusion.app.workdir import load_score_fn, write_samples
from sde_diffusion.conditioning.guidance import ALL_CLASSES


def sample_command(config: ConfigDict, workdir: str, tag: Optional[str] = None) -> list[str]:
    """The ``sample`` command: ``config.sampling.n_samples`` samples of the trained run with
    ``config.sampling``, written to ``workdir/samples/<tag>.{png,npz}``; returns the paths."""
    sde, score_fn = load_score_fn(config, workdir)
    x, nfe = draw_samples(config, sde, score_fn, config.sampling.n_samples, config.seed, progress=True, schedule=stored_schedule(config, workdir))
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
