"""Adapters that make other people's models analysable by locodiff's tools.

- ``diffusers_unet``: a diffusers ``UNet2DConditionModel`` (SD 1.x/2.x, SDXL) plus its
  scheduler as a locodiff ``Denoiser``; prompts as ``Prompt``; per-token conditional locality
  (``token_sensitivity``); ``load_diffusers_unet`` from a local folder. diffusers itself is
  imported only when loading from disk, so ``import locodiff`` works without it.
- ``features``: forward-hook capture of internal block outputs of any torch module,
  mean-difference vectors and their cosine matrix, Jacobians of features w.r.t. conditioners.
"""

from .diffusers_unet import (
    DiffusersDenoiser,
    Prompt,
    VPSchedule,
    load_diffusers_unet,
    load_scheduler,
    token_sensitivity,
)
from ..locality.features import (
    block_names,
    capture_features,
    cosine_matrix,
    feature_fn,
    feature_jacobian,
    first_tensor,
    input_sensitivity,
    mean_difference_vectors,
    resolve_blocks,
)

__all__ = [
    "DiffusersDenoiser", "Prompt",
    "VPSchedule", "block_names", "capture_features", "cosine_matrix", "feature_fn",
    "feature_jacobian", "first_tensor", "input_sensitivity", "load_diffusers_unet",
    "load_scheduler", "mean_difference_vectors", "resolve_blocks", "token_sensitivity",
]
