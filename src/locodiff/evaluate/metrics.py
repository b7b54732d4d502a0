"""Length-generalization metrics: did the model draw the requested objects, and only them?

Everything here works on plain numbers (numpy arrays of locations), not on images, so it can be
checked against hand-computed cases and reused on any detector's output.

Per image, requested locations and detected centres are paired by the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``); a pair counts as a *match* only when the two points
are within a tolerance radius in pixels. Pairs further apart are treated as "not placed" plus
"one extra object", which is what they are to a reader of the sample grid.

Per requested count ``k`` (over all images asked for ``k`` objects):
- ``count``: share of images with exactly ``k`` detections;
- ``placed``: share of images where every requested location is matched (extras allowed);
- ``success``: both at once — exactly the requested objects, each where it was asked for;
- ``precision`` / ``recall``: matched pairs over all detections / over all requested objects
  (pooled over the images; recall is DESIGN §6's "match");
- ``loc_error_px``: mean distance of matched pairs in pixels;
- ``count_error_hist``: how often ``detected - k`` took each value;
- Wilson 95% intervals for the three accuracies.

Summaries over k, for a trained range (default 1-3) and an extrapolation range (default 4-10):
the largest k whose accuracy is at least a threshold, and the normalised area under the
accuracy-vs-k curve (1.0 = perfect everywhere in the range).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from ..errors import InputError
from .config import SummaryOptions

# Matching radius at the reference resolution; it scales linearly with the image side.
REFERENCE_TOLERANCE_PX = 3.0
REFERENCE_RESOLUTION = 32
ACCURACY_KINDS = ("count", "placed", "success")  # per-image, all-or-nothing rates
RATE_KINDS = ("recall", "precision")  # per-object rates pooled over the images of one k
# attribute scores kept per image as (checked, correct) counts
ATTRIBUTE_KINDS = ("color", "shape", "seen", "heldout", "seen_color", "heldout_color")
ATTRIBUTE_COUNTS = tuple(f"{kind}_{what}" for kind in ATTRIBUTE_KINDS for what in ("checked", "correct"))


def default_tolerance_px(resolution: int) -> float:
    """3 px at 32x32, scaled with the side (1.5 px at 16, 6 px at 64): objects scale with it."""
    return REFERENCE_TOLERANCE_PX * resolution / REFERENCE_RESOLUTION


# ----- one image ---------------------------------------------------------------------------------


@dataclass
class ImageMatch:
    """How one image's detections pair up with its requested locations."""

    n_requested: int
    n_detected: int
    pairs: list[tuple[int, int]]  # (requested index, detection index), matches only
    distances_px: list[float]  # distance of each matched pair, in pixels
    n_color_checked: int = 0  # matched pairs whose requested colour was given
    n_color_correct: int = 0  # ... and whose detected colour agrees
    n_shape_checked: int = 0  # matched pairs whose requested shape was given (and classified)
    n_shape_correct: int = 0  # ... and whose detected shape agrees
    # (shape, colour) combinations: matched pairs with both given, split by whether the model saw
    # that combination in training; "correct" = colour and shape both right (``*_color``: the
    # colour alone right, readable where shapes are hard to classify)
    n_seen_checked: int = 0
    n_seen_correct: int = 0
    n_heldout_checked: int = 0
    n_heldout_correct: int = 0
    n_seen_color_checked: int = 0
    n_seen_color_correct: int = 0
    n_heldout_color_checked: int = 0
    n_heldout_color_correct: int = 0

    @property
    def n_matched(self) -> int:
        return len(self.pairs)

    @property
    def count_correct(self) -> bool:
        return self.n_detected == self.n_requested

    @property
    def all_placed(self) -> bool:
        return self.n_matched == self.n_requested

    @property
    def success(self) -> bool:
        return self.count_correct and self.all_placed

    def to_dict(self) -> dict:
        return {
            "n_requested": self.n_requested,
            "n_detected": self.n_detected,
            "pairs": [list(p) for p in self.pairs],
            "distances_px": [round(d, 4) for d in self.distances_px],
            **{f"n_{name}": getattr(self, f"n_{name}") for name in ATTRIBUTE_COUNTS},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ImageMatch":
        return cls(
            d["n_requested"], d["n_detected"], [tuple(p) for p in d["pairs"]], list(d["distances_px"]),
            **{f"n_{name}": d.get(f"n_{name}", 0) for name in ATTRIBUTE_COUNTS},
        )


def _as_points(points, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contain NaN or infinite values: {arr.tolist()}")
    return arr


def match_locations(
    requested: Sequence[Sequence[float]] | np.ndarray,
    detected: Sequence[Sequence[float]] | np.ndarray,
    image_size: tuple[int, int],
    tolerance_px: float,
) -> ImageMatch:
    """Pair requested locations with detected centres; both in the Conditioning convention.

    ``image_size`` is (height, width): distances are measured in pixels so that the tolerance
    means the same thing on any image. Pairs further apart than ``tolerance_px`` get a cost so
    large that the assignment first maximises the number of pairs within tolerance and only then
    minimises their total distance (plain distance-Hungarian can trade one good pair for two
    mediocre ones and lose a match).
    """
    if tolerance_px <= 0:
        raise InputError(f"tolerance_px={tolerance_px}: expected a positive radius in pixels")
    req = _as_points(requested, "requested locations")
    det = _as_points(detected, "detected centres")
    h, w = image_size
    scale = np.array([w, h], dtype=np.float64)
    if len(req) == 0 or len(det) == 0:
        return ImageMatch(len(req), len(det), [], [])
    dist = np.linalg.norm((req[:, None, :] - det[None, :, :]) * scale, axis=-1)
    too_far = dist > tolerance_px
    big = 1e6 * (1.0 + dist.max())
    rows, cols = linear_sum_assignment(np.where(too_far, big, dist))
    pairs, distances = [], []
    for r, c in zip(rows.tolist(), cols.tolist()):
        if not too_far[r, c]:
            pairs.append((r, c))
            distances.append(float(dist[r, c]))
    return ImageMatch(len(req), len(det), pairs, distances)


def score_colors(match: ImageMatch, requested_colors: Sequence[int] | None, detected_colors: Sequence[int]) -> ImageMatch:
    """Record how many matched pairs also have the requested colour (``-1`` = not requested)."""
    return score_attributes(match, requested_colors, None, detected_colors, None)


def score_attributes(
    match: ImageMatch,
    requested_colors: Sequence[int] | None,
    requested_shapes: Sequence[int] | None,
    detected_colors: Sequence[int],
    detected_shapes: Sequence[int] | None,
    heldout: Iterable[tuple[int, int]] = (),
) -> ImageMatch:
    """Record, over matched pairs, whether the detected colour and shape are the requested ones.

    ``-1`` marks an attribute that was not requested; ``detected_shapes=None`` means the detector
    does not classify shapes. Pairs with both a colour and a shape requested are also scored as a
    combination, split by whether ``(shape, colour)`` is in ``heldout`` (never seen in training).
    """
    held = {(int(s), int(c)) for s, c in heldout}
    counts = dict.fromkeys(ATTRIBUTE_COUNTS, 0)

    def tally(kind: str, ok: bool) -> None:
        counts[f"{kind}_checked"] += 1
        counts[f"{kind}_correct"] += int(ok)

    for r, d in match.pairs:
        colour = requested_colors[r] if requested_colors is not None else -1
        shape = requested_shapes[r] if requested_shapes is not None and detected_shapes is not None else -1
        if colour >= 0:
            tally("color", int(detected_colors[d]) == colour)
        if shape >= 0:
            tally("shape", int(detected_shapes[d]) == shape)
        if colour >= 0 and shape >= 0:
            split = "heldout" if (shape, colour) in held else "seen"
            tally(split, int(detected_colors[d]) == colour and int(detected_shapes[d]) == shape)
            tally(f"{split}_color", int(detected_colors[d]) == colour)
    for name, value in counts.items():
        setattr(match, f"n_{name}", value)
    return match


# ----- confidence intervals ----------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for z = 1.96).

    Chosen over the normal approximation because it stays inside [0, 1] and is sensible at
    0% and 100% with few samples — exactly where per-k accuracies sit. No trials: (0, 1).
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise InputError(f"wilson_interval: expected 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    z2 = z * z
    denom = 1 + z2 / trials
    center = (p + z2 / (2 * trials)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return (max(0.0, center - half), min(1.0, center + half))


def ratio_interval(numerators: Sequence[int], denominators: Sequence[int], resamples: int = 2000,
                   level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``sum(num) / sum(den)`` resampling whole images.

    Recall and precision pool objects over images, but the objects of one image are not
    independent draws (one failed sample loses several), so images, not objects, are resampled.
    Deterministic (fixed seed). None when the denominators sum to zero.
    """
    num, den = np.asarray(numerators, float), np.asarray(denominators, float)
    if den.sum() == 0:
        return None
    picks = np.random.default_rng(seed).integers(0, len(num), size=(resamples, len(num)))
    totals = den[picks].sum(1)
    ratios = num[picks].sum(1)[totals > 0] / totals[totals > 0]
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


# ----- per count k -------------------------------------------------------------------------------


@dataclass
class CountMetrics:
    """Scores of all images that were asked for ``k`` objects."""

    k: int
    n_images: int
    count: float  # accuracies in [0, 1]
    placed: float
    success: float
    count_ci: tuple[float, float]
    placed_ci: tuple[float, float]
    success_ci: tuple[float, float]
    precision: float | None  # None where undefined (no detections at all)
    recall: float | None  # None for k = 0
    loc_error_px: float | None  # None when nothing was matched
    mean_detected: float
    count_error_hist: dict[int, int] = field(default_factory=dict)  # detected - k -> images
    color_accuracy: float | None = None  # matched pairs with the requested colour; None if none asked
    shape_accuracy: float | None = None  # ... with the requested shape
    seen_combo_accuracy: float | None = None  # ... with colour and shape right, seen combinations
    heldout_combo_accuracy: float | None = None  # ... the same, combinations held out of training
    seen_color_accuracy: float | None = None  # colour right, seen combinations
    heldout_color_accuracy: float | None = None  # colour right, held-out combinations
    attribute_counts: dict[str, int] = field(default_factory=dict)  # summed per-image counts
    recall_ci: tuple[float, float] | None = None  # 95% bootstrap over images; None for k = 0
    precision_ci: tuple[float, float] | None = None  # the same; None without detections

    def to_dict(self) -> dict:
        d = asdict(self)
        d["count_error_hist"] = {str(e): n for e, n in sorted(self.count_error_hist.items())}
        for kind in ACCURACY_KINDS + RATE_KINDS:
            if d[f"{kind}_ci"] is not None:
                d[f"{kind}_ci"] = list(d[f"{kind}_ci"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CountMetrics":
        d = dict(d)
        d["count_error_hist"] = {int(e): n for e, n in d["count_error_hist"].items()}
        for kind in ACCURACY_KINDS + RATE_KINDS:
            if d.get(f"{kind}_ci") is not None:
                d[f"{kind}_ci"] = tuple(d[f"{kind}_ci"])
        return cls(**d)


def count_metrics(k: int, matches: Sequence[ImageMatch], z: float = 1.96) -> CountMetrics:
    """Aggregate the matches of images that requested ``k`` objects."""
    if not matches:
        raise InputError(f"no images to score for k={k}")
    bad = [m.n_requested for m in matches if m.n_requested != k]
    if bad:
        raise InputError(f"an image scored under k={k} requested {bad[0]} objects")
    n = len(matches)
    hits = {
        "count": sum(m.count_correct for m in matches),
        "placed": sum(m.all_placed for m in matches),
        "success": sum(m.success for m in matches),
    }
    n_det = sum(m.n_detected for m in matches)
    n_match = sum(m.n_matched for m in matches)
    distances = [d for m in matches for d in m.distances_px]
    hist = Counter(m.n_detected - k for m in matches)
    totals = {name: sum(getattr(m, f"n_{name}") for m in matches) for name in ATTRIBUTE_COUNTS}

    def rate(kind: str) -> float | None:
        checked = totals[f"{kind}_checked"]
        return totals[f"{kind}_correct"] / checked if checked else None

    return CountMetrics(
        k=k,
        n_images=n,
        count=hits["count"] / n,
        placed=hits["placed"] / n,
        success=hits["success"] / n,
        count_ci=wilson_interval(hits["count"], n, z),
        placed_ci=wilson_interval(hits["placed"], n, z),
        success_ci=wilson_interval(hits["success"], n, z),
        precision=n_match / n_det if n_det else None,
        recall=n_match / (k * n) if k else None,
        loc_error_px=float(np.mean(distances)) if distances else None,
        mean_detected=n_det / n,
        count_error_hist=dict(sorted(hist.items())),
        color_accuracy=rate("color"),
        shape_accuracy=rate("shape"),
        seen_combo_accuracy=rate("seen"),
        heldout_combo_accuracy=rate("heldout"),
        seen_color_accuracy=rate("seen_color"),
        heldout_color_accuracy=rate("heldout_color"),
        attribute_counts={k: v for k, v in totals.items() if v},
        recall_ci=ratio_interval([m.n_matched for m in matches], [k] * n) if k else None,
        precision_ci=ratio_interval([m.n_matched for m in matches], [m.n_detected for m in matches]),
    )


# ----- summaries over k --------------------------------------------------------------------------


def largest_k_above(accuracy: dict[int, float], threshold: float = 0.5, ks: Iterable[int] | None = None) -> int | None:
    """The largest k (among ``ks``, default all) whose accuracy is >= ``threshold``; None if none.

    Not required to be contiguous: a model that fails at k=6 by chance but succeeds at k=7 is
    credited with 7; read it beside the per-k table.
    """
    candidates = [k for k in (accuracy if ks is None else ks) if k in accuracy and accuracy[k] >= threshold]
    return max(candidates) if candidates else None


def normalized_auc(accuracy: dict[int, float], k_range: tuple[int, int]) -> float | None:
    """Area under accuracy-vs-k over ``k_range`` (inclusive), divided by its width.

    Trapezoid rule over the evaluated k inside the range, so 1.0 means perfect at every k and the
    number is comparable between ranges of different widths. A single evaluated k gives its own
    accuracy; no evaluated k in the range gives None.
    """
    lo, hi = k_range
    ks = sorted(k for k in accuracy if lo <= k <= hi)
    if not ks:
        return None
    if len(ks) == 1:
        return float(accuracy[ks[0]])
    ys = [accuracy[k] for k in ks]
    area = sum((ks[i + 1] - ks[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(ks) - 1))
    return float(area / (ks[-1] - ks[0]))


@dataclass(frozen=True)
class RangeSummary:
    """One accuracy kind over one range of k: the largest k at or above the threshold, the
    normalised area under the curve, and the lowest value."""

    largest_k: int | None
    auc: float | None
    min: float | None


@dataclass(frozen=True)
class KindSummary:
    largest_k: int | None  # over every evaluated k
    trained: RangeSummary
    extrapolation: RangeSummary


@dataclass(frozen=True)
class EvalSummary:
    """The headline numbers of an evaluation, per accuracy kind (``ACCURACY_KINDS + RATE_KINDS``).
    Saved flat in eval.json (``recall_min_extrapolation``, ...): ``to_dict`` and ``from_dict``
    are the only places those keys are spelled."""

    threshold: float
    trained_range: tuple[int, int]
    extrapolation_range: tuple[int, int]
    kinds: dict[str, KindSummary]

    def __getitem__(self, kind: str) -> KindSummary:
        return self.kinds[kind]

    def to_dict(self) -> dict:
        out: dict = {"threshold": self.threshold, "trained_range": list(self.trained_range),
                     "extrapolation_range": list(self.extrapolation_range)}
        for kind, k in self.kinds.items():
            for label in ("trained", "extrapolation"):
                r = getattr(k, label)
                out.update({f"{kind}_largest_k_{label}": r.largest_k, f"{kind}_auc_{label}": r.auc,
                            f"{kind}_min_{label}": r.min})
            out[f"{kind}_largest_k"] = k.largest_k
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "EvalSummary":
        def span(kind: str, label: str) -> RangeSummary:
            return RangeSummary(d.get(f"{kind}_largest_k_{label}"), d.get(f"{kind}_auc_{label}"),
                                d.get(f"{kind}_min_{label}"))
        kinds = {kind: KindSummary(d.get(f"{kind}_largest_k"), span(kind, "trained"), span(kind, "extrapolation"))
                 for kind in ACCURACY_KINDS + RATE_KINDS}
        return cls(d["threshold"], tuple(d["trained_range"]), tuple(d["extrapolation_range"]), kinds)


def summarize(per_k: dict[int, CountMetrics], options: SummaryOptions | None = None) -> EvalSummary:
    """Headline numbers for every accuracy kind, per range: largest k >= threshold, AUC, lowest."""
    opts = options or SummaryOptions()
    kinds = {}
    for kind in ACCURACY_KINDS + RATE_KINDS:
        acc = {k: getattr(m, kind) for k, m in per_k.items() if getattr(m, kind) is not None}

        def span(lo: int, hi: int) -> RangeSummary:
            ks = [k for k in acc if lo <= k <= hi]
            return RangeSummary(largest_k_above(acc, opts.threshold, ks), normalized_auc(acc, (lo, hi)),
                                min((acc[k] for k in ks), default=None))

        kinds[kind] = KindSummary(largest_k_above(acc, opts.threshold), span(*opts.trained_range),
                                  span(*opts.extrapolation_range))
    return EvalSummary(opts.threshold, tuple(opts.trained_range), tuple(opts.extrapolation_range), kinds)


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho (average ranks for ties); nan when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def pair_accuracy(records: list[dict], pairs: set[tuple[int, int]]) -> dict[str, tuple[float | None, int]]:
    """From the records of ``eval.jsonl``: over matched objects of every k, the share with colour right and with
    colour and shape right, on the (shape, colour) index ``pairs`` (``"in"``) and on the others
    (``"out"``); each as (accuracy, objects)."""
    tally = {f"{where}_{what}": [0, 0] for where in ("in", "out") for what in ("color", "both")}
    for rec in records:
        shapes, colours = rec.get("requested_shapes"), rec.get("requested_colors")
        det_shapes = rec["detections"].get("shape_index")
        if not shapes or colours is None or det_shapes is None:
            continue
        det_colours = rec["detections"]["color_index"]
        for r, d in rec["pairs"]:
            where = "in" if (shapes[r], colours[r]) in pairs else "out"
            colour_ok = det_colours[d] == colours[r]
            for what, ok in (("color", colour_ok), ("both", colour_ok and det_shapes[d] == shapes[r])):
                tally[f"{where}_{what}"][0] += int(ok)
                tally[f"{where}_{what}"][1] += 1
    return {k: ((c / n if n else None), n) for k, (c, n) in tally.items()}
