"""Adapters that make other people's models locodiff ``Denoiser``\\ s.

- ``diffusers_unet``: a diffusers ``UNet2DConditionModel`` (SD 1.x/2.x, SDXL) plus its
  scheduler as a locodiff ``Denoiser``; prompts as ``Prompt``; ``load_diffusers_unet`` from a
  local folder. diffusers itself is imported only when loading from disk, so ``import locodiff``
  works without it.

Adapters sit below the models and the probes: they import neither. What is measured on an
adapted model (per-token sensitivity, ``probe-diffusers``) lives in ``locality.diffusers_probe``;
the feature-space engine in ``locality.feature_capture``.
"""

from .diffusers_unet import (
    DiffusersDenoiser,
    Prompt,
    VPSchedule,
    load_diffusers_unet,
    load_scheduler,
)

__all__ = ["DiffusersDenoiser", "Prompt", "VPSchedule", "load_diffusers_unet", "load_scheduler"]
