"""Locality where generalization is asked: the probe at k = 1..10 beside recall at the same k.

The paper's claim, stated with it: over every (model, k >= 2) of the models that learned their
conditioner, the further each conditioner's effect in the full set falls from its effect alone
(the efficacy's departure from 1, its value under conditional projective composition), the fewer
requested objects the model draws.
"""

from __future__ import annotations

import math

from safetensors import safe_open

from ..locality.extrapolation import EXACT
from ..checkpoints import latest_checkpoint
from .claims import HEADLINE, extrapolation_claim, verdict
from .document import Figure, Section, Table, Text
from .facts import ModelFacts, num, recall_per_k
from .figures import FigureFolder, locality_and_recall_vs_k

LABELS = {"far_residual": "far residual", "efficacy_gap": "efficacy gap", "efficacy": "efficacy",
          "far_residual_held_norms": "far residual with GroupNorm statistics held at the near context's",
          "efficacy_held_norms": "efficacy with GroupNorm statistics held at the single-conditioner passes'"}


def probed(facts: list[ModelFacts]) -> list[ModelFacts]:
    return [f for f in facts if f.extrapolation is not None and f.extrapolation.per_k]


def claim_line(cfg, facts: list[ModelFacts]) -> str | None:
    """The paper's central claim, judged with the probe in the extrapolation regime."""
    claim = extrapolation_claim(cfg, facts)
    if claim is None:
        return None
    return (f"Models whose conditioners keep their own effect when many act together draw the objects asked "
            f"for (the efficacy at k = 2–10, beyond training): {verdict(claim.supported(cfg.report))} (Spearman "
            f"{claim.rho:.2f}, 95% interval {claim.lo:.2f} to {claim.hi:.2f} from resampling the points, between "
            f"each (model, k)'s |1 − efficacy| and 1 − recall, {claim.points} points from {claim.models} models; "
            f"criterion > {cfg.report.claim_rho}).")


def _cell(estimate) -> str:
    if estimate is None or math.isnan(estimate.mean):
        return "–"
    if math.isnan(estimate.lo):
        return f"{estimate.mean:.2f}"
    return f"{estimate.mean:.2f} [{estimate.lo:.2f}, {estimate.hi:.2f}]"


def statistic_table(done: list[ModelFacts], statistic: str, counts: list[int]) -> Table:
    rows = [[f.name] + [_cell(f.extrapolation.band(statistic, k)) for k in counts] for f in done]
    rows = [r for r in rows if any(c != "–" for c in r[1:])]
    return Table(["model"] + [f"k={k}" for k in counts], rows,
                 f"{LABELS[statistic]} (exact locality: {EXACT[statistic]:g}), mean over the headline noise "
                 "band, 95% interval from resampling scenes.")


def recall_table(done: list[ModelFacts], counts: list[int]) -> Table:
    rows = [[f.name] + [num(recall_per_k(f).get(k)) for k in counts] for f in done]
    return Table(["model"] + [f"k={k}" for k in counts], rows, "Recall at the same k (evaluation).")


def explanation(cfg) -> Text:
    ex = cfg.locality.extrapolation
    band = ", ".join(f"{s:g}" for s in ex.band_sigmas())
    return Text(
        f"The Jacobian probe above differentiates at 1–3-object scenes, where every model was trained, and a "
        f"move derivative cannot see what depends only on how many conditioners there are. Here each model "
        f"denoises the evaluation's own test scenes with k = {ex.counts[0]}–{ex.counts[-1]} objects "
        f"({ex.scenes} per k, their renders noised with one noise image per scene) with subsets of the "
        f"conditioners removed, and each conditioner i is read in its window (pixels within {ex.window_px:g} px "
        "of it). The **efficacy** is i's effect there in the full set (the prediction with every conditioner "
        "minus the prediction without i) projected on its effect alone (with i minus with none, a quantity "
        "every model was trained on): 1 when each conditioner governs its own region whatever the others do "
        "(a conditional projective composition, the paper's exact local model; neighbours whose own regions "
        "reach into i's window may move it), below 1 when the others weaken it. The **far residual** is "
        f"how much removing every conditioner farther than {ex.far_px:g} px changes i's window, relative to i's "
        "effect alone, and the **efficacy gap** the part of the efficacy those far conditioners account for: "
        "both are exactly 0 for any score whose conditioners reach less than "
        f"{ex.far_px - ex.window_px:g} px (exp3_local; exp3_masked up to its soft window edge). Headline: mean "
        f"over σ = {band}, where the layout is decided.")


