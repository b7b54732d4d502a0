"""The UNet backbone shared by the ``cross_attention``, ``spatial`` and ``global`` architectures.

Levels run from full resolution (level 0) to ``image_size / 2**(levels-1)``. Each level has
``res_blocks`` residual blocks in the encoder and as many in the decoder (each decoder block
takes one encoder skip), optional self-attention, and the mechanism's injector after every block.
GroupNorm (``model.norm = "group"``, the default) pools statistics over the whole image and
self-attention mixes all pixels, so these networks are global: any output pixel may depend on any
input pixel. ``model.norm = "pixel"`` normalises each pixel alone, which removes the first.

With ``patch_size = p > 1`` the image is cut into p x p blocks first (pixel unshuffle: 3 channels
become 3 p^2) and the output is reassembled the same way (pixel shuffle), so the UNet's levels
run on a grid p times coarser. At 32x32 with p = 2 a network costs what it costs at 16x16, while
the canvas keeps its 32x32 pixels: the cheap way to an uncrowded image on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conditioning import Conditioning
from .config import ModelConfig
from .layers import Downsample, NoiseEmbedding, Norm, ResBlock, SelfAttention, Upsample, heads_for
from .mechanisms import Mechanism
from .network import Network


class UNetBlock(nn.Module):
    """Residual block, then optional self-attention, then the mechanism's injector."""

    residual = True  # output = input + update when channels match (feature probes read this)

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, cfg: ModelConfig,
        attention: bool, injector: nn.Module | None,
    ) -> None:
        super().__init__()
        norm = Norm(cfg.norm, cfg.norm_groups)
        self.res = ResBlock(in_ch, out_ch, emb_dim, norm, cfg.dropout)
        heads = heads_for(out_ch, cfg.head_dim)
        self.attention = SelfAttention(out_ch, heads, norm) if attention else None
        self.inject = injector

    def forward(self, h: Tensor, emb: Tensor, context: Any) -> Tensor:
        h = self.res(h, emb)
        if self.attention is not None:
            h = self.attention(h)
        if self.inject is not None:
            h = self.inject(h, context)
        return h


class UNet(Network):
    """``forward(x_in [B,C,H,W], c_noise [B], cond) -> [B,C,H,W]``: the raw network that EDM
    preconditioning wraps into a Denoiser. H and W must be multiples of 2**(levels-1)."""

    def __init__(self, cfg: ModelConfig, mechanism: Mechanism, emb_dim: int) -> None:
        super().__init__()
        cfg = cfg.resolved()
        self.levels = cfg.levels
        self.patch = cfg.patch_size
        self.mechanism = mechanism
        self.noise_embedding = NoiseEmbedding(cfg.channels[0], emb_dim)
        in_ch = cfg.image_channels * self.patch**2 + mechanism.map_channels
        self.conv_in = nn.Conv2d(in_ch, cfg.channels[0], 3, padding=1)
        attention_levels = {
            i for i, r in enumerate(cfg.level_resolutions()) if r in cfg.attention_resolutions
        }

        def block(in_ch: int, out_ch: int, level: int) -> UNetBlock:
            return UNetBlock(
                in_ch, out_ch, emb_dim, cfg, level in attention_levels,
                mechanism.injector(out_ch, level),
            )

        self.encoder = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_channels = []
        ch = cfg.channels[0]
        for level, width in enumerate(cfg.channels):
            self.encoder.append(nn.ModuleList())
            for _ in range(cfg.res_blocks):
                self.encoder[level].append(block(ch, width, level))
                ch = width
                skip_channels.append(ch)
            if level < self.levels - 1:
                self.downsample.append(Downsample(ch))

        bottom = self.levels - 1
        self.middle = nn.ModuleList([block(ch, ch, bottom), block(ch, ch, bottom)])

        self.decoder = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(self.levels)):
            width = cfg.channels[level]
            blocks = nn.ModuleList()
            for _ in range(cfg.res_blocks):
                blocks.append(block(ch + skip_channels.pop(), width, level))
                ch = width
            self.decoder.append(blocks)
            if level > 0:
                self.upsample.append(Upsample(ch, cfg.channels[level - 1]))
                ch = cfg.channels[level - 1]

        self.norm_out = Norm(cfg.norm, cfg.norm_groups)(ch)
        self.conv_out = nn.Conv2d(ch, cfg.image_channels * self.patch**2, 3, padding=1)

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Conditioning) -> Tensor:
        factor = 2 ** (self.levels - 1) * self.patch
        if x_in.shape[-2] % factor or x_in.shape[-1] % factor:
            raise ValueError(
                f"image size {x_in.shape[-2]}x{x_in.shape[-1]} must be a multiple of {factor} for a "
                f"{self.levels}-level UNet on {self.patch}-px patches"
            )
        x_in = F.pixel_unshuffle(x_in, self.patch)
        height, width = x_in.shape[-2:]
        context = self.mechanism.encode(cond, height, width)
        emb = self.noise_embedding(c_noise.reshape(-1).expand(x_in.shape[0]))
        extra = self.mechanism.embedding(context)
        if extra is not None:
            emb = emb + extra
        maps = self.mechanism.input_maps(context)
        h = x_in if maps is None else torch.cat([x_in, maps.to(x_in.dtype)], dim=1)
        h = self.conv_in(h)

        skips = []
        for level, blocks in enumerate(self.encoder):
            for blk in blocks:
                h = blk(h, emb, context)
                skips.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
        for blk in self.middle:
            h = blk(h, emb, context)
        for i, blocks in enumerate(self.decoder):
            for blk in blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb, context)
            if i < self.levels - 1:
                h = self.upsample[i](h)
        return F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), self.patch)
