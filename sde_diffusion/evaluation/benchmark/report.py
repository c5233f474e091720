"""Writing a ``BenchmarkResult``: Markdown table, CSV and the quality-against-NFE plot."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, fields
from typing import Any, Optional

import torch

from sde_diffusion.evaluation.benchmark.runner import BenchmarkResult, Row, fmt

COLUMNS = [f.name for f in fields(Row)]
#: Quality columns plotted against NFE: (column, title, y limits or None for automatic).
PLOTS = (
    ("median_dist", "median distance to reference", None),
    ("rms_dist", "RMS distance to reference", None),
    ("mode_switch", "mode-switch fraction", None),
    ("energy", "energy distance to true samples", None),
    ("mode_tv", "mode-weight TV", None),
    ("spread", "per-mode spread ratio (1 is exact)", (0.25, 4.0)),
    ("fd", "Fréchet distance ({features} features)", None),
    ("kid", "KID ({features} features)", None),
)
MARKERS = "os^vD<>ph*"
#: Up to this many distinct NFE values, each is a labelled tick.
MAX_NFE_TICKS = 12


def markdown_table(result: BenchmarkResult) -> str:
    """The report: problem, warnings, skipped methods and the table (methods by name, then NFE)."""
    rows = sorted(result.rows, key=lambda r: (r.method, r.nfe))
    shown = [c for c in COLUMNS if c not in ("steps", "tol") and any(getattr(r, c) is not None for r in rows)]
    lines = ["# Step-count benchmark", "", "| problem | value |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in result.problem.items()]
    lines += [""] + [f"**Warning:** {w}" for w in result.warnings]
    if result.skipped:
        lines += ["", "Skipped:", ""] + [f"- `{spec}`: {reason}" for spec, reason in result.skipped]
    if not rows:
        return "\n".join(lines + ["", "No method ran."]) + "\n"
    lines += ["", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(fmt(getattr(r, c)) for c in shown) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(result: BenchmarkResult, path: str) -> str:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in result.rows)
    return path


def plot_quality(result: BenchmarkResult, path: str) -> str:
    """Quality against NFE, one line per method, log axes (zeros fall off the log axes, and spread
    ratios outside [0.25, 4] off the plot; the table has every value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PLOTS if any(getattr(r, p[0]) is not None for r in result.rows)]
    nfes = sorted({r.nfe for r in result.rows})
    methods = sorted({r.method for r in result.rows})
    colors = plt.get_cmap("tab20")(torch.linspace(0, 1, max(len(methods), 2)).tolist())
    styles = {m: {"color": c, "marker": MARKERS[i % len(MARKERS)]} for i, (m, c) in enumerate(zip(methods, colors))}
    ncols = min(3, max(len(panels), 1))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.8 * nrows), squeeze=False, sharex=True)
    for ax, (column, title, ylim) in zip(axes.flat, panels):
        for method in methods:
            pts = sorted((r.nfe, getattr(r, column)) for r in result.rows if r.method == method and getattr(r, column) is not None)
            if pts:
                ax.plot(*zip(*pts), ms=4, lw=1.2, **styles[method])
        _reference_lines(ax, column, result.problem)
        ax.set_xscale("log")
        ax.set_yscale("log")
        if len(nfes) <= MAX_NFE_TICKS:
            ax.set_xticks(nfes, [str(n) for n in nfes])
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(title.format(features=result.problem.get("features_network", "")), fontsize=10)
        ax.set_xlabel("NFE")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], ms=4, **styles[m]) for m in methods]
    fig.legend(handles, methods, loc="center right", fontsize=8)
    fig.suptitle(f"{result.problem.get('name', '')}: quality against NFE (dashed: exact samples / reference accuracy)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.8, 0.96))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _reference_lines(ax: Any, column: str, problem: dict[str, Any]) -> None:
    """Dashed lines at what exact samples would score: the energy noise floor, the expected mode-TV
    of n exact samples, spread 1, the FD and KID of the problem's floor samples (where positive, on
    the log axes), and the bound on the reference's own error."""
    level = {
        "energy": problem.get("energy_noise_floor"),
        "mode_tv": problem.get("mode_tv_noise"),
        "spread": 1.0,
        "median_dist": problem.get("reference_error"),
        "fd": problem.get("fd_floor"),
        "kid": problem.get("kid_floor"),
    }.get(column)
    if level is not None and level > 0:
        ax.axhline(level, color="k", ls="--", lw=0.8)


def write_report(result: BenchmarkResult, out_dir: str, *, plot_path: Optional[str] = None) -> dict[str, str]:
    """``table.md``, ``table.csv`` and ``quality_vs_nfe.png`` in ``out_dir`` (the plot also at
    ``plot_path`` if given); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"markdown": os.path.join(out_dir, "table.md"), "csv": os.path.join(out_dir, "table.csv")}
    with open(paths["markdown"], "w", encoding="utf-8") as fh:
        fh.write(markdown_table(result))
    write_csv(result, paths["csv"])
    paths["plot"] = plot_quality(result, os.path.join(out_dir, "quality_vs_nfe.png"))
    if plot_path is not None:
        paths["readme_plot"] = plot_quality(result, plot_path)
    return paths