def headline_figure(facts: list[ModelFacts], figures: FigureFolder) -> Figure | None:
    """Every evaluated model's efficacy per k (where probed) beside its recall per k: the whole
    study in one figure, for the top of the report."""
    judged = [f for f in facts if f.evaluation]
    if not judged:
        return None
    counts = sorted({k for f in probed(judged) for k in f.extrapolation.per_k if k >= 2})
    curves = {f.name: ({k: f.extrapolation.band(HEADLINE, k) for k in counts} if f.extrapolation else {},
                       recall_per_k(f)) for f in judged}
    path = locality_and_recall_vs_k(curves, figures / "headline.png", LABELS[HEADLINE], figures.colours)
    return Figure(path, "The study at a glance. Left: each conditioner's efficacy per k (1 = it acts among the "
                        "others as it does alone, as under conditional projective composition; 95% intervals). "
                        "Right: recall per k (training saw 1–3 objects).")


def extrapolation_section(cfg, facts: list[ModelFacts], figures: FigureFolder) -> Section | None:
    done = probed(facts)
    if not done:
        return None
    sec = Section("Locality where generalization is asked")
    sec.blocks.append(explanation(cfg))
    counts = sorted({k for f in done for k in f.extrapolation.per_k if k >= 2})
    curves = {f.name: ({k: f.extrapolation.band(HEADLINE, k) for k in counts}, recall_per_k(f)) for f in done}
    path = locality_and_recall_vs_k(curves, figures / "extrapolation_locality.png", LABELS[HEADLINE], figures.colours)
    sec.blocks.append(Figure(path, "Left: the efficacy per k (95% intervals; 1 = each conditioner acts as it "
                                   "does alone). Right: recall at the same k."))
    sec.blocks += [statistic_table(done, name, counts) for name in ("efficacy", "far_residual", "efficacy_gap")]
    sec.blocks.append(recall_table(done, counts))
    sec.blocks += coupling_blocks(cfg, done)
    line = claim_line(cfg, facts)
    if line:
        sec.blocks.append(Text(line))
    return sec


def attention_widths(f: ModelFacts) -> list[float]:
    """The learned widths (px) of the distance bias on the attention logits, from the EMA weights
    of the model's latest checkpoint (none for networks without the bias, or interventions)."""
    ckpt = latest_checkpoint(f.folder) if f.folder.is_dir() and f.arch == "cross_attention" else None
    if ckpt is None or not (ckpt / "ema.safetensors").is_file():
        return []
    with safe_open(str(ckpt / "ema.safetensors"), "pt") as weights:
        keys = [key for key in weights.keys() if key.endswith("log_width")]
        return [float(w) for key in sorted(keys) for w in weights.get_tensor(key).exp().reshape(-1)]


def coupling_blocks(cfg, done: list[ModelFacts]) -> list:
    """Where the far coupling lives: GroupNorm statistics held fixed, and the attention prior."""
    counts = sorted(cfg.locality.extrapolation.held_norm_counts)
    held = [statistic_table(done, name, counts) for name in ("efficacy_held_norms", "far_residual_held_norms")]
    held = [t for t in held if t.rows]
    blocks: list = [] if not held else [Text(
        "Where the coupling lives. A GroupNorm pools its statistics over the whole image, so every object "
        "rescales every other object's features. Below, the efficacy again with each GroupNorm's per-image "
        "mean and variance recorded in the passes with a single conditioner (or none), which every model "
        "saw in training, and imposed on the full set (with i, and without i); and the far residual with them "
        "recorded in the near-context pass. What stays away from 1 (or 0) travels through the convolutions' "
        "receptive field and the attention; what is restored travelled through the normalisation "
        "statistics. (Networks without GroupNorm and compositions are not measured.)"), *held]
    widths = {f.name: attention_widths(f) for f in done}
    rows = [[name, len(w), f"{min(w):.2f}", f"{sum(w) / len(w):.2f}", f"{max(w):.2f}"] for name, w in widths.items() if w]
    if rows:
        blocks.append(Table(["model", "heads", "narrowest", "mean", "widest"], rows,
                            "Learned widths (px) of the distance bias on the attention logits: a token's "
                            "weight falls as exp(−d²/2w²) with its distance d from the pixel."))
    return blocks
