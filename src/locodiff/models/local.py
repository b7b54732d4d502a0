"""``local``: a denoiser whose score is a local conditional score *by construction*.

This is the paper's Exp 3 intervention in its simplest form (PAPER_NOTES candidate (a)): a fully
convolutional network with a bounded receptive field, fed the conditioners as Gaussian bumps that
are exactly zero beyond a cutoff radius.

Layout (width ``W``, ``R = model.local.radius`` blocks)::

    [x_in, maps] -> 1x1 conv -> R x LocalBlock -> PixelNorm, SiLU -> 1x1 conv -> output
    LocalBlock: h + conv1x1(SiLU(mod(PixelNorm(conv3x3(SiLU(PixelNorm(h)))), emb)))

Why the locality is exact:

- every layer except the R 3x3 convolutions is per-pixel (1x1 convs, SiLU, a LayerNorm over the
  channels of each pixel, scale/shift by the noise embedding) and there is no down-sampling,
  attention, pooling or GroupNorm (whose image-wide statistics would be a global operation);
- each 3x3 conv widens the dependence by one pixel in each direction, so output pixel ``(i, j)``
  depends exactly on input pixels ``(i', j')`` with ``max(|i-i'|, |j-j'|) <= R`` (a square of
  side ``2R + 1``; zero padding at the border);
- the conditioner maps are inputs like ``x``, and a bump is zero farther than
  ``c = bump_cutoff * bump_sigma_px`` pixels (Euclidean) from its conditioner. Hence a
  conditioner at ``l`` (in pixel units, ``l = (x * W, y * H)``) cannot affect output pixel
  ``p`` (centre ``(j + .5, i + .5)``) when ``max(|p_x - l_x|, |p_y - l_y|) > R + c``.

The noise embedding is global, but it does not depend on the image or the conditioners.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conditioning import Conditioning
from .config import ModelConfig
from .layers import ConditionerMaps, NoiseEmbedding, PixelNorm, modulate
from .network import Network


class LocalBlock(nn.Module):
    """One 3x3 conv (receptive field +1 px) and one 1x1 conv, per-pixel norms, a residual."""

    residual = True  # output = input + update (feature probes read this)

    def __init__(self, width: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = PixelNorm(width)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1)
        self.norm2 = PixelNorm(width)
        self.emb = nn.Linear(emb_dim, 2 * width)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(width, width, 1)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        y = self.conv3(F.silu(self.norm1(h)))
        y = modulate(self.norm2(y), self.emb(F.silu(emb)))
        return h + self.conv1(self.dropout(F.silu(y)))


class LocalNet(Network):
    """``forward(x_in, c_noise, cond)``; receptive field ``radius`` px, conditioner window
    ``radius + cutoff * sigma_px`` px (Chebyshev distance). Works at any image size."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg = cfg.resolved()
        width = cfg.local.width
        emb_dim = 2 * width
        self.radius = cfg.local.radius
        self.sigma_px = cfg.bump_sigma_px
        self.cutoff = cfg.bump_cutoff
        self.maps = ConditionerMaps(cfg.use_attributes, cutoff=cfg.bump_cutoff)
        self.noise_embedding = NoiseEmbedding(width, emb_dim)
        self.conv_in = nn.Conv2d(cfg.image_channels + self.maps.channels, width, 1)
        self.blocks = nn.ModuleList(
            LocalBlock(width, emb_dim, cfg.dropout) for _ in range(self.radius)
        )
        self.norm_out = PixelNorm(width)
        self.conv_out = nn.Conv2d(width, cfg.image_channels, 1)
        # Channels-last layout: every layer here works at full resolution, where oneDNN's convs
        # run ~20 % faster channels-last on CPU, and PixelNorm's channel-last view is then free.
        self.to(memory_format=torch.channels_last)

    @property
    def conditioner_window(self) -> float:
        """Chebyshev distance in pixels beyond which a conditioner cannot affect a pixel."""
        return self.radius + self.cutoff * self.sigma_px

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Conditioning) -> Tensor:
        height, width = x_in.shape[-2:]
        maps = self.maps(cond, height, width, self.sigma_px).to(x_in.dtype)
        emb = self.noise_embedding(c_noise.reshape(-1).expand(x_in.shape[0]))
        h = self.conv_in(torch.cat([x_in, maps], dim=1))
        for blk in self.blocks:
            h = blk(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))
