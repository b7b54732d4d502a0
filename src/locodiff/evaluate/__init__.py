"""Evaluation stage: find the objects a model drew and score length generalization per k.

- ``detector``: the ``Detections`` type, the ``Detector`` protocol and ``ColorDetector``, a
  training-free background/colour detector;
- ``heatmap``: ``HeatmapDetector``, a small network trained on locodiff's own renders (the default
  for scoring; ``load_or_train_detector`` caches it);
- ``metrics``: Hungarian matching, per-k accuracies with Wilson intervals, summaries over k;
- ``validation``: the detector's ceiling on ground-truth renders (a table for the report);
- ``runner``: ``evaluate_denoiser`` — sample, detect, score, write eval.json / eval.jsonl /
  figures, resumable;
- ``oracle``: reference denoisers with known scores (a perfect renderer, a fixed image).
"""

from .config import DETECTORS, EvalConfig, HeatmapConfig, SummaryOptions
from .detector import ColorDetector, ColorDetectorConfig, Detections, Detector
from .heatmap import HeatmapDetector, load_detector, load_or_train_detector, train_heatmap_detector
from .metrics import (
    CountMetrics, ImageMatch, count_metrics, default_tolerance_px,
    largest_k_above, match_locations, normalized_auc, summarize, wilson_interval,
)
from .oracle import FixedImageDenoiser, OracleDenoiser
from .runner import (
    EvalResult, TestScenes, build_detector, dataset_conditionings, evaluate_denoiser,
    evaluate_model,
    scene_conditionings,
)
from .validation import PERTURBATIONS, ValidationSpec, validate_detector, validation_markdown

__all__ = [
    "DETECTORS",
    "ColorDetector", "ColorDetectorConfig", "TestScenes", "CountMetrics", "Detections", "Detector", "EvalConfig", "EvalResult", "build_detector", "evaluate_model",
    "FixedImageDenoiser", "HeatmapConfig", "HeatmapDetector",
    "ImageMatch", "OracleDenoiser", "PERTURBATIONS", "SummaryOptions", "count_metrics",
    "dataset_conditionings", "default_tolerance_px", "evaluate_denoiser", "largest_k_above",
    "load_detector", "load_or_train_detector", "match_locations", "normalized_auc",
    "scene_conditionings", "summarize", "train_heatmap_detector", "ValidationSpec", "validate_detector",
    "validation_markdown", "wilson_interval",
]
