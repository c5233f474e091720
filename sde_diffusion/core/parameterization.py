"""Exact conversions between the three output parameterisations of a diffusion model.

For the kernel x_t = α(t) x_0 + σ(t) ε (checklist NET-4, NET-5, TRN-11):

    score = ∇log p_t(x) = -ε̂ / σ                (noise  <-> score)
    x̂_0   = (x + σ² · score) / α                 (Tweedie; data <-> score)
    x̂_0   = (x - σ ε̂) / α                        (data   <-> noise)
    v̂     = α ε̂ - σ x̂_0                         (velocity; Salimans & Ho 2022, §4)
          ⇔ ε̂ = (α v̂ + σ x) / (α² + σ²)          (α² + σ² = 1 on the VP family)

Every conversion in the toolkit goes through ``to_score`` / ``from_score`` here.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from sde_diffusion.core.registry import Registry
from sde_diffusion.core.utils import append_dims

Converter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Parameterization:
    """A model output kind with its two exact maps to and from the score.

    Both maps take ``(value, x, alpha, sigma)`` with ``alpha``, ``sigma`` of shape (B,) (or scalars).
    """

    def __init__(self, name: str, to_score: Converter, from_score: Converter) -> None:
        self.name = name
        self.to_score = to_score
        self.from_score = from_score

    def __repr__(self) -> str:
        return f"Parameterization({self.name!r})"


PARAMETERIZATIONS: Registry[Parameterization] = Registry("parameterization")


def _b(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """``v`` broadcastable against x: a Python number as it is, a tensor as (B, 1, ..., 1) in x's dtype."""
    if isinstance(v, (int, float)):
        return v
    return append_dims(torch.as_tensor(v, dtype=x.dtype, device=x.device), x.ndim)


def score_from_noise(eps: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """score = -ε̂ / σ."""
    return -eps / _b(sigma, x)


def noise_from_score(score: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ε̂ = -σ · score."""
    return -_b(sigma, x) * score


def score_from_data(x0: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """score = (α x̂_0 - x) / σ² (Tweedie inverted)."""
    return (_b(alpha, x) * x0 - x) / _b(sigma, x) ** 2


def data_from_score(score: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Tweedie's formula x̂_0 = E[x_0 | x_t] = (x + σ² · score) / α."""
    if isinstance(alpha, float) and isinstance(sigma, float):  # one node's numbers: a fused multiply-add
        return torch.add(x, score, alpha=sigma**2).div_(alpha)
    return (x + _b(sigma, x) ** 2 * score) / _b(alpha, x)


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """score = -ε̂ / σ with ε̂ = (α v̂ + σ x) / (α² + σ²)."""
    a, s = _b(alpha, x), _b(sigma, x)
    return -(a * v + s * x) / ((a**2 + s**2) * s)


def velocity_from_score(score: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """v̂ = α ε̂ - σ x̂_0 with ε̂ = -σ · score and Tweedie's x̂_0."""
    a = _b(alpha, x)
    return a * noise_from_score(score, x, alpha, sigma) - _b(sigma, x) * data_from_score(score, x, alpha, sigma)


def _identity(score: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return score


for _p in (
    Parameterization("score", _identity, _identity),
    Parameterization("noise", score_from_noise, noise_from_score),
    Parameterization("data", score_from_data, data_from_score),
    Parameterization("velocity", score_from_velocity, velocity_from_score),
):
    PARAMETERIZATIONS.register(_p.name)(_p)


def convert(
    value: torch.Tensor, src: str, dst: str, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Convert a model output from parameterisation ``src`` to ``dst`` (via the score)."""
    score = PARAMETERIZATIONS.get(src).to_score(value, x, alpha, sigma)
    return PARAMETERIZATIONS.get(dst).from_score(score, x, alpha, sigma)
