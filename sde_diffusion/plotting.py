"""PNG output: scatter plots of 2-D samples and image grids."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def scatter_png(
    path: str,
    panels: Sequence[tuple[str, torch.Tensor]],
    lim: Optional[float] = None,
) -> str:
    """Side-by-side scatter plots of 2-D point sets, one panel per (title, points)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels):
        p = pts.detach().cpu().reshape(pts.shape[0], -1)[:, :2]
        ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5)
        ax.set_title(title)
        ax.set_aspect("equal")
        if lim is not None:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
