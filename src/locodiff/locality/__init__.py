"""Locality probe: does a denoiser's score at a pixel depend only on nearby pixels (pixel
locality) and only on nearby conditioners (conditional locality)?

- ``jacobian``: batched Jacobian engines (pixel rows, full, colouring, conditioners, randomized);
- ``stats``: mass fractions, effective radii, the conditional-locality index, confidence intervals;
- ``probe``: ``probe_locality(denoiser, images, conds, ProbeSpec(...), generator)`` -> a
  ``LocalityResult`` (``result``: save/load/summaries/merge);
- ``extrapolation``: ``probe_extrapolation(denoiser, scenes, ExtrapolationOptions(...), generator)``
  where generalization is asked: each conditioner's efficacy and far residual at k = 1..10;
- ``figures``: heat maps and curves from saved results (imported on demand: needs matplotlib).
"""

from .config import ExtrapolationOptions, SceneDraw
from .extrapolation import ExtrapolationResult, probe_extrapolation
from .jacobian import (
    MassEstimate,
    colored_pixel_jacobian,
    conditioner_jacobian,
    conditioner_sensitivity,
    full_pixel_jacobian,
    hutchinson_mass,
    naive_pixel_jacobian,
    parameter_jacobian,
    pixel_jacobian,
)
from .probe import ProbeSpec, SamplingError, SamplingErrorOptions, probe_locality, sample_pixels, sampling_error
from .result import LocalityResult, SigmaSummary, merge_results, summarize
from .stats import (
    ConditionalLocality,
    Estimate,
    IndexSummary,
    PixelLocality,
    bootstrap_mean,
    conditional_locality,
    conditional_locality_index,
    effective_radius,
    mass_within,
    normal_mean,
    pixel_locality,
    row_energy,
)

__all__ = [
    "ConditionalLocality", "Estimate", "ExtrapolationOptions", "ExtrapolationResult", "SceneDraw",
    "probe_extrapolation", "IndexSummary", "LocalityResult", "ProbeSpec",
    "MassEstimate", "PixelLocality", "SamplingError", "SigmaSummary", "bootstrap_mean",
    "colored_pixel_jacobian", "conditional_locality", "conditional_locality_index",
    "conditioner_jacobian", "conditioner_sensitivity", "effective_radius", "full_pixel_jacobian",
    "hutchinson_mass", "mass_within", "merge_results", "naive_pixel_jacobian", "normal_mean",
    "parameter_jacobian", "pixel_jacobian", "pixel_locality", "probe_locality", "row_energy",
    "sample_pixels", "sampling_error", "SamplingErrorOptions", "summarize",
]
