"""Training: Adam with linear warm-up and gradient clipping, an EMA of the weights, atomic
checkpoints that resume exactly, TensorBoard logs and a tqdm bar.

One step (score_sde's ``optimization_manager`` + ``step_fn``), for n = 1, 2, ...:

    L = loss_fn(θ, batch)                        (``config.training.loss``)
    g ← ∇L,  g ← g · min(1, c / ‖g‖)             (clip the global norm at c = ``optim.grad_clip`` > 0)
    η_n = lr · min(1, n / warmup) · d(n / n_iters)  (linear warm-up; d: ``optim.schedule``)
    θ ← Adam(θ, g, η_n);  θ̄ ← EMA(θ̄, θ)

Everything random has its own seeded generator (``data``: batch indices; ``noise``: times, noise,
flips and dequantisation of the loss) or is seeded from ``config.seed`` (initial weights, dropout);
all their states are checkpointed, so a run interrupted and resumed in the same workdir ends with
the same weights as an uninterrupted one (bit for bit on the CPU). Batches stream from disk through
a DataLoader with ``config.data.num_workers`` processes (``sde_diffusion.data.loader``), whose data
generator state is that of the last batch consumed, however far the workers have read ahead.

Under ``torchrun`` the step is data-parallel (``sde_diffusion.core.distributed``): ``batch_size`` is the
global batch, drawn with its loss noise alike on every process, each of the W processes evaluating
the network on its B/W rows; the averaged gradient is the full-batch one, so W processes follow the
single-process trajectory up to floating-point summation order (without dropout, whose masks each
process draws for its own rows). Rank 0 alone logs and writes checkpoints, which any W resumes.

No work is lost: before the first step the checkpoint directory is checked to be writable and the
temporaries of interrupted checkpoint writes are removed; a damaged latest checkpoint is set aside
(``<name>.corrupt``, with a warning) for the newest valid one; SIGINT or SIGTERM finishes the current
step, checkpoints it and raises ``TrainingInterrupted`` (every process of a job stops after the same
step: the requests are combined after each step), and a second signal aborts at once.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from ml_collections import ConfigDict
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from sde_diffusion import models
from sde_diffusion.app.build import build_model, build_sde, draw_samples
from sde_diffusion.app.plotting import image_grid, scatter_figure
from sde_diffusion.app.workdir import check_compatible, checkpoint_dir, latest_state, write_samples
from sde_diffusion.core import distributed
from sde_diffusion.data import datasets
from sde_diffusion.data.loader import StepBatches
from sde_diffusion.training import losses
from sde_diffusion.training.checkpoints import check_writable, latest_checkpoint, remove_temporaries, save_checkpoint
from sde_diffusion.training.ema import EMA
from sde_diffusion.training.optim import OPTIMIZERS, learning_rate
from sde_diffusion.training.precision import autocast


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient; the checkpoints on disk are intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after a step, which was checkpointed (``signum``: the
    signal; ``main``: raised on rank 0, which reports it)."""

    def __init__(self, message: str, signum: int, main: bool = True) -> None:
        super().__init__(message)
        self.signum, self.main = signum, main


