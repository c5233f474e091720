"""Rank-agnostic tensor helpers and input validation.

score_sde hard-codes ``[:, None, None, None]`` 26 times; here one helper
broadcasts a per-sample ``(B,)`` quantity against data of any rank.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

TimeLike = Union[float, int, torch.Tensor]


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a ``(B,)`` (or scalar) tensor to ``(B, 1, ..., 1)`` with ``ndim`` dims."""
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def batch_time(t: TimeLike, x: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as a ``(B,)`` tensor on ``x``'s device; a Python number is broadcast."""
    if not isinstance(t, torch.Tensor):
        return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        return t.to(x.device).expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a float or a ({x.shape[0]},) tensor, got shape {tuple(t.shape)}")
    return t.to(x.device)


def as_tensor_time(t: TimeLike, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``t`` as a tensor (a number becomes a 0-d tensor in float64 unless ``like`` is given)."""
    if isinstance(t, torch.Tensor):
        return t
    if like is not None:
        return torch.tensor(float(t), dtype=like.dtype, device=like.device)
    return torch.tensor(float(t), dtype=torch.float64)


def check_time(t: torch.Tensor, T: float, name: str = "t") -> None:
    """Raise ``ValueError`` if any time is non-finite or outside ``[0, T]``."""
    if t.numel() == 0:
        return
    lo, hi = float(t.min()), float(t.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got values in [{lo}, {hi}]")
    if lo < 0.0 or hi > T * (1 + 1e-6):
        bad = lo if lo < 0.0 else hi
        raise ValueError(f"{name} must lie in [0, {T}], got {bad}")


def finite_bounds(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 0-d tensors, both finite exactly when every value of x is, computed without a host sync:
    x's (min, max) for a non-empty floating x (NaN propagates into both, ±inf into one; a single
    reduction, where ``isfinite(x).all()`` makes a temporary), else 0 or NaN from ``isfinite``."""
    if x.is_floating_point() and x.numel():
        return torch.aminmax(x)
    flag = torch.where(torch.isfinite(x).all(), 0.0, math.nan)
    return flag, flag


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity."""
    if not bool(torch.isfinite(torch.stack(finite_bounds(x))).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite values (NaN or inf)")


def check_positive_int(value: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_increasing_pair(lo: float, hi: float, lo_name: str, hi_name: str) -> None:
    """Require finite 0 < lo < hi (e.g. beta_min < beta_max), naming the bad values."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{lo_name} and {hi_name} must be finite, got {lo}, {hi}")
    if lo <= 0:
        raise ValueError(f"{lo_name} must be > 0, got {lo}")
    if lo >= hi:
        raise ValueError(f"{lo_name} must be < {hi_name}, got {lo_name}={lo} >= {hi_name}={hi}")


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)
