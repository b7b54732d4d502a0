"""Intervention stage: make a failing model's score local and see whether it generalizes.

- ``masked``: post hoc masked composition ``D_bg + sum_j m_j (D(c_j) - D_bg)`` with windows
  around each location (form (c); forms (a)/(b), local by construction, are ``models.local`` and
  the training-time penalty ``train.penalty``);
- ``subject``: interventions as study members (``InterventionSpec``, ``load_subject``: the
  Denoiser a stage evaluates or probes, a trained run's or an intervention on one).

The training-free local score machine and the exact toys are in ``analytic``.
"""

from .config import InterventionSpec
from .masked import location_windows, masked_composition
from .subject import load_subject, subject_checkpoint

__all__ = [
    "InterventionSpec",
    "load_subject",
    "location_windows",
    "masked_composition",
    "subject_checkpoint",
]
