"""The denoiser family: raw networks ``net(x_in, c_noise, cond) -> [B, C, H, W]``.

Every network takes the EDM-preconditioned input ``x_in`` [B, C, H, W], ``c_noise = ln(sigma)/4``
[B] and a ``Conditioning`` (0..N conditioners through one code path); every network is a
``Network``: ``net.as_denoiser()`` (or ``as_denoiser(net)``) is its ``Denoiser``, EDM
preconditioning around it (``diffusion.precond``), and ``net.conditioned_on`` says what it reads.
Build one with ``build_network(ModelConfig(arch=...))``.

Architectures (parameters at the quick size: ``ModelConfig(arch=...)`` defaults, 32x32 RGB,
UNet channels (32, 64, 64), one residual block per level, self-attention at 8x8):

- ``spatial`` (the default; 0.88M): UNet; conditioners as Gaussian-bump maps at every level,
  concatenated to the input and added through a 1x1 conv after every residual block. In a quick
  experiment this learned placement in 2-5 CPU minutes and length-generalized.
- ``cross_attention`` (0.99M): UNet; pixels cross-attend (at every level <= 16x16) to tokens =
  MLP(Fourier features of each location [+ attribute embeddings]) plus one learned null token.
  A pixel-position term on the queries is **on by default** (``model.cross_attention.query_position``): in a quick
  experiment cross-attention without it had not learned placement at 32x32 after 9 CPU minutes,
  and at 16x16 the term made it learn faster and generalize further.
- ``global`` (0.90M): UNet; masked mean of the tokens plus the count, added to the noise
  embedding. Every pixel depends on every conditioner: the non-local baseline.
- ``local`` (0.49M): local by construction (the Exp 3 intervention). Width 64, 8 blocks with one
  3x3 conv each: receptive-field radius exactly 8 px (a 17x17 window); bumps cut off at 3 sigma
  = 4.5 px, so a conditioner farther than 12.5 px (Chebyshev) from a pixel provably cannot
  affect it. Per-pixel LayerNorm instead of GroupNorm; no attention, no down-sampling.
- ``diffusers_text``: a diffusers ``UNet2DConditionModel`` (SD-style) reading the scene's caption
  through a small learned text encoder (``models/text.py``); its own Denoiser (it preconditions
  inside its diffusers adapter), ``conditioned_on = "captions"``. Needs the diffusers package.

The UNets are global: GroupNorm pools image-wide statistics and self-attention mixes all pixels
(their conv path alone already spans ~55 px). Two options remove a dependence on *how many*
conditioners there are without making them local: ``model.norm = "pixel"`` (per-pixel LayerNorm
instead of GroupNorm) and ``model.cross_attention.weights = "sigmoid"`` (each token weighed on its
own instead of a softmax over the tokens); the quick preset's Exp 1 / Exp 2 use both. ``describe(cfg)`` reports parameter counts,
receptive fields and conditioner windows.

``torch.func``: all networks work under ``jacrev``/``vjp``/``jvp``/``jacfwd``/``vmap``. Through
the attention architectures, run forward mode (``jvp``, ``jacfwd``) and vmap-over-vjp with the
math attention kernel: PyTorch's fused CPU attention has no forward-mode rule, and its backward
has no vmap batching rule (it falls back to a slow per-sample loop)::

    with torch.nn.attention.sdpa_kernel(SDPBackend.MATH):
        torch.func.jvp(...)
"""

from .config import ARCHITECTURES, ModelConfig
from .layers import PixelNorm, TokenEncoder
from .local import LocalNet
from .mechanisms import (
    CrossAttentionConditioning,
    GlobalConditioning,
    Mechanism,
    SpatialConditioning,
)
from .network import Network
from .registry import (
    ArchitectureInfo,
    as_denoiser,
    available_architectures,
    conditioned_on,
    build_network,
    describe,
    param_count,
    register_mechanism,
)
from .text import CaptionEncoder, TextUNet, save_text_model
from .unet import UNet

__all__ = [
    "ARCHITECTURES",
    "ArchitectureInfo",
    "CrossAttentionConditioning",
    "GlobalConditioning",
    "LocalNet",
    "Mechanism",
    "ModelConfig",
    "Network",
    "PixelNorm",
    "SpatialConditioning",
    "TokenEncoder",
    "CaptionEncoder",
    "TextUNet",
    "UNet",
    "save_text_model",
    "as_denoiser",
    "conditioned_on",
    "available_architectures",
    "build_network",
    "register_mechanism",
    "describe",
    "param_count",
]
