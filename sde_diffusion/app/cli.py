"""Command line: ``python -m sde_diffusion <train|sample|likelihood|bench> --config FILE --workdir DIR``
with score_sde-style overrides such as ``--config.training.n_iters=2000`` (absl + ml_collections
``config_flags``; the config is locked, so a misspelt field is an error). Every bad input (a config
file that is missing or broken, an override of the wrong type, a missing flag, a workdir that cannot be
written) ends the process with one line naming it; ``--help`` lists the commands.

``--pretrained DIR`` (sample, likelihood, bench) takes a diffusers ``save_pretrained`` directory in place of
the workdir's checkpoints (``sde_diffusion.app.pretrained``).

``torchrun --nproc_per_node=N -m sde_diffusion <train|likelihood|bench> ...`` runs the command on N
processes (``sde_diffusion.core.distributed``): data-parallel training, evaluation split across processes.
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Optional

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from sde_diffusion.core.registry import Registry

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/vp/ring.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints/, tensorboard/, samples/, config.json.")
flags.DEFINE_string("pretrained", None, "sample/likelihood/bench/schedule: a diffusers save_pretrained directory to use instead of"
                    " the workdir's checkpoints (the workdir then only receives the outputs).")

#: What absl's parser says for a value it cannot convert, and the type each field expects, in words.
_BAD_VALUE = re.compile(r"flag --config\.([\w.]+)=(.*?): ")
_ALLOCATION_FAILED = re.compile(r"tried to allocate (\d+) bytes|out of memory")
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a tuple, e.g. (1, 2)"}

Command = Callable[[ConfigDict, str], None]
COMMANDS: Registry[Command] = Registry("command")
#: Commands that split their work across the processes of a torchrun job.
MULTI_PROCESS_COMMANDS = ("train", "sample", "likelihood", "bench")
#: Commands that read no run directory.
NO_WORKDIR_COMMANDS = ("config",)


@COMMANDS.register("train")
def _train(config: ConfigDict, workdir: str) -> None:
    """Train (resuming from the latest checkpoint in the workdir)."""
    from sde_diffusion.app.build import sample_shape
    from sde_diffusion.app.resources import check_memory
    from sde_diffusion.app.train import train
    from sde_diffusion.app.workdir import lock_path, main_locked
    from sde_diffusion.core.distributed import is_main

    check_memory("training.batch_size", config.training.batch_size, sample_shape(config, 1)[1:], config.device)
    with main_locked(lock_path(workdir, "train"), "train"):
        state = train(config, workdir)
    if is_main():
        print(f"trained to step {state.step}; checkpoints, TensorBoard logs and samples are under {workdir}")


@COMMANDS.register("sample")
def _sample(config: ConfigDict, workdir: str) -> None:
    """Sample the trained model with ``config.sampling``; writes a PNG and an .npz."""
    from sde_diffusion.app.commands import describe, sample_command

    paths = sample_command(config, workdir, pretrained=FLAGS.pretrained)
    if paths:
        print(describe(paths))


@COMMANDS.register("schedule")
def _schedule(config: ConfigDict, workdir: str) -> None:
    """Fit step schedules for ``config.sampling`` (``config.schedule``) and store them in the workdir."""
    from sde_diffusion.app.commands import describe
    from sde_diffusion.app.schedules import schedule_command

    print(describe(schedule_command(config, workdir, pretrained=FLAGS.pretrained)))


@COMMANDS.register("likelihood")
def _likelihood(config: ConfigDict, workdir: str) -> None:
    """Test-set log-likelihood of the trained model (``config.eval``)."""
    from sde_diffusion.app.evaluate import likelihood_command

    likelihood_command(config, workdir, pretrained=FLAGS.pretrained)


@COMMANDS.register("bench")
def _bench(config: ConfigDict, workdir: str) -> None:
    """Sampler benchmark of the trained model (``config.bench``)."""
    from sde_diffusion.app.evaluate import bench_command

    bench_command(config, workdir, pretrained=FLAGS.pretrained)


def usage() -> str:
    """The ``--help`` text: the commands (from ``COMMANDS``) and how to see and set config fields."""
    width = max(map(len, COMMANDS.names()))
    lines = [
        "usage: python -m sde_diffusion COMMAND --config FILE --workdir DIR [--config.GROUP.FIELD=VALUE ...]",
        "",
        "commands:",
        *(f"  {name:<{width}}  {(COMMANDS.get(name).__doc__ or '').strip().splitlines()[0]}" for name in COMMANDS.names()),
        "",
        "  --config FILE   an ml_collections file with a get_config(), e.g. configs/vp/ring.py (shipped configs",
        "                  are found from any directory)",
        "  --workdir DIR   the run directory: checkpoints/, samples/, eval/, bench/, tensorboard/, config.json",
        "  --config.GROUP.FIELD=VALUE   override one field, e.g. --config.training.n_iters=2000;",
        "                  list every field with its type and value: python -m sde_diffusion config --config FILE",
        "",
        f"multi-process ({', '.join(MULTI_PROCESS_COMMANDS)}): torchrun --nproc_per_node=N -m sde_diffusion COMMAND ...",
    ]
    return "\n".join(lines)


@COMMANDS.register("config")
def _config(config: ConfigDict, workdir: Optional[str]) -> None:
    """Print every field of the config (after overrides) with its type and value; no --workdir."""
    from sde_diffusion.app.config import list_fields

    print("\n".join(list_fields(config)))


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, after loading the config file once to report a missing or broken file in one
    line (ml_collections defers that error to the first use of the config), with one line instead
    of a traceback for every error it raises."""
    if any(a in ("-h", "--help", "-?", "--helpshort") for a in argv[1:]):
        print(usage())
        sys.exit(0)
    argv, config = _load_config_arg(argv)
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as err:
        sys.exit(f"error: {_explain_flag_error(argv, config, err)}")


