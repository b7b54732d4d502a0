"""Report sections about training: locality trained in (each form against its cost), how locality
and recall grew over training (emergence), and the headline numbers over seeds with intervals.

Like the rest of the report, built only from saved results; a section with nothing to show says so.
"""

from __future__ import annotations

import json
import math

import numpy as np
from scipy import stats as scipy_stats

from .. import layout
from ..evaluate.runner import EvalResult, evaluation_dir
from ..locality.extrapolation import ExtrapolationResult
from ..locality.result import mean_normalised_index, mean_presence_index
from ..checkpoints import list_checkpoints, read_state
from .document import Figure, Section, Table, Text
from .claims import clustered_spearman, largest_counts, trained_in_groups, trained_in_verdict
from .config import ReportConfig
from .facts import ModelFacts, accuracy_at, learned_conditioner, num
from .figures import FigureFolder, emergence_figure



def recall_at(evaluation: EvalResult | None, k: int) -> float | None:
    return evaluation.at(k, "recall") if evaluation is not None else None


def trained_in_form(spec) -> str | None:
    """What a model does during training to be local, in words; None for ordinary training."""
    t, m, p = spec.train, spec.model, spec.train.locality
    parts = []
    if p.weight > 0:
        start = f" from {p.start_images // 1000}k images" if p.start_images else ""
        how = f"(weight {p.weight:g}{start}, {p.fraction:.0%} of each batch)"
        if p.form == "composition":
            parts.append(f"taught its own masked composition ({p.window_px:g} px windows) on its labels "
                         f"plus up to {p.extra_tokens} phantom labels {how}")
        else:
            what = "share" if p.relative else "size"
            parts.append(f"penalty on the {what} of each label's {p.form} effect beyond {p.window_px:g} px {how}")
    radius = m.cross_attention.attention_radius_px if m.cross_attention else None
    if radius is not None:
        parts.append(f"attention only to tokens within {radius:g} px (also at test)")
    if t.object_dropout > 0:
        parts.append(f"each label dropped with probability {t.object_dropout:g}")
    return "; ".join(parts) or None


# ----- locality trained in ----------------------------------------------------------------------

def trained_in_statement(cfg, facts: list[ModelFacts]) -> str | None:
    """The verdict on locality trained in (``claims.trained_in_verdict``), in one sentence."""
    v = trained_in_verdict(cfg, facts)
    if v is None:
        return None
    if v.best is None:
        return (f"Locality trained in: {v.verdict} here — no training-time form learned its label "
                f"(placed at k = 1 ≥ {cfg.evaluate.threshold}); tried: {', '.join(v.tried)}.")
    where = f"recall at k = {', '.join(map(str, largest_counts(cfg)))}"
    plain = ", ".join(f"{name} {v.worst_recall[name]:.2f}" for name in v.baselines) or "–"
    return (f"Locality trained in: {v.verdict} — best form {v.best} ({where}: lowest {v.worst_recall[v.best]:.2f}; "
            f"bar: {v.bar:.2f}, the larger of {cfg.report.generalizes} and the best post hoc intervention; "
            f"ordinary training {plain}).")


def trained_in_section(cfg, facts: list[ModelFacts]) -> Section | None:
    forms, plain, post_hoc = trained_in_groups(cfg, facts)
    if not forms:
        return None
    sec = Section("Locality trained in")
    sec.blocks.append(Text(
        "Exp 2's data and network, trained with a form of locality enforcement (below), against ordinary "
        "training (Exp 2) and the post hoc masked composition of Exp 2's network. Cost: training images per "
        "second relative to Exp 2 on the same machine (the penalties run an extra forward pass on part of "
        "each batch)."))
    ks = [k for k in cfg.evaluate.counts if k >= 1]
    base_rate = next((f.images_per_s for f in plain if f.images_per_s), None)
    rows = []
    for f in plain + forms + post_hoc:
        form = (trained_in_form(cfg.models[f.name]) or "ordinary training") if f.name in cfg.models else "post hoc"
        trained = f.name in cfg.models and f.images_per_s
        cost = f"{base_rate / f.images_per_s:.2f}x" if trained and base_rate else None
        rows.append([f.name, form, accuracy_at(f, 1, "placed")] + [recall_at(f.evaluation, k) for k in ks]
                    + [f.locality_index, f.presence_index, f"{f.images_per_s:.0f}" if trained else None, cost])
    sec.blocks.append(Table(["model", "form", "placed k=1"] + [f"recall k={k}" for k in ks]
                            + ["index", "presence", "img/s", "cost"], rows,
                            "Training-time locality: placement, recall per k, locality indices and cost."))
    statement = trained_in_statement(cfg, facts)
    if statement:
        sec.blocks.append(Text(statement))
    return sec


