"""Scores known in closed form: references to hold the probes and the interventions against.

- ``lcs_machine``: a training-free local conditional score machine (Kamb & Ganguli's local score
  machine with conditioners): a score local by construction, computed from the training set, and
  a patch-size calibrator;
- ``toys``: exact distributions on which the CPC <-> LCS equivalence is checked numerically
  (region mixtures, count-coupled objects, the squares data set).

Nothing here is trained; the closed-form denoisers for Gaussian data are ``diffusion.analytic``.
"""

from .lcs_machine import (
    LCSMachine,
    LCSOptions,
    PatchSchedule,
    calibrate_patch_schedule,
    default_patch_schedule,
    r2_against,
    r2_score,
)
from .toys import (
    CountCoupledToy,
    LocalityCheck,
    RegionMixtureToy,
    ToyOptions,
    compose_single_scores,
    measure_locality,
    squares_dataset,
)

__all__ = [
    "CountCoupledToy",
    "LCSMachine",
    "LCSOptions",
    "LocalityCheck",
    "PatchSchedule",
    "RegionMixtureToy",
    "ToyOptions",
    "calibrate_patch_schedule",
    "compose_single_scores",
    "default_patch_schedule",
    "measure_locality",
    "r2_against",
    "r2_score",
    "squares_dataset",
]
