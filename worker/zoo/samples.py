"""Sample grids of the zoo as PNG files (PIL only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def _to_uint8(x: Tensor) -> np.ndarray:
    """``[..., H, W]`` in [-1, 1] -> uint8 in [0, 255]."""
    return ((x.detach().clamp(-1.0, 1.0).numpy() + 1.0) * 127.5).round().astype(np.uint8)


def digit_grid(images: Tensor, ncol: int = 8, pad: int = 2, scale: int = 2) -> np.ndarray:
    """``images [N, 1, H, W]`` in [-1, 1] -> a uint8 grayscale grid ``[rows*(H+pad)+pad, ...]``, scaled."""
    n, _, h, w = images.shape
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), 128, np.uint8)
    pix = _to_uint8(images[:, 0])
    for k in range(n):
        r, c = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = pix[k]
    return grid.repeat(scale, 0).repeat(scale, 1)


def image_rows_grid(rows: list[Tensor], pad: int = 2) -> np.ndarray:
    """Rows of colour images (each ``[N, 3, H, W]`` in [-1, 1], same shape) -> uint8 ``[H', W', 3]``."""
    n, _, h, w = rows[0].shape
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 128, np.uint8)
    for r, row in enumerate(rows):
        pix = _to_uint8(row).transpose(0, 2, 3, 1)
        for c in range(n):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = pix[c]
    return grid


def save_png(grid: np.ndarray, path: Path) -> None:
    """Write a uint8 ``[H, W]`` or ``[H, W, 3]`` array as PNG (no metadata, so rebuilds are byte-stable)."""
    from PIL import Image

    Image.fromarray(grid).save(path, format="PNG", optimize=True)
