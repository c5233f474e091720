"""The score-function protocol every layer shares."""
from __future__ import annotations

from typing import Optional, Protocol

import torch


class ScoreFn(Protocol):
    """``score_fn(x, t) -> ∇_x log p_t(x)`` for a ``(B, ...)`` state and ``(B,)`` times; a
    class-conditional score also takes ``labels``, a ``(B,)`` long tensor (``NULL_LABEL`` = ∅)."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor: ...
