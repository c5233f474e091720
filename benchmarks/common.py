"""Helpers the benchmark scripts share: markdown tables, progress lines and the report file with
what produced it."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence

import torch


def table(header: Sequence[str], rows: list[Sequence[object]]) -> list[str]:
    """A markdown table; floats with 3 significant digits."""

    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]


def log(row: Sequence[object]) -> None:
    """One progress line (floats with 3 significant digits)."""
    print("  ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row), flush=True)


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it ("unknown" outside git)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def provenance() -> list[str]:
    """Report lines saying what produced it: the command, commit, versions, threads, machine, load, time."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]) if sys.argv[0] else "python", *sys.argv[1:]])
    return [
        f"Command: `python {command}`",
        f"Commit {git_commit()}; Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); {platform.machine()}, {os.cpu_count()} CPUs, load {load}; "
        f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
    ]


def write_report(out: str, lines: list[str], name: str = "report.md") -> str:
    """Write ``lines`` and the provenance to ``out/name``, print them and return the path."""
    lines = lines + [""] + provenance()
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


def add_run_options(parser: argparse.ArgumentParser, name: str, quick: str, threads_help: str = "torch threads") -> None:
    """The options every benchmark script takes: ``--threads``, ``--out`` (default
    ``benchmarks/results/<name>``) and ``--quick`` (a smoke run, described by ``quick``)."""
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", name))
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