# ----- emergence --------------------------------------------------------------------------------

def emergence_curves(cfg) -> dict[str, list[dict]]:
    """Per followed run, one point per checkpoint measured by the emergence stage, oldest first."""
    ev, options = cfg.emergence.eval_config(cfg.evaluate), cfg.emergence.locality_options(cfg.locality)
    curves = {}
    for key, (_, folder) in cfg.emergence_runs().items():
        points = []
        for ckpt in list_checkpoints(folder) if folder.exists() else []:
            evaluation, probe = evaluation_dir(folder, ev, ckpt.name) / layout.EVAL_SUMMARY, \
                layout.probe_dir(folder, options, ckpt.name) / layout.PROBE_SUMMARY
            if not (evaluation.is_file() and probe.is_file()):
                continue
            e, p = EvalResult.load(evaluation.parent), json.loads(probe.read_text())
            extrapolation = ExtrapolationResult.load(probe.parent)
            efficacy = extrapolation.band("efficacy", max(ev.counts)) if extrapolation is not None else None
            points.append({"images_seen": read_state(ckpt)["images_seen"], "index": mean_normalised_index(p),
                           "presence": mean_presence_index(p), "evaluation": e,
                           "recall": {k: recall_at(e, k) for k in ev.counts},
                           "efficacy": None if efficacy is None or math.isnan(efficacy.mean) else efficacy.mean})
        if points:
            curves[key] = points
    return curves


def _first_at(points: list[dict], value, level: float) -> int | None:
    return next((p["images_seen"] for p in points if (value(p) or 0.0) >= level), None)


def emergence_line(name: str, points: list[dict], k: int, criteria: ReportConfig) -> str:
    """When locality (moves, presence) and recall at ``k`` first reached their levels, and their order."""
    local_at, generalizes = criteria.local_index, criteria.generalizes
    local = _first_at(points, lambda p: p["presence"], local_at)
    moves = _first_at(points, lambda p: p["index"], local_at)
    extrapolates = _first_at(points, lambda p: p["recall"].get(k), generalizes)
    at = lambda n: "never" if n is None else f"at {n // 1000}k images"  # noqa: E731
    line = (f"**{name}**: locality index ≥ {local_at} {at(moves)}, presence index ≥ {local_at} {at(local)}, "
            f"recall at k = {k} ≥ {generalizes} {at(extrapolates)} (last: index {num(points[-1]['index'])}, "
            f"presence {num(points[-1]['presence'])}, efficacy at k = {k} {num(points[-1].get('efficacy'))}, "
            f"recall {num(points[-1]['recall'].get(k))})")
    if local is not None and extrapolates is not None:
        order = "before" if local < extrapolates else "with" if local == extrapolates else "after"
        line += f": presence locality came {order} extrapolation"
    return line + "."


def emergence_section(cfg, figures: FigureFolder) -> Section | None:
    if not cfg.emergence_runs():
        return None
    sec = Section("Locality over training")
    curves = emergence_curves(cfg)
    if not curves:
        sec.blocks.append(Text("No checkpoint has been measured yet (run the emergence stage)."))
        return sec
    counts = list(cfg.emergence.counts)
    sec.blocks.append(Text(
        f"Every kept checkpoint of {', '.join(curves)}: recall at k = {', '.join(map(str, counts))} "
        f"({cfg.emergence.per_count} samples each) and the locality probe of the [locality] section. Levels: "
        f"normalised index ≥ {cfg.report.local_index} counts as local, recall ≥ {cfg.report.generalizes} as "
        "extrapolating."))
    path = emergence_figure(curves, counts, figures / "emergence.png", figures.colours)
    sec.blocks.append(Figure(path, "Left: locality index (solid: moves, dashed: presence) against training "
                                   "images. Right: recall per k (line style) against training images."))
    k = max(counts)
    sec.blocks += [Text(emergence_line(name, points, k, cfg.report)) for name, points in curves.items()]
    return sec


