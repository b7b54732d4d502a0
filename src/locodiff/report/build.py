"""The study report: what was trained, how far each model length-generalizes, how local its
score is, and whether the two go together. Built only from files the other stages wrote, so it
can be regenerated at any time (``locodiff report``) and shows whatever has finished so far.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .. import __version__, layout
from ..config import to_dict
from ..evaluate.crowding import OUTSIDE, RARE, Crowding
from ..evaluate.metrics import default_tolerance_px, pair_accuracy
from ..io import write_text_atomic
from ..locality.feature_space import pair_means
from ..locality.figures import conditioner_sensitivity_figure, index_vs_sigma_figure, save_figure
from ..locality.result import LocalityResult
from ..scenes import vocab
from .claims import colour_by_block, locality_correlation
from .document import Code, Figure, Html, Section, Table, Text, to_html, to_markdown
from .facts import (
    ModelFacts, accuracy_at, caption_models, gather, gather_seeds, headline, learned_conditioner,
    location_models, num, recall_beyond,
)
from .ablation import ablation_section
from .explorer import explorer_html
from .extrapolation import extrapolation_section
from .figures import (FigureFolder, cosine_matrices, locality_vs_generalization, model_colours, recall_and_crowding,
                      success_vs_k)
from .summary import seed_verdicts, summary_section
from .text_model import text_model_section
from .training import emergence_section, seeds_section, trained_in_section


def detector_ceiling(cfg) -> dict[int, dict]:
    """Per-k accuracies of the detector on ground-truth renders, if the evaluate stage saved them."""

    path = cfg.ceiling_path()
    if not path.is_file():
        return {}
    table = json.loads(path.read_text())
    return {r["k"]: r for r in table["rows"]}


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# ----- sections ------------------------------------------------------------------------------------


def rendered_by(d) -> str:
    """Where the images came from (a ``scenes.DataConfig``)."""
    if d.source == "clevr_folder":
        return f"Images and scenes read from the CLEVR folder `{d.clevr_folder}` (centre square, resized)."
    if d.renderer == "blender":
        return (f"Rendered by Blender (Cycles on the CPU, {d.blender_samples} samples per pixel), the detector's "
                "training images and its ceiling too.")
    return "Rendered by locodiff's batched torch ray caster."


def setup_section(cfg, facts: list[ModelFacts], timings: dict) -> Section:
    d = cfg.data
    sec = Section("Setup", [Text(
        f"Data: {d.train_images} training scenes with {min(d.train_counts)}–{max(d.train_counts)} objects "
        f"at {d.resolution}×{d.resolution} (supersampling {d.supersample}×{d.supersample}); test scenes "
        f"with {min(d.test_counts)}–{max(d.test_counts)} objects. Conditioners: the image-plane location of "
        "each labelled object. Label policy `all` labels every object of a training image; `one` labels "
        f"a single random object (the others are unlabelled background). {rendered_by(d)}")])
    rows = [[f.name, f.role, f.arch, f.label_policy, "–" if f.params is None else f"{f.params / 1e6:.2f}M", f.images_seen,
             None if f.images_per_s is None else round(f.images_per_s),
             None if f.train_seconds is None else _duration(f.train_seconds), f.final_loss]
            for f in facts]
    sec.blocks.append(Table(["model", "role", "architecture", "labels", "params", "images", "img/s",
                             "train time", "final loss"], rows))
    described = [f"**{f.name}**: {f.description}" for f in facts if f.description]
    sec.blocks += [Text(line) for line in described]
    seconds, busy = timings.get("stage_seconds", {}), timings.get("busy_core_seconds", {})
    if seconds:
        parts = ", ".join(f"{k} {_duration(v)}" + (f" ({busy[k] / v:.1f} of {timings['cores']} cores busy)"
                                                    if k in busy and v >= 1 else "") for k, v in seconds.items())
        where = f" on {'; '.join(timings['machines'])}" if timings.get("machines") else ""
        sec.blocks.append(Text(f"Wall time per stage, summed over every run of this configuration{where}: {parts}."))
    return sec


def generalization_section(cfg, facts: list[ModelFacts], figures: FigureFolder) -> Section:
    ev = cfg.evaluate
    tolerance = ev.tolerance_px or default_tolerance_px(cfg.data.resolution)
    sec = Section("Length generalization")
    done = [f for f in facts if f.evaluation]
    if not done:
        sec.blocks.append(Text("No model has been evaluated yet (run the evaluate stage)."))
        return sec
    sec.blocks.append(Text(
        f"For each k, {ev.per_count} test conditionings with k locations; one sample each "
        f"({ev.sampler}, {ev.steps} steps); a detector finds the objects. A requested location is matched "
        f"by a detected object within {tolerance:g} px; trained range k = {ev.trained_range[0]}–{ev.trained_range[1]}."))
    ks = sorted({k for f in done for k in f.evaluation.per_k})
    ceiling = detector_ceiling(cfg)
    lo, hi = ev.extrapolation_range
    sec.blocks.append(Text(
        "**Recall** (the share of requested objects that got one) and **precision** (the share of drawn objects "
        "that were requested) lead: they say how many objects a model gets right at each k. The all-or-nothing "
        "rates follow: `success` (exactly k objects, all placed; the headline ◀ for label policy `all`) and "
        "`placed` (every requested location has an object, extras allowed; ◀ for `one`, whose training images "
        "hold unlabelled objects). Intervals: 95%, bootstrap over images for recall and precision, Wilson for "
        "the rates. The last row of each table is the detector's ceiling: the same metric on ground-truth renders."))
    for kind, what in (("recall", "share of requested objects matched by a drawn object"),
                       ("precision", "share of detected objects that match a requested location"),
                       ("success", "exactly k objects, each requested location matched"),
                       ("placed", "every requested location has an object; extra objects allowed")):
        rows = []
        for f in done:
            beyond = f.evaluation.summary[kind].extrapolation
            mark = " ◀" if headline(f) == kind else ""
            rows.append([f.name + mark] + [accuracy_at(f, k, kind) for k in ks] + [beyond.min, beyond.auc])
        if ceiling:
            rows.append(["detector on real renders"] + [ceiling.get(k, {}).get(kind) for k in ks] + [None] * 2)
        sec.blocks.append(Table(["model"] + [f"k={k}" for k in ks] + [f"min k={lo}–{hi}", "AUC extrap."], rows,
                                f"**{kind}** per requested object count ({what})."))
    for kind in ("recall", "precision", "success", "placed"):
        path = success_vs_k({f.name: f.evaluation for f in done}, figures / f"{kind}_vs_k.png", ev.trained_range, kind,
                            figures.colours)
        sec.blocks.append(Figure(path, f"{kind} against k for every model (95% intervals); grey: trained range."))
    for f in done:
        if learned_conditioner(f, ev.threshold) is False:
            sec.blocks.append(Text(
                f"**Caution — {f.name} has not learned its conditioner**: an object at the requested location "
                f"for k=1 in {accuracy_at(f, 1, 'placed'):.2f} of samples (< {ev.threshold}). Its failures at "
                "larger k say nothing about locality; train it longer before reading them."))
        grid = f.eval_dir / "samples.png"
        if grid.exists():
            target = figures / f"samples_{f.name}.png"
            shutil.copyfile(grid, target)
            sec.blocks.append(Figure(target, f"{f.name}: samples per k with requested (o) and detected (x) objects."))
    return sec


def crowding_section(cfg, facts: list[ModelFacts], figures: FigureFolder) -> Section:
    """How crowded the test windows are compared with training, beside each model's recall."""

    sec = Section("Crowding: do test windows look like training?")
    path = cfg.crowding_path()
    if not path.is_file():
        sec.blocks.append(Text("Not computed yet (the evaluate stage writes it)."))
        return sec
    tables = [Crowding.from_dict(t) for t in json.loads(path.read_text())["tables"]]
    sec.blocks.append(Text(
        "A local score sees a window: the pixels and conditioners within some radius. It extrapolates to k "
        "objects only while each window of a k-object scene looks like a training window. For every object of "
        "the training scenes and of each k's test conditionings (the very ones the models were asked for), we "
        f"count the other objects whose centres lie within r pixels. The training range is the largest count "
        f"held by at least {RARE:.0%} of training objects; a test object beyond it sits in a window training "
        f"did not show. The predicted limit is the first k where more than {OUTSIDE:.0%} of test objects do."))
    ks = [r.k for r in tables[0].rows]
    rows = []
    for t in tables:
        rows.append([f"r = {t.radius_px:g} px: mean neighbours"] + [r.mean_neighbours for r in t.rows]
                    + [t.train_mean, t.train_range, t.predicted_limit_k])
        rows.append([f"r = {t.radius_px:g} px: share beyond training"] + [r.outside for r in t.rows] + [None] * 3)
    sec.blocks.append(Table(["radius"] + [f"k={k}" for k in ks] + ["training mean", "training range", "predicted limit k"],
                            rows, "Neighbours within r of each test object, per requested k, against training."))
    headline_table = min(tables, key=lambda t: abs(t.radius_px - cfg.locality.radius_px))
    done = {f.name: f.evaluation for f in facts if f.evaluation}
    if done:
        fig = recall_and_crowding(done, {r.k: r.outside for r in headline_table.rows}, headline_table.radius_px,
                                  headline_table.predicted_limit_k, figures / "recall_and_crowding.png",
                                  cfg.evaluate.trained_range, figures.colours)
        sec.blocks.append(Figure(fig, f"Left: recall against k. Right: share of test objects crowded beyond "
                                      f"training at r = {headline_table.radius_px:g} px; dashed: predicted limit."))
    return sec


