"""Multi-process training and evaluation (``sde_diffusion.core.distributed``) with 2 gloo processes on the
loopback interface, against the same work done by this (single) process.

Two jobs are launched, the expensive part of the file: one with ``torch.multiprocessing`` (its
workers train, evaluate a likelihood and run a benchmark row, and report what each rank saw), and one
with ``torchrun -m sde_diffusion train``, whose rank 1 is killed with SIGKILL.
"""
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from ml_collections import ConfigDict
from processes import child_pid, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sde_diffusion.app.build import build_sde
from sde_diffusion.app.config import apply_overrides, get_digits_config, load_config, model_group, validate
from sde_diffusion.app.evaluate import evaluate_likelihood
from sde_diffusion.app.train import TrainState, init_state, train, train_step
from sde_diffusion.core import distributed
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import ring
from sde_diffusion.data import datasets
from sde_diffusion.data.loader import StepBatches
from sde_diffusion.evaluation.benchmark import Benchmark, Problem
from sde_diffusion.training import losses
from sde_diffusion.training.checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
#: Seconds a collective of the test jobs waits for a dead peer before failing (instead of 30 min).
TIMEOUT_S = "60"
#: Every random stream of a training step: batch indices, uniform dequantisation, label dropout,
#: importance-sampled times and the noise; no dropout (each process draws its own masks).
#: The run every multi-process test trains; the learning rate is pinned so the tolerance argument of
#: ``test_two_processes_train_like_one`` does not move with the digits demo's tuning.
TRAIN_OVERRIDES = {
    "training.n_iters": 6, "training.snapshot_freq": 3, "training.log_freq": 1, "training.batch_size": 32,
    "training.progress": False, "training.sample_freq": 0, "training.ema_rate": 0.9,
    "training.cond_drop_prob": 0.2, "training.weighting": "likelihood", "training.importance_sampling": True,
    "data.uniform_dequantization": True, "optim.warmup": 0, "optim.lr": 2e-3,
}
LIKELIHOOD_EPS, LIKELIHOOD_POINTS, LIKELIHOOD_BATCH = 1e-3, 32, 8
BENCH_METHOD, BENCH_STEPS, BENCH_N = "euler_maruyama:probability_flow=True", 20, 32


def _digits_config() -> ConfigDict:
    config = get_digits_config()
    config.model = model_group("mlp", dim=64, hidden=32, num_blocks=1, embedding_dim=16, num_classes=10)
    return validate(apply_overrides(config, TRAIN_OVERRIDES))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingScore:
    """The exact ring score under VP, recording the rows it is called on."""

    def __init__(self) -> None:
        self.score_fn = ring().score_fn(get_sde("vp"))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.detach().clone(), torch.as_tensor(t).detach().clone()))
        return self.score_fn(x, t)

    def start_points(self, t0: float) -> torch.Tensor:
        """The rows of the calls at t0: the initial values of the ODE solves that start there."""
        return torch.cat([x for x, t in self.calls if bool((t == t0).all())])

    def rows(self) -> int:
        return sum(x.shape[0] for x, _ in self.calls)


def _likelihood(score: RecordingScore) -> dict[str, float]:
    """The exact ring score's PF-ODE NLL of 32 ring points in 4 batches of 8: the 2 blocks of 16 rows
    hold 2 of those batches each, so every ODE system of the 2-process run is one of the 1-process run."""
    data = ring().sample(LIKELIHOOD_POINTS, torch.Generator().manual_seed(3), dtype=torch.float64)
    return evaluate_likelihood(get_sde("vp"), score, data, batch_size=LIKELIHOOD_BATCH, eps=LIKELIHOOD_EPS, rtol=1e-6, atol=1e-6)


def _bench_row(score: RecordingScore) -> tuple[Any, torch.Tensor, int]:
    """A deterministic benchmark row on the ring with the exact score: (row, reference, score rows
    evaluated by the row's own run, the reference being solved first)."""
    bench = Benchmark(Problem(sde=get_sde("vp"), score_fn=score, shape=(2,), target=ring(), n=BENCH_N, seed=5), reference_tol=1e-9)
    reference = bench.reference
    before = score.rows()
    row = bench.run(BENCH_METHOD, steps=BENCH_STEPS, deterministic=True)
    return row, reference, score.rows() - before


