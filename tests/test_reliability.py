"""Faults injected into real ``python -m sde_diffusion`` processes: SIGKILL while a checkpoint is
written, SIGINT and SIGTERM during training (also to one rank of a torchrun job), a second signal,
damaged checkpoints, leftover temporaries and unwritable checkpoint directories. Run alone with
``pytest -m reliability``.

Every run trains the tiny ring model with a constant learning rate, so its trajectory does not
depend on ``n_iters``; ``reference`` trains it once without interruption, keeping a checkpoint every
10 steps, and an interrupted-and-resumed run must end bit-identical to it (the same process type:
a CLI process with one thread; the CPU's arithmetic is deterministic within it).
"""
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from processes import child_pid, wait_for

from sde_diffusion.training.checkpoints import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "vp" / "ring.py"
TINY = {
    "model.hidden": 32, "model.num_blocks": 1, "model.embedding_dim": 16, "training.batch_size": 64,
    "training.progress": False, "training.sample_freq": 0, "training.log_freq": 50, "data.n_train": 2000,
    "data.n_test": 100, "optim.schedule": "constant", "sampling.n_samples": 16,
}
#: Steps of the reference run, far more than any interrupted run reaches before its signal.
REFERENCE_STEPS = 300
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _command(verb: str, workdir: Path, **overrides: Any) -> list[str]:
    flags = [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]
    return [sys.executable, "-m", "sde_diffusion", verb, f"--config={CONFIG}", f"--workdir={workdir}", *flags]


def _run(verb: str, workdir: Path, timeout: float = 300, **overrides: Any) -> subprocess.CompletedProcess:
    return subprocess.run(_command(verb, workdir, **overrides), capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout)


def _start(verb: str, workdir: Path, log: Path, **overrides: Any) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(_command(verb, workdir, **overrides), stdout=fh, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)


def _steps(workdir: Path) -> list[int]:
    return [step for step, _ in list_checkpoints(str(workdir / "checkpoints"))]


def _temporaries(workdir: Path) -> list[str]:
    d = workdir / "checkpoints"
    return sorted(name for name in os.listdir(d) if name.endswith(".tmp")) if d.is_dir() else []


