"""Optimisers and learning-rate schedules, by name (``config.optim.optimizer`` / ``config.optim.schedule``).

The learning rate of optimiser step n >= 1 of a run of ``n_iters`` steps is

    η_n = lr · min(1, n / warmup) · d(n / n_iters)      (linear warm-up, score_sde; d a decay schedule)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from sde_diffusion.core.registry import Registry

OptimizerFactory = Callable[[Iterable[nn.Parameter], Any], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


@OPTIMIZERS.register("adam")
def adam(params: Iterable[nn.Parameter], optim: Any) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient, as score_sde."""
    return torch.optim.Adam(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, weight_decay=optim.weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable[nn.Parameter], optim: Any) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019): decoupled weight decay."""
    return torch.optim.AdamW(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, weight_decay=optim.weight_decay)


#: Decay factors d(p) of the learning rate at the fraction p = n / n_iters of the run.
SCHEDULES: Registry[Callable[[float], float]] = Registry("learning-rate schedule")


@SCHEDULES.register("constant")
def constant_schedule(p: float) -> float:
    """d(p) = 1 (score_sde)."""
    return 1.0


@SCHEDULES.register("cosine")
def cosine_schedule(p: float) -> float:
    """d(p) = ½ (1 + cos(π min(p, 1))): from 1 to 0 at the end of the run (Loshchilov & Hutter 2017,
    without restarts)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0)))


def learning_rate(step: int, optim: Any, n_iters: int) -> float:
    """η_n = lr · min(1, n / warmup) · d(n / n_iters) for optimiser step n >= 1 of a run of ``n_iters``
    steps, d = ``SCHEDULES[optim.schedule]``; no warm-up when warmup = 0."""
    warmup = min(1.0, step / optim.warmup) if optim.warmup > 0 else 1.0
    return optim.lr * warmup * SCHEDULES.get(optim.schedule)(step / n_iters)
