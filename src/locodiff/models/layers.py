"""Building blocks shared by the denoiser family.

Everything here is written for ``torch.func`` (jacrev / vjp / jvp / vmap): no in-place updates of
tensors that may carry gradients, no ``.item()`` and no Python branches on tensor values in any
``forward``. Attention goes through ``attention()``, i.e. ``F.scaled_dot_product_attention``
(or the plain formula for bfloat16 on CPU); forward-mode AD (``jvp``, ``jacfwd``) is not
implemented by PyTorch's fused CPU attention kernels, so wrap such calls in
``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..conditioning import ATTRIBUTE_NAMES, Conditioning
from ..scenes import vocab
from ..scenes.encodings import fourier_features, gaussian_bumps, pixel_grid
from .config import CrossAttentionOptions

# Vocabulary size of each attribute column of ``Conditioning.attributes``, in column order.
ATTRIBUTE_SIZES = {
    "color": len(vocab.COLOR_NAMES),
    "shape": len(vocab.SHAPES),
    "size": len(vocab.SIZE_NAMES),
    "material": len(vocab.MATERIALS),
}


# ----- conditioning hygiene ----------------------------------------------------------------------
def clean(cond: Conditioning) -> Conditioning:
    """The same set with padded slots overwritten by harmless values.

    Padded slots may hold anything, NaN included; ``mask * NaN`` is still NaN, so masking after
    encoding is not enough. Overwriting first (with ``torch.where``, which also blocks their
    gradient) guarantees that no stored padding value can reach a model output.
    """
    locations = torch.where(cond.mask[..., None], cond.locations, 0.5)
    attributes = None
    if cond.attributes is not None:
        attributes = torch.where(cond.mask[..., None], cond.attributes, -1)
    return Conditioning(locations, cond.mask, attributes)


# ----- noise-level embedding ---------------------------------------------------------------------
class NoiseEmbedding(nn.Module):
    """``c_noise = ln(sigma) / 4`` -> [B, out_dim] vector that modulates every residual block.

    sin/cos of ``c_noise`` at log-spaced frequencies 1 .. 32 rad per unit; ``c_noise`` spans about
    [-1.6, 1.1] for sigma in [0.002, 80], so the slowest features vary smoothly over the whole
    range while the fastest turns by ~0.8 rad for a 10 % change of sigma. A two-layer MLP follows.
    """

    def __init__(self, features: int, out_dim: int, max_freq: float = 32.0) -> None:
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), features // 2))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * (features // 2), out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = c_noise.to(self.freqs.dtype)[:, None] * self.freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


# ----- normalisation -----------------------------------------------------------------------------
class PixelNorm(nn.Module):
    """LayerNorm over channels at each pixel separately.

    Unlike GroupNorm, whose statistics pool the whole image (a global operation), this keeps a
    pixel's output a function of that pixel's features only, so it preserves exact locality.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(rearrange(x, "b c h w -> b h w c"))
        return rearrange(y, "b h w c -> b c h w")


@dataclass(frozen=True)
class Norm:
    """The normalisation a UNet's blocks use (``model.norm``), as a factory of layers.

    ``group`` pools mean and variance over the whole image (per group of channels): adding an
    object anywhere renormalises every pixel. ``pixel`` (``PixelNorm``) and ``none`` keep a
    block's output at a pixel a function of the pixels its convolutions reach.
    """

    kind: str = "group"
    groups: int = 8

    def __call__(self, channels: int) -> nn.Module:
        if self.kind == "group":
            return nn.GroupNorm(self.groups, channels)
        return PixelNorm(channels) if self.kind == "pixel" else nn.Identity()


def modulate(h: Tensor, emb_proj: Tensor) -> Tensor:
    """Scale/shift ``h`` [B,C,H,W] by ``emb_proj`` [B,2C] (adaptive normalisation)."""
    scale, shift = rearrange(emb_proj, "b (two c) -> two b c 1 1", two=2).unbind(0)
    return h * (1 + scale) + shift