def _assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Bit-identical nested checkpoint contents (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _assert_matches_reference(reference: Path, workdir: Path, step: int) -> None:
    """ckpt_<step> of ``workdir`` holds exactly the reference run's state at that step (all but the
    config, whose n_iters and snapshot_freq differ)."""
    ours = load_checkpoint(str(workdir / "checkpoints" / f"ckpt_{step}.pt"))
    theirs = load_checkpoint(str(reference / "checkpoints" / f"ckpt_{step}.pt"))
    ours.pop("config"), theirs.pop("config")
    _assert_same(ours, theirs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run: ``REFERENCE_STEPS`` steps, every 10th checkpoint kept."""
    workdir = tmp_path_factory.mktemp("reference")
    done = _run("train", workdir, **{"training.n_iters": REFERENCE_STEPS, "training.snapshot_freq": 10, "training.keep_checkpoints": REFERENCE_STEPS})
    assert done.returncode == 0, done.stderr[-2000:]
    return workdir


@pytest.fixture
def trained(tmp_path, reference) -> Path:
    """A fresh workdir holding the reference run's checkpoints of steps 50 and 100."""
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    for step in (50, 100):
        shutil.copy(reference / "checkpoints" / f"ckpt_{step}.pt", workdir / "checkpoints")
    return workdir


# --- SIGKILL while a checkpoint is written ----------------------------------------------------------
#: Seconds after the temporary file of a checkpoint write appears at which the writer is killed in the
#: later kills: during the fsync, and around the rename, the pruning of old checkpoints and the next
#: steps (wherever they land, nothing may be lost).
KILL_DELAYS = (0.002, 0.02)
#: Checkpoints kept by the killed runs.
KEEP = 2


def _freeze_mid_write(proc: subprocess.Popen, workdir: Path, timeout: float = 120) -> list[str]:
    """Stop ``proc`` with SIGSTOP at random moments, each time waiting until the kernel reports it
    stopped (``waitpid`` with ``WUNTRACED``), until it is stopped with a checkpoint's temporary file
    present, i.e. between the temporary's creation and its rename; return those temporaries with
    the process left stopped. Checkpointing every step, the write is a fixed fraction of each step,
    so the chance that no stop lands in it falls geometrically with the number of stops."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.send_signal(signal.SIGSTOP)
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            pytest.fail(f"the run ended (wait status {status}) before a stop landed in a checkpoint write")
        if leftover := _temporaries(workdir):
            return leftover
        proc.send_signal(signal.SIGCONT)
        time.sleep(random.uniform(0.0, 0.002))
    proc.kill()
    pytest.fail(f"no stop landed in a checkpoint write in {timeout} s")


def test_sigkill_during_checkpoint_writes_loses_nothing_and_resumes_exactly(tmp_path, reference):
    """A run checkpointing every step (keeping ``KEEP``) is killed with SIGKILL, and restarted in the same
    workdir each time: first while frozen in the middle of a checkpoint write (``_freeze_mid_write``),
    then at each of ``KILL_DELAYS`` after a checkpoint's temporary file appears. After every kill each
    ``ckpt_*.pt`` present loads and verifies, and they are of consecutive steps, ``KEEP`` of them or
    ``KEEP + 1`` after a kill between a write's rename and the pruning of the oldest (the work lost to
    a SIGKILL, which cannot be caught, is the step being written). The next start removes the
    temporaries, saying so, and the resumed run ends bit-identical to the uninterrupted one."""
    workdir, log = tmp_path / "killed", tmp_path / "killed.log"
    leftover: list[str] = []
    for delay in (None, *KILL_DELAYS):
        start = max(_steps(workdir), default=0)
        proc = _start("train", workdir, log, **{"training.n_iters": REFERENCE_STEPS, "training.snapshot_freq": 1, "training.keep_checkpoints": KEEP})
        wait_for(lambda start=start: max(_steps(workdir), default=0) > start + 2, proc, "2 new checkpoints")
        if delay is None:
            frozen = _freeze_mid_write(proc, workdir)
        else:
            wait_for(lambda: _temporaries(workdir), proc, "a checkpoint write", poll=0.0002)
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        output = log.read_text()
        assert "Traceback" not in output
        if leftover:
            assert f"removed {len(leftover)} temporary file(s) of interrupted checkpoint writes: {', '.join(leftover)}" in output
        leftover = _temporaries(workdir)
        if delay is None:
            assert leftover == frozen, (leftover, frozen)
        steps = _steps(workdir)
        assert 1 <= len(steps) <= KEEP + 1 and steps == list(range(steps[0], steps[0] + len(steps))), steps
        for step in steps:
            assert load_checkpoint(str(workdir / "checkpoints" / f"ckpt_{step}.pt"))["step"] == step
    final = REFERENCE_STEPS // 2
    done = _run("train", workdir, **{"training.n_iters": final, "training.snapshot_freq": 10, "training.keep_checkpoints": 2})
    assert done.returncode == 0, done.stderr[-2000:]
    if leftover:
        assert f"removed {len(leftover)} temporary file(s) of interrupted checkpoint writes: {', '.join(leftover)}" in done.stdout
    assert _temporaries(workdir) == []
    _assert_matches_reference(reference, workdir, final)


# --- SIGINT and SIGTERM --------------------------------------------------------------------------------
STOPPED = re.compile(r"training stopped by (SIG\w+) after step (\d+), saved in (\S+/ckpt_(\d+)\.pt); rerun the command to resume")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_checkpoint_the_current_step(tmp_path, reference, signum):
    """Once training is past its second snapshot (every 20 steps), the signal stops it after the
    current step: exit status 128 + the signal number, one line naming the signal, the step and its
    checkpoint (no traceback), and that checkpoint holds that step. No step is lost: resuming it to
    the next multiple of 10 (+10) ends bit-identical to the uninterrupted run."""
    workdir, log = tmp_path / "run", tmp_path / "run.log"
    proc = _start("train", workdir, log, **{"training.n_iters": 10**6, "training.snapshot_freq": 20})
    wait_for(lambda: max(_steps(workdir), default=0) >= 40, proc, "the checkpoint of step 40")
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == 128 + signum
    output = log.read_text()
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    match = STOPPED.fullmatch(last)
    assert match, last
    name, step, path, file_step = match.groups()
    assert name == signal.Signals(signum).name and step == file_step and int(step) >= 40
    assert load_checkpoint(path)["step"] == int(step) and _steps(workdir)[-1] == int(step)
    target = (int(step) // 10 + 2) * 10
    assert target <= REFERENCE_STEPS
    done = _run("train", workdir, **{"training.n_iters": target, "training.snapshot_freq": 10**6})
    assert done.returncode == 0 and f"resumed from {path} at step {step}" in done.stdout, done.stdout[-2000:]
    _assert_matches_reference(reference, workdir, target)


def test_second_signal_aborts_at_once(tmp_path):
    """A SIGINT during start-up (a large data set being drawn) asks training to stop after its first
    step; a second SIGINT 0.2 s later aborts at once: exit status 130, one line, no traceback, no
    checkpoint and no temporary written."""
    workdir, log = tmp_path / "run", tmp_path / "run.log"
    proc = _start("train", workdir, log, **{"training.n_iters": 10**6, "data.n_train": 1_000_000})
    wait_for(lambda: (workdir / "checkpoints").is_dir(), proc, "training to start", poll=0.001)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    output = log.read_text()
    assert output.strip() == "aborted by a second signal (SIGINT) before the current step was checkpointed", output[-2000:]
    assert os.listdir(workdir / "checkpoints") == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
def test_sigterm_to_one_rank_stops_the_whole_job_after_one_step(tmp_path):
    """torchrun runs 2 processes; SIGTERM goes to rank 1 only (as a scheduler preempting one
    worker would). The stop requests are combined after each step, so both ranks stop after the same
    step, rank 0 checkpoints it and reports it once, and the job ends at once rather than at the
    collective timeout (set to 60 s here): no rank waits for a peer that left."""
    workdir, log = tmp_path / "job", tmp_path / "job.log"
    flags = [f"--config.{k}={v}" for k, v in {**TINY, "training.n_iters": 10**6, "training.snapshot_freq": 20}.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "--monitor_interval=1", "-m", "sde_diffusion", "train",
               f"--config={CONFIG}", f"--workdir={workdir}", *flags]
    env = {**ENV, "SDE_DIFFUSION_COLLECTIVE_TIMEOUT": "60"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        wait_for(lambda: max(_steps(workdir), default=0) >= 40, proc, "the checkpoint of step 40")
        os.kill(wait_for(lambda: child_pid(proc.pid, 1), proc, "rank 1's pid"), signal.SIGTERM)
        start = time.monotonic()
        proc.wait(timeout=120)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    stops = [m for m in map(STOPPED.search, output.splitlines()) if m]
    assert len(stops) == 1 and stops[0].group(1) == "SIGTERM", output[-3000:]
    step, path = int(stops[0].group(2)), stops[0].group(3)
    assert load_checkpoint(path)["step"] == step and _steps(workdir)[-1] == step >= 40
    assert "KeyboardInterrupt" not in output and "TrainingInterrupted" not in output and elapsed < 50, (elapsed, output[-3000:])


# --- damaged checkpoints -------------------------------------------------------------------------------
DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: bytes(range(256)) * 64,
}


def _damaged(workdir: Path, kind: str) -> tuple[Path, Path, bytes]:
    """Damage ckpt_100 of ``workdir``: (the bad file, the valid ckpt_50, the damaged bytes)."""
    bad, good = workdir / "checkpoints" / "ckpt_100.pt", workdir / "checkpoints" / "ckpt_50.pt"
    damaged = DAMAGE[kind](bad.read_bytes())
    bad.write_bytes(damaged)
    return bad, good, damaged


def _clean(done: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in done.stderr + done.stdout and "weights_only" not in done.stderr + done.stdout


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_sample_falls_back_past_a_damaged_latest_checkpoint(trained, kind):
    """The latest checkpoint (step 100) is damaged: ``sample`` warns in one line naming the bad file,
    what is wrong with it and the file it uses instead (step 50), samples, and leaves the bad file as
    it is; no traceback, no weights_only advice. (Every other damage, e.g. one flipped byte:
    tests/test_checkpoints.py.)"""
    bad, good, damaged = _damaged(trained, kind)
    sampled = _run("sample", trained)
    assert sampled.returncode == 0 and _clean(sampled), sampled.stderr[-2000:]
    warning = re.compile(rf"warning: checkpoint {re.escape(str(bad))} [^\n]+; using {re.escape(str(good))} \(step 50\) instead")
    assert warning.search(sampled.stderr), sampled.stderr[-2000:]
    assert bad.read_bytes() == damaged


def test_train_sets_a_damaged_latest_checkpoint_aside_and_resumes_exactly(trained, reference):
    """The latest checkpoint (step 100) is garbage: ``train`` warns alike, renames the bad file
    ``ckpt_100.pt.corrupt`` (its bytes kept: a new ckpt_100 will not overwrite it), resumes from step
    50 and ends bit-identical to the uninterrupted run."""
    bad, good, damaged = _damaged(trained, "garbage")
    done = _run("train", trained, **{"training.n_iters": 120, "training.snapshot_freq": 60})
    assert done.returncode == 0 and _clean(done), done.stderr[-2000:]
    moved = re.compile(rf"warning: checkpoint {re.escape(str(bad))} [^\n]+; renamed it ckpt_100.pt.corrupt; using {re.escape(str(good))} \(step 50\) instead")
    assert moved.search(done.stderr) and f"resumed from {good} at step 50" in done.stdout, done.stderr[-2000:]
    assert (trained / "checkpoints" / "ckpt_100.pt.corrupt").read_bytes() == damaged
    _assert_matches_reference(reference, trained, 120)


def test_every_checkpoint_damaged_is_a_one_line_error(trained):
    """Both checkpoints truncated: ``sample`` and ``train`` exit with status 1 and one line naming
    every file; nothing is renamed or deleted."""
    workdir = trained
    for step in (50, 100):
        path = workdir / "checkpoints" / f"ckpt_{step}.pt"
        path.write_bytes(path.read_bytes()[:1000])
    for verb in ("sample", "train"):
        done = _run(verb, workdir)
        assert done.returncode == 1 and done.stdout == "", (verb, done.stdout[-2000:])
        line = done.stderr.strip().splitlines()[-1]
        assert re.fullmatch(r"error: no valid checkpoint in \S+/checkpoints: checkpoint \S+/ckpt_100.pt is truncated [^;]+; checkpoint \S+/ckpt_50.pt is truncated .*", line), (verb, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == ["ckpt_100.pt", "ckpt_50.pt"]


# --- the checkpoint directory --------------------------------------------------------------------------
def _chattr(flag: str, path: Path) -> bool:
    return shutil.which("chattr") is not None and subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_immutable_checkpoint_directory_is_refused_before_training(trained):
    """An immutable checkpoint directory (chattr +i: not even root may write) is reported at start-up,
    in one line with the reason, before any step: no TensorBoard log is written and the checkpoints
    are untouched."""
    workdir = trained
    d = workdir / "checkpoints"
    if not _chattr("+i", d):
        pytest.skip("chattr +i is not available here")
    try:
        done = _run("train", workdir, **{"training.n_iters": 200})
    finally:
        _chattr("-i", d)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"error: checkpoint directory {str(d)!r} is not writable: Operation not permitted"
    assert not (workdir / "tensorboard").exists() and _steps(workdir) == [50, 100]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores the mode (the immutable directory test covers root)")
def test_read_only_checkpoint_directory_is_refused_before_training(tmp_path):
    """A read-only checkpoint directory (mode 0555) is reported at start-up in one line."""
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "checkpoints").chmod(0o555)
    try:
        done = _run("train", workdir)
    finally:
        (workdir / "checkpoints").chmod(0o755)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"error: checkpoint directory {str(workdir / 'checkpoints')!r} is not writable: Permission denied"
    assert not (workdir / "tensorboard").exists()
