"""The paper's mechanism in its own dichotomous form: models that generalize have local
conditional scores where generalization is asked, models that fail do not.

Every (model, k) beyond training (k in the evaluation's extrapolation range) is a point; it
*generalizes* when its recall reaches ``report.generalizes`` and *fails* when it stays below
``report.fails`` (points in between are neither). A locality statistic of the extrapolation probe
separates the two when the generalizing points are the more local: the AUROC, the chance that a
generalizing point is more local than a failing one (ties count a half; 1 = perfect, 0.5 = none).
Locality is the closeness of the statistic to its value under exact locality (efficacy 1, far
residual 0). The interval resamples, per point, the evaluation's samples (so recall, and with it
the point's side, moves) and the probe's scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..locality.extrapolation import EXACT, band_value
from ..rng import derived_seed
from .facts import ModelFacts, learned_conditioner

EXTRAPOLATION_STATISTICS = ("efficacy", "far_residual", "efficacy_gap")
TRAINING_RANGE_STATISTICS = ("locality_index", "presence_index")  # one value per model, 1-3 objects


@dataclass(frozen=True)
class Point:
    """One (model, k): each evaluated sample's matched objects, and the probe's per-scene sums."""

    model: str
    k: int
    matched: np.ndarray  # [samples]
    sums: torch.Tensor | None  # [scenes, sigmas, SUMS] of the extrapolation probe at k
    band: torch.Tensor | None  # bool [sigmas]: the headline noise band
    model_value: dict[str, float | None]  # the training-range indices of the model

    def recall(self, draws: np.ndarray) -> np.ndarray:
        """Recall under each row of sample indices [n_boot, samples]."""
        return self.matched[draws].sum(-1) / (self.k * self.matched.size)

    def locality(self, statistic: str, scene_draws: torch.Tensor | None = None) -> np.ndarray:
        """Closeness to exact locality (higher = more local), at the point or per row of scene
        indices [n_boot, scenes]."""
        if statistic in TRAINING_RANGE_STATISTICS:
            value = self.model_value[statistic]
            return np.full(1 if scene_draws is None else len(scene_draws), np.nan if value is None else value)
        sums = self.sums if scene_draws is None else self.sums[scene_draws]
        value = band_value(sums, self.band)[statistic].double().numpy().reshape(-1)
        return -np.abs(value - EXACT[statistic])


@dataclass(frozen=True)
class Separation:
    statistic: str
    auroc: float | None  # None: no generalizing or no failing point
    lo: float | None  # bootstrap interval (None for the training-range indices: one value per model)
    hi: float | None
    generalizing: tuple[str, ...]  # 'model@k'
    failing: tuple[str, ...]

    def supported(self, criteria) -> bool:
        return (self.auroc is not None and self.lo is not None and self.auroc >= criteria.separates
                and self.lo >= criteria.separates_lo)


def auroc(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive's score > a negative's), ties a half, over the points with a score; NaN
    without both kinds."""
    pos, neg = scores[positive & ~np.isnan(scores)], scores[negative & ~np.isnan(scores)]
    if not pos.size or not neg.size:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def separation_points(cfg, facts: list[ModelFacts]) -> list[Point]:
    """Every (model, k) in the extrapolation range of the models that learned their conditioner,
    were evaluated with per-sample records and probed there."""
    lo, hi = cfg.evaluate.extrapolation_range
    points = []
    for f in facts:
        ex = f.extrapolation
        if ex is None or not f.eval_records or not learned_conditioner(f, cfg.evaluate.threshold):
            continue
        band = torch.tensor([ex.options["band"][0] <= s <= ex.options["band"][1] for s in ex.options["sigmas"]])
        values = {"locality_index": f.locality_index, "presence_index": f.presence_index}
        for k in sorted(ex.sums):
            matched = np.array([len(r["pairs"]) for r in f.eval_records if r["k"] == k], dtype=float)
            if lo <= k <= hi and matched.size:
                sums = torch.tensor(ex.sums[k], dtype=torch.float64)
                points.append(Point(f.name, k, matched, sums, band, values))
    return points


def separation(cfg, points: list[Point], statistic: str, n_boot: int = 1000, level: float = 0.95) -> Separation:
    """The AUROC of ``statistic`` between generalizing and failing points, with a percentile
    interval from ``n_boot`` resamplings (extrapolation statistics only)."""
    criteria = cfg.report
    recall = np.array([p.matched.sum() / (p.k * p.matched.size) for p in points])
    scores = np.array([p.locality(statistic)[0] for p in points])
    positive, negative = recall >= criteria.generalizes, recall < criteria.fails
    names = np.array([f"{p.model}@{p.k}" for p in points])
    point = auroc(scores, positive, negative)
    lo = hi = None
    if statistic in EXTRAPOLATION_STATISTICS and not np.isnan(point):
        lo, hi = _interval(cfg, points, statistic, n_boot, level)
    return Separation(statistic, None if np.isnan(point) else point, lo, hi,
                      tuple(names[positive]), tuple(names[negative]))


def _interval(cfg, points: list[Point], statistic: str, n_boot: int, level: float) -> tuple[float, float]:
    gen = np.random.default_rng(derived_seed(cfg.seed, "report", "separation", statistic))
    torch_gen = torch.Generator().manual_seed(int(gen.integers(2**62)))
    recalls, scores = [], []
    for p in points:
        samples = gen.integers(0, p.matched.size, (n_boot, p.matched.size))
        scenes = torch.randint(0, p.sums.shape[0], (n_boot, p.sums.shape[0]), generator=torch_gen)
        recalls.append(p.recall(samples))
        scores.append(p.locality(statistic, scenes))
    recalls, scores = np.stack(recalls, 1), np.stack(scores, 1)  # [n_boot, points]
    draws = [auroc(s, r >= cfg.report.generalizes, r < cfg.report.fails) for s, r in zip(scores, recalls)]
    draws = np.array([d for d in draws if not np.isnan(d)])
    if not draws.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