# ----- seeds ------------------------------------------------------------------------------------

def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """Mean and t-interval over seeds (None with no values; the mean alone, as its own bounds, with one)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None
    m = float(v.mean())
    if v.size == 1:
        return m, m, m
    half = float(scipy_stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


def _cell(values: list) -> str:
    mi = mean_interval(values)
    return "–" if mi is None else f"{mi[0]:.2f} [{mi[1]:.2f}, {mi[2]:.2f}]"


def correlation_points(cfg, by_seed: dict[int, list[ModelFacts]]) -> dict[str, list[tuple[float, float, float]]]:
    """Per run (model x seed): (locality index, presence index, mean recall at the emergence counts
    beyond training) at its final checkpoint and at every emergence checkpoint, where the model
    had learned its label."""
    ks = [k for k in cfg.emergence.counts if k > cfg.evaluate.trained_range[1]]
    thr = cfg.evaluate.threshold
    mean_recall = lambda e: float(np.mean([recall_at(e, k) or 0.0 for k in ks]))  # noqa: E731
    runs: dict[str, list[tuple[float, float, float]]] = {}
    for seed, facts in by_seed.items():
        for f in facts:
            if f.evaluation and f.locality_dir and f.presence_index is not None and learned_conditioner(f, thr):
                runs.setdefault(cfg.seeded_name(f.name, seed), []).append(
                    (f.locality_index, f.presence_index, mean_recall(f.evaluation)))
    for key, points in emergence_curves(cfg).items():
        for p in points:
            placed = p["evaluation"].at(1, "placed")
            if p["index"] is not None and p["presence"] is not None and (placed is None or placed >= thr):
                runs.setdefault(key, []).append((p["index"], p["presence"], mean_recall(p["evaluation"])))
    return runs if ks else {}


def seeds_section(cfg, by_seed: dict[int, list[ModelFacts]]) -> Section:
    """Headline numbers over seeds; ``by_seed``: each seed's location models (``gather_seeds``)."""
    sec = Section("Seeds")
    seeds = cfg.seed_list()
    if len(seeds) >= 2:
        sec.blocks.append(Text(
            f"Models trained under seeds {', '.join(map(str, seeds))} (initialisation and data order; the "
            f"data and test scenes are shared; a model limited to fewer seeds shows those). Cells: mean [95% "
            f"t-interval over seeds]; the other sections show seed {seeds[0]}."))
        ks = [k for k in cfg.evaluate.counts if k >= 1]
        rows = []
        for name in dict.fromkeys(f.name for s in seeds for f in by_seed[s]):
            per = [f for s in seeds for f in by_seed[s] if f.name == name and f.evaluation]
            if not per:
                continue
            rows.append([name, len(per), _cell([accuracy_at(f, 1, "placed") for f in per])]
                        + [_cell([recall_at(f.evaluation, k) for f in per]) for k in ks]
                        + [_cell([f.locality_index for f in per]), _cell([f.presence_index for f in per])])
        sec.blocks.append(Table(["model", "seeds", "placed k=1"] + [f"recall k={k}" for k in ks]
                                + ["index", "presence"], rows, "Headline numbers over seeds."))
    else:
        sec.blocks.append(Text(f"One seed ({seeds[0]}); set `seeds = [0, 1, 2]` for intervals over seeds."))
    runs = correlation_points(cfg, by_seed)
    for column, what in ((0, "locality index (moves)"), (1, "presence index")):
        r = clustered_spearman(runs, column, cfg.seed)
        if r is not None:
            sec.blocks.append(Text(
                f"Spearman between {what} and mean recall at k = "
                f"{', '.join(str(k) for k in cfg.emergence.counts if k > cfg.evaluate.trained_range[1])}: "
                f"{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}] over {r[3]} points from {len(runs)} runs (models × seeds, "
                "final and emergence checkpoints where the label was learned; interval: bootstrap over runs)."))
    return sec
