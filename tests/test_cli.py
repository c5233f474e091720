"""The command line, run as a user would (``python -m sde_diffusion ...`` in a subprocess): train a
few steps, sample, and the errors for an unknown override and a diverging loss; plus the sample
files it writes. (Bad values are covered by test_config; each subprocess costs a few seconds of
imports, so there are four.)"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sde_diffusion.app.config import load_config
from sde_diffusion.app.plotting import image_grid
from sde_diffusion.app.workdir import load_score_fn, write_samples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RING = os.path.join(ROOT, "configs", "vp", "ring.py")
#: A tiny, fast model and data set for the smoke runs.
SMALL = ["--config.model.hidden=16", "--config.model.num_blocks=1", "--config.data.n_train=500", "--config.training.progress=False"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sde_diffusion", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``train`` for 4 steps with a checkpoint every 2 (keep 3)."""
    workdir = str(tmp_path_factory.mktemp("cli_run"))
    out = cli("train", "--config", RING, "--workdir", workdir, "--config.training.n_iters=4",
              "--config.training.snapshot_freq=2", "--config.training.sample_freq=0", *SMALL)
    assert out.returncode == 0, out.stderr
    return workdir, out


def test_train_writes_checkpoints_and_resolved_config(trained):
    workdir, out = trained
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["ckpt_2.pt", "ckpt_4.pt"]
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["training"]["n_iters"] == 4 and saved["model"]["hidden"] == 16
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert f"trained to step 4; checkpoints, TensorBoard logs and samples are under {workdir}" in out.stdout


def test_sample_writes_png_and_npz(trained):
    """``sample`` with overrides for a method's options (steps, the group's probability_flow)."""
    workdir, _ = trained
    out = cli("sample", "--config", RING, "--workdir", workdir, "--config.sampling.method=euler_maruyama",
              "--config.sampling.steps=5", "--config.sampling.euler_maruyama.probability_flow=True",
              "--config.sampling.n_samples=50", *SMALL)
    assert out.returncode == 0, out.stderr
    stem = os.path.join(workdir, "samples", "euler_maruyama")
    assert f"wrote {stem}.png" in out.stdout and f"wrote {stem}.npz" in out.stdout
    samples = np.load(stem + ".npz")["samples"]
    assert samples.shape == (50, 2) and np.isfinite(samples).all()
    assert os.path.getsize(stem + ".png") > 1000


def test_schedule_command_stores_a_schedule_that_sample_uses(trained):
    """``schedule`` fits a 4-NFE schedule for UniPC on the trained run and stores it; ``sample``
    with ``fitted_schedule`` samples on it, and names the stored ones when asked for a missing one."""
    workdir, _ = trained
    common = ["--config", RING, "--workdir", workdir, "--config.sampling.method=unipc", *SMALL]
    out = cli("schedule", *common, "--config.schedule.nfe=(4,)", "--config.schedule.n_samples=16")
    assert out.returncode == 0, out.stderr
    path = os.path.join(workdir, "schedules", "unipc_nfe4.json")
    with open(path) as f:
        record = json.load(f)
    assert record["method"] == "unipc" and record["nfe"] == 4 and len(record["times"]) == 4
    assert all(a > b for a, b in zip(record["times"], record["times"][1:]))
    out = cli("sample", *common, "--config.sampling.fitted_schedule=unipc_nfe4", "--config.sampling.n_samples=20")
    assert out.returncode == 0, out.stderr
    samples = np.load(os.path.join(workdir, "samples", "unipc.npz"))["samples"]
    assert samples.shape == (20, 2) and np.isfinite(samples).all()
    out = cli("sample", *common, "--config.sampling.fitted_schedule=unipc_nfe7")
    assert out.returncode != 0 and "no stored schedule 'unipc_nfe7'" in out.stderr and "unipc_nfe4" in out.stderr


def test_sample_refuses_another_model(trained):
    """Sampling loads the checkpoint only with the sde/model groups it was trained with (in-process:
    ``run.load_score_fn``, which ``sample``, ``likelihood`` and ``bench`` share)."""
    workdir, _ = trained
    config = load_config(RING, {"model.hidden": 32, "model.num_blocks": 1})
    with pytest.raises(ValueError, match=r"model\.hidden: 16 there, 32 here"):
        load_score_fn(config, workdir)


def test_unknown_override_is_named(tmp_path):
    out = cli("train", "--config", RING, "--workdir", str(tmp_path), "--config.training.n_iter=3")
    assert out.returncode != 0
    assert "unknown field config.training.n_iter; allowed in config.training: batch_size" in out.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_diverging_run_exits_nonzero_naming_the_step(tmp_path):
    """lr = 1e30 without warm-up (see test_train): the loss is inf at step 2; the exit status is 1."""
    out = cli("train", "--config", RING, "--workdir", str(tmp_path), "--config.optim.lr=1e30", "--config.optim.warmup=0",
              "--config.training.n_iters=5", "--config.training.snapshot_freq=1", *SMALL)
    assert out.returncode == 1
    assert "the loss is inf at step 2; training stopped, the last good checkpoint is" in out.stderr


def test_image_grid_layout():
    """5 images of 2×2 pixels, 3 per row, 1 pixel of padding: 2 rows, so a 1 × 7 × 10 grid
    (2·(2+1)+1 by 3·(2+1)+1) with image i at row i // 3, column i % 3 and zeros elsewhere (the sixth
    slot stays empty)."""
    x = torch.arange(1, 6, dtype=torch.float32)[:, None, None, None].expand(5, 1, 2, 2)
    grid = image_grid(x, nrow=3, pad=1)
    assert grid.shape == (1, 2 * 3 + 1, 3 * 3 + 1)
    for i in range(5):
        r, c = divmod(i, 3)
        assert torch.all(grid[0, 1 + 3 * r : 3 + 3 * r, 1 + 3 * c : 3 + 3 * c] == i + 1)
    assert float(grid.sum()) == 4 * sum(range(1, 6))


def test_write_samples_for_images(tmp_path):
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    png, npz = write_samples(str(tmp_path / "grid"), x, "ten images")
    assert np.array_equal(np.load(npz)["samples"], x.numpy())
    assert os.path.getsize(png) > 1000
