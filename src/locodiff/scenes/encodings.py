"""Conditioner encodings shared by data sets and models; all differentiable in the locations.

Two views of the same set of locations:
- *tokens*: Fourier features of each (x, y) — frequencies stay low (at most 2**6 cycles per image)
  because high frequencies alias and make Jacobians w.r.t. locations meaningless;
- *maps*: one Gaussian bump per conditioner rasterised on the pixel grid, summed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..conditioning import Conditioning, pixel_centers
from ..errors import ConfigError

MAX_FREQ_LOG2 = 6


def fourier_features(locations: Tensor, n_freqs: int = 6) -> Tensor:
    """[..., 2] locations in [0, 1] -> [..., 4 * n_freqs] sin/cos features.

    Frequencies are 2**0 .. 2**(n_freqs - 1) cycles per image width (times pi).
    """
    if not 1 <= n_freqs <= MAX_FREQ_LOG2 + 1:
        raise ConfigError(
            f"n_freqs={n_freqs}: expected 1..{MAX_FREQ_LOG2 + 1} (higher frequencies alias)"
        )
    freqs = math.pi * 2.0 ** torch.arange(n_freqs, device=locations.device, dtype=locations.dtype)
    angles = (locations[..., :, None] * freqs).flatten(-2)  # [..., 2 * n_freqs]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """[H, W, 2] (x, y) coordinates of pixel centres in the conditioning convention."""
    ys, xs = pixel_centers(height, device, dtype), pixel_centers(width, device, dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def gaussian_bumps(
    cond: Conditioning, height: int, width: int, sigma_px: float = 1.5, cutoff: float | None = None
) -> Tensor:
    """Per-conditioner bumps [B, N, H, W], zero for masked slots.

    ``sigma_px`` is the bump's standard deviation in pixels of this grid. With ``cutoff`` (in
    units of ``sigma_px``) the bump is exactly zero beyond that radius, which gives a strictly
    bounded conditioner footprint for local-by-construction models.
    """
    grid = pixel_grid(height, width, cond.device, cond.locations.dtype)  # [H, W, 2]
    scale = torch.tensor([width, height], device=cond.device, dtype=cond.locations.dtype)
    delta = (grid[None, None] - cond.locations[:, :, None, None, :]) * scale  # pixels
    d2 = (delta**2).sum(-1)
    bumps = torch.exp(-0.5 * d2 / sigma_px**2)
    if cutoff is not None:
        bumps = bumps * (d2 <= (cutoff * sigma_px) ** 2)
    return bumps * cond.mask[:, :, None, None].to(bumps.dtype)


