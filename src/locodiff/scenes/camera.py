"""The pinhole camera shared by the renderer, the sampler's image-plane checks and the centres.

The camera looks at ``target`` from a direction given by azimuth and elevation. Image
coordinates follow the ``Conditioning`` convention: ``u`` = column / width (left to right),
``v`` = row / height (top to bottom), both in [0, 1]; pixel (row i, col j) of an image of side
``R`` looks along the ray through ``((j + 0.5) / R, (i + 0.5) / R)``. Projection and ray
generation are exact inverses of each other, which is why an object's projected centre can be
checked against its rendered mask.

The default view is CLEVR's (an oblique camera about 30 degrees above the floor, looking
diagonally across it) but closer and with a narrower field of view, so that the sampling area
fills the frame and objects stay several pixels wide at 32x32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import SIGNED
from ..conditioning import pixel_centers
from ..errors import ConfigError


@dataclass(frozen=True)
class CameraConfig:
    azimuth_deg: float = field(default=-90.0, metadata=SIGNED)  # direction of the camera seen from the target (-90: from -y)
    elevation_deg: float = 40.0  # angle above the floor
    distance: float = 9.0  # floor units from the target
    fov_deg: float = 40.0  # full field of view (square images)
    target_x: float = field(default=0.0, metadata=SIGNED)  # point looked at, on the floor
    target_y: float = field(default=0.0, metadata=SIGNED)

    def __post_init__(self) -> None:
        if not 5.0 <= self.elevation_deg <= 89.0:
            raise ConfigError(f"camera.elevation_deg={self.elevation_deg}: expected 5..89 degrees")
        if not 5.0 <= self.fov_deg <= 120.0:
            raise ConfigError(f"camera.fov_deg={self.fov_deg}: expected 5..120 degrees")
        if not self.distance > 0:
            raise ConfigError(f"camera.distance={self.distance}: expected a positive distance")


class Camera:
    """Eye position and an orthonormal frame (right, up, forward) built from a ``CameraConfig``."""

    def __init__(self, config: CameraConfig | None = None, device=None) -> None:
        self.config = config or CameraConfig()
        c = self.config
        az, el = math.radians(c.azimuth_deg), math.radians(c.elevation_deg)
        target = torch.tensor([c.target_x, c.target_y, 0.0], dtype=torch.float64)
        offset = torch.tensor(
            [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)],
            dtype=torch.float64,
        )
        eye = target + c.distance * offset
        forward = -offset
        right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        right = right / right.norm()
        up = torch.linalg.cross(right, forward)
        kw = dict(dtype=torch.float32, device=device)
        self.eye, self.forward, self.right, self.up = (v.to(**kw) for v in (eye, forward, right, up))
        self.tan_half = math.tan(math.radians(c.fov_deg) / 2)
        self.device = self.eye.device

    def ray_directions(self, resolution: int) -> Tensor:
        """Unit ray directions through every pixel centre, [R, R, 3]."""
        coords = pixel_centers(resolution, self.device)
        v, u = torch.meshgrid(coords, coords, indexing="ij")
        sx = (2 * u - 1) * self.tan_half
        sy = (1 - 2 * v) * self.tan_half
        d = self.forward + sx[..., None] * self.right + sy[..., None] * self.up
        return d / d.norm(dim=-1, keepdim=True)

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """World points [..., 3] -> image coordinates (u, v) [..., 2] and camera depth [...]."""
        rel = points - self.eye
        depth = rel @ self.forward
        safe = depth.clamp_min(1e-6)
        u = 0.5 + 0.5 * (rel @ self.right) / (safe * self.tan_half)
        v = 0.5 - 0.5 * (rel @ self.up) / (safe * self.tan_half)
        return torch.stack([u, v], -1), depth
