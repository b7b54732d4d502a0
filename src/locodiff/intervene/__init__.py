"""Intervention stage: make a failing model's score local and see whether it generalizes.

- ``masked``: post hoc masked composition ``D_bg + sum_j m_j (D(c_j) - D_bg)`` with windows
  around each location (form (c); forms (a)/(b), local by construction, are ``models.local``);
- ``subject``: interventions as study members (``InterventionSpec``, ``load_subject``).
"""

from .masked import location_windows, masked_composition
from .subject import InterventionSpec, load_subject, subject_checkpoint

__all__ = ["InterventionSpec", "load_subject", "location_windows", "masked_composition", "subject_checkpoint"]
