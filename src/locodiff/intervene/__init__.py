"""Intervention stage: make a failing model's score local and see whether it generalizes.

- ``masked``: post hoc masked composition ``D_bg + sum_j m_j (D(c_j) - D_bg)`` with windows
  around each location (form (c); forms (a)/(b), local by construction, are ``models.local`` and
  the training-time penalty ``train.penalty``);
- ``config``: ``InterventionSpec``, an intervention as a study member (its folder, and loading it
  as a Denoiser, are ``stages.subjects``'s).

The training-free local score machine and the exact toys are in ``analytic``.
"""

from .config import InterventionSpec
from .masked import location_windows, masked_composition

__all__ = [
    "InterventionSpec",
    "location_windows",
    "masked_composition",
]
