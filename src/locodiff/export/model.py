"""``LocodiffModel``: any locodiff network as a diffusers model.

The network is built from its ``ModelConfig`` (kept as a plain dict in the diffusers
``config.json``), so ``save_pretrained`` / ``from_pretrained`` work in safetensors like any
diffusers model. Called as ``model(x, sigma, cond)`` it is the trained Denoiser (EDM
preconditioning included, as ``load_denoiser`` gives it), so every locodiff tool accepts it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from .. import __version__
from ..conditioning import Conditioning
from ..config import from_dict
from ..denoiser import ConditionedOn
from ..errors import CheckpointError
from ..intervene.config import InterventionSpec
from ..intervene.masked import masked_composition
from ..models import ModelConfig, as_denoiser, build_network

WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_weights_folder(folder: str | Path) -> Path:
    """A model folder with its config and safetensors weights, or one error naming what is wrong:
    locodiff never unpickles, so a folder holding only pickled weights is refused."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a diffusers model folder (no config.json)")
    if not (folder / WEIGHTS).is_file():
        pickled = sorted(p.name for pattern in PICKLED for p in folder.glob(pattern))
        if pickled:
            raise CheckpointError(f"{folder} holds pickled weights ({', '.join(pickled)}) and no {WEIGHTS}; "
                                  "locodiff loads safetensors only (save with safe_serialization=True)")
        raise CheckpointError(f"{folder} has no weights: {WEIGHTS} is missing")
    return folder


class LocodiffModel(ModelMixin, ConfigMixin):
    """A locodiff network (any architecture) with diffusers' saving and loading; with a
    ``composition`` (an ``InterventionSpec`` as a dict), the network's single-conditioner
    predictions composed as that intervention composes them (Exp 3's masked composition)."""

    @register_to_config
    def __init__(self, network_config: dict, resolution: int, locodiff_version: str = __version__,
                 composition: dict | None = None) -> None:
        super().__init__()
        self.network = build_network(from_dict(ModelConfig, network_config))
        self.intervention = None if composition is None else from_dict(InterventionSpec, composition)

    @property
    def conditioned_on(self) -> ConditionedOn:
        return self.network.conditioned_on

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """The denoised image ``x0`` (images in [-1, 1]), as ``load_denoiser``'s Denoiser gives it.
        With weights in bf16 or fp16 (``pipe.to(torch.bfloat16)``, ``torch_dtype=``) the network runs
        under autocast in that dtype, the preconditioning's skip terms and the result in ``x``'s."""
        spec = self.intervention
        if spec is None:
            return self.network_x0(x, sigma, cond)
        return masked_composition(self.network_x0, spec.radius_px, "null", spec.softness_px)(x, sigma, cond)

    def network_x0(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """The network's own denoised image (no composition)."""
        low = self.dtype in (torch.bfloat16, torch.float16)
        with torch.autocast(x.device.type, dtype=self.dtype, enabled=low):
            return as_denoiser(self.network)(x, sigma, cond)

    def to(self, *args, **kwargs):
        """``nn.Module.to``, without diffusers' warning about modules to keep in float32 (it warns
        on every dtype change, and this model has none)."""
        log = logging.getLogger("diffusers.models.modeling_utils")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            return super().to(*args, **kwargs)
        finally:
            log.setLevel(level)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "LocodiffModel":
        """diffusers' loader, for local folders of safetensors weights only (checked first).

        The weights are then copied into a network built as training builds it, and frozen as
        ``load_denoiser`` freezes it (``requires_grad_(True)`` to fine-tune): diffusers leaves
        tensors in another memory layout (the local network's channels-last convolutions become
        contiguous), and torch's CPU kernels differ with the layout and with whether weights need
        gradients, in the last float bits; an exported model must sample bit for bit as its run."""
        folder = Path(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            folder = folder / kwargs["subfolder"]
        check_weights_folder(folder)
        options = {"local_files_only": True, **kwargs, "use_safetensors": True}
        loaded = super().from_pretrained(pretrained_model_name_or_path, **options)
        model = cls.from_config(loaded.config)
        model.load_state_dict(loaded.state_dict())
        if loaded.dtype != model.dtype:  # torch_dtype was asked for
            model = model.to(dtype=loaded.dtype)
        return model.to(loaded.device).eval().requires_grad_(False)
