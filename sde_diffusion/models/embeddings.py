"""Embeddings of the scalar noise level c_noise = log(σ/α) that every network is conditioned on.

Two feature maps γ(c) ∈ R^dim, followed by the shared two-layer projection of DDPM (Ho et al. 2020,
App. B): temb = W₂ SiLU(W₁ γ(c)); class-conditional networks add a learned label embedding to it.

* ``fourier``: random Fourier features γ(c) = [sin 2π w c, cos 2π w c], w ~ N(0, scale²) fixed at
  construction (Tancik et al. 2020; score_sde's ``GaussianFourierProjection`` on log σ, scale 16).
* ``sinusoidal``: the Transformer/DDPM positional features γ(c) = [sin ω_k c, cos ω_k c] with
  ω_k = scale · max_period^(-k / (dim/2 - 1)) (Vaswani et al. 2017, Sec. 3.5; DDPM's timestep
  embedding). DDPM feeds integer steps 0..999 with scale 1; log(σ/α) spans about 15 units across the
  VP/VE schedules, so the default scale 100 gives it a comparable range of arguments.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from sde_diffusion.core.registry import Registry

EMBEDDINGS: Registry[type[PeriodicFeatures]] = Registry("time embedding")

#: The label that stands for ∅, "no class": the unconditional model of a class-conditional network.
NULL_LABEL = -1


def _check_even(dim: int) -> None:
    if not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"embedding dim must be an even integer >= 2, got {dim!r}")


class PeriodicFeatures(nn.Module):
    """γ(c) = [sin ω c, cos ω c] for a fixed frequency vector ω (a buffer: saved with the weights)."""

    def __init__(self, freqs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("freqs", freqs)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = c[:, None].to(self.freqs.dtype) * self.freqs
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


@EMBEDDINGS.register("fourier")
class GaussianFourierEmbedding(PeriodicFeatures):
    """ω = 2π w, w ~ N(0, scale²) drawn once at construction."""

    default_scale = 16.0

    def __init__(self, dim: int, scale: float = default_scale) -> None:
        _check_even(dim)
        super().__init__(2 * math.pi * scale * torch.randn(dim // 2))


@EMBEDDINGS.register("sinusoidal")
class SinusoidalEmbedding(PeriodicFeatures):
    """ω_k = scale · max_period^(-k/(dim/2 - 1)), k = 0..dim/2-1 (geometric, highest first)."""

    default_scale = 100.0

    def __init__(self, dim: int, scale: float = default_scale, max_period: float = 10000.0) -> None:
        _check_even(dim)
        if dim < 4:
            raise ValueError(f"sinusoidal embedding dim must be >= 4, got {dim}")
        k = torch.arange(dim // 2, dtype=torch.float32)
        super().__init__(scale * torch.exp(-math.log(max_period) * k / (dim // 2 - 1)))


class TimeEmbedding(nn.Module):
    """temb = W₂ SiLU(W₁ γ(c_noise)) with γ one of ``EMBEDDINGS`` (DDPM's timestep MLP), plus, for a
    class-conditional network (``num_classes`` = C > 0), a learned vector E[y] of the label y: rows
    0, ..., C-1 for the classes and row C for ∅ (``NULL_LABEL``; ``labels=None`` means ∅ for all), the
    unconditional model learnt by condition dropout (Ho & Salimans 2022, Alg. 1)."""

    def __init__(
        self, dim: int, out_dim: int, kind: str = "fourier", scale: Optional[float] = None, num_classes: int = 0
    ) -> None:
        super().__init__()
        cls = EMBEDDINGS.get(kind)
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"embedding scale must be a positive number, got {scale!r}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: unconditional), got {num_classes!r}")
        self.features = cls(dim, cls.default_scale if scale is None else scale)
        self.proj = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.num_classes = num_classes
        self.label_embedding = nn.Embedding(num_classes + 1, out_dim) if num_classes else None

    def forward(self, c_noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        temb = self.proj(self.features(c_noise))
        if self.label_embedding is None:
            if labels is not None:
                raise ValueError("labels were given to an unconditional network (num_classes=0)")
            return temb
        if labels is None:
            labels = torch.full(c_noise.shape, NULL_LABEL, dtype=torch.long, device=c_noise.device)
        if labels.shape != c_noise.shape:
            raise ValueError(f"labels must have shape {tuple(c_noise.shape)}, got {tuple(labels.shape)}")
        if int(labels.min()) < NULL_LABEL or int(labels.max()) >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}) or be NULL_LABEL = {NULL_LABEL}")
        return temb + self.label_embedding(torch.where(labels == NULL_LABEL, self.num_classes, labels))
