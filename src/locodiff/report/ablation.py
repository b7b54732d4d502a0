"""The count-coupling ablation: Exp 1 and Exp 2 under each network variant, side by side.

Two parts of a UNet make a conditioner's effect depend on how many others there are, without
being about distance: GroupNorm (image-wide statistics) and a softmax over the tokens (each of k
tokens gets ~1/k of a pixel's attention). A study with models of role ``ablation`` shows here,
for every cross-attention Exp 1 / Exp 2 of the study, recall and efficacy per k, grouped by
network (normalisation, attention weights, distance bias).
"""

from __future__ import annotations

import math

from .document import Figure, Section, Table, Text
from .facts import ModelFacts, num, recall_per_k
from .figures import FigureFolder, ablation_curves


def network(spec) -> str:
    """The variant a cross-attention network is: its normalisation, attention weights and prior."""
    ca = spec.model.cross_attention
    words = [f"{'PixelNorm' if spec.model.norm == 'pixel' else 'GroupNorm' if spec.model.norm == 'group' else 'no norm'}",
             ca.weights if ca else "softmax"]
    if ca and ca.position_bias_px > 0:
        words.append(f"{ca.position_bias_px:g} px distance bias")
    return " + ".join(words)


def band_mean(f: ModelFacts, statistic: str, k: int) -> float | None:
    """The headline band value of a probe statistic at k; None where it was not measured."""
    e = f.extrapolation.band(statistic, k) if f.extrapolation else None
    return None if e is None or math.isnan(e.mean) else e.mean


def ablated(cfg, facts: list[ModelFacts]) -> list[ModelFacts]:
    """The study's cross-attention Exp 1 / Exp 2 models and their ablations (none without an
    ablation model)."""
    chosen = [f for f in facts if f.name in cfg.models and f.evaluation is not None
              and cfg.models[f.name].model.arch == "cross_attention" and f.role in ("exp1", "exp2", "ablation")]
    return chosen if any(f.role == "ablation" for f in chosen) else []


def ablation_section(cfg, facts: list[ModelFacts], figures: FigureFolder) -> Section | None:
    done = ablated(cfg, facts)
    if not done:
        return None
    ks = [k for k in (1, 4, 6, 8, 10) if k in cfg.evaluate.counts]
    held = sorted(cfg.locality.extrapolation.held_norm_counts)
    rows = []
    for f in sorted(done, key=lambda f: (network(cfg.models[f.name]), f.label_policy)):
        rows.append([f.name, network(cfg.models[f.name]), f.label_policy,
                     " / ".join(num(recall_per_k(f).get(k)) for k in ks),
                     " / ".join(num(band_mean(f, "efficacy", k)) for k in ks[1:]),
                     " / ".join(num(band_mean(f, "efficacy_held_norms", k)) for k in held)])
    curves = {f.name: (f.label_policy, network(cfg.models[f.name]), recall_per_k(f),
                       {k: band_mean(f, "efficacy", k) for k in (f.extrapolation.per_k if f.extrapolation else ())})
              for f in done}
    path = ablation_curves(curves, figures / "coupling_ablation.png")
    return Section("Count couplings: the ablation", [
        Text("GroupNorm pools its statistics over the whole image, so every added object renormalises every pixel; "
             "a softmax over the tokens gives each of k tokens about 1/k of a pixel's attention. Both couple a "
             "conditioner's effect to how many others there are — the opposite of a conditional projective "
             "composition — without being about distance. Each Exp 1 (every object labelled) and Exp 2 (one "
             "labelled) below has the same data and budget; only the network differs."),
        Table(["model", "network", "labels", f"recall at k = {' / '.join(map(str, ks))}",
               f"efficacy at k = {' / '.join(map(str, ks[1:]))}",
               f"efficacy, GroupNorm held, k = {' / '.join(map(str, held))}"], rows,
              "Efficacy: mean over the headline noise band (1 = each conditioner acts as it does alone); with "
              "GroupNorm held: its statistics taken from the single-conditioner passes (GroupNorm networks only)."),
        Figure(path, "Recall (left) and efficacy (right) per requested k; solid: Exp 1, dashed: Exp 2; one colour "
                     "per network."),
    ])
