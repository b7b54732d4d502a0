"""Options of a post hoc intervention (light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import NOT_IDENTITY
from ..errors import ConfigError


FORMS = ("masked_composition",)


@dataclass(frozen=True)
class InterventionSpec:
    """A post hoc intervention on one trained model of the study (no retraining)."""

    base: str = "exp2"  # name of the study model it is applied to
    form: Literal["masked_composition"] = "masked_composition"  # see intervene.masked
    radius_px: float = 3.0  # window radius around each location, in pixels of the image
    softness_px: float = 0.5  # width of the window's soft edge
    # what the report calls it; not part of its folder's identity
    role: Literal["exp1", "exp2", "exp3", "baseline"] = field(default="exp3", metadata=NOT_IDENTITY)
    enabled: bool = field(default=True, metadata=NOT_IDENTITY)
    description: str = field(default="", metadata=NOT_IDENTITY)

    def __post_init__(self) -> None:
        if self.radius_px <= 0:
            raise ConfigError(f"intervention radius_px={self.radius_px}: expected > 0 pixels")
        if self.softness_px < 0:
            raise ConfigError(f"intervention softness_px={self.softness_px}: expected >= 0")

