"""A time-conditioned residual MLP for low-dimensional data (the 2-D targets, small vectors)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from sde_diffusion.core.utils import check_positive_int
from sde_diffusion.models.embeddings import TimeEmbedding
from sde_diffusion.models.utils import MODELS, ScoreNetwork, check_dropout


class ResidualMLPBlock(nn.Module):
    """h ← h + W₂ Dropout(SiLU(W₁ SiLU(LayerNorm h) + V temb)), with W₂ zero-initialised so that
    every block starts as the identity (the pre-activation residual block of He et al. 2016 with
    DDPM's additive time injection)."""

    def __init__(self, hidden: int, temb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.temb = nn.Linear(temb_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        u = self.fc1(nn.functional.silu(self.norm(h))) + self.temb(temb)
        return h + self.fc2(self.dropout(nn.functional.silu(u)))


@MODELS.register("mlp")
class ScoreMLP(ScoreNetwork):
    """F(x, c) = W_out SiLU(LayerNorm(h_L)), h_0 = W_in x, h_l = Block_l(h_{l-1}, temb(c)).

    ``dim`` is the number of data dimensions; inputs of any shape (B, ...) with ``dim`` entries per
    sample are flattened and the output takes the input's shape. The output layer is zero-initialised,
    so an untrained model outputs 0 for every input. ``num_classes`` > 0 makes it class-conditional
    (``TimeEmbedding``): ``forward(x, c_noise, labels)``.
    """

    def __init__(
        self,
        *,
        dim: int = 2,
        hidden: int = 256,
        num_blocks: int = 3,
        embedding_type: str = "fourier",
        embedding_dim: int = 64,
        embedding_scale: Optional[float] = None,
        dropout: float = 0.0,
        parameterization: str = "noise",
        sigma_data: float = 0.5,
        num_classes: int = 0,
    ) -> None:
        super().__init__(parameterization, sigma_data)
        for name, value in (("dim", dim), ("hidden", hidden), ("num_blocks", num_blocks)):
            check_positive_int(value, name)
        check_dropout(dropout)
        self.dim = dim
        temb_dim = 4 * embedding_dim
        self.time_embedding = TimeEmbedding(embedding_dim, temb_dim, embedding_type, embedding_scale, num_classes)
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, temb_dim, dropout) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden, dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x[0].numel() != self.dim:
            raise ValueError(f"ScoreMLP(dim={self.dim}) got inputs of shape {tuple(x.shape)}")
        temb = self.time_embedding(c_noise, labels)
        h = self.input(x.reshape(x.shape[0], self.dim))
        for block in self.blocks:
            h = block(h, temb)
        return self.output(nn.functional.silu(self.out_norm(h))).reshape(x.shape)
