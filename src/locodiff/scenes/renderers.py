"""One place that picks the renderer a data set asks for (``data.renderer``), so that everything
rendered for it — the data, the detector's training images, its ceiling, the probes' test scenes —
looks alike."""

from __future__ import annotations

import torch

from .blender import BlenderRenderer
from .render import Renderer


def renderer_for(data_cfg, resolution: int | None = None, device: torch.device | str = "cpu") -> Renderer | BlenderRenderer:
    """``data_cfg``'s renderer (a ``scenes.DataConfig``) at its resolution unless another is given."""
    side = data_cfg.resolution if resolution is None else resolution
    if data_cfg.renderer == "blender":
        return BlenderRenderer(side, data_cfg.camera, data_cfg.blender_samples)
    return Renderer(side, data_cfg.supersample, data_cfg.camera, device=device)
