"""Options of the locality probe (light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class LocalityOptions:
    """What the locality probe measures for every model of the study."""

    sigmas: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)  # noise levels probed
    scenes: int = 8  # test scenes (with 1-3 objects) per model
    pixels: int = 32  # probed output pixels per scene
    radius_px: float = 4.0  # headline radius of the conditional-locality index
    counts: tuple[int, ...] = (1, 2, 3)  # object counts of the probed test scenes
    feature_sigma: float = 1.0  # noise level of the feature-space concept directions
    feature_grid: int = 3  # concepts: one conditioner at each cell of a grid x grid lattice

    def __post_init__(self) -> None:
        if not self.sigmas or min(self.sigmas) <= 0:
            raise ConfigError(f"locality.sigmas={list(self.sigmas)}: expected positive noise levels")
        for name in ("scenes", "pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"locality.{name}={getattr(self, name)}: expected >= 1")
        if not self.radius_px > 0:
            raise ConfigError(f"locality.radius_px={self.radius_px}: expected a positive radius in pixels")
        if not self.feature_sigma > 0 or self.feature_grid < 2:
            raise ConfigError(
                f"locality.feature_sigma={self.feature_sigma} / feature_grid={self.feature_grid}: "
                "expected a positive noise level and a grid of at least 2 x 2"
            )
        if not self.counts or min(self.counts) < 1:
            raise ConfigError(f"locality.counts={list(self.counts)}: expected object counts >= 1")