def locality_section(cfg, facts: list[ModelFacts], figures: FigureFolder) -> Section:
    sec = Section("Locality of the learned score")
    done = [f for f in facts if f.locality_dir]
    if not done:
        sec.blocks.append(Text("No model has been probed yet (run the locality stage)."))
        return sec
    loc = cfg.locality
    summaries = {f.name: f.locality for f in done}
    sec.blocks.append(Text(
        f"Jacobians of the score on {loc.scenes} test scenes with {', '.join(map(str, loc.counts))} objects, "
        f"{loc.pixels} probed pixels each, conditioned on every object's location. The **conditional-locality "
        f"index** is the share of a conditioner's squared influence on the output that falls within "
        f"{loc.radius_px:g} px of its own location (1 = purely local; chance = the share of the image that "
        "disc covers). The normalised index (index − chance) / (1 − chance) is 0 at chance and 1 when local. "
        "The index measures what *moving* a conditioner changes (the location Jacobian); the **presence "
        "index** is the same share for what *removing* it changes (D with it minus D without it), which is "
        "what composing more conditioners than training had depends on: a network can be local under "
        "small moves and still change every pixel through how many conditioners there are."))
    sigmas = summaries[done[0].name]["sigmas"]
    presence = lambda s: s["presence_index"]["normalised"]["mean"] if "presence_index" in s else None  # noqa: E731
    rows = [[f.name] + [s["index"]["normalised"]["mean"] for s in summaries[f.name]["summaries"]] +
            [f.locality_index] for f in done]
    sec.blocks.append(Table(["model"] + [f"σ={s:g}" for s in sigmas] + ["mean"], rows,
                            "Normalised conditional-locality index per noise level."))
    rows = [[f.name] + [presence(s) for s in summaries[f.name]["summaries"]] + [f.presence_index] for f in done]
    sec.blocks.append(Table(["model"] + [f"σ={s:g}" for s in sigmas] + ["mean"], rows,
                            "Normalised presence index per noise level (removing a conditioner instead of moving it)."))
    fig = index_vs_sigma_figure({n: s for n, s in summaries.items()})
    sec.blocks.append(Figure(save_figure(fig, figures / "locality_index.png"),
                             "Conditional-locality index against noise level (dotted: chance)."))
    sec.blocks += feature_blocks(cfg, done, figures)
    for f in done:
        result = LocalityResult.load(f.locality_dir)
        if "cond_sensitivity" in result.arrays:
            path = save_figure(conditioner_sensitivity_figure(result, scene=0), figures / f"cond_sensitivity_{f.name}.png")
            sec.blocks.append(Figure(path, f"{f.name}: where each conditioner changes the score, per noise level."))
    return sec