def _load_config_arg(argv: list[str]) -> tuple[list[str], Optional[ConfigDict]]:
    """``argv`` with the ``--config`` file resolved to its path (``config.resolve_config_path``) and
    the config it defines; exit with one line if the file is missing, broken or has no get_config."""
    from sde_diffusion.app.config import load_config_file, resolve_config_path

    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            at, path = i + 1, argv[i + 1]
        elif arg.startswith("--config="):
            at, path = i, arg.split("=", 1)[1]
        else:
            continue
        try:
            resolved = resolve_config_path(path)
            config = load_config_file(resolved)
        except ValueError as err:
            sys.exit(f"error: {err}")
        argv[at] = resolved if at == i + 1 else f"--config={resolved}"
        return argv, config
    return argv, None


def _explain_flag_error(argv: list[str], config: Optional[ConfigDict], err: Exception) -> str:
    """One line for a flag error: a missing --config, an override that is not a field of the config
    file or has a value of the wrong type, or absl's own message."""
    from sde_diffusion.app.config import check_path

    if config is None:
        return "--config FILE is required, e.g. --config configs/vp/ring.py (see --help)"
    for path in [m.group(1) for m in (re.match(r"--config\.([\w.]+)", a) for a in argv) if m]:
        try:
            check_path(config, path)
        except ValueError as bad:
            return str(bad)
    match = _BAD_VALUE.search(str(err))
    if match:
        path, value = match.groups()
        *parents, leaf = path.split(".")
        group = config
        for key in parents:
            group = group[key]
        expected = group.get_type(leaf)
        return f"--config.{path}={value}: config.{path} must be {_TYPE_WORDS.get(expected, expected.__name__)}, got {value!r}"
    return str(err).splitlines()[0]


def main(argv: list[str]) -> None:
    from sde_diffusion.app.config import validate
    from sde_diffusion.app.resources import format_bytes
    from sde_diffusion.app.train import NonFiniteLossError, TrainingInterrupted
    from sde_diffusion.app.workdir import WorkdirLockedError, ensure_writable
    from sde_diffusion.core import distributed

    if len(argv) != 2 or argv[1] not in COMMANDS:
        given = f"unknown command {argv[1]!r}" if len(argv) > 1 else "no command"
        sys.exit(f"error: {given}; commands: {', '.join(COMMANDS.names())} (see --help)")
    if FLAGS.config is None:
        sys.exit("error: --config FILE is required, e.g. --config configs/vp/ring.py (see --help)")
    try:
        config = validate(FLAGS.config, training=argv[1] == "train")
        if FLAGS.pretrained is not None and argv[1] == "train":
            raise ValueError("--pretrained is for sample, likelihood and bench; train writes its own checkpoints")
        if distributed.launched() and argv[1] not in MULTI_PROCESS_COMMANDS:
            raise ValueError(f"{argv[1]!r} runs on one process; launch it without torchrun (multi-process: {', '.join(MULTI_PROCESS_COMMANDS)})")
        if FLAGS.workdir is None and argv[1] not in NO_WORKDIR_COMMANDS:
            raise ValueError("--workdir DIR is required: the run directory (see --help)")
        with distributed.process_group(config.device):
            if argv[1] not in NO_WORKDIR_COMMANDS:
                distributed.from_main(lambda: ensure_writable(FLAGS.workdir))
            COMMANDS.get(argv[1])(config, FLAGS.workdir)
    except (ValueError, FloatingPointError, NonFiniteLossError, WorkdirLockedError, distributed.ProcessGroupError) as err:
        sys.exit(f"error: {err}")
    except (MemoryError, RuntimeError) as err:
        failed = _ALLOCATION_FAILED.search(str(err))
        if failed is None and not isinstance(err, MemoryError):
            raise
        need = f"an allocation of {format_bytes(int(failed.group(1)))} failed" if failed and failed.group(1) else "out of memory"
        sys.exit(f"error: {need}; lower the sizes the command allocates (config.sampling.batch_size, config.eval.batch_size,"
                 " config.training.batch_size, config.data.n_train, config.data.n_test)")
    except TrainingInterrupted as err:
        if err.main:
            print(err, file=sys.stderr)
        sys.exit(128 + err.signum)
    except KeyboardInterrupt as err:
        print(str(err) or "aborted", file=sys.stderr)
        # Every ``finally`` has run; exit without interpreter finalisation, because CPython replaces
        # the exit status with death by SIGINT once a KeyboardInterrupt has crossed one of its embedded
        # PyRun_* calls, and a second signal can land anywhere (e.g. inside a lazy import).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + 2)


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """This package's warnings as one line ``warning: ...``; others as Python formats them."""
    if category.__module__.startswith("sde_diffusion."):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def run() -> None:
    warnings.formatwarning = _format_warning
    app.run(main, flags_parser=_parse_flags)
