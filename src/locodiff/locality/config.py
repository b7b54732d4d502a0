"""Options of the locality probe (light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class SceneDraw:
    """Which test conditionings the extrapolation probe takes: the evaluation's own draw.

    The study fills these from ``[evaluate]`` (its seed, separation and samples per k), so the
    probed scenes are the first ones the evaluation sampled at each k; set them only to probe
    other scenes.
    """

    seed: int = 0  # conditionings of k come from the stream (seed, "eval", k)
    min_separation: float | None = None  # image-plane separation of the scenes (None: the data's)
    per_count: int = 32  # scenes drawn per k in one batch (the first ``scenes`` are probed)

    def __post_init__(self) -> None:
        if self.per_count < 1:
            raise ConfigError(f"locality.extrapolation.draw.per_count={self.per_count}: expected >= 1")
        if self.min_separation is not None and not 0 <= self.min_separation < 1:
            raise ConfigError(f"locality.extrapolation.draw.min_separation={self.min_separation}: "
                              "expected a share of the image side in [0, 1)")


@dataclass(frozen=True)
class ExtrapolationOptions:
    """The probe in the extrapolation regime (``locality.extrapolation``): k = 1..10 conditioners,
    noise up to where the layout is decided. Empty ``counts`` switches it off."""

    counts: tuple[int, ...] = tuple(range(1, 11))  # conditioners per probed scene
    scenes: int = 8  # scenes per k (at most the draw's per_count: the evaluation's own scenes)
    sigmas: tuple[float, ...] = (0.5, 2.0, 5.0, 10.0, 20.0)  # noise levels, one noise image per scene
    band: tuple[float, float] = (2.0, 20.0)  # headline: mean over the sigmas in this band (layout)
    window_px: float = 3.0  # a conditioner's window: pixels within this distance of its location
    far_px: float = 16.0  # conditioners farther than this from conditioner i are its far context
    batch_size: int = 64  # forward passes per batch
    # at these k, the far residual again with GroupNorm statistics held at the near context's
    # (where the coupling lives; networks with GroupNorm only)
    held_norm_counts: tuple[int, ...] = (8, 10)
    draw: SceneDraw = field(default_factory=SceneDraw)

    def __post_init__(self) -> None:
        where = "locality.extrapolation"
        if self.counts and min(self.counts) < 1:
            raise ConfigError(f"{where}.counts={list(self.counts)}: expected counts >= 1")
        if self.scenes < 1 or self.batch_size < 1:
            raise ConfigError(f"{where}.scenes={self.scenes} / batch_size={self.batch_size}: expected >= 1")
        if not self.sigmas or min(self.sigmas) <= 0:
            raise ConfigError(f"{where}.sigmas={list(self.sigmas)}: expected positive noise levels")
        lo, hi = self.band
        if not any(lo <= s <= hi for s in self.sigmas):
            raise ConfigError(f"{where}.band=[{lo:g}, {hi:g}] holds none of sigmas={list(self.sigmas)}")
        if not 0 < self.window_px < self.far_px:
            raise ConfigError(f"{where}.window_px={self.window_px} / far_px={self.far_px}: expected "
                              "0 < window_px < far_px")

    def band_sigmas(self) -> tuple[float, ...]:
        return tuple(s for s in self.sigmas if self.band[0] <= s <= self.band[1])


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
    extrapolation: ExtrapolationOptions = field(default_factory=ExtrapolationOptions)

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