# ----- UNet blocks -------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """Norm-SiLU-conv twice, the noise embedding as scale/shift in between, plus a skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, norm: Norm, dropout: float) -> None:
        super().__init__()
        self.norm1 = norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = modulate(self.norm2(h), self.emb(F.silu(emb)))
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def heads_for(channels: int, head_dim: int) -> int:
    return max(1, channels // head_dim)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, bias: Tensor | None = None,
              sigmoid_bias: float | None = None) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over [B, heads, L, d] tensors; ``mask`` True = may attend.

    ``F.scaled_dot_product_attention`` (fused, memory-efficient: the right choice on GPUs and for
    long sequences), except for bfloat16 on CPU: there, in torch 2.13, the fused kernel's
    forward + backward is 3-5x slower than the plain formula at this project's sizes (<= 256
    queries; measured for benchmarks/train.py). The plain formula takes the softmax in float32.
    ``bias`` (broadcastable to [B, heads, L, K]) is added to the logits before the softmax; it
    always takes the plain formula, because in torch 2.13 the fused CPU kernel silently returns
    no gradient for a float mask once the queries require one (a learned bias would never learn).

    With ``sigmoid_bias = b`` the weights are ``sigmoid(q k^T / sqrt(d) + bias + b)``, each key's
    on its own (masked keys get 0): no normalisation over the keys, so what one key adds to a
    query's output does not depend on which other keys are there. Always the plain formula.
    """
    if bias is None and sigmoid_bias is None and (q.device.type != "cpu" or q.dtype != torch.bfloat16):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = torch.einsum("bnld,bnkd->bnlk", q, k).float() * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias.float()
    if sigmoid_bias is not None:
        weights = torch.sigmoid(scores + sigmoid_bias)
        weights = weights if mask is None else torch.where(mask, weights, 0.0)
    else:
        weights = scores.softmax(dim=-1) if mask is None else scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return torch.einsum("bnlk,bnkd->bnld", weights.to(v.dtype), v)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels of a feature map (a global operation)."""

    def __init__(self, channels: int, heads: int, norm: Norm) -> None:
        super().__init__()
        self.heads = heads
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[-2]
        q, k, v = rearrange(
            self.qkv(self.norm(x)), "b (three n d) h w -> three b n (h w) d", three=3, n=self.heads
        ).unbind(0)
        out = attention(q, k, v)
        return x + self.proj(rearrange(out, "b n (h w) d -> b (n d) h w", h=height))


