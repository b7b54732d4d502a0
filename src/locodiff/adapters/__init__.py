"""The diffusers side of locodiff: other people's UNets (and locodiff's own text UNet, saved as a
diffusers folder) loaded from a local folder as locodiff ``Denoiser``\\ s.

- ``diffusers_unet``: ``load_diffusers_unet`` reads a pipeline or UNet folder (SD 1.x/2.x, SDXL)
  and its scheduler into a ``DiffusersDenoiser`` (the wrapper itself is
  ``models.diffusers_unet``; the ``Prompt`` it reads is ``conditioning.Prompt``);
- ``text_model``: ``SavedTextModel``, a saved caption-conditioned model with its encoder.

Adapters sit above the models and the probes and below the stages: the probes take any
Denoiser and a prompt, and this package hands them diffusers models in that form.
"""

from ..conditioning import Prompt
from ..models.diffusers_unet import DiffusersDenoiser, VPSchedule
from .diffusers_unet import load_diffusers_unet, load_scheduler
from .text_model import SavedTextModel

__all__ = ["DiffusersDenoiser", "Prompt", "SavedTextModel", "VPSchedule", "load_diffusers_unet", "load_scheduler"]
