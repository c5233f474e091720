"""Bad input at the command line, run as a user would: each case must exit non-zero with one line
naming the bad value and what is allowed, and no traceback.

Each case is its own process running the command line's real entry point, ``python -m sde_diffusion``
(``runpy.run_module("sde_diffusion", run_name="__main__")`` with the case's ``sys.argv``), with its
own exit status, stdout and stderr. Importing torch costs seconds per interpreter, so the cases are
forked from one interpreter that imported the package once (before any torch computation, so no
thread pool is forked); ``--help`` and the ``config`` command run as plain ``python -m`` subprocesses,
as do the smoke runs in test_cli."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.reliability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RING = "configs/vp/ring.py"

#: (id, arguments after ``python -m sde_diffusion``, fragment of the one-line error). ``{tmp}`` is a
#: fresh directory holding the broken config files written by ``bad_files``; ``{file}`` a plain file.
CASES = [
    ("lr-not-a-number", ["train", "--config", RING, "--workdir", "{tmp}/w", "--config.optim.lr=fast"],
     "--config.optim.lr=fast: config.optim.lr must be a number, got 'fast'"),
    ("n-iters-not-an-integer", ["train", "--config", RING, "--workdir", "{tmp}/w", "--config.training.n_iters=10.5"],
     "config.training.n_iters must be an integer, got '10.5'"),
    ("seed-not-an-integer", ["train", "--config", RING, "--workdir", "{tmp}/w", "--config.seed=abc"],
     "config.seed must be an integer, got 'abc'"),
    ("progress-not-a-bool", ["train", "--config", RING, "--workdir", "{tmp}/w", "--config.training.progress=maybe"],
     "config.training.progress must be true or false, got 'maybe'"),
    ("unknown-field", ["train", "--config", RING, "--workdir", "{tmp}/w", "--config.training.n_iter=3"],
     "unknown field config.training.n_iter; allowed in config.training: batch_size"),
    ("config-file-missing", ["train", "--config", "configs/vp/nope.py", "--workdir", "{tmp}/w"],
     "config file 'configs/vp/nope.py' does not exist"),
    ("config-file-without-get-config", ["train", "--config", "{tmp}/no_get_config.py", "--workdir", "{tmp}/w"],
     "no_get_config.py' defines no get_config()"),
    ("config-file-syntax-error", ["train", "--config", "{tmp}/syntax.py", "--workdir", "{tmp}/w"],
     "syntax.py' line 2: SyntaxError"),
    ("config-file-raises", ["train", "--config", "{tmp}/raises.py", "--workdir", "{tmp}/w"],
     "raises.py' line 5: ZeroDivisionError: division by zero"),
    ("no-config", ["train", "--workdir", "{tmp}/w"], "--config FILE is required"),
    ("no-workdir", ["train", "--config", RING], "--workdir DIR is required"),
    ("workdir-is-a-file", ["train", "--config", RING, "--workdir", "{file}"], "is a file, not a directory"),
    ("workdir-unwritable", ["train", "--config", RING, "--workdir", "/sys"], "--workdir '/sys' is not a writable directory"),
    ("workdir-impossible", ["train", "--config", RING, "--workdir", "{file}/run"], "is not a writable directory: Not a directory"),
    ("eval-batch-size-0", ["likelihood", "--config", RING, "--workdir", "{tmp}/w", "--config.eval.batch_size=0"],
     "bad value 0 for config.eval.batch_size; allowed: an integer >= 1"),
    ("eval-n-samples-0", ["likelihood", "--config", RING, "--workdir", "{tmp}/w", "--config.eval.n_samples=0"],
     "bad value 0 for config.eval.n_samples; allowed: an integer >= 1"),
    ("sampling-batch-too-large", ["sample", "--config", RING, "--workdir", "{tmp}/w", "--config.sampling.n_samples=10000000000000",
                                  "--config.sampling.batch_size=10000000000000"],
     "config.sampling.batch_size=10000000000000 needs at least 80.0 TB of memory"),
    ("n-samples-too-many-for-the-disk", ["sample", "--config", RING, "--workdir", "{tmp}/w", "--config.sampling.n_samples=10000000000000"],
     "config.sampling.n_samples=10000000000000 needs 160.0 TB of disk"),
    ("training-batch-too-large", ["train", "--config", RING, "--workdir", "{tmp}/w", "--config.training.batch_size=10000000000000"],
     "config.training.batch_size=10000000000000 needs at least 80.0 TB of memory"),
    ("training-set-too-large", ["train", "--config", RING, "--workdir", "{tmp}/w", "--config.data.n_train=10000000000000"],
     "an allocation of 80.0 TB failed"),
    ("individual-pngs-of-points", ["sample", "--config", RING, "--workdir", "{tmp}/w", "--config.sampling.save_individual=True"],
     "config.sampling.save_individual writes images; config.data.dataset='ring' has points"),
    ("unknown-command", ["trian", "--config", RING, "--workdir", "{tmp}/w"], "unknown command 'trian'; commands: bench, config,"),
]
if not torch.cuda.is_available():
    CASES.append(("cuda-without-cuda", ["train", "--config", RING, "--workdir", "{tmp}/w", "--config.device=cuda"],
                  "bad value 'cuda' for config.device; allowed: 'cpu' (this machine has no usable CUDA device"))


#: Forks one child per case; each runs ``python -m sde_diffusion`` with its arguments, stdout and
#: stderr going to ``<out>/<i>.out`` and ``<out>/<i>.err``, and its exit status to ``<out>/<i>.rc``.
ZYGOTE = textwrap.dedent("""
    import json, os, runpy, sys, traceback
    import sde_diffusion.app.cli, sde_diffusion.app.commands, sde_diffusion.app.evaluate, sde_diffusion.app.train
    cases, out = json.loads(sys.argv[1]), sys.argv[2]
    children = {}
    for i, args in enumerate(cases):
        sys.stdout.flush(); sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            for fd, suffix in ((1, "out"), (2, "err")):
                os.dup2(os.open(os.path.join(out, f"{i}.{suffix}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = [os.path.join(os.path.dirname(sde_diffusion.__file__), "__main__.py"), *args]
            try:
                runpy.run_module("sde_diffusion", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                if not isinstance(stop.code, int) and stop.code is not None:
                    print(stop.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
        children[pid] = i
    for _ in cases:
        pid, status = os.wait()
        with open(os.path.join(out, f"{children[pid]}.rc"), "w") as fh:
            fh.write(str(os.waitstatus_to_exitcode(status)))
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case, forked at once; ``{name: (returncode, stdout, stderr)}``."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    (tmp / "no_get_config.py").write_text("config = None\n")
    (tmp / "syntax.py").write_text("def get_config():\n    return (\n")
    (tmp / "raises.py").write_text("from sde_diffusion.app.config import get_default_config\n\n\ndef get_config():\n    return 1 / 0\n")
    (tmp / "afile").write_text("")
    (tmp / "out").mkdir()
    cases = [[a.format(tmp=tmp, file=tmp / "afile") for a in args] for _, args, _ in CASES]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", ZYGOTE, json.dumps(cases), str(tmp / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    def read(i, suffix):
        return (tmp / "out" / f"{i}.{suffix}").read_text()

    return {name: (int(read(i, "rc")), read(i, "out"), read(i, "err")) for i, (name, _, _) in enumerate(CASES)}


@pytest.mark.parametrize("name, args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_it(runs, name, args, message):
    returncode, stdout, stderr = runs[name]
    assert returncode != 0
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr


def test_help_lists_the_commands_and_how_to_list_fields():
    out = subprocess.run([sys.executable, "-m", "sde_diffusion", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0
    for command in ("train", "sample", "likelihood", "bench", "config"):
        assert f"\n  {command} " in out.stdout
    assert "python -m sde_diffusion config --config FILE" in out.stdout and "--config.GROUP.FIELD=VALUE" in out.stdout


def test_config_command_lists_every_field_with_type_and_value():
    out = subprocess.run([sys.executable, "-m", "sde_diffusion", "config", "--config", RING, "--config.optim.lr=0.5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "optim.lr: float = 0.5" in out.stdout.splitlines()
    assert "training.n_iters: int = " in out.stdout and "sampling.ode.rtol: float = " in out.stdout
