"""What the commands write: the ``sample`` command's batches (seeds per batch, incremental parts, a
rerun after a SIGKILL continues, torchrun splits the batches, one PNG per image), non-finite samples
refused, the workdir locks (a live holder named by pid, a dead holder's lock taken over), results
files that say what produced them (a likelihood on another data set gets its own file), guidance
weights checked, and scatter plots whose limits a few outliers cannot stretch."""
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from sde_diffusion.app.build import draw_samples
from sde_diffusion.app.commands import BATCH_SEED_STRIDE, sample_command
from sde_diffusion.app.config import load_config
from sde_diffusion.app.evaluate import likelihood_command, likelihood_path
from sde_diffusion.app.plotting import points_outside, robust_limits, scatter_figure
from sde_diffusion.app.train import train
from sde_diffusion.app.workdir import WorkdirLockedError, checkpoint_dir, load_run, lock_path, locked
from sde_diffusion.conditioning.guidance import (
    classifier_free_guidance,
    classifier_guidance,
    mixture_conditional_score_fn,
)
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import ring
from sde_diffusion.training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.reliability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RING = os.path.join(ROOT, "configs", "vp", "ring.py")
DIGITS = os.path.join(ROOT, "configs", "vp", "digits.py")
TINY = {"model.hidden": 16, "model.num_blocks": 1, "data.n_train": 500, "training.n_iters": 2, "training.snapshot_freq": 2,
        "training.sample_freq": 0, "training.progress": False}
#: A cheap sampler: Euler–Maruyama, and 250 samples in batches of 100 (two full batches and one of 50).
SAMPLE = {"sampling.method": "euler_maruyama", "sampling.steps": 5, "sampling.n_samples": 250, "sampling.batch_size": 100}


def flags(overrides):
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def cli(*args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sde_diffusion", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A ring run trained for 2 steps."""
    workdir = str(tmp_path_factory.mktemp("outputs_run"))
    train(load_config(RING, TINY), workdir)
    return workdir


# --- sample ---------------------------------------------------------------------------------------
def test_sample_draws_batches_with_their_own_seeds(run_dir):
    """250 samples in batches of 100: batch i is what ``draw_samples`` gives for its rows with seed
    config.seed + i·2³² (same process, same operations: equal), the parts are removed, and the npz
    says what produced it."""
    config = load_config(RING, {**TINY, **SAMPLE})
    png, npz = sample_command(config, run_dir)
    with np.load(npz) as f:
        x, meta = f["samples"], json.loads(str(f["meta"]))
    assert x.shape == (250, 2) and np.isfinite(x).all()
    run = load_run(config, run_dir)
    for i, rows in enumerate([slice(0, 100), slice(100, 200), slice(200, 250)]):
        expected, _ = draw_samples(config, run.sde, run.score_fn, 250, config.seed + i * BATCH_SEED_STRIDE, False, rows=rows)
        assert torch.equal(torch.from_numpy(x[rows]), expected), i
    assert not os.path.exists(npz.removesuffix(".npz") + ".parts") and os.path.getsize(png) > 1000
    assert meta["command"] == "sample" and meta["dataset"] == "ring" and meta["seed"] == config.seed
    assert meta["checkpoint"] == latest_checkpoint(checkpoint_dir(run_dir)) and meta["checkpoint_step"] == 2
    assert meta["method"] == "euler_maruyama" and meta["options"] == config.sampling.euler_maruyama.to_dict()
    assert meta["config"]["sampling"]["batch_size"] == 100


def test_sample_rerun_after_sigkill_continues(run_dir, capsys):
    """``sample`` (20 batches of 50, 20 steps each) is killed with SIGKILL once its first batch is on
    disk. A rerun with another seed is refused (the parts are of the first settings); a rerun with the
    same settings draws only the missing batches and ends with the samples of an uninterrupted run
    (another process, possibly another thread count: float32 rounding through 20 steps, far below
    the O(1) difference of any other seed)."""
    overrides = {**TINY, **SAMPLE, "sampling.steps": 20, "sampling.n_samples": 1000, "sampling.batch_size": 50}
    parts = os.path.join(run_dir, "samples", "euler_maruyama.parts")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sde_diffusion", "sample", f"--config={RING}", f"--workdir={run_dir}", *flags(overrides)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (os.path.isdir(parts) and any(n.startswith("batch_") for n in os.listdir(parts))):
            assert proc.poll() is None and time.time() < deadline, "the sample run ended before its first batch was seen"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = sorted(n for n in os.listdir(parts) if n.startswith("batch_") and n.endswith(".npz"))
    assert 1 <= len(done) < 20
    with pytest.raises(ValueError, match=r"holds batches of an interrupted run with other settings \(seed: 42 there, 43 here\)"):
        sample_command(load_config(RING, {**overrides, "seed": 43}), run_dir)
    config = load_config(RING, overrides)
    capsys.readouterr()
    _, npz = sample_command(config, run_dir)
    assert f"continuing {parts}: {20 - len(done)} of 20 batches left" in capsys.readouterr().out
    _, straight = sample_command(config, run_dir, tag="straight")
    resumed, expected = np.load(npz)["samples"], np.load(straight)["samples"]
    assert resumed.shape == (1000, 2)
    np.testing.assert_allclose(resumed, expected, rtol=0, atol=1e-4)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_splits_the_batches_into_one_file(run_dir):
    """2 processes deal out the 3 batches (rank 0: batches 0 and 2, rank 1: batch 1); rank 0 writes one
    file, equal to the 1-process file up to float32 rounding in another process."""
    overrides = {**TINY, **SAMPLE}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
               "-m", "sde_diffusion", "sample", f"--config={RING}", f"--workdir={run_dir}", *flags(overrides)]
    out = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    two = np.load(os.path.join(run_dir, "samples", "euler_maruyama.npz"))["samples"]
    _, npz = sample_command(load_config(RING, overrides), run_dir, tag="one_process")
    np.testing.assert_allclose(two, np.load(npz)["samples"], rtol=0, atol=1e-5)


