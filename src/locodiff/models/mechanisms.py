"""Conditioning mechanisms: the interchangeable part of a UNet that lets conditioners in.

A mechanism has four optional hooks, which the backbone calls in this order:

- ``encode(cond, height, width) -> context``: once per forward, turns the set into whatever the
  other hooks need (tokens, maps, a vector);
- ``input_maps(context)``: [B, map_channels, H, W] concatenated to the network input;
- ``embedding(context)``: [B, emb_dim] added to the noise embedding, so it reaches every pixel;
- ``injector(channels, level)``: a module called as ``h = module(h, context)`` after each residual
  block of that level (built once, at construction).

Three mechanisms, from most to least local:

- ``SpatialConditioning``: Gaussian-bump maps at every level (input channels + a 1x1 conv added
  after every block). A conditioner acts where its bump is; the network's depth spreads it.
- ``CrossAttentionConditioning``: location tokens; pixels at chosen levels cross-attend to them.
  Whether a pixel attends mostly to nearby tokens is learned, not built in.
- ``GlobalConditioning``: the set pooled into one vector added to the noise embedding; every pixel
  depends on every conditioner (the non-local baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..conditioning import Conditioning
from .config import ModelConfig
from .layers import ConditionerMaps, CrossAttention, Norm, TokenEncoder, heads_for


class Mechanism(nn.Module):
    """Base class: no conditioning at all (every hook is a no-op)."""

    map_channels: int = 0

    def encode(self, cond: Conditioning, height: int, width: int) -> Any:
        return None

    def input_maps(self, context: Any) -> Tensor | None:
        return None

    def embedding(self, context: Any) -> Tensor | None:
        return None

    def injector(self, channels: int, level: int) -> nn.Module | None:
        return None


# ----- cross-attention over location tokens ------------------------------------------------------
@dataclass
class TokenSet:
    tokens: Tensor  # [B, 1 + N, D]; token 0 is the learned null token
    mask: Tensor  # [B, 1 + N] bool; always True for the null token
    locations: Tensor  # [B, 1 + N, 2]; the null token's (and padding's) is a placeholder
    located: Tensor  # [B, 1 + N] bool; False for the null token and for padding


class CrossAttentionConditioning(Mechanism):
    """Tokens = MLP(Fourier features of each location [+ attribute embeddings]).

    A learned null token is always present and always unmasked, so the attention softmax is
    defined for zero real tokens and 0..N conditioners share one code path; the empty set's
    output is whatever attending only to the null token gives.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.options = cfg.resolved().cross_attention
        self.tokens = TokenEncoder(cfg.token_dim, cfg.n_freqs, cfg.use_attributes)
        self.null = nn.Parameter(torch.randn(cfg.token_dim))
        resolutions = cfg.level_resolutions()
        self.levels = {i for i, r in enumerate(resolutions) if r in self.options.resolutions}

    def encode(self, cond: Conditioning, height: int, width: int) -> TokenSet:
        tokens = self.tokens(cond)
        batch = tokens.shape[0]
        null = self.null.to(tokens.dtype).expand(batch, 1, -1)
        always = torch.ones(batch, 1, dtype=torch.bool, device=cond.mask.device)
        mask = torch.cat([always, cond.mask], 1)
        centre = torch.full((batch, 1, 2), 0.5, dtype=tokens.dtype, device=tokens.device)
        where = torch.where(cond.mask[..., None], cond.locations.to(tokens.dtype), 0.5)
        return TokenSet(torch.cat([null, tokens], 1), mask, torch.cat([centre, where], 1),
                        torch.cat([~always, cond.mask], 1))

    def injector(self, channels: int, level: int) -> nn.Module | None:
        if level not in self.levels:
            return None
        resolution = self.cfg.level_resolutions()[level]
        # Pixel Fourier frequencies up to the Nyquist limit of this level's grid.
        freqs = min(self.cfg.n_freqs, max(1, int(math.log2(resolution))))
        if not self.options.query_position:
            freqs = 0
        attention = CrossAttention(
            channels, self.cfg.token_dim, heads_for(channels, self.cfg.head_dim),
            Norm(self.cfg.norm, self.cfg.norm_groups), freqs, self.options, self.cfg.image_size,
        )
        return AttendToTokens(attention)


class AttendToTokens(nn.Module):
    def __init__(self, attention: CrossAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, h: Tensor, context: TokenSet) -> Tensor:
        return self.attention(h, context.tokens, context.mask, context.locations, context.located)


# ----- spatial maps ------------------------------------------------------------------------------
class SpatialConditioning(Mechanism):
    """Bump maps rasterised at every level's resolution; concatenated to the input and added
    (through a 1x1 conv) after every residual block.

    The bump keeps its physical width across levels (``bump_sigma_px / (patch_size * 2**level)``
    cells of that level) but never narrower than half a cell, so a conditioner between cell
    centres is not lost on a coarse grid.
    """

    MIN_SIGMA_PX = 0.5

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.sigma_px = cfg.bump_sigma_px / cfg.patch_size
        self.num_levels = cfg.levels
        self.maps = ConditionerMaps(cfg.use_attributes, cutoff=cfg.bump_cutoff)
        self.map_channels = self.maps.channels

    def level_sigma(self, level: int) -> float:
        return max(self.sigma_px / 2**level, self.MIN_SIGMA_PX)

    def encode(self, cond: Conditioning, height: int, width: int) -> list[Tensor]:
        return [
            self.maps(cond, height >> level, width >> level, self.level_sigma(level))
            for level in range(self.num_levels)
        ]

    def input_maps(self, context: list[Tensor]) -> Tensor:
        return context[0]

    def injector(self, channels: int, level: int) -> nn.Module:
        return AddMap(level, self.map_channels, channels)


class AddMap(nn.Module):
    def __init__(self, level: int, map_channels: int, channels: int) -> None:
        super().__init__()
        self.level = level
        self.proj = nn.Conv2d(map_channels, channels, 1)

    def forward(self, h: Tensor, context: list[Tensor]) -> Tensor:
        return h + self.proj(context[self.level].to(h.dtype))


# ----- global vector -----------------------------------------------------------------------------
class GlobalConditioning(Mechanism):
    """Masked mean of the tokens plus the count, through an MLP, added to the noise embedding.

    The noise embedding modulates every residual block at every pixel, so every output pixel
    depends on every conditioner: non-local by construction.
    """

    def __init__(self, cfg: ModelConfig, emb_dim: int) -> None:
        super().__init__()
        self.tokens = TokenEncoder(cfg.token_dim, cfg.n_freqs, cfg.use_attributes)
        self.proj = nn.Sequential(
            nn.Linear(cfg.token_dim + 1, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

    def encode(self, cond: Conditioning, height: int, width: int) -> Tensor:
        tokens = self.tokens(cond)
        weights = cond.mask[..., None].to(tokens.dtype)
        count = weights.sum(1)  # [B, 1]
        mean = (tokens * weights).sum(1) / count.clamp(min=1)
        return self.proj(torch.cat([mean, count], dim=-1))

    def embedding(self, context: Tensor) -> Tensor:
        return context
