"""Multi-process training and evaluation on ``torch.distributed``, as launched by ``torchrun``.

torchrun starts one process per GPU (or per CPU worker) and tells each who it is through environment
variables: ``RANK`` r ∈ {0, ..., W-1} over the job, ``LOCAL_RANK`` on its node, ``WORLD_SIZE`` W and
the rendezvous ``MASTER_ADDR:MASTER_PORT``. ``process_group(device)`` joins that job (NCCL for a CUDA
device, process r on GPU ``LOCAL_RANK``; gloo on the CPU) and leaves it afterwards. Without those
variables it does nothing, and every helper below is the single-process case: rank 0 of 1, no
communication.

How the work is split:

* Training is data-parallel (``DistributedDataParallel``, Li et al. 2020). ``training.batch_size`` B is
  the global batch: every process draws the same global batch and the same loss noise from the shared
  seeded generators and evaluates the network on its contiguous block of B/W rows only
  (``batch_rows``, ``RowShard``). DDP averages the W block-mean gradients, which is the full-batch
  mean gradient, so Adam, the EMA and the generators follow on every process the trajectory of one
  process with the same B, up to floating-point summation order.
* Evaluation splits its N items into W contiguous blocks of ⌈N/W⌉ or ⌊N/W⌋ (``local_rows``). Each
  process finishes its block (an adaptive ODE solver takes the steps its block needs) before the
  results are gathered in rank order, so every process makes the same collective calls;
  ``gather_outcomes`` also gathers exceptions, so that one failing process fails all alike.
* Only rank 0 writes (checkpoints, TensorBoard, reports, console) and reads checkpoints
  (``from_main``). Checkpoints hold the plain network and the global step, so any W resumes them.
"""
from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")

#: The variables torchrun sets in every process it starts.
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: The communication backend for each kind of device.
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
#: Seconds a collective waits for the other processes before failing (overrides the default).
TIMEOUT_ENV = "SDE_DIFFUSION_COLLECTIVE_TIMEOUT"
#: Long enough for rank 0 to write a checkpoint or sample a snapshot while the others wait.
DEFAULT_TIMEOUT = timedelta(minutes=30)
#: Offset between the seeds of consecutive ranks (``rank_seed``), beyond any seed offset in use.
RANK_SEED_STRIDE = 2**32


class ProcessGroupError(RuntimeError):
    """A process of a multi-process job stopped: a collective operation failed or timed out."""


# --- the job ------------------------------------------------------------------------------------
def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one of a job."""
    return "WORLD_SIZE" in os.environ


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the process that logs and writes."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def collective_timeout() -> timedelta:
    """``$SDE_DIFFUSION_COLLECTIVE_TIMEOUT`` seconds, else ``DEFAULT_TIMEOUT``."""
    value = os.environ.get(TIMEOUT_ENV)
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{TIMEOUT_ENV}={value!r} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def backend(device: str) -> str:
    """The backend for ``device`` (``BACKENDS``): gloo for the CPU, NCCL for CUDA."""
    kind = torch.device(device).type
    if kind not in BACKENDS:
        raise ValueError(f"multi-process runs support devices {', '.join(BACKENDS)}, got config.device={device!r}")
    return BACKENDS[kind]


def setup(device: str, timeout: Optional[timedelta] = None) -> None:
    """Join the job torchrun started, on ``device`` (``config.device``): CUDA processes use GPU
    ``LOCAL_RANK`` (``torch.cuda.set_device``, so ``"cuda"`` means that GPU). Collectives fail after
    ``timeout`` (``collective_timeout()``) instead of waiting forever for a process that died."""
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE is set but {', '.join(missing)} not: launch with torchrun"
            f" (torchrun --nproc_per_node=N -m sde_diffusion ...), which sets {', '.join(TORCHRUN_ENV)}"
        )
    name, world = backend(device), int(os.environ["WORLD_SIZE"])
    if name == "nccl":
        _use_local_gpu(device, world)
    dist.init_process_group(name, timeout=timeout or collective_timeout())


def _use_local_gpu(device: str, world: int) -> None:
    if torch.device(device).index is not None and world > 1:
        raise ValueError(f"config.device={device!r} puts every process on one GPU; use 'cuda': process r then uses GPU LOCAL_RANK")
    if not torch.cuda.is_available():
        raise ValueError(f"config.device={device!r} but CUDA is not available; use config.device='cpu' (gloo)")
    if local_rank() >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={local_rank()} but this node has {torch.cuda.device_count()} GPU(s); start at most that many processes per node")
    torch.cuda.set_device(local_rank())


@contextmanager
def process_group(device: str, timeout: Optional[timedelta] = None) -> Iterator[None]:
    """``setup`` on entry and leave the job on exit when launched by torchrun; nothing otherwise."""
    if not launched():
        yield
        return
    setup(device, timeout)
    try:
        yield
    finally:
        dist.destroy_process_group()


def describe() -> str:
    """E.g. ``"2 processes (gloo)"``; ``"1 process"`` outside a job."""
    return f"{world_size()} processes ({dist.get_backend()})" if dist.is_initialized() else "1 process"


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


# --- splitting the work -------------------------------------------------------------------------
def split(n: int, world: int, rank: int, *, even: bool = False) -> slice:
    """Rows of process ``rank`` when n rows are cut into ``world`` contiguous blocks in rank order, the
    first n mod W of them one row longer; ``even`` requires W to divide n."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, {world}), got {rank}")
    if n < world:
        raise ValueError(f"cannot split {n} items over {world} processes; use at most {n} processes")
    size, extra = divmod(n, world)
    if even and extra:
        raise ValueError(f"{n} is not divisible by the {world} processes; use a multiple of {world}, e.g. {n - extra} or {n - extra + world}")
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