def test_one_png_per_image(tmp_path):
    """``sampling.save_individual`` writes image i as ``samples/<tag>/<i>.png``, its grey levels those
    of the npz (through matplotlib's 256-entry grey colour map: within one 8-bit level, 1/255)."""
    overrides = {"model.nf": 8, "training.n_iters": 1, "training.batch_size": 16, "training.sample_freq": 0, "training.progress": False,
                 "sampling.method": "euler_maruyama", "sampling.steps": 2, "sampling.n_samples": 5, "sampling.batch_size": 2,
                 "sampling.save_individual": True}
    config = load_config(DIGITS, overrides)
    train(config, str(tmp_path))
    paths = sample_command(config, str(tmp_path))
    x = np.clip(np.load(paths[1])["samples"], 0, 1)
    folder = paths[2]
    assert sorted(os.listdir(folder)) == [f"{i:06d}.png" for i in range(5)]
    for i in range(5):
        image = plt.imread(os.path.join(folder, f"{i:06d}.png"))
        assert image.shape[:2] == (8, 8)
        np.testing.assert_allclose(image[..., 0], x[i, 0], atol=1 / 255 + 1e-6)


def test_nonfinite_samples_exit_nonzero_and_write_nothing(run_dir, tmp_path):
    """A checkpoint whose EMA weights are NaN: ``sample`` exits with status 1 and one line saying the
    values are not finite, and writes neither a plot nor an npz."""
    workdir = tmp_path / "nan_run"
    path = latest_checkpoint(checkpoint_dir(run_dir))
    state = load_checkpoint(path)
    state["ema"]["shadow"] = {k: torch.full_like(v, math.nan) for k, v in state["ema"]["shadow"].items()}
    save_checkpoint(checkpoint_dir(str(workdir)), state["step"], state, keep=1)
    out = cli("sample", f"--config={RING}", f"--workdir={workdir}", *flags({**TINY, **SAMPLE}))
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr and last.startswith("error: ") and "finite" in last, out.stderr
    assert not any(name.endswith((".png", ".npz")) for name in os.listdir(workdir / "samples"))


# --- locks ----------------------------------------------------------------------------------------
HOLD = "import sys, time; from sde_diffusion.app.workdir import locked\nwith locked(sys.argv[1], 'train'):\n    print('held', flush=True)\n    time.sleep(600)\n"


