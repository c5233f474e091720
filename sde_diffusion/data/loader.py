"""Training batches streamed from a ``Source`` through ``torch.utils.data.DataLoader``, in an order
that a checkpoint fixes.

Step n's batch is ``rows`` points drawn uniformly with replacement,
``idx = torch.randint(len(source), (rows,), generator=g)``, from the data generator g (the training
state's, on its device). The DataLoader's batch sampler draws these indices in the main process,
ahead of the training loop when its ``num_workers`` processes prefetch; ``StepBatches`` remembers the
generator's state after each draw and, as each batch is handed out, sets the state's own
``position`` generator to it. The position is therefore always "just after the last batch consumed",
which is what a checkpoint saves: a run resumed from it draws the same indices as one that never
stopped, whatever the number of workers.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Optional

import torch
from torch.utils.data import DataLoader, Sampler

from sde_diffusion.data.datasets import Batch, Source


def _as_batch(batch: Batch) -> Batch:
    """The DataLoader's collate function: a ``Source`` already returns whole batches."""
    return batch


class _StepSampler(Sampler[list[int]]):
    """Endless index batches of ``rows`` draws from ``generator``, recording its state after each."""

    def __init__(self, n: int, rows: int, generator: torch.Generator, states: deque) -> None:
        self.n, self.rows, self.generator, self.states = n, rows, generator, states

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            idx = torch.randint(self.n, (self.rows,), generator=self.generator, device=self.generator.device)
            self.states.append(self.generator.get_state())
            yield idx.tolist()


class StepBatches:
    """``next(batches)`` is step n's ``Batch`` of stored values (module docstring); ``position``
    follows the batches consumed. ``num_workers`` > 0 reads batches in worker processes, each
    prefetching ``prefetch_factor`` batches. Close it (or use it as a context manager) to stop the
    workers."""

    def __init__(self, source: Source, rows: int, position: torch.Generator, num_workers: int = 0,
                 prefetch_factor: Optional[int] = None) -> None:
        if not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be an integer >= 1, got {rows!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if len(source) < 1:
            raise ValueError("cannot draw batches from an empty data set")
        self.position = position
        ahead = torch.Generator(device=position.device)
        ahead.set_state(position.get_state())
        self._states: deque = deque()
        sampler = _StepSampler(len(source), rows, ahead, self._states)
        options = {"prefetch_factor": prefetch_factor or 2} if num_workers else {}
        # Its own generator for the workers' base seed, which would otherwise be drawn from (and shift)
        # the global torch RNG that dropout uses.
        seeds = torch.Generator().manual_seed(0)
        loader = DataLoader(source, batch_sampler=sampler, num_workers=num_workers, collate_fn=_as_batch, generator=seeds, **options)
        self._iterator = iter(loader)

    def __iter__(self) -> StepBatches:
        return self

    def __next__(self) -> Batch:
        batch = next(self._iterator)
        self.position.set_state(self._states.popleft())
        return batch

    def close(self) -> None:
        """Stop the worker processes (the DataLoader iterator shuts them down when released)."""
        self._iterator = None

    def __enter__(self) -> StepBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
