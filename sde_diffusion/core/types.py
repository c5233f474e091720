"""The one score-function protocol of the toolkit.

A score function maps a batch ``x`` of shape (B, ...) and times ``t`` of shape (B,) to
∇_x log p_t(x), of the shape of ``x``; a class-conditional one also takes ``labels`` (an int or a
(B,) integer tensor). Samplers, likelihoods, losses and guidance all take this one type.
"""
from __future__ import annotations

from typing import Optional, Protocol, Union

import torch

Labels = Union[int, torch.Tensor]


class ScoreFn(Protocol):
    """``score_fn(x, t) -> ∇log p_t(x)``, shape of x; ``labels`` for class-conditional models."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[Labels] = None, /) -> torch.Tensor: ...