def test_lock_names_a_live_holder_and_takes_over_a_dead_ones(tmp_path, capfd):
    """A process holds ``.locks/train.lock``: a second taker (in this process, and ``train`` from the
    command line) is refused naming its pid; once the holder is killed with SIGKILL the lock file still
    names it, and the next taker takes it over with a note."""
    workdir = str(tmp_path)
    path = lock_path(workdir, "train")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, path], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(WorkdirLockedError, match=rf"{re.escape(path)} is locked by pid {holder.pid} on .* \(train\)"):
            with locked(path, "train"):
                pass
        out = cli("train", f"--config={RING}", f"--workdir={workdir}", *flags(TINY))
        assert out.returncode == 1 and f"is locked by pid {holder.pid}" in out.stderr.strip().splitlines()[-1]
        assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    finally:
        holder.kill()
        holder.wait()
    capfd.readouterr()
    with locked(path, "train"):
        assert json.loads(open(path).read())["pid"] == os.getpid()
    assert f"took over the lock {path} left by pid {holder.pid}" in capfd.readouterr().err
    assert open(path).read() == ""


# --- results files --------------------------------------------------------------------------------
def test_likelihood_records_what_produced_it_per_data_set(run_dir, capsys):
    """``likelihood`` writes ``eval/likelihood_<dataset>.json`` with the data set, the checkpoint and
    its step, the seed, the method and options and the config, and shows a progress bar; the same
    run evaluated on another data set writes its own file and leaves the first unchanged."""
    quick = {**TINY, "eval.n_samples": 4, "eval.batch_size": 4, "eval.rtol": 1e-2, "eval.atol": 1e-2}
    likelihood_command(load_config(RING, quick), run_dir)
    assert "log-likelihood: 100%" in capsys.readouterr().err
    ring_file = likelihood_path(run_dir, "ring")
    with open(ring_file) as fh:
        saved = json.load(fh)
    meta = saved["produced_by"]
    assert saved["n"] == 4 and math.isfinite(saved["nll"])
    assert meta["dataset"] == meta["trained_on"] == "ring" and meta["checkpoint_step"] == 2 and meta["seed"] == 42
    assert meta["method"] == "dopri5" and meta["options"]["rtol"] == 1e-2 and meta["config"]["eval"]["n_samples"] == 4
    before = open(ring_file).read()
    likelihood_command(load_config(RING, {**quick, "data.dataset": "moons"}), run_dir)
    assert "note: the run was trained on 'ring'; evaluating it on config.data.dataset='moons'" in capsys.readouterr().out
    with open(likelihood_path(run_dir, "moons")) as fh:
        moons = json.load(fh)["produced_by"]
    assert moons["dataset"] == "moons" and moons["trained_on"] == "ring"
    assert open(ring_file).read() == before


# --- guidance -------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf])
def test_guidance_weights_must_be_finite(weight):
    sde = get_sde("vp")
    score = mixture_conditional_score_fn(ring(), sde)
    with pytest.raises(ValueError, match=f"the guidance w must be a finite number, got {weight}"):
        classifier_free_guidance(score, 3, w=weight)
    with pytest.raises(ValueError, match=f"the guidance scale must be a finite number, got {weight}"):
        classifier_guidance(ring().score_fn(sde), lambda x, t: torch.zeros(x.shape[0], 8), 3, scale=weight)


# --- plots ----------------------------------------------------------------------------------------
def test_scatter_limits_ignore_a_few_far_outliers(gen):
    """5000 ring samples plus 5 points at 1e3: the axes still frame the ring (radius 2, std 0.1) and
    the panel says that 5 points fall outside; without outliers every point is inside."""
    x = ring().sample(5000, gen)
    far = torch.tensor([[1e3, 0.0], [-1e3, 1e3], [0.0, -1e3], [1e3, 1e3], [5e2, -5e2]])
    xlim, ylim = robust_limits(torch.cat([x, far]).double().numpy())
    assert all(-3.5 < lo < -2.0 and 2.0 < hi < 3.5 for lo, hi in (xlim, ylim))
    assert points_outside(torch.cat([x, far]).double().numpy(), xlim, ylim) == 5
    assert points_outside(x.double().numpy(), *robust_limits(x.double().numpy())) == 0
    fig = scatter_figure([("ring", torch.cat([x, far]))])
    assert fig.axes[0].get_title().endswith("5 of 5005 points outside the axes")
    plt.close(fig)