class CrossAttention(nn.Module):
    """Pixels attend to conditioner tokens; optionally with a pixel-position term on the queries.

    A convolutional UNet knows little about absolute position, so a query built from features
    alone cannot ask "is there a token at *my* location?". Adding a projection of Fourier features
    of the pixel's own coordinates to the query lets ``q . k`` compare pixel and token positions
    directly (in a quick experiment it made cross-attention learn placement faster and
    length-generalize further).
    Pixel frequencies stop at the grid's Nyquist limit (2**(n-1) <= resolution / 2).

    The options (``model.cross_attention``): with ``shared_position`` the keys of location tokens get the *same* projection of the same
    Fourier features of the token's location (DETR-style shared positional encoding): then
    ``q . k`` contains ``phi(p)^T W^T W phi(l)``, which for a random ``W`` is already about
    ``phi(p) . phi(l) = sum_i cos(w_i (p - l))``, largest where the pixel sits on the token. The
    network starts out able to ask "is a token here?" instead of having to discover it (it may
    still learn to ignore or invert the term: nothing is masked, the network is not local).

    With ``position_bias_px = bias_px > 0`` each head adds ``-d^2 / (2 s^2)`` to the logit of every located token,
    ``d`` the pixel-to-token distance in image pixels and ``s`` a learned width per head that
    starts at ``bias_px``: a soft locality prior (pixels far from every token attend to the null
    token) that training may widen until it is gone. ``image_size`` converts to pixels.

    With ``attention_radius_px = radius_px`` the prior is a hard mask: a pixel attends only to located tokens within
    ``radius_px`` image pixels of it, and to the null token (always). A conditioner then reaches
    the features only within that radius at each attention layer (the convolutions around it
    still spread its effect by their receptive field): locality enforced in training and kept at
    test time, an attention constraint rather than a penalty.

    With ``weights = "sigmoid"`` each token is weighed on its own (``attention``'s ``sigmoid_bias``)
    instead of by a softmax over the tokens, which would give each of k tokens ~1/k of a pixel's
    attention: a conditioner's contribution then does not depend on how many others there are.
    """

    def __init__(self, channels: int, token_dim: int, heads: int, norm: Norm, position_freqs: int,
                 options: CrossAttentionOptions = CrossAttentionOptions(), image_size: int = 1) -> None:
        super().__init__()
        shared_position, bias_px = options.shared_position, options.position_bias_px
        radius_px = options.attention_radius_px or 0.0
        if shared_position and not position_freqs:
            raise ValueError("shared_position needs the query position term (position_freqs > 0)")
        self.heads = heads
        self.position_freqs = position_freqs
        self.shared_position = shared_position
        self.norm = norm(channels)
        self.q = nn.Linear(channels, channels)
        self.position = nn.Linear(4 * position_freqs, channels) if position_freqs else None
        self.kv = nn.Linear(token_dim, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        self.image_size = image_size
        self.log_width = nn.Parameter(torch.full((heads,), math.log(bias_px))) if bias_px > 0 else None
        self.radius_px = radius_px
        self.sigmoid_bias = options.sigmoid_bias if options.weights == "sigmoid" else None

    def forward(
        self, x: Tensor, tokens: Tensor, token_mask: Tensor, token_locations: Tensor | None = None,
        located: Tensor | None = None,
    ) -> Tensor:
        """``token_locations`` [B, L, 2] and ``located`` [B, L] (which tokens have a location; the
        null token has none) are needed with ``shared_position`` or a distance bias only."""
        height, width = x.shape[-2:]
        q = self.q(rearrange(self.norm(x), "b c h w -> b (h w) c"))
        if self.position is not None:
            grid = pixel_grid(height, width, x.device, x.dtype).reshape(height * width, 2)
            q = q + self.position(fourier_features(grid, self.position_freqs))
        k, v = self.kv(tokens).chunk(2, dim=-1)
        if self.shared_position:
            where = self.position(fourier_features(token_locations.to(k.dtype), self.position_freqs))
            k = k + where * located[..., None].to(k.dtype)
        q, k, v = (rearrange(t, "b l (n d) -> b n l d", n=self.heads) for t in (q, k, v))
        bias, mask = None, token_mask[:, None, None, :]
        if self.log_width is not None or self.radius_px > 0:
            grid = pixel_grid(height, width, x.device, torch.float32).reshape(1, height * width, 1, 2)
            d2 = ((grid - token_locations.float()[:, None]) * self.image_size).square().sum(-1)  # [B, HW, L]
            d2 = d2 * located[:, None, :]  # the null token (no location) is never biased nor masked
        if self.log_width is not None:
            bias = -0.5 * d2[:, None] / torch.exp(2 * self.log_width.float())[None, :, None, None]
        if self.radius_px > 0:
            mask = mask & (d2 <= self.radius_px**2)[:, None]  # [B, 1, HW, L]
        out = attention(q, k, v, mask, bias, self.sigmoid_bias)
        out = self.proj(rearrange(out, "b n l d -> b l (n d)"))
        return x + rearrange(out, "b (h w) c -> b c h w", h=height)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv that already narrows to the finer level's width
    (the conv at the finer resolution is the costliest layer of a small UNet)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ----- conditioner encoders ----------------------------------------------------------------------
class AttributeEmbedding(nn.Module):
    """Sum of one learned embedding per attribute column; index -1 ("not given") has its own row."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(
            nn.Embedding(ATTRIBUTE_SIZES[name] + 1, dim) for name in ATTRIBUTE_NAMES
        )

    def forward(self, cond: Conditioning) -> Tensor:
        """[B, N, dim]; the conditioning should have been ``clean``-ed."""
        if cond.attributes is None:
            shape = (*cond.mask.shape, len(ATTRIBUTE_NAMES))
            attrs = torch.zeros(shape, dtype=torch.long, device=cond.device)
        else:
            attrs = cond.attributes + 1  # -1 (not given) -> row 0
        return sum(table(attrs[..., i]) for i, table in enumerate(self.tables))


class TokenEncoder(nn.Module):
    """Conditioner set -> tokens [B, N, dim]: an MLP of each location's Fourier features,
    plus attribute embeddings when enabled. Padded slots yield (ignored) tokens too."""

    def __init__(self, dim: int, n_freqs: int, use_attributes: bool) -> None:
        super().__init__()
        self.n_freqs = n_freqs
        self.inp = nn.Linear(4 * n_freqs, dim)
        self.attributes = AttributeEmbedding(dim) if use_attributes else None
        self.out = nn.Linear(dim, dim)

    def forward(self, cond: Conditioning) -> Tensor:
        cond = clean(cond)
        features = fourier_features(cond.locations, self.n_freqs).to(self.inp.weight.dtype)
        h = self.inp(features)
        if self.attributes is not None:
            h = h + self.attributes(cond)
        return self.out(F.silu(h))


class ConditionerMaps(nn.Module):
    """Rasterise the set onto a pixel grid: [B, 1 (+ attr_dim), H, W].

    Channel 0 is the sum of the conditioners' Gaussian bumps. With attributes, each further
    channel is ``sum_j bump_j * embedding(attributes_j)``: the attributes are painted where the
    object should be, so they stay exactly as local as the bumps. With a ``cutoff`` the bumps
    (and so everything painted) are exactly zero farther than ``cutoff * sigma_px`` pixels from
    their conditioner.
    """

    def __init__(
        self, use_attributes: bool, attr_dim: int = 8, cutoff: float | None = None
    ) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.attributes = AttributeEmbedding(attr_dim) if use_attributes else None
        self.channels = 1 + (attr_dim if use_attributes else 0)

    def forward(self, cond: Conditioning, height: int, width: int, sigma_px: float) -> Tensor:
        cond = clean(cond)
        bumps = gaussian_bumps(cond, height, width, sigma_px, cutoff=self.cutoff)  # [B, N, H, W]
        maps = [bumps.sum(1, keepdim=True)]
        if self.attributes is not None:
            maps.append(torch.einsum("bnhw,bnd->bdhw", bumps, self.attributes(cond)))
        return torch.cat(maps, dim=1)
