"""Reference "models" with known scores: they check the evaluation itself, not a network.

- ``OracleDenoiser`` ignores the noisy input and returns the render of a scene whose objects sit
  exactly at the requested locations: a perfect model. Its scores are the ceiling of the whole
  pipeline (sampler + detector + matching) and belong beside every model's scores.
- ``FixedImageDenoiser`` returns one fixed image whatever it is asked for (e.g. a render with
  three objects): its count accuracy must be 1 at that count and 0 elsewhere.

Both follow the ``Denoiser`` protocol (images in [-1, 1]). With a constant prediction ``x0`` the
probability-flow ODE is linear in sigma, so every sampler lands exactly on ``x0``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..scenes import Renderer, SceneBatch, vocab
from ..scenes.camera import Camera


def floor_positions(camera: Camera, uv: Tensor, center_heights: Tensor) -> Tensor:
    """Floor (x, y) of objects whose 3-D centre, ``center_heights`` above the floor, projects to
    image point ``uv`` [..., 2]: the inverse of ``Camera.project`` for a known height."""
    tan = camera.tan_half
    d = (camera.forward + ((2 * uv[..., 0:1] - 1) * tan) * camera.right + ((1 - 2 * uv[..., 1:2]) * tan) * camera.up)
    t = (center_heights - camera.eye[2]) / d[..., 2]
    return (camera.eye + t[..., None] * d)[..., :2]


class OracleDenoiser:
    """A perfect model: renders the requested scene (locations and, where given, attributes).

    Attributes that a conditioning does not give (``-1`` or no attributes at all) are filled in
    per slot from ``default`` cycling through the palette, so neighbouring objects differ in
    colour. The last rendered batch is memoised: samplers call a denoiser many times with one
    conditioning.
    """

    def __init__(self, renderer: Renderer, default: tuple[str, str, str] = ("sphere", "rubber", "small")) -> None:
        self.renderer = renderer
        self.default = (vocab.shape_index(default[0]), vocab.material_index(default[1]), vocab.size_index(default[2]))
        self._memo: tuple[tuple, Tensor] | None = None

    def scenes(self, cond: Conditioning) -> SceneBatch:
        b, n = cond.mask.shape
        attrs = cond._attributes_or_unknown().cpu()  # (color, shape, size, material)
        scenes = SceneBatch.empty(b, n)
        slot_colors = torch.arange(n).remainder(len(vocab.COLOR_NAMES)).expand(b, n)
        scenes.color[:] = torch.where(attrs[..., 0] >= 0, attrs[..., 0], slot_colors)
        scenes.shape[:] = torch.where(attrs[..., 1] >= 0, attrs[..., 1], self.default[0])
        scenes.size[:] = torch.where(attrs[..., 2] >= 0, attrs[..., 2], self.default[2])
        scenes.material[:] = torch.where(attrs[..., 3] >= 0, attrs[..., 3], self.default[1])
        scenes.mask[:] = cond.mask.cpu()
        heights = scenes.half_heights()
        camera = self.renderer.camera
        scenes.positions[:] = floor_positions(camera, cond.locations.detach().cpu().to(camera.eye.device), heights)
        scenes.positions[~scenes.mask] = 0
        return scenes

    def __call__(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        key = (cond.locations.detach().cpu().numpy().tobytes(), cond.mask.cpu().numpy().tobytes(),
               None if cond.attributes is None else cond.attributes.cpu().numpy().tobytes())
        if self._memo is None or self._memo[0] != key:
            images = self.renderer(self.scenes(cond), with_masks=False).images
            self._memo = (key, images * 2 - 1)
        side = x.shape[-1]
        out = self._memo[1]
        if out.shape[-1] != side:
            raise ValueError(f"oracle renders {out.shape[-1]}x{out.shape[-1]} but x is {side}x{side}")
        return out.to(device=x.device, dtype=x.dtype)


class FixedImageDenoiser:
    """Always predicts the same image ``image`` [3, H, W] in [-1, 1], ignoring x and cond."""

    def __init__(self, image: Tensor) -> None:
        if image.ndim != 3:
            raise ValueError(f"expected one image [3, H, W], got {tuple(image.shape)}")
        self.image = image.detach()

    def __call__(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        return self.image.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1, -1).clone()
