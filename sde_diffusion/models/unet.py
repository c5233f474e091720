"""A DDPM++-style U-Net in plain PyTorch (no compiled extensions; CPU and GPU).

Follows the DDPM++ configuration of score_sde's ``NCSNpp`` (Song et al. 2021, App. H) without its
FIR resampling and progressive-growing options: residual blocks GroupNorm → SiLU → conv3×3, plus a
projection of the time embedding, GroupNorm → SiLU → dropout → conv3×3 (zero-initialised), 1×1
skip on a channel change, and residual sums rescaled by 1/√2 (``skip_rescale``); downsampling by a
stride-2 conv (or 2×2 average pooling), upsampling by nearest-neighbour ×2 and a conv; self-attention
in the middle block at the lowest resolution and after the residual blocks at ``attn_resolutions``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from sde_diffusion.core.utils import check_positive_int
from sde_diffusion.models.embeddings import TimeEmbedding
from sde_diffusion.models.utils import MODELS, ScoreNetwork, check_dropout


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(32, C/4) groups (DDPM++), reduced to a divisor of C."""
    return nn.GroupNorm(math.gcd(channels, max(1, min(32, channels // 4))), channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """h = conv(Dropout(SiLU(GN(conv(SiLU(GN x)) + W temb)))),  out = (skip(x) + h) · r,
    r = 1/√2 with ``skip_rescale`` else 1 (score_sde's ``ResnetBlockDDPMpp``)."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, skip_rescale: bool) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.rescale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.skip(x) + h) * self.rescale


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H·W positions: out = (x + W_o Attn(GN x)) · r
    (score_sde's ``AttnBlockpp``, via ``scaled_dot_product_attention``; W_o zero-initialised)."""

    def __init__(self, channels: int, num_heads: int, skip_rescale: bool) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero_init(nn.Conv2d(channels, channels, 1))
        self.rescale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return (x + self.out(h)) * self.rescale


class Block(nn.Module):
    """A residual block, followed by self-attention when ``attn``."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, skip_rescale: bool,
                 attn: bool, num_heads: int) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, temb_dim, dropout, skip_rescale)
        self.attn = AttnBlock(out_ch, num_heads, skip_rescale) if attn else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, temb))


class Downsample(nn.Module):
    """Halve H and W: a 3×3 stride-2 conv (``with_conv``) or 2×2 average pooling."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if with_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour, then a 3×3 conv (``with_conv``)."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@MODELS.register("unet")
class UNet(ScoreNetwork):
    """DDPM++-style U-Net F(x, c_noise) for (B, num_channels, image_size, image_size) inputs.

    Level l (resolution image_size / 2^l) has nf · ch_mult[l] channels and ``num_res_blocks`` blocks
    on the way down (num_res_blocks + 1 on the way up, each taking a skip connection), with
    attention where the resolution is in ``attn_resolutions``; the middle is Res → Attn → Res at the
    lowest resolution. The last conv is zero-initialised, so an untrained model outputs 0.
    ``num_classes`` > 0 makes it class-conditional (``TimeEmbedding``): ``forward(x, c_noise, labels)``.
    """

    def __init__(
        self,
        *,
        image_size: int = 8,
        num_channels: int = 1,
        nf: int = 64,
        ch_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (),
        num_heads: int = 1,
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        skip_rescale: bool = True,
        embedding_type: str = "fourier",
        embedding_scale: Optional[float] = None,
        parameterization: str = "noise",
        sigma_data: float = 0.5,
        num_classes: int = 0,
    ) -> None:
        super().__init__(parameterization, sigma_data)
        ch_mult, attn_resolutions = tuple(ch_mult), tuple(attn_resolutions)
        for name, value in (("image_size", image_size), ("num_channels", num_channels), ("nf", nf),
                            ("num_res_blocks", num_res_blocks), ("num_heads", num_heads)):
            check_positive_int(value, name)
        if not ch_mult:
            raise ValueError("ch_mult must name at least one level")
        for m in ch_mult:
            check_positive_int(m, "each ch_mult entry")
        check_dropout(dropout)
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"image_size={image_size} must be divisible by 2^{len(ch_mult) - 1} for ch_mult={ch_mult}")
        resolutions = [image_size // 2**level for level in range(len(ch_mult))]
        unknown = sorted(set(attn_resolutions) - set(resolutions))
        if unknown:
            raise ValueError(f"attn_resolutions {unknown} are not resolutions of this U-Net; allowed: {resolutions}")
        self.image_size, self.num_channels = image_size, num_channels
        temb_dim = 4 * nf
        self.time_embedding = TimeEmbedding(nf, temb_dim, embedding_type, embedding_scale, num_classes)
        block_args = dict(temb_dim=temb_dim, dropout=dropout, skip_rescale=skip_rescale, num_heads=num_heads)

        self.conv_in = nn.Conv2d(num_channels, nf, 3, padding=1)
        chans = [nf]
        ch = nf
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            attn = resolutions[level] in attn_resolutions
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(Block(ch, nf * mult, attn=attn, **block_args))
                ch = nf * mult
                chans.append(ch)
            self.down.append(blocks)
            if level < len(ch_mult) - 1:
                self.downsample.append(Downsample(ch, resamp_with_conv))
                chans.append(ch)

        self.mid = nn.ModuleList([Block(ch, ch, attn=True, **block_args), Block(ch, ch, attn=False, **block_args)])

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            attn = resolutions[level] in attn_resolutions
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(Block(ch + chans.pop(), nf * mult, attn=attn, **block_args))
                ch = nf * mult
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(Upsample(ch, resamp_with_conv))

        self.norm_out = group_norm(ch)
        self.conv_out = zero_init(nn.Conv2d(ch, num_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        expected = (self.num_channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"UNet expects inputs of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        temb = self.time_embedding(c_noise, labels)
        h = self.conv_in(x)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, temb)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        for block in self.mid:
            h = block(h, temb)
        for level, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            if level < len(self.upsample):
                h = self.upsample[level](h)
        return self.conv_out(F.silu(self.norm_out(h)))