def feature_blocks(cfg, done: list[ModelFacts], figures: FigureFolder) -> list:
    """Feature-space composition: cosines between the feature directions of different concepts."""

    feats = {f.name: f.features for f in done if f.features}
    if not feats:
        return []
    loc = cfg.locality

    def locality_cells(v: dict) -> list:
        c, b = v.get("conditional_locality") or {}, v.get("block_locality") or {}
        size = "×".join(map(str, c["feature_map"])) if c.get("feature_map") else None
        return [c.get("mass_within"), c.get("chance"), size, b.get("source"), b.get("mass_within"), b.get("chance")]

    rows = [[n, v["block"], v["offdiag_abs_mean"], *locality_cells(v)] for n, v in feats.items()]
    path = cosine_matrices({n: v["cosine"] for n, v in feats.items()}, figures / "feature_cosines.png")
    return [
        Text(f"**Feature space.** Concept i = one conditioner at cell i of a {loc.feature_grid}×{loc.feature_grid} "
             f"grid; its direction is the mean feature of a block under that conditioner minus the mean under "
             f"the null conditioning (same noisy test images, σ = {loc.feature_sigma:g}). Projective composition "
             "in feature space needs near-orthogonal directions: off-diagonal cosines near 0. *Feature "
             "locality* is the conditional-locality index inside the network: the share of each "
             "conditioner's squared effect on the block's feature map (Jacobian w.r.t. its location, on the "
             f"probed test scenes) that falls within {loc.radius_px:g} image px of where it points; chance = "
             "the share of the feature map that disc covers. *Between blocks*: for sampled feature pixels "
             "of the block, the share of their Jacobian w.r.t. the previous block's feature map within the "
             "same radius (spatial locality inside the network; convolutions are local, attention over the "
             "map need not be)."),
        Table(["model", "block", "mean abs. cosine, off-diagonal", "feature locality", "chance", "feature map",
               "previous block", "between blocks", "chance"], rows),
        Figure(path, "Cosine similarity between concept directions (rows/columns: grid cells, row by row)."),
        *colour_blocks(cfg, done, feats, figures),
        *combination_blocks(cfg, done, feats),
    ]