def local_rows(n: int) -> slice:
    """This process's block of n items (all of them on a single process)."""
    return split(n, world_size(), rank())


def batch_rows(batch_size: int) -> slice:
    """This process's B/W rows of the global batch of B = ``batch_size``. W must divide B: the mean of
    the W block means is then the batch mean, and the averaged gradient the full-batch one."""
    try:
        return split(batch_size, world_size(), rank(), even=True)
    except ValueError as err:
        raise ValueError(f"config.training.batch_size is the global batch: {err}") from None


def rank_seed(seed: int) -> int:
    """seed + r · 2³² for process r: independent random streams per process (sampler noise, dropout),
    and the single-process seed on rank 0."""
    return seed + rank() * RANK_SEED_STRIDE


def seed_other_ranks(seed: int) -> None:
    """Reseed the global torch RNG (dropout masks) of ranks r > 0 with ``rank_seed(seed)``, so that
    the processes draw independent masks for their rows; rank 0 keeps its stream, a single process's."""
    if rank() > 0:
        torch.manual_seed(rank_seed(seed))


# --- communication -------------------------------------------------------------------------------
def all_gather_objects(obj: T) -> list[T]:
    """Every process's picklable ``obj``, in rank order, on every process. Tensors must be on the CPU
    (a pickled CUDA tensor would come back on the sender's GPU)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """The concatenation along dim 0 of every process's x (their lengths may differ), in rank order,
    on x's device."""
    return torch.cat(all_gather_objects(x.detach().cpu())).to(x.device)


def mean(x: torch.Tensor) -> float:
    """The mean over processes of the scalar tensor x (its value on a single process)."""
    if world_size() == 1:
        return float(x)
    total = x.detach().clone()
    dist.all_reduce(total)
    return float(total) / world_size()


def max_over_ranks(value: int) -> int:
    """The largest of every process's integer ``value`` (itself on a single process); one small
    all-reduce, on the GPU under NCCL."""
    if world_size() == 1:
        return value
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor(value, dtype=torch.int64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.MAX)
    return int(total)


def gather_outcomes(fn: Callable[[], T]) -> list[T]:
    """``fn()`` on every process, their results in rank order on every process. If it raises on some
    processes, every process raises the exception of the lowest such rank after this one collective,
    so that callers that catch it stay in step. Results must be picklable CPU objects."""
    outcomes = all_gather_objects(_attempt(fn))
    for error, _ in outcomes:
        if error is not None:
            raise error
    return [value for _, value in outcomes]


def from_main(fn: Callable[[], T]) -> T:
    """``fn()`` evaluated on rank 0 and sent to every process (e.g. a checkpoint that only rank 0's
    disk holds); an exception on rank 0 is raised on every process."""
    if world_size() == 1:
        return fn()
    box = [_attempt(fn) if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    error, value = box[0]
    if error is not None:
        raise error
    return value


def _attempt(fn: Callable[[], T]) -> tuple[Optional[BaseException], Optional[T]]:
    """``(None, fn())`` or ``(exception, None)``; the exception is made picklable for sending."""
    try:
        return None, fn()
    except Exception as err:
        if world_size() == 1:
            return err, None
        try:
            pickle.dumps(err)
        except Exception:
            err = RuntimeError(f"{type(err).__name__} on rank {rank()}: {err}")
        return err, None


# --- data-parallel training -----------------------------------------------------------------------
class RowShard(nn.Module):
    """A data-parallel network seen as a whole-batch one.

    ``forward(x, *args)`` runs the ``DistributedDataParallel`` copy of ``network`` on this process's
    ``rows`` of x and of every per-row argument (noise levels, labels) and returns an output of x's
    shape that is zero outside ``rows``; the loss keeps only ``rows`` (``losses.get_loss_fn``), so the
    zeros never reach it. It carries the network's ``parameterization`` and ``sigma_data`` for
    ``models.get_score_fn``.
    """

    def __init__(self, network: nn.Module, rows: slice) -> None:
        super().__init__()
        on_gpu = next(network.parameters()).device.type == "cuda"
        self.ddp = DistributedDataParallel(network, device_ids=[local_rank()] if on_gpu else None)
        self.rows = rows
        self.parameterization, self.sigma_data = network.parameterization, network.sigma_data

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[self.rows] = self.ddp(x[self.rows], *(a[self.rows] for a in args))
        return out


def shard_model(network: nn.Module, batch_size: int) -> Optional[RowShard]:
    """The ``RowShard`` of ``network`` over this process's ``batch_rows``; None on a single process."""
    rows = batch_rows(batch_size)
    return RowShard(network, rows) if world_size() > 1 else None
