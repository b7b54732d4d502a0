"""locodiff: compositional generalization in conditional diffusion models through locality.

Stages (one subpackage each) meet at a few plain types:
``scenes.Scene``/``scenes.SceneBatch`` -> ``conditioning.Conditioning`` -> ``Denoiser`` protocol.

The few entry points a user needs first are importable from here (each loaded when first used,
so ``import locodiff`` stays light): ``load_subject`` (a run or intervention folder as a Denoiser),
``Conditioning``, ``probe_locality`` / ``ProbeSpec`` (Jacobians at pixels and conditioners),
``probe_extrapolation`` / ``ExtrapolationOptions`` (efficacy per k where generalization is asked),
``evaluate_model`` / ``EvalConfig`` (recall per k) and ``load_study_config`` / ``run_study``.
"""

import importlib

__version__ = "0.1.0"

_ENTRY_POINTS = {
    "Conditioning": "locodiff.conditioning",
    "load_subject": "locodiff.stages.subjects",
    "ProbeSpec": "locodiff.locality.probe",
    "probe_locality": "locodiff.locality.probe",
    "ExtrapolationOptions": "locodiff.locality.config",
    "probe_extrapolation": "locodiff.locality.extrapolation",
    "EvalConfig": "locodiff.evaluate.config",
    "evaluate_model": "locodiff.evaluate.runner",
    "load_study_config": "locodiff.stages.config",
    "run_study": "locodiff.stages.study",
}
__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'locodiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
