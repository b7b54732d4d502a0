"""Intervention stage: make a failing model's score local and see whether it generalizes.

- ``masked``: post hoc masked composition ``D_bg + sum_j m_j (D(c_j) - D_bg)`` with windows
  around each location (form (c); forms (a)/(b), local by construction, are ``models.local``);
- ``subject``: interventions as study members (``InterventionSpec``, ``load_subject``);
- ``lcs_machine``: a training-free local conditional score machine (Kamb & Ganguli's local
  score machine with conditioners), a reference for locality and a patch-size calibrator;
- ``toys``: exact distributions on which the CPC <-> LCS equivalence is checked numerically.
"""

from .lcs_machine import (
    LCSMachine,
    PatchSchedule,
    calibrate_patch_schedule,
    default_patch_schedule,
    r2_against,
    r2_score,
)
from .masked import location_windows, masked_composition
from .config import InterventionSpec
from .subject import load_subject, subject_checkpoint
from .toys import (
    LocalityCheck,
    RegionMixtureToy,
    compose_single_scores,
    measure_locality,
    squares_dataset,
)

__all__ = [
    "InterventionSpec",
    "LCSMachine",
    "LocalityCheck",
    "PatchSchedule",
    "RegionMixtureToy",
    "calibrate_patch_schedule",
    "compose_single_scores",
    "default_patch_schedule",
    "load_subject",
    "location_windows",
    "masked_composition",
    "measure_locality",
    "r2_against",
    "r2_score",
    "squares_dataset",
    "subject_checkpoint",
]