def colour_claim(cfg, done: list[ModelFacts]) -> list:
    """The paper's colour-conditioned CLEVR claim, judged per model that reads colours, at every
    block measured."""
    rows = [[c.model, c.block, c.concept_abs_cos, c.effect_abs_cos, c.feature_locality, c.word]
            for f in done for c in colour_by_block(f, cfg.report)]
    if not rows:
        return []
    r = cfg.report
    return [Text(f"**Claim (the paper's colour-conditioned CLEVR): colour composes with location in feature "
                 f"space.** Supported at a block when each colour has its own direction in its features — mean "
                 f"off-diagonal |cos| between the colours' effects (their concept directions minus the part every "
                 f"colour shares, \"an object is here\") below {r.orthogonal:g} — and the block's output depends on "
                 f"the module called before it mostly nearby (normalised locality ≥ {r.spatial_local:g}; – where "
                 f"not measured); partly when one holds. A model's verdict is its best block's (the "
                 f"claims list names it and how many blocks support it). At the feature probe's noise level."),
            Table(["model", "block", "abs. cosine, colour concepts", "abs. cosine, colour effects",
                   "locality (normalised)", "verdict"], rows)]


def colour_blocks(cfg, done: list[ModelFacts], feats: dict[str, dict], figures: FigureFolder) -> list:
    """Colour concepts of attribute-conditioned models: the claim, feature cosines and colour
    accuracy per k."""

    colours = {n: v["colors"] for n, v in feats.items() if v.get("colors")}
    if not colours:
        return []
    palette = ", ".join(vocab.COLOR_NAMES[i] for i in next(iter(colours.values()))["palette"])
    path = cosine_matrices({n: c["cosine"] for n, c in colours.items()}, figures / "colour_cosines.png")
    acc_rows = []
    for f in done:
        if f.name in colours and f.evaluation:
            acc_rows.append([f.name, *[f.evaluation.at(k, "color_accuracy") for k in cfg.evaluate.counts]])
    blocks = [
        *colour_claim(cfg, done),
        Text("**Colour concepts.** For models that read object attributes: concept i = one conditioner at "
             "the image centre with colour i (other attributes fixed), directions and cosines as above. "
             "Composition of colour with location in feature space needs these directions to be "
             f"distinguishable (off-diagonal well below 1). Palette: {palette}."),
        Table(["model", "mean abs. cosine between colours, off-diagonal"],
              [[n, c["offdiag_abs_mean"]] for n, c in colours.items()]),
        Figure(path, "Cosine similarity between colour concept directions (rows/columns: palette order)."),
    ]
    if acc_rows:
        blocks += [
            Text("Colour accuracy: of the requested objects the detector matched to a detection, the share "
                 "whose detected colour is the requested one, per number of objects k."),
            Table(["model", *[f"k={k}" for k in cfg.evaluate.counts]], acc_rows),
        ]
    return blocks


