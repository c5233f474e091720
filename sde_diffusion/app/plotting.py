"""PNG output: scatter plots of 2-D samples (with axis limits that a few far outliers cannot
stretch), image grids and one PNG per image."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

#: Robust axis limits: the [q, 1 - q] quantiles of each coordinate, widened by ``MARGIN`` of their
#: spread on each side, and never wider than the data.
QUANTILE, MARGIN = 0.005, 0.25


def robust_limits(p: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """``((x_lo, x_hi), (y_lo, y_hi))`` for points ``p`` (N, 2): per coordinate the ``QUANTILE`` and
    1 - ``QUANTILE`` quantiles of the finite points widened by ``MARGIN`` times their distance, clipped
    to the data's range (plus the same 5% padding matplotlib adds): a few far outliers change no limit."""
    finite = p[np.isfinite(p).all(axis=1)]
    if finite.shape[0] == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    out = []
    for c in finite.T:
        lo, hi = np.quantile(c, [QUANTILE, 1 - QUANTILE])
        low, high = c.min(), c.max()
        pad = 0.05 * max(high - low, 1e-12)
        width = MARGIN * max(hi - lo, 1e-12)
        out.append((float(max(lo - width, low - pad)), float(min(hi + width, high + pad))))
    return out[0], out[1]


def points_outside(p: np.ndarray, xlim: tuple[float, float], ylim: tuple[float, float]) -> int:
    """How many points (non-finite ones included) fall outside the axes."""
    inside = (p[:, 0] >= xlim[0]) & (p[:, 0] <= xlim[1]) & (p[:, 1] >= ylim[0]) & (p[:, 1] <= ylim[1])
    return int((~inside).sum())


def scatter_figure(panels: Sequence[tuple[str, torch.Tensor]], lim: Optional[float] = None) -> plt.Figure:
    """Side-by-side scatter plots of 2-D point sets, one panel per (title, points), on [-lim, lim]²
    or on ``robust_limits``; a panel with points outside its axes says how many."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels):
        p = pts.detach().cpu().reshape(pts.shape[0], -1)[:, :2].double().numpy()
        xlim, ylim = ((-lim, lim), (-lim, lim)) if lim is not None else robust_limits(p)
        ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        outside = points_outside(p, xlim, ylim)
        ax.set_title(title if not outside else f"{title}\n{outside} of {p.shape[0]} points outside the axes", fontsize=10)
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


def individual_pngs(directory: str, x: np.ndarray, first_index: int = 0) -> list[str]:
    """One PNG per image of ``x`` (B, C, H, W), values clipped to [0, 1] (grey for C = 1), named by
    its index ``first_index + i`` in ``directory``; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, image in enumerate(np.clip(x, 0.0, 1.0)):
        path = os.path.join(directory, f"{first_index + i:06d}.png")
        if image.shape[0] == 1:
            plt.imsave(path, image[0], cmap="gray", vmin=0.0, vmax=1.0)
        else:
            plt.imsave(path, image.transpose(1, 2, 0))
        paths.append(path)
    return paths
