"""The test draw: fresh scenes with exactly k objects, their conditioning and, on demand, renders.

The evaluation samples its test conditionings here and the extrapolation probe takes the same
scenes (the same generator gives the same scenes) together with their ground-truth renders, so
that locality is measured where generalization is asked.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..conditioning import Conditioning
from .camera import Camera
from .conditioners import make_conditioning
from .blender import BlenderRenderer
from .render import Renderer
from .renderers import renderer_for
from .sampler import SceneSampler
from .scene import SceneBatch


class TestDraw:
    """Scenes of ``data_cfg`` (a ``DataConfig``), objects at least ``min_separation`` of the
    image side apart in the image plane (None: the data's own separation)."""

    def __init__(self, data_cfg, min_separation: float | None = None) -> None:
        scene_cfg = data_cfg.scene if min_separation is None else replace(data_cfg.scene, min_separation=min_separation)
        self.data_cfg = data_cfg
        self.sampler = SceneSampler(scene_cfg, data_cfg.camera)
        self.camera = Camera(data_cfg.camera)
        self._renderer: Renderer | BlenderRenderer | None = None

    def scenes(self, k: int, n: int, generator: torch.Generator) -> tuple[SceneBatch, Conditioning]:
        """``n`` scenes with ``k`` objects and the conditioning on every object's projected centre."""
        scenes = self.sampler.sample(k, generator, batch_size=n, slots=max(k, 1))
        centers = self.camera.project(scenes.centers_3d())[0] * scenes.mask[..., None]
        return scenes, make_conditioning(scenes, centers, "all")

    def render(self, scenes: SceneBatch) -> Tensor:
        """Images in [-1, 1], quantised to 8 bits like the stored data sets."""
        if self._renderer is None:
            self._renderer = renderer_for(self.data_cfg)
        images = self._renderer(scenes, with_masks=False).images
        return (images * 255).round() / 127.5 - 1.0