def combination_blocks(cfg, done: list[ModelFacts], feats: dict[str, dict]) -> list:
    """Held-out (shape, colour) combinations: every attribute model scored on the pairs some model
    of the study never saw in training and on the other pairs, so a model that saw every pair is
    the control; beside it, whether its features decompose additively into colour and shape."""

    held = {n: vocab.combo_indices(spec.holdout_combos) for n, spec in cfg.enabled_models().items()
            if spec.holdout_combos}
    pairs = set().union(*held.values()) if held else set()
    rows = []
    for f in done:
        attrs = (feats.get(f.name) or {}).get("attributes")
        if not attrs or not f.evaluation or f.eval_dir is None:
            continue
        acc = pair_accuracy(f.eval_records, pairs)
        inter = pair_means(attrs["interaction"], attrs["colors"], attrs["shapes"], pairs)
        shape_counts = [m.attribute_counts for m in f.evaluation.per_k.values()]
        n_shape = sum(c.get("shape_checked", 0) for c in shape_counts)
        shape_acc = sum(c.get("shape_correct", 0) for c in shape_counts) / n_shape if n_shape else None
        rows.append([f.name, len(held.get(f.name, ())), shape_acc,
                     acc["out_both"][0], f"{num(acc['in_both'][0])} (n={acc['in_both'][1]})",
                     acc["out_color"][0], acc["in_color"][0], attrs["additive_share"], inter["out"], inter["in"],
                     attrs["color_shape_abs_cos_mean"]])
    if not rows or not pairs:
        return []
    ceiling = detector_ceiling(cfg).values()

    def ceiling_mean(key: str) -> str:
        values = [r[key] for r in ceiling if r.get(key) is not None]
        return num(float(np.mean(values)) if values else None)

    names = "; ".join(f"{n}: " + ", ".join(f"{vocab.SHAPES[s]} {vocab.COLOR_NAMES[c]}" for s, c in p)
                      for n, p in held.items())
    return [
        Text("**Held-out combinations.** Models that read colour and shape tokens, scored on the matched objects "
             "of every k ≥ 1 (pooled) — on the (shape, colour) pairs held out of some model's training (every "
             f"training scene holding such an object was skipped; {names}) and on the other pairs. A model "
             "that trained on every pair is the control for the same pairs. Feature side: the block's mean "
             "feature with one object at the centre, for every colour × shape, decomposed as grand mean + "
             "colour effect + shape effect + interaction; *additive share* = variance explained without the "
             "interaction, *interaction* = a pair's interaction relative to its total effect (small: the "
             "pair's features follow from its colour and its shape seen elsewhere), |cos| between colour "
             f"and shape effect directions (0: orthogonal). The detector on real renders: colour "
             f"{ceiling_mean('color_accuracy')}, shape {ceiling_mean('shape_accuracy')} (mean over k); "
             f"shapes of {'/'.join(vocab.SHAPES)} span a few pixels here, so the colour columns are the "
             "cleaner read."),
        Table(["model", "pairs it never saw", "shape", "both right, other pairs", "both right, held-out pairs",
               "colour, other pairs", "colour, held-out pairs", "additive share", "interaction, other",
               "interaction, held-out", "|cos| colour vs shape"], rows),
    ]