class StopRequest:
    """Records the first SIGINT or SIGTERM instead of raising; a second one raises
    ``KeyboardInterrupt`` at once. Installed only in the main thread, where Python runs handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum:
            raise KeyboardInterrupt(f"aborted by a second signal ({signal.Signals(signum).name}) before the current step was checkpointed")
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@dataclass
class TrainState:
    """Everything a checkpoint holds besides the config."""

    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    data_generator: torch.Generator
    noise_generator: torch.Generator
    step: int = 0

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_py, np_state[2:])),
                "python": random.getstate(),
                "data": self.data_generator.get_state(),
                "noise": self.noise_generator.get_state(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        name, key, *rest = rng["numpy"]
        np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
        random.setstate(_tuples(rng["python"]))
        self.data_generator.set_state(rng["data"])
        self.noise_generator.set_state(rng["noise"])


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _tuples(obj: Any) -> Any:
    return tuple(_tuples(v) for v in obj) if isinstance(obj, (list, tuple)) else obj


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def init_state(config: ConfigDict) -> TrainState:
    """Fresh state: seeds set, model initialised, EMA, optimiser and generators created."""
    seed_everything(config.seed)
    model = build_model(config)
    return TrainState(
        model=model,
        ema=EMA(model, config.training.ema_rate),
        optimizer=OPTIMIZERS.get(config.optim.optimizer)(model.parameters(), config.optim),
        data_generator=torch.Generator(config.device).manual_seed(config.seed + 1),
        noise_generator=torch.Generator(config.device).manual_seed(config.seed + 2),
    )


def prepare_checkpoint_dir(workdir: str) -> list[str]:
    """On rank 0, for every process: raise ``ValueError`` unless the checkpoint directory is writable,
    and remove the temporaries of interrupted checkpoint writes (their paths are returned)."""

    def prepare() -> list[str]:
        check_writable(checkpoint_dir(workdir))
        return remove_temporaries(checkpoint_dir(workdir))

    return distributed.from_main(prepare)


def restore(state: TrainState, config: ConfigDict, workdir: str) -> Optional[str]:
    """Load the newest valid checkpoint of ``workdir`` into ``state`` (on every process, from rank
    0's copy), setting damaged newer ones aside; its path, or None if there is none."""
    path, saved = latest_state(workdir, set_aside_damaged=True)
    if path is not None:
        check_compatible(config, ConfigDict(json.loads(saved["config"])), path)
        state.load_state_dict(saved)
    return path


def save(state: TrainState, config: ConfigDict, workdir: str) -> str:
    """Checkpoint ``state`` (refusing non-finite weights, so the last checkpoint is always good)."""
    for name, p in state.model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise NonFiniteLossError(f"parameter {name} is not finite at step {state.step}; not saving it")
    payload = {**state.state_dict(), "config": config.to_json()}
    return save_checkpoint(checkpoint_dir(workdir), state.step, payload, config.training.keep_checkpoints)


def train_step(
    state: TrainState,
    loss_fn: losses.LossFn,
    batch: torch.Tensor,
    optim: ConfigDict,
    n_iters: int,
    labels: Optional[torch.Tensor] = None,
    shard: Optional[distributed.RowShard] = None,
    precision: str = "fp32",
    network: Optional[nn.Module] = None,
) -> tuple[float, float, float]:
    """One optimiser step (module docstring) of a run of ``n_iters`` steps, with the batch's class
    ``labels`` for a class-conditional model; returns ``(loss, gradient norm, learning rate)`` and raises ``NonFiniteLossError`` before
    touching the weights if the loss or gradient is not finite. With a ``shard`` (multi-process) this
    process evaluates its rows of the global batch and the loss is the mean over processes. The forward
    pass runs under ``precision`` (``training.precision``) through ``network`` (default ``state.model``;
    a compiled ``state.model`` with ``training.compile``)."""
    n = state.step + 1
    state.model.train()
    network, rows = (network or state.model, slice(None)) if shard is None else (shard, shard.rows)
    with autocast(precision, batch.device):
        loss = loss_fn(network, batch, generator=state.noise_generator, labels=labels, rows=rows)
    value = distributed.mean(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the loss is {value} at step {n}")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = optim.grad_clip if optim.grad_clip > 0 else float("inf")
    grad_norm = float(nn.utils.clip_grad_norm_(state.model.parameters(), max_norm))
    if not math.isfinite(grad_norm):
        raise NonFiniteLossError(f"the gradient norm is {grad_norm} at step {n} (loss {value})")
    lr = learning_rate(n, optim, n_iters)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.step()
    state.ema.update(state.model)
    state.step = n
    return value, grad_norm, lr


def log_samples(writer: SummaryWriter, state: TrainState, config: ConfigDict, workdir: str, sde: Any) -> None:
    """Sample with the EMA weights and ``config.sampling``; log to TensorBoard and write
    ``samples/step_<n>.{png,npz}``. Uses its own generator: the training randomness is untouched."""
    with state.ema.averaged(state.model) as model:
        model.eval()
        score_fn = models.get_score_fn(sde, model)
        x, nfe = draw_samples(config, sde, score_fn, config.training.n_snapshot_samples, config.seed + state.step, progress=False)
    stem = os.path.join(workdir, "samples", f"step_{state.step}")
    write_samples(stem, x, f"step {state.step}, {config.sampling.method}, {nfe} NFE")
    if x.ndim == 2:
        writer.add_figure("samples", scatter_figure([(f"step {state.step}", x)]), state.step)
    else:
        writer.add_image("samples", image_grid(x.clamp(0, 1).cpu()), state.step)


def train(config: ConfigDict, workdir: str) -> TrainState:
    """Train per ``config`` (validated by ``config.validate``) in ``workdir``, resuming from its
    newest valid checkpoint; returns the final state. Raises ``ValueError`` before any step if the
    checkpoint directory is not writable, ``TrainingInterrupted`` after checkpointing the current step
    on SIGINT/SIGTERM, and ``NonFiniteLossError`` naming the step if the loss diverges, leaving the
    checkpoints written so far intact. In a multi-process run every process returns the same state
    once rank 0 has written the last checkpoint; if a process stops, the others raise
    ``distributed.ProcessGroupError`` naming the checkpoint to resume from."""
    with StopRequest().installed() as stop:
        return _train(config, workdir, stop)


def _train(config: ConfigDict, workdir: str, stop: StopRequest) -> TrainState:
    main = distributed.is_main()
    tc = config.training
    removed = prepare_checkpoint_dir(workdir)
    sde = build_sde(config)
    loss_fn = losses.get_loss_fn(sde, tc)
    conditional = bool(config.model.get("num_classes", 0))
    train_source = datasets.get_split(config.data)[0]
    dequantize = datasets.get_dequantizer(config.data)
    flip = bool(config.data.random_flip)
    state = init_state(config)
    resumed = restore(state, config, workdir)
    saved_step = state.step if resumed else -1
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    state.model.to(memory_format=memory_format)
    network = torch.compile(state.model) if tc.compile else state.model
    if main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    shard = distributed.shard_model(state.model, tc.batch_size)
    distributed.seed_other_ranks(config.seed + state.step)
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=state.step + 1) if main else None
    bar = tqdm(total=tc.n_iters, initial=state.step, desc="training", disable=not (tc.progress and main), dynamic_ncols=True)
    if main and removed:
        bar.write(f"removed {len(removed)} temporary file(s) of interrupted checkpoint writes: {', '.join(map(os.path.basename, removed))}")
    if main and shard is not None:
        bar.write(f"data-parallel on {distributed.describe()}: {tc.batch_size // distributed.world_size()} rows of each global batch of {tc.batch_size} per process")
    if main and resumed:
        bar.write(f"resumed from {resumed} at step {state.step}")
    batches = StepBatches(train_source, losses.rows_per_step(tc), state.data_generator, config.data.num_workers)
    try:
        while state.step < tc.n_iters:
            values, labels = next(batches)
            batch = datasets.to_model_space(config.data, values).to(config.device)
            labels = labels.to(config.device) if conditional else None
            if flip:
                batch = datasets.random_flip(batch, state.noise_generator)
            if dequantize is not None:
                batch = dequantize(batch, state.noise_generator)
            if batch.ndim == 4:
                batch = batch.contiguous(memory_format=memory_format)
            loss, grad_norm, lr = train_step(state, loss_fn, batch, config.optim, config.training.n_iters, labels, shard,
                                             tc.precision, network)
            bar.update(1)
            if main and state.step % tc.log_freq == 0:
                writer.add_scalar("training/loss", loss, state.step)
                writer.add_scalar("training/lr", lr, state.step)
                writer.add_scalar("training/grad_norm", grad_norm, state.step)
                bar.set_postfix(loss=f"{loss:.4f}")
            if main and (state.step % tc.snapshot_freq == 0 or state.step == tc.n_iters):
                save(state, config, workdir)
                saved_step = state.step
            if main and tc.sample_freq and (state.step % tc.sample_freq == 0 or state.step == tc.n_iters):
                log_samples(writer, state, config, workdir, sde)
            signum = distributed.max_over_ranks(stop.signum)
            if signum:
                raise _interrupted(state, config, workdir, signum, saved_step)
        distributed.barrier()
    except NonFiniteLossError as err:
        raise NonFiniteLossError(f"{err}; training stopped, {_last_checkpoint(workdir)}") from None
    except RuntimeError as err:
        if shard is None:
            raise
        raise distributed.ProcessGroupError(
            f"rank {distributed.rank()} of {distributed.world_size()} stopped after step {state.step}: {err}."
            f" If another process stopped first, the launcher's report names its rank; {_last_checkpoint(workdir)};"
            " rerun the command, with any number of processes, to resume from it"
        ) from err
    finally:
        batches.close()
        bar.close()
        if writer is not None:
            writer.close()
    return state


def _interrupted(state: TrainState, config: ConfigDict, workdir: str, signum: int, saved_step: int) -> TrainingInterrupted:
    """Checkpoint the current step (rank 0, unless it just was) once every process has stopped after it."""
    path = distributed.from_main(lambda: save(state, config, workdir) if saved_step != state.step else latest_checkpoint(checkpoint_dir(workdir)))
    name = signal.Signals(signum).name
    return TrainingInterrupted(f"training stopped by {name} after step {state.step}, saved in {path}; rerun the command to resume", signum, distributed.is_main())


def _last_checkpoint(workdir: str) -> str:
    last = latest_checkpoint(checkpoint_dir(workdir))
    return f"the last good checkpoint is {last}" if last else "no checkpoint was written"
