"""The paper's claims judged on this run: every verdict of the report, each derived once here.

The sections (the summary, the findings, the claim lines, locality trained in, the extrapolation
regime) ask this module and only format what it returns, so one report cannot print two numbers
for one claim. The criteria are ``cfg.report`` (``report.config.ReportConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluate.metrics import rank_correlation
from ..rng import derived_seed
from .config import ReportConfig
from .facts import ModelFacts, accuracy_at, learned_conditioner, recall_beyond, recall_per_k
from .separation import EXTRAPOLATION_STATISTICS, TRAINING_RANGE_STATISTICS, Separation, separation, separation_points

HEADLINE = "efficacy"  # the extrapolation probe's statistic the central claim is judged by


def verdict(ok: bool) -> str:
    return "**supported**" if ok else "**not supported**"


# ----- length generalization per model ------------------------------------------------------------

@dataclass(frozen=True)
class LengthVerdict:
    """Does one model length-generalize (roles exp1, exp3) or fail to (exp2)?"""

    model: str
    role: str
    supported: bool
    lowest: float | None  # recall over the extrapolation range
    mean: float | None
    learned: bool | None  # placed a single requested object (None: not evaluated at k = 1)
    placed_k1: float | None


def length_verdicts(cfg, facts: list[ModelFacts]) -> list[LengthVerdict]:
    """Exp 1 and Exp 3 generalize when their lowest recall beyond training reaches
    ``report.generalizes``; Exp 2 fails when it learned its label and its mean recall there stays
    below ``report.fails``."""
    out = []
    for f in (f for f in facts if f.evaluation and f.role in ("exp1", "exp2", "exp3")):
        low, mean = recall_beyond(f)
        learned, placed = learned_conditioner(f, cfg.evaluate.threshold), accuracy_at(f, 1, "placed")
        if f.role == "exp2":
            if mean is not None:
                ok = bool(learned) and mean < cfg.report.fails
                out.append(LengthVerdict(f.name, f.role, ok, low, mean, learned, placed))
        elif low is not None:
            out.append(LengthVerdict(f.name, f.role, low >= cfg.report.generalizes, low, mean, learned, placed))
    return out


# ----- locality against generalization ------------------------------------------------------------

@dataclass(frozen=True)
class Correlation:
    """Spearman's rho between a locality statistic and the mean recall beyond training, over
    ``models`` (those that learned their conditioner, were probed and were evaluated there)."""

    rho: float
    models: tuple[str, ...]
    statistic: str

    def supported(self, criteria: ReportConfig) -> bool:
        return self.rho > criteria.claim_rho

    def strength(self, criteria: ReportConfig) -> str:
        """How the summary words it: support, none, or weak."""
        if self.supported(criteria):
            return "the more local models generalize further, as the paper argues."
        if self.rho < criteria.weak_rho:
            return "no clear support for the paper's claim on these models."
        return "weak support for the paper's claim."


def judged_models(cfg, facts: list[ModelFacts]) -> list[ModelFacts]:
    """Models whose locality can be set against their generalization: evaluated beyond training,
    probed, and placing a single requested object (a failure means nothing otherwise)."""
    return [f for f in facts if f.evaluation and f.locality_dir and learned_conditioner(f, cfg.evaluate.threshold)
            and recall_beyond(f)[1] is not None]


def locality_correlation(cfg, facts: list[ModelFacts], statistic: str = "locality_index") -> Correlation | None:
    """The rank correlation of ``statistic`` (``locality_index``: moves; ``presence_index``:
    removal) with the mean recall beyond training; None below three models. A model missing the
    statistic is left out, never counted as zero."""
    models = [f for f in judged_models(cfg, facts) if getattr(f, statistic) is not None]
    if len(models) < 3:
        return None
    rho = rank_correlation([getattr(f, statistic) for f in models], [recall_beyond(f)[1] for f in models])
    return Correlation(rho, tuple(f.name for f in models), statistic)


def clustered_spearman(runs: dict[str, list[tuple]], column: int, seed: int, n_boot: int = 2000,
                       level: float = 0.95) -> tuple[float, float, float, int] | None:
    """Spearman's rho between ``column`` of the points and recall, with a bootstrap interval that
    resamples whole runs (a run's points are not independent of each other)."""
    keys = list(runs)
    pooled = [p for k in keys for p in runs[k]]
    if len(keys) < 3 or len(pooled) < 4:
        return None
    rho = rank_correlation([p[column] for p in pooled], [p[-1] for p in pooled])
    gen = np.random.default_rng(derived_seed(seed, "report", "spearman", column))
    draws = []
    for _ in range(n_boot):
        sample = [p for i in gen.integers(0, len(keys), len(keys)) for p in runs[keys[i]]]
        r = rank_correlation([p[column] for p in sample], [p[-1] for p in sample])
        if not np.isnan(r):
            draws.append(r)
    if not draws:
        return rho, float("nan"), float("nan"), len(pooled)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return rho, float(lo), float(hi), len(pooled)


@dataclass(frozen=True)
class ExtrapolationClaim:
    """The central claim where generalization is asked: Spearman between each (model, k >= 2)'s
    |1 - efficacy| and 1 - recall, with an interval from resampling the points."""

    rho: float
    lo: float
    hi: float
    points: int
    models: int

    def supported(self, criteria: ReportConfig) -> bool:
        return self.rho > criteria.claim_rho


def claim_points(cfg, facts: list[ModelFacts]) -> dict[str, list[tuple[float, float]]]:
    """Per (model, k >= 2): (departure of the headline statistic, 1 - recall), for the models
    that learned their conditioner; keyed by 'model@k' (one point per key)."""
    points = {}
    for f in facts:
        if f.extrapolation is None or not learned_conditioner(f, cfg.evaluate.threshold):
            continue
        recall = recall_per_k(f)
        for k in sorted(f.extrapolation.per_k):
            departure = f.extrapolation.departure(HEADLINE, k)
            if k >= 2 and k in recall and departure is not None:
                points[f"{f.name}@{k}"] = [(departure, 1.0 - recall[k])]
    return points


def extrapolation_claim(cfg, facts: list[ModelFacts]) -> ExtrapolationClaim | None:
    points = claim_points(cfg, facts)
    stats = clustered_spearman(points, 0, cfg.seed)
    if stats is None:
        return None
    return ExtrapolationClaim(*stats, len({key.split("@")[0] for key in points}))


def mechanism(cfg, facts: list[ModelFacts]) -> dict[str, Separation]:
    """The paper's mechanism, judged by the headline statistic's separation of the (model, k)
    points beyond training that generalize from those that fail; the other statistics of the
    extrapolation probe and the training-range indices beside it. Empty without points."""
    points = separation_points(cfg, facts)
    if not points:
        return {}
    return {name: separation(cfg, points, name) for name in EXTRAPOLATION_STATISTICS + TRAINING_RANGE_STATISTICS}


# ----- locality trained in ------------------------------------------------------------------------

def is_trained_in(spec) -> bool:
    """Does a model do something during training to be local (a penalty, a hard attention radius,
    labels dropped one by one)?"""
    radius = spec.model.cross_attention.attention_radius_px if spec.model.cross_attention else None
    return spec.train.locality.weight > 0 or radius is not None or spec.train.object_dropout > 0


def trained_in_groups(cfg, facts: list[ModelFacts]) -> tuple[list[ModelFacts], list[ModelFacts], list[ModelFacts]]:
    """(trained-in forms, Exp 2 baselines, post hoc interventions) among the evaluated facts."""
    done = [f for f in facts if f.evaluation]
    forms = [f for f in done if f.name in cfg.models and is_trained_in(cfg.models[f.name])]
    return forms, [f for f in done if f.role == "exp2"], [f for f in done if f.name in cfg.interventions]


def largest_counts(cfg) -> list[int]:
    return sorted(cfg.evaluate.counts)[-2:]


@dataclass(frozen=True)
class TrainedInVerdict:
    """Did a training-time form answer the open question? ``verdict`` is supported (its recall at
    the two largest k reaches the bar: ``report.generalizes`` or the best post hoc intervention,
    whichever is higher), partly (it beats ordinary training there) or not supported."""

    verdict: str
    tried: tuple[str, ...]
    best: str | None  # the best form that learned its label; None: none did
    worst_recall: dict[str, float]  # lowest recall at the two largest k, per form and baseline
    bar: float
    baselines: tuple[str, ...]


def trained_in_verdict(cfg, facts: list[ModelFacts]) -> TrainedInVerdict | None:
    forms, plain, post_hoc = trained_in_groups(cfg, facts)
    if not forms:
        return None
    ks = largest_counts(cfg)
    worst = {f.name: min((accuracy_at(f, k, "recall") or 0.0) for k in ks) for f in forms + plain + post_hoc}
    bar = max([cfg.report.generalizes] + [worst[f.name] for f in post_hoc])
    learned = [f for f in forms if learned_conditioner(f, cfg.evaluate.threshold)]
    best = max(learned, key=lambda f: worst[f.name], default=None)
    if best is None or (worst[best.name] < bar and not (plain and worst[best.name] > max(worst[f.name] for f in plain))):
        word = "**not supported**"
    else:
        word = "**supported**" if worst[best.name] >= bar else "**partly supported**"
    return TrainedInVerdict(word, tuple(f.name for f in forms), best.name if best else None, worst, bar,
                            tuple(f.name for f in plain))


# ----- composition in feature space (the paper's colour-conditioned CLEVR) -----------------------

@dataclass(frozen=True)
class ColourComposition:
    """Does a colour-conditioned model compose colour with location in feature space? Each colour
    needs its own direction in the features and a conditioner's effect on the features must stay
    near its location. A colour's concept direction (an object of that colour at the centre minus
    the empty conditioning) holds the "an object is here" part every colour shares, so the colours
    are judged by their effects after that shared part is removed (the colour x shape
    decomposition), where it was measured."""

    model: str
    block: str
    concept_abs_cos: float  # mean off-diagonal |cosine| between colour concept directions
    effect_abs_cos: float | None  # the same between colour effects (shared object part removed)
    feature_locality: float | None  # normalised share of a conditioner's feature effect within the radius
    distinct: bool
    local: bool | None

    @property
    def word(self) -> str:
        if self.distinct and self.local:
            return "**supported**"
        return "**partly supported**" if self.distinct or self.local else "**not supported**"


def colour_composition(facts: list[ModelFacts], criteria: ReportConfig) -> list[ColourComposition]:
    """The claim for every model whose features were measured per colour (``features.json``), at
    its best block: where both criteria hold, else one, else the first (``colour_by_block``)."""
    out = []
    for f in facts:
        blocks = colour_by_block(f, criteria)
        if blocks:
            out.append(max(blocks, key=lambda c: (c.distinct and bool(c.local), c.distinct or bool(c.local))))
    return out


def colour_by_block(f: ModelFacts, criteria: ReportConfig) -> list[ColourComposition]:
    """The claim at every block measured (``per_block``; older probes measured one): colours
    distinct when the mean |cos| between their effects (concept directions where effects were not
    measured) is below ``report.orthogonal``; local when the normalised locality of the block's
    dependence on the module called before it reaches ``report.spatial_local``."""
    feats = f.features or {}
    if not feats.get("colors"):
        return []
    rows = feats.get("per_block") or [{
        "block": feats.get("block", "?"), "concept_abs_cos": feats["colors"]["offdiag_abs_mean"],
        "effect_abs_cos": (feats.get("attributes") or {}).get("color_offdiag_abs_mean"),
        **{k: (feats.get("block_locality") or {}).get(k) for k in ("mass_within", "chance")}}]
    out = []
    for row in rows:
        locality = normalised_share(row.get("mass_within"), row.get("chance"))
        judged = row["concept_abs_cos"] if row["effect_abs_cos"] is None else row["effect_abs_cos"]
        out.append(ColourComposition(f.name, row["block"], row["concept_abs_cos"], row["effect_abs_cos"], locality,
                                     judged < criteria.orthogonal,
                                     None if locality is None else locality >= criteria.spatial_local))
    return out


def normalised_share(mass_within: float | None, chance: float | None) -> float | None:
    """A share within the radius rescaled so that chance is 0 and all of it within is 1."""
    if mass_within is None or chance is None or chance >= 1:
        return None
    return (mass_within - chance) / (1 - chance)