def _two_process_worker(rank: int, port: int, out: str) -> None:
    """Rank ``rank`` of a 2-process gloo job, joined through torchrun's environment variables."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), **{distributed.TIMEOUT_ENV: TIMEOUT_S})
    torch.set_num_threads(1)
    with distributed.process_group("cpu"):
        state = train(_digits_config(), os.path.join(out, "train"))
        likelihood_score, bench_score = RecordingScore(), RecordingScore()
        report = _likelihood(likelihood_score)
        row, reference, bench_rows = _bench_row(bench_score)
        torch.save({
            "model": state.model.state_dict(), "ema": state.ema.shadow, "optimizer": state.optimizer.state_dict(),
            "generators": [state.data_generator.get_state(), state.noise_generator.get_state()], "torch_rng": torch.get_rng_state(),
            "likelihood": report, "likelihood_starts": likelihood_score.start_points(LIKELIHOOD_EPS),
            "row": row, "reference": reference, "bench_rows": bench_rows,
        }, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[str, list[dict[str, Any]]]:
    """The 2-process job's workdir and each rank's results."""
    out = str(tmp_path_factory.mktemp("two_processes"))
    mp.spawn(_two_process_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    return out, [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[str, Any, torch.Tensor]:
    """The same training on this process: its workdir, final state and global torch RNG state."""
    workdir = str(tmp_path_factory.mktemp("one_process"))
    state = train(_digits_config(), workdir)
    return workdir, state, torch.get_rng_state()


class BlockGradients(torch.nn.Module):
    """The network evaluated on each process's block of the batch separately, in one process.

    Autograd then accumulates the block gradients: with the loss a mean over the B rows, the gradient
    is Σ_A/B + Σ_B/B for the row sums Σ_A, Σ_B of the two blocks, while the 2-process run all-reduces
    (Σ_A/(B/2) + Σ_B/(B/2))/2. Scaling by a power of 2 is exact in floating point, so the two are the
    same float32 operations: this reproduces the all-reduce's summation order without a second process.
    """

    rows = slice(None)

    def __init__(self, network: torch.nn.Module, batch_size: int) -> None:
        super().__init__()
        self.network, self.blocks = network, [distributed.split(batch_size, WORLD, r) for r in range(WORLD)]
        self.parameterization, self.sigma_data = network.parameterization, network.sigma_data

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.network(x[b], *(a[b] for a in args)) for b in self.blocks])


def train_in_blocks(config: ConfigDict, block_steps: int) -> TrainState:
    """``train``'s trajectory on this process, its first ``block_steps`` gradients summed in the
    2-process order (``BlockGradients``), the rest over the whole batch; the batches, their flips and
    dequantisation are drawn as ``train`` draws them."""
    tc = config.training
    state, loss_fn = init_state(config), losses.get_loss_fn(build_sde(config), tc)
    dequantize = datasets.get_dequantizer(config.data)
    batches = StepBatches(datasets.get_split(config.data)[0], losses.rows_per_step(tc), state.data_generator, 0)
    while state.step < tc.n_iters:
        values, labels = next(batches)
        batch = datasets.to_model_space(config.data, values)
        if config.data.random_flip:
            batch = datasets.random_flip(batch, state.noise_generator)
        if dequantize is not None:
            batch = dequantize(batch, state.noise_generator)
        shard = BlockGradients(state.model, tc.batch_size) if state.step < block_steps else None
        train_step(state, loss_fn, batch, config.optim, tc.n_iters, labels if config.model.get("num_classes", 0) else None, shard)
    return state


def ulp(x: torch.Tensor) -> float:
    """The spacing of float32 numbers at the largest |x|: one rounding of a weight update."""
    return float(torch.finfo(torch.float32).eps * x.abs().max().clamp_min(torch.finfo(torch.float32).tiny))


def order_tolerance(full: dict[str, torch.Tensor], blocks: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    """Per tensor: how far a 2-process run may end from ``full``, the 1-process run of ``steps`` steps.

    They do the same float32 operations except the order of the gradient's batch sum (two block
    sums all-reduced instead of one sum over the batch) and the kernels' blocking of 16-row instead of
    32-row products, both rounding differences of the gradient of a few units of u = 2⁻²⁴ times the
    sum of the rows' absolute contributions. Adam's step lr · m̂/(√v̂ + ε) divides a gradient error by
    the weight's RMS gradient √v̂, so a weight whose gradient nearly cancels over the batch amplifies it
    (a fixed atol cannot hold: 1.4e-6 after 6 steps was seen on one machine), and later steps carry it
    through the network. ``blocks`` is ``full``'s trajectory with the gradient summed in the 2-process
    order (``train_in_blocks``): |blocks − full| is the summation-order difference propagated through
    exactly these steps, on this machine's arithmetic. The kernels' difference is rounding of the same
    size propagated alike, so |two − full| ≤ |two − blocks| + |blocks − full| ≤ 2·max|blocks − full|,
    plus one rounding of the largest value per step for updates whose last bit rounds differently.
    """
    return {name: 2 * float((blocks[name] - full[name]).abs().max()) + steps * ulp(full[name]) for name in full}


# --- splitting the work -------------------------------------------------------------------------------
def test_split_is_contiguous_balanced_and_in_rank_order():
    """10 rows over 3 processes: blocks of 4, 3, 3 covering 0..9 in order; 8 over 2: 4 and 4."""
    assert [distributed.split(10, 3, r) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert [distributed.split(8, 2, r, even=True) for r in range(2)] == [slice(0, 4), slice(4, 8)]


def test_split_rejects_what_cannot_be_split():
    with pytest.raises(ValueError, match=r"10 is not divisible by the 3 processes; use a multiple of 3, e\.g\. 9 or 12"):
        distributed.split(10, 3, 0, even=True)
    with pytest.raises(ValueError, match="cannot split 1 items over 2 processes"):
        distributed.split(1, 2, 0)
    with pytest.raises(ValueError, match=r"rank must lie in \[0, 2\), got 2"):
        distributed.split(4, 2, 2)


def test_single_process_is_rank_0_of_1_without_communication():
    """Outside a job: the whole batch, the unchanged seed, the value itself, and exceptions raised
    as they are."""
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.batch_rows(7) == slice(0, 7) and distributed.rank_seed(42) == 42
    assert distributed.mean(torch.tensor(2.5)) == 2.5 and distributed.gather_outcomes(lambda: 3) == [3]
    assert distributed.shard_model(torch.nn.Linear(2, 2), 7) is None
    with pytest.raises(ZeroDivisionError):
        distributed.gather_outcomes(lambda: 1 / 0)


def test_launch_errors_name_what_is_missing(monkeypatch):
    """WORLD_SIZE without the rest of torchrun's variables, a bad timeout, and an unsupported device
    fail before any connection is attempted."""
    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="WORLD_SIZE is set but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not: launch with torchrun"):
        distributed.setup("cpu")
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "-3")
    with pytest.raises(ValueError, match="SDE_DIFFUSION_COLLECTIVE_TIMEOUT='-3' must be a positive number of seconds"):
        distributed.collective_timeout()
    with pytest.raises(ValueError, match="multi-process runs support devices cpu, cuda, got config.device='meta'"):
        distributed.backend("meta")


# --- two processes against one -------------------------------------------------------------------------
def test_two_processes_train_like_one(two_processes, one_process):
    """6 steps with a global batch of 32 on 2 processes (16 rows each) end where one process with the
    same seeds does: weights, EMA and Adam moments within ``order_tolerance`` (float32 rounding of the
    gradient's summation order, propagated through these 6 steps), and the data and noise generators
    in the identical state (every process drew the whole batch's randomness, not its half's). The
    global torch RNG (dropout) of rank 0 is the single process's, rank 1's its own. A wrong split
    (rows drawn twice or dropped, a sum for a mean, other noise) moves weights by a step, > 1e-3;
    every tensor training moves, moves by more than 100 times its tolerance. The EMA is bit-identical across ranks (the same
    all-reduced gradient on both)."""
    _, ranks = two_processes
    single = one_process[1]
    blocks = train_in_blocks(_digits_config(), block_steps=6)
    initial = init_state(_digits_config()).model.state_dict()
    weights = single.model.state_dict()
    tolerance = order_tolerance(weights, blocks.model.state_dict(), 6)
    for name, weight in weights.items():
        assert float((ranks[0]["model"][name] - weight).abs().max()) <= tolerance[name], name
        moved = float((weight - initial[name]).abs().max())
        assert moved == 0 or moved > 100 * tolerance[name], name
    assert max((weight - initial[name]).abs().max().item() for name, weight in weights.items()) > 1e-3
    tolerance = order_tolerance(single.ema.shadow, blocks.ema.shadow, 6)
    for name, shadow in single.ema.shadow.items():
        assert torch.equal(ranks[0]["ema"][name], ranks[1]["ema"][name]), name
        assert float((ranks[0]["ema"][name] - shadow).abs().max()) <= tolerance[name], name
    adam, adam_blocks = single.optimizer.state_dict()["state"], blocks.optimizer.state_dict()["state"]
    for key, moments in adam.items():
        for field in ("exp_avg", "exp_avg_sq"):
            bound = order_tolerance({field: moments[field]}, {field: adam_blocks[key][field]}, 6)[field]
            assert float((ranks[0]["optimizer"]["state"][key][field] - moments[field]).abs().max()) <= bound, (key, field)
    expected = [single.data_generator.get_state(), single.noise_generator.get_state()]
    for rank in ranks:
        assert all(torch.equal(a, b) for a, b in zip(rank["generators"], expected))
    assert torch.equal(ranks[0]["torch_rng"], one_process[2]) and not torch.equal(ranks[1]["torch_rng"], one_process[2])


def test_only_rank_0_writes_and_logs_the_global_loss(two_processes, one_process):
    """One TensorBoard event file, checkpoints at steps 3 and 6, and logged losses equal to the
    single process's full-batch losses (the mean of the two block means; float32 rounding, 1e-5)."""
    out, _ = two_processes
    assert len(os.listdir(os.path.join(out, "train", "tensorboard"))) == 1
    assert [step for step, _ in list_checkpoints(os.path.join(out, "train", "checkpoints"))] == [3, 6]
    losses = []
    for workdir in (os.path.join(out, "train"), one_process[0]):
        events = EventAccumulator(os.path.join(workdir, "tensorboard"), size_guidance={"scalars": 0}).Reload()
        losses.append([e.value for e in events.Scalars("training/loss")])
    assert len(losses[0]) == 6 and losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_sharded_likelihood_equals_one_process(two_processes):
    """Each rank integrates its own block of 16 points (the initial values of its solves at t = eps
    are exactly its block) and both return the 1-process report: the same ODE systems solved in the
    same batches, so the per-point values agree to float64 rounding and the mean and its standard
    error to 1e-10. The NLL itself is close to the true -log p_eps (the solver at 1e-6 and the prior
    mismatch at T, which is 1e-4 for the ring under VP) — within 0.01 nats."""
    _, ranks = two_processes
    score = RecordingScore()
    single = _likelihood(score)
    data = score.start_points(LIKELIHOOD_EPS)
    for rank, result in enumerate(ranks):
        assert torch.equal(result["likelihood_starts"], data[distributed.split(LIKELIHOOD_POINTS, WORLD, rank)])
        for key in ("nll", "nll_se", "bpd", "bpd_se", "nfe"):
            assert result["likelihood"][key] == pytest.approx(single[key], rel=0, abs=1e-10), key
        assert result["likelihood"]["n"] == LIKELIHOOD_POINTS
    sde = get_sde("vp")
    exact = -ring().log_prob(data, LIKELIHOOD_EPS, sde).mean().item()
    assert single["nll"] == pytest.approx(exact, abs=0.01)


def test_sharded_benchmark_row_equals_one_process(two_processes):
    """A deterministic 20-step row of 32 samples: each rank evaluates the score on its 16 latents only
    (NFE calls of 16 rows), and the gathered samples, reference and scores are the 1-process ones. The
    fixed-step samples agree to float64 rounding (1e-12); the two references are adaptive solves at
    tolerance 1e-9 over different blocks, each within ~1e-8 of the exact flow, so they agree to 1e-7,
    and the distance columns (≥ 1e-3 here) to relative 1e-4."""
    _, ranks = two_processes
    row, reference, rows = _bench_row(RecordingScore())
    assert rows == row.nfe * BENCH_N and row.nfe >= BENCH_STEPS
    for result in ranks:
        assert result["bench_rows"] == row.nfe * BENCH_N // WORLD and result["row"].nfe == row.nfe
        assert torch.allclose(result["reference"], reference, rtol=0, atol=1e-7)
        for column in ("median_dist", "rms_dist", "mode_switch", "energy", "mode_tv", "spread", "off_manifold", "mean_logp"):
            assert getattr(result["row"], column) == pytest.approx(getattr(row, column), rel=1e-4), column
    assert row.median_dist > 1e-3


# --- a killed rank, then resume -------------------------------------------------------------------------
RING_OVERRIDES = {
    "model.hidden": 32, "model.num_blocks": 1, "model.embedding_dim": 16, "training.batch_size": 64,
    "training.n_iters": 10**6, "training.snapshot_freq": 10, "training.keep_checkpoints": 2,
    "training.progress": False, "training.sample_freq": 0, "data.n_train": 2000, "data.n_test": 100,
    "optim.lr": 2e-3, "optim.schedule": "constant",
}


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
def test_killed_rank_fails_the_job_and_any_world_size_resumes(tmp_path):
    """torchrun runs 2 processes; once the first checkpoint exists, rank 1 is killed (SIGKILL). The
    job must exit non-zero, torchrun's report must name rank 1 and the signal, rank 0 must say which
    checkpoint to resume from, and that checkpoint must load. Resuming it on 1 process for 5 more
    steps must then reach the weights of an uninterrupted 1-process run: the 2-process steps before
    the kill follow the 1-process trajectory up to the gradient's summation order (``order_tolerance``,
    with the 2-process order reproduced here for the steps before the checkpoint), while one step
    moves a weight by up to lr = 2e-3."""
    workdir, log = tmp_path / "job", tmp_path / "job.log"
    flags = [f"--config.{k}={v}" for k, v in RING_OVERRIDES.items()]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "--monitor_interval=5", "-m", "sde_diffusion", "train",
               f"--config={REPO / 'configs' / 'vp' / 'ring.py'}", f"--workdir={workdir}", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", distributed.TIMEOUT_ENV: TIMEOUT_S}
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        wait_for(lambda: list_checkpoints(str(workdir / "checkpoints")), proc, "the first checkpoint", timeout=120)
        os.kill(wait_for(lambda: child_pid(proc.pid, 1), proc, "rank 1's pid", timeout=10), signal.SIGKILL)
        returncode = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert returncode != 0
    assert "data-parallel on 2 processes (gloo): 32 rows of each global batch of 64 per process" in output
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s*exitcode\s*: -9 .*SIGKILL", output), output[-3000:]
    path = latest_checkpoint(str(workdir / "checkpoints"))
    assert re.search(rf"rank 0 of 2 stopped after step \d+: .* the last good checkpoint is {re.escape(path)}; rerun the command", output)
    saved = load_checkpoint(path)
    step = saved["step"]
    assert step % 10 == 0 and step >= 10 and saved["ema"]["num_updates"] == step
    assert all(bool(torch.isfinite(v).all()) for v in saved["model"].values())

    config = load_config(str(REPO / "configs" / "vp" / "ring.py"), {**RING_OVERRIDES, "training.n_iters": step + 5})
    resumed = train(config, str(workdir))
    straight = train(config, str(tmp_path / "straight"))
    assert resumed.step == straight.step == step + 5
    blocks = train_in_blocks(config, block_steps=step)
    tolerance = order_tolerance(straight.model.state_dict(), blocks.model.state_dict(), step + 5)
    for name, weight in straight.model.state_dict().items():
        assert float((resumed.model.state_dict()[name] - weight).abs().max()) <= tolerance[name], name
    tolerance = order_tolerance(straight.ema.shadow, blocks.ema.shadow, step + 5)
    for name, shadow in straight.ema.shadow.items():
        assert float((resumed.ema.shadow[name] - shadow).abs().max()) <= tolerance[name], name
