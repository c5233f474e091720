"""Command line: ``python -m sde_diffusion <train|sample|likelihood|bench> --config FILE --workdir DIR``
with score_sde-style overrides such as ``--config.training.n_iters=2000`` (absl + ml_collections
``config_flags``; the config is locked, so a misspelt field is an error).

``torchrun --nproc_per_node=N -m sde_diffusion <train|likelihood|bench> ...`` runs the command on N
processes (``sde_diffusion.core.distributed``): data-parallel training, evaluation split across processes.
"""
from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from sde_diffusion.core.registry import Registry

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/vp/ring.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints/, tensorboard/, samples/, config.json.")
flags.mark_flags_as_required(["config", "workdir"])

Command = Callable[[ConfigDict, str], None]
COMMANDS: Registry[Command] = Registry("command")
#: Commands that split their work across the processes of a torchrun job.
MULTI_PROCESS_COMMANDS = ("train", "likelihood", "bench")


@COMMANDS.register("train")
def _train(config: ConfigDict, workdir: str) -> None:
    """Train (resuming from the latest checkpoint in the workdir)."""
    from sde_diffusion.app.train import train
    from sde_diffusion.core.distributed import is_main

    state = train(config, workdir)
    if is_main():
        print(f"trained to step {state.step}; checkpoints, TensorBoard logs and samples are under {workdir}")


@COMMANDS.register("sample")
def _sample(config: ConfigDict, workdir: str) -> None:
    """Sample the trained model with ``config.sampling``; writes a PNG and an .npz."""
    from sde_diffusion.app.commands import describe, sample_command

    print(describe(sample_command(config, workdir)))


@COMMANDS.register("likelihood")
def _likelihood(config: ConfigDict, workdir: str) -> None:
    """Test-set log-likelihood of the trained model (``config.eval``)."""
    from sde_diffusion.app.evaluate import likelihood_command

    likelihood_command(config, workdir)


@COMMANDS.register("bench")
def _bench(config: ConfigDict, workdir: str) -> None:
    """Sampler benchmark of the trained model (``config.bench``)."""
    from sde_diffusion.app.evaluate import bench_command

    bench_command(config, workdir)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a clear message for a ``--config.<field>`` override that does not exist
    (depending on where the path breaks off, absl or ml_collections raises an unhelpful
    UnrecognizedFlagError, AttributeError or KeyError)."""
    try:
        return FLAGS(argv)
    except (flags.UnrecognizedFlagError, AttributeError, KeyError):
        _explain_bad_override(argv)
        raise


def _explain_bad_override(argv: list[str]) -> None:
    """Exit with the first override whose path is not a field of the config file."""
    from sde_diffusion.app.config import check_path, load_config_file

    paths = [m.group(1) for m in (re.match(r"--config\.([\w.]+)", a) for a in argv) if m]
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    files += [b for a, b in zip(argv, argv[1:]) if a == "--config"]
    if not files:
        return
    config = load_config_file(files[0])
    for path in paths:
        try:
            check_path(config, path)
        except ValueError as err:
            sys.exit(f"FATAL Flags parsing error: {err}")


def main(argv: list[str]) -> None:
    from sde_diffusion.app.config import validate
    from sde_diffusion.app.train import NonFiniteLossError, TrainingInterrupted
    from sde_diffusion.core import distributed

    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m sde_diffusion <{'|'.join(COMMANDS.names())}> --config FILE --workdir DIR [--config.a.b=value ...]")
    try:
        config = validate(FLAGS.config, training=argv[1] == "train")
        if distributed.launched() and argv[1] not in MULTI_PROCESS_COMMANDS:
            raise ValueError(f"{argv[1]!r} runs on one process; launch it without torchrun (multi-process: {', '.join(MULTI_PROCESS_COMMANDS)})")
        with distributed.process_group(config.device):
            COMMANDS.get(argv[1])(config, FLAGS.workdir)
    except (ValueError, NonFiniteLossError, distributed.ProcessGroupError) as err:
        sys.exit(f"error: {err}")
    except TrainingInterrupted as err:
        if err.main:
            print(err, file=sys.stderr)
        sys.exit(128 + err.signum)
    except KeyboardInterrupt as err:
        print(str(err) or "aborted", file=sys.stderr)
        sys.exit(128 + 2)


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """This package's warnings as one line ``warning: ...``; others as Python formats them."""
    if category.__module__.startswith("sde_diffusion."):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def run() -> None:
    warnings.formatwarning = _format_warning
    app.run(main, flags_parser=_parse_flags)
