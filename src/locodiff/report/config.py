"""The report's criteria, in one place: what "generalizes", "fails", "local" and "supported" mean.

Every verdict the report prints is a comparison of a measured number with one of these; a
study's ``[report]`` table may change them, and the report names the value it used beside each
verdict. Changing them changes no folder: the report is written anew from the saved results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import SIGNED
from ..errors import ConfigError


@dataclass(frozen=True)
class ReportConfig:
    # lowest recall over the extrapolation range at which a model length-generalizes
    generalizes: float = 0.8
    # mean recall over the extrapolation range below which a model fails to
    fails: float = 0.5
    # Spearman correlation above which a locality-generalization claim is supported ...
    claim_rho: float = field(default=0.5, metadata=SIGNED)
    # ... and below which the summary calls the support absent (between the two: weak)
    weak_rho: float = field(default=0.2, metadata=SIGNED)
    # the mechanism as the paper states it: the AUROC with which the efficacy separates (model, k)
    # points beyond training that generalize (recall >= generalizes) from those that fail
    # (< fails) reaches this, and its 95% interval's lower end reaches separates_lo
    separates: float = 0.9
    separates_lo: float = 0.75
    # normalised locality index at which the emergence text calls a score local
    local_index: float = 0.8
    # caption model, the paper's SDXL statements: (1) Jacobian mass within the radius at least this
    spatial_local: float = 0.5
    # (2) normalised phrase share within the radius below this (below twice this: partly)
    phrase_absent: float = 0.3
    # (3) mean off-diagonal |cosine| of colour concept directions below this at some block
    orthogonal: float = 0.5

    def __post_init__(self) -> None:
        for name in ("generalizes", "fails", "separates", "separates_lo", "local_index", "spatial_local", "phrase_absent", "orthogonal"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"report.{name}={value!r}: expected a number in [0, 1]")
        for name in ("claim_rho", "weak_rho"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not -1 <= value <= 1:
                raise ConfigError(f"report.{name}={value!r}: expected a correlation in [-1, 1]")
        if self.weak_rho > self.claim_rho:
            raise ConfigError(f"report.weak_rho={self.weak_rho} exceeds report.claim_rho={self.claim_rho}")