def diffusers_section(cfg, figures: FigureFolder, trained_here: bool = False) -> Section | None:
    """What the paper reports for SDXL and what ``locodiff probe-diffusers`` measured; none when
    nothing was (no probe of a diffusers model, no caption model in the study)."""
    folder = Path(cfg.out_dir) / "probe-diffusers"
    if not trained_here and not (folder / "probe.json").is_file():
        return None
    sec = Section("Large text-to-image models (SDXL-class UNets)")
    sec.blocks.append(Text(
        "The paper states three findings for SDXL: (1) its score is *spatially* local in pixel (latent) "
        "space — an output pixel depends mostly on nearby input pixels; (2) *conditional* locality is mostly "
        "absent in pixel space — a prompt token's influence spreads over the whole image rather than one "
        "region; (3) evidence of local conditional scores appears in the network's *feature space* instead. "
        "locodiff measures each on any diffusers `UNet2DConditionModel` whose weights you have locally: (1) "
        "the share of the score's input Jacobian within a radius, (2) each token's share of its squared "
        "influence on its top 10% of pixels (0.1 = spread evenly; near 1 = confined), (3) concept cosines and "
        "Jacobians at any block (`locodiff.locality.feature_capture`). Run "
        f"`locodiff probe-diffusers --model PATH --embeddings PROMPT.safetensors --out {folder}` and "
        "re-run `locodiff report` to see the numbers here."))
    path = folder / "probe.json"
    if trained_here:
        sec.blocks.append(Text("A diffusers UNet with learned weights was trained and probed in this study: see "
                               "the next section for the three statements measured on it."))
    if not path.is_file():  # the study's own text model only
        return sec
    result = json.loads(path.read_text())
    rows = [[r["sigma"], r["mass_within_radius"], r["effective_radius_90"], r["token_concentration_mean"]]
            for r in result["per_sigma"]]
    sec.blocks.append(Table(["σ", f"spatial: Jacobian mass within {result['radius_px']:g} px", "r90 (px)",
                             f"token concentration (chance {result['chance_concentration']:.2f})"], rows,
                            f"Probe of the model in {folder} (latents {result['latent_shape']})."))
    for name, caption in (("token_concentration.png", "Per-token concentration of influence, per noise level."),
                          ("token_maps.png", "Where each prompt token (last: the padding, as one group) changes "
                                             "the score, per noise level (sampled forward mode).")):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, figures / f"diffusers_{name}")
            sec.blocks.append(Figure(figures / f"diffusers_{name}", caption))
    return sec


def findings_section(cfg, facts: list[ModelFacts]) -> Section:
    """Plain statements computed from the numbers above; nothing here is written by hand."""
    sec = Section("Findings")
    thr = cfg.evaluate.threshold
    both = [f for f in facts if f.evaluation and f.locality_dir]
    for f in facts:
        if not f.evaluation:
            continue
        s, kind = f.evaluation.summary, headline(f)
        (lo, hi), k1 = s.extrapolation_range, accuracy_at(f, 1)
        low, mean = recall_beyond(f)
        line = (f"**{f.name}** ({f.arch}, labels `{f.label_policy}`): recall over k = {lo}–{hi} lowest {num(low)}, "
                f"mean {num(mean)}; `{kind}` at k=1 {k1 if k1 is not None else float('nan'):.2f}, largest k with "
                f"{kind} ≥ {thr}: {s[kind].largest_k}, {kind} AUC over k = {lo}–{hi}: "
                f"{num(s[kind].extrapolation.auc)}")
        if f.locality_dir:
            line += f"; mean normalised locality index {f.locality_index:.2f}"
        learned = learned_conditioner(f, thr)
        line += "." if learned is not False else " — conditioner not learned, so this is not evidence either way."
        sec.blocks.append(Text(line))
    correlation = locality_correlation(cfg, facts)
    if correlation is not None:
        sec.blocks.append(Text(
            f"Across the {len(correlation.models)} models that learned their conditioner, the rank correlation "
            f"between mean locality index and mean extrapolation recall is {correlation.rho:.2f} (Spearman; few "
            "models, read it as a direction, not a test)."))
    elif both:
        sec.blocks.append(Text("Fewer than three models learned their conditioner and were probed, so no "
                               "correlation between locality and generalization is reported."))
    sec.blocks += held_out_findings(cfg, facts)
    return sec


def held_out_findings(cfg, facts: list[ModelFacts]) -> list:
    """One line per model trained without some (shape, colour) pairs: its colour accuracy on those
    pairs vs the pairs it saw, and the same for attribute models that saw every pair (controls)."""

    scored = {f.name: f for f in facts if f.eval_dir is not None and f.name in cfg.models
              and cfg.models[f.name].model.use_attributes}
    lines = []
    for name, f in scored.items():
        pairs = set(vocab.combo_indices(cfg.models[name].holdout_combos))
        if not pairs:
            continue
        acc = pair_accuracy(f.eval_records, pairs)
        controls = [(n, pair_accuracy(c.eval_records, pairs)) for n, c in scored.items()
                    if not cfg.models[n].holdout_combos]
        line = (f"**{name}** never saw {len(pairs)} (shape, colour) pairs: colour right on "
                f"{num(acc['in_color'][0])} of the matched objects asked for them (n={acc['in_color'][1]}) vs "
                f"{num(acc['out_color'][0])} on the pairs it saw; colour and shape right "
                f"{num(acc['in_both'][0])} vs {num(acc['out_both'][0])}")
        line += "".join(f"; {n}, which saw them, {num(a['in_color'][0])} / {num(a['in_both'][0])} on the same "
                        "pairs" for n, a in controls) + "."
        lines.append(Text(line))
    return lines


