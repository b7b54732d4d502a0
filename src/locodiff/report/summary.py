"""The report's summary: the paper's claims in one table (claim, verdict, number, criterion), then
what the run adds beyond them. Every verdict comes from ``claims``; this module only words them."""

from __future__ import annotations

from .claims import (LengthVerdict, colour_by_block, colour_composition, length_verdicts, locality_correlation,
                     mechanism, verdict)
from .document import Section, Table, Text
from .extrapolation import claim_line as extrapolation_claim, headline_figure
from .facts import ModelFacts, learned_conditioner, num, recall_beyond
from .figures import FigureFolder
from .separation import Separation
from .training import trained_in_statement

LENGTH_CLAIMS = {"exp1": "Exp 1 (every object labelled) length-generalizes",
                 "exp3": "Exp 3 (Exp 2's data, locality enforced) length-generalizes",
                 "exp2": "Exp 2 (one object labelled) fails to length-generalize, having learned its label"}
MECHANISM_CLAIM = ("Models that generalize have local conditional scores where generalization is asked; "
                   "models that fail do not")
SEPARATION_WORDS = {"efficacy": "efficacy", "far_residual": "far residual", "efficacy_gap": "efficacy gap",
                    "locality_index": "move index (1–3 objects)", "presence_index": "presence index (1–3 objects)"}


def length_row(cfg, v: LengthVerdict) -> list[str]:
    (lo, hi), criteria = cfg.evaluate.extrapolation_range, cfg.report
    if v.role == "exp2":
        number = f"mean recall at k = {lo}–{hi}: {v.mean:.2f}; placed at k = 1: {num(v.placed_k1)}"
        criterion = f"mean < {criteria.fails}; placed at k = 1 ≥ {cfg.evaluate.threshold}"
    else:
        number = f"lowest recall at k = {lo}–{hi}: {v.lowest:.2f} (mean {num(v.mean)})"
        criterion = f"lowest ≥ {criteria.generalizes}"
    return [f"{LENGTH_CLAIMS[v.role]} — {v.model}", verdict(v.supported), number, criterion]


def separation_number(s: Separation) -> str:
    interval = "" if s.lo is None else f" [{s.lo:.2f}, {s.hi:.2f}]"
    return (f"AUROC {num(s.auroc)}{interval} ({SEPARATION_WORDS[s.statistic]}; {len(s.generalizing)} generalizing "
            f"vs {len(s.failing)} failing (model, k) points)")


def claims_table(cfg, facts: list[ModelFacts]) -> Table | None:
    """One row per claim of the paper and model it is judged on, then the mechanism."""
    verdicts = length_verdicts(cfg, facts)
    rows = [length_row(cfg, v) for role in ("exp1", "exp2", "exp3") for v in verdicts if v.role == role]
    separations = mechanism(cfg, facts)
    headline = separations.get("efficacy")
    if headline is not None:
        criteria = cfg.report
        rows.append([MECHANISM_CLAIM, verdict(headline.supported(criteria)), separation_number(headline),
                     f"AUROC ≥ {criteria.separates}, 95% interval's lower end ≥ {criteria.separates_lo}"])
    if not rows:
        return None
    lo, hi = cfg.evaluate.extrapolation_range
    return Table(["claim of the paper", "verdict", "the number", "criterion"], rows, (
        f"Recall: the share of requested objects drawn (within the match tolerance), at k = {lo}–{hi} requested "
        "objects (training saw 1–3). A (model, k) point generalizes when its recall reaches "
        f"{cfg.report.generalizes} and fails below {cfg.report.fails}; the AUROC is the chance that a "
        "generalizing point's efficacy (each conditioner's effect among all the others over its effect alone; 1 "
        "under conditional projective composition) is closer to 1 than a failing point's; its interval resamples "
        "the evaluation's samples and the probe's scenes."))


def claim_lines(cfg, facts: list[ModelFacts]) -> list[str]:
    """What the run adds to the paper's claims: graded correlations, the other statistics'
    separations, colour in feature space. Written from the numbers."""
    lo, hi = cfg.evaluate.extrapolation_range
    criteria = cfg.report
    lines = []
    extrapolation = extrapolation_claim(cfg, facts)
    lines += [f"Graded, a stronger claim than the paper's: {extrapolation}"] if extrapolation else []
    others = [s for name, s in mechanism(cfg, facts).items() if name != "efficacy" and s.auroc is not None]
    if others:
        lines.append("The same separation by the other statistics (diagnostics): "
                     + "; ".join(separation_number(s) for s in others) + ".")
    moves = locality_correlation(cfg, facts)
    if moves is not None:
        lines.append(f"The more local the score at training scenes (moves of one conditioner, 1–3 objects), the "
                     f"further the model generalizes: {verdict(moves.supported(criteria))} "
                     f"(Spearman {moves.rho:.2f} between locality index and mean recall at k = {lo}–{hi} over "
                     f"{len(moves.models)} models; criterion > {criteria.claim_rho}).")
    presence = locality_correlation(cfg, facts, "presence_index")
    if presence is not None:
        lines.append(f"The same with the presence index (removal instead of moves, 1–3 objects): "
                     f"{verdict(presence.supported(criteria))} (Spearman {presence.rho:.2f} over "
                     f"{len(presence.models)} models).")
    return lines + colour_lines(facts, criteria)


