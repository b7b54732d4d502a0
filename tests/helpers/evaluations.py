"""Evaluations made up for report tests: the rates a test names, the rest empty."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from locodiff.evaluate.metrics import CountMetrics, SummaryOptions, summarize
from locodiff.evaluate.runner import EvalResult


def evaluation(rows: dict[int, dict], trained=(1, 3), extrapolation=(4, 10), threshold=0.5) -> EvalResult:
    """An ``EvalResult`` whose count k has the rates ``rows[k]`` (``recall``, ``placed``, ...)."""
    def metrics(k: int, r: dict) -> CountMetrics:
        rate = {name: r.get(name, 0.0) for name in ("count", "placed", "success")}
        m = CountMetrics(k=k, n_images=1, **rate, count_ci=(0.0, 1.0), placed_ci=(0.0, 1.0), success_ci=(0.0, 1.0),
                         precision=r.get("precision"), recall=r.get("recall"), loc_error_px=None, mean_detected=0.0)
        return replace(m, **{name: v for name, v in r.items() if name not in rate})  # e.g. color_accuracy

    per_k = {k: metrics(k, r) for k, r in rows.items()}
    summary = summarize(per_k, SummaryOptions(trained_range=trained, extrapolation_range=extrapolation,
                                              threshold=threshold))
    return EvalResult(per_k, summary, Path("."), 32, "test")
