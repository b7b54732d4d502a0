"""Small image helpers shared by stages: tensors in [-1, 1] or [0, 1] -> PNG grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .io import atomic_path


def to_uint8(images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """[B, 3, H, W] float -> [B, H, W, 3] uint8."""
    lo, hi = value_range
    x = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return (x * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def image_grid(
    images: Tensor, nrow: int, value_range=(-1.0, 1.0), pad: int = 1, scale: int = 1
) -> np.ndarray:
    """Tile a batch into rows of ``nrow`` images, separated by ``pad`` white pixels."""
    arr = to_uint8(images, value_range)
    b, h, w, c = arr.shape
    rows = (b + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = arr[i]
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path
