"""PNG output: scatter plots of 2-D samples and image grids."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def scatter_figure(panels: Sequence[tuple[str, torch.Tensor]], lim: Optional[float] = None) -> plt.Figure:
    """Side-by-side scatter plots of 2-D point sets, one panel per (title, points)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels):
        p = pts.detach().cpu().reshape(pts.shape[0], -1)[:, :2].numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5)
        ax.set_title(title)
        ax.set_aspect("equal")
        if lim is not None:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
    fig.tight_layout()
    return fig


def scatter_png(
    path: str,
    panels: Sequence[tuple[str, torch.Tensor]],
    lim: Optional[float] = None,
) -> str:
    """``scatter_figure`` saved as a PNG."""
    return _save(scatter_figure(panels, lim), path)


def _save(fig: plt.Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_grid(x: torch.Tensor, nrow: Optional[int] = None, pad: int = 1) -> torch.Tensor:
    """Tile a batch of images ``(B, C, H, W)`` into one ``(C, H', W')`` image, ``nrow`` per row
    (default ⌈√B⌉), separated by ``pad`` pixels of 0."""
    b, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    grid = x.new_zeros(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(b):
        r, k = divmod(i, nrow)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = x[i]
    return grid


def image_grid_png(path: str, x: torch.Tensor, title: str = "", nrow: Optional[int] = None) -> str:
    """A grid of images ``(B, C, H, W)`` with values in [0, 1] (grey for C = 1) as a PNG."""
    return image_grids_png(path, [(title, x)], nrow)


def image_grids_png(path: str, panels: Sequence[tuple[str, torch.Tensor]], nrow: Optional[int] = None) -> str:
    """Image grids side by side, one panel per (title, images ``(B, C, H, W)`` in [0, 1]), as a PNG."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 6.4), squeeze=False)
    for ax, (title, x) in zip(axes[0], panels):
        grid = image_grid(x.detach().cpu().float(), nrow).numpy()
        ax.imshow(grid[0] if grid.shape[0] == 1 else grid.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)