def colour_lines(facts: list[ModelFacts], criteria) -> list[str]:
    lines = []
    for c in colour_composition(facts, criteria):
        effect = "–" if c.effect_abs_cos is None else f"{c.effect_abs_cos:.2f}"
        locality = "–" if c.feature_locality is None else f"{c.feature_locality:.2f}"
        blocks = colour_by_block(next(f for f in facts if f.name == c.model), criteria)
        both = sum(b.distinct and bool(b.local) for b in blocks)
        lines.append(f"Colour composes with location in feature space — {c.model}: {c.word} (colour effects' mean "
                     f"|cos| {effect}, criterion < {criteria.orthogonal:g}; feature locality {locality}, criterion ≥ "
                     f"{criteria.spatial_local:g}; at {c.block}, the best of {len(blocks)} blocks measured, "
                     f"{both} meeting both).")
    return lines


def summary_section(cfg, facts: list[ModelFacts], figures: FigureFolder) -> Section:
    """The question, the paper's claims judged in one table, the headline figure, then what the
    run adds."""
    sec = Section("Summary")
    sec.blocks.append(Text(
        "**Question**: do the models that draw more objects than they were trained on (1–3) have local "
        "conditional scores — each pixel's score depending only on nearby pixels and on the conditioners "
        "acting near it — while the models that fail do not?"))
    judged = [f for f in facts if f.evaluation]
    if not judged:
        sec.blocks.append(Text("**Answer**: nothing has been evaluated yet."))
        return sec
    table = claims_table(cfg, facts)
    sec.blocks += [table] if table else []
    figure = headline_figure(facts, figures)
    sec.blocks += [figure] if figure else []
    sec.blocks.append(Text("**What the run adds**: " + recall_sentence(cfg, judged) + efficacy_sentence(judged)))
    sec.blocks += [Text(line) for line in claim_lines(cfg, facts)]
    trained_in = trained_in_statement(cfg, facts)
    sec.blocks += [Text(trained_in)] if trained_in else []
    return sec


def recall_sentence(cfg, judged: list[ModelFacts]) -> str:
    """Mean recall beyond training per model, best first, and the training-range indices."""
    thr = cfg.evaluate.threshold
    learned = [f for f in judged if learned_conditioner(f, thr)]
    mean = {f.name: recall_beyond(f)[1] or 0.0 for f in learned}
    (lo, hi), parts = cfg.evaluate.extrapolation_range, [f"{n} {v:.2f}" for n, v in sorted(mean.items(), key=lambda kv: -kv[1])]
    text = (f"mean recall at k = {lo}–{hi} (never seen in training): "
            + (", ".join(parts) if parts else "no model learned its conditioner") + ".")
    not_learned = [f.name for f in judged if f not in learned]
    if not_learned:
        text += f" Not learned their conditioner (no evidence either way): {', '.join(not_learned)}."
    probed = [f for f in learned if f.locality_dir]
    if probed:
        text += " Mean normalised conditional-locality index at 1–3 objects: " + ", ".join(
            f"{f.name} {f.locality_index:.2f}" for f in sorted(probed, key=lambda f: -f.locality_index)) + "."
    return text


def efficacy_sentence(facts: list[ModelFacts]) -> str:
    """The efficacy at the two largest probed k, per model, most local (closest to 1) first."""
    probed = [f for f in facts if f.extrapolation is not None and f.extrapolation.per_k]
    if not probed:
        return ""
    ks = sorted({k for f in probed for k in f.extrapolation.per_k})[-2:]
    value = lambda f, k: f.extrapolation.departure("efficacy", k)  # noqa: E731
    ranked = sorted(probed, key=lambda f: value(f, ks[-1]) if value(f, ks[-1]) is not None else float("inf"))
    band = lambda f, k: f.extrapolation.band("efficacy", k).mean  # noqa: E731
    return (f" Efficacy at k = {' / '.join(map(str, ks))} (see 'Locality where generalization is asked'): "
            + ", ".join(f"{f.name} {' / '.join(num(band(f, k)) for k in ks)}" for f in ranked) + ".")


def seed_verdicts(cfg, by_seed: dict[int, list[ModelFacts]]) -> list[Table]:
    """Each seed's verdict on each claim of the paper (a seed that breaks a claim shows here)."""
    if len(by_seed) < 2:
        return []
    rows = []
    for seed, facts in by_seed.items():
        sub = cfg.per_seed()[seed]
        table = claims_table(sub, facts)
        rows += [[seed, *row] for row in (table.rows if table else [])]
    return [Table(["seed", "claim of the paper", "verdict", "the number", "criterion"], rows,
                  "The summary's table under every seed (a model limited to fewer seeds appears under those).")]