def scatter_block(cfg, facts: list[ModelFacts], figures: FigureFolder) -> list:
    points = {}
    for f in facts:
        if f.evaluation and f.locality_dir and learned_conditioner(f, cfg.evaluate.threshold):
            points[f.name] = (f.locality_index, recall_beyond(f)[1] or 0.0)
    if len(points) < 2:
        return []
    path = locality_vs_generalization(points, figures / "locality_vs_generalization.png", figures.colours)
    return [Figure(path, "Each model that learned its conditioner: mean normalised conditional-locality index "
                         "against its mean recall over the extrapolation range.")]


def reproducibility_section(cfg) -> Section:
    versions = {"locodiff": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
                "numpy": np.__version__}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    sec = Section("Reproduce")
    sec.blocks.append(Text(
        f"Software: {', '.join(f'{k} {v}' for k, v in versions.items())}. Hardware: {platform.machine()} "
        f"{platform.system()}, {os.cpu_count()} CPU cores, GPU: {gpu}. Master seed {cfg.seed}; every stage "
        "derives its generators from it."))
    sec.blocks.append(Text(
        f"Rerun everything (finished work is reused): `locodiff study -c {cfg.out_dir}/study_config.json`; "
        f"redraw this report from the saved results without recomputing anything: `locodiff report {cfg.out_dir}`. "
        "The full resolved configuration:"))
    sec.blocks.append(Code(json.dumps(to_dict(cfg), indent=1)))
    return sec


# ----- entry point -------------------------------------------------------------------------------


def explorer_section(facts: list[ModelFacts], colours: dict[str, str]) -> Section:
    words = ("The HTML version of this report (`report.html`) has an explorer here: the samples per k with their "
             "detections, each conditioner's effect alone and among the others at k = 1..10, the Jacobian maps of "
             "each probed pixel and conditioner at every noise level, models side by side, and the recall and "
             "efficacy curves per model.")
    return Section("Explore", [Html(explorer_html(facts, colours), words)])


def write_report(cfg, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.html`` (self-contained) and ``figures/`` into ``out_dir``."""

    out = Path(out_dir)
    gathered = gather(cfg)
    figures = FigureFolder(out / "figures", model_colours(f.name for f in gathered))
    figures.path.mkdir(parents=True, exist_ok=True)
    facts, text_facts = location_models(gathered), caption_models(gathered)
    timings_path = Path(cfg.out_dir) / layout.TIMINGS
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    sections = [summary_section(cfg, facts, figures), setup_section(cfg, facts, timings)]
    sheet = layout.dataset_root(cfg.data, cfg.out_dir) / layout.CONTACT_SHEET
    if sheet.exists():
        shutil.copyfile(sheet, figures / "data.png")
        sections[1].blocks.append(Figure(figures / "data.png", "Rendered scenes, one row per object count."))
    findings = findings_section(cfg, facts)
    findings.blocks += scatter_block(cfg, facts, figures)
    sections += [generalization_section(cfg, facts, figures), crowding_section(cfg, facts, figures),
                 locality_section(cfg, facts, figures)]
    sections += [s for s in (extrapolation_section(cfg, facts, figures), ablation_section(cfg, facts, figures))
                 if s is not None]
    sections += [s for s in (trained_in_section(cfg, facts), emergence_section(cfg, figures)) if s is not None]
    text_section = text_model_section(cfg, text_facts, facts)
    by_seed = {seed: location_models(f) for seed, f in gather_seeds(cfg).items()}
    seeds = seeds_section(cfg, by_seed)
    seeds.blocks += seed_verdicts(cfg, by_seed)
    sections += [s for s in (seeds, diffusers_section(cfg, figures, text_section is not None)) if s is not None]
    sections += [text_section] if text_section else []
    sections += [findings, explorer_section(gathered, figures.colours), reproducibility_section(cfg)]
    title = "locodiff study report"
    write_text_atomic(out / "report.md", to_markdown(title, sections, out))
    write_text_atomic(out / "report.html", to_html(title, sections))
    return out / "report.md"
