"""The report's section on text-conditioned diffusers UNets trained in the study (``diffusers_text``):
length generalization scored without locations, and the paper's three SDXL findings on a model
with learned weights beside a random-weight control and locodiff's location-token models."""

from __future__ import annotations

import json
from collections import Counter

from .. import layout
from .claims import normalised_share
from .config import ReportConfig
from .document import Section, Table, Text
from .facts import ModelFacts, num


def cell(point) -> tuple[int, int]:
    """The caption's coarse position: a cell of the 3 x 3 grid."""
    return min(int(point[0] * 3), 2), min(int(point[1] * 3), 2)


def _overlap(a, b) -> int:
    return sum((Counter(a) & Counter(b)).values())


def text_scores(records: list[dict]) -> list[dict]:
    """Per k, location-free scores: count accuracy, mean detected, and the shares of requested
    colours, caption cells, (colour, cell) pairs and, where the detector classifies them, shapes
    found among the detections (multisets)."""
    by_k: dict[int, list[dict]] = {}
    for r in records:
        by_k.setdefault(r["k"], []).append(r)
    rows = []
    for k, recs in sorted(by_k.items()):
        row = {"k": k, "images": len(recs), "count": sum(r["n_detected"] == k for r in recs) / len(recs),
               "mean_detected": sum(r["n_detected"] for r in recs) / len(recs)}
        if k > 0:
            det = [r["detections"] for r in recs]
            row["colour"] = sum(_overlap(r["requested_colors"], d["color_index"]) for r, d in zip(recs, det)) / (k * len(recs))
            row["cell"] = sum(_overlap(map(cell, r["requested"]), map(cell, d["centers"])) for r, d in zip(recs, det)) / (k * len(recs))
            row["colour_cell"] = sum(_overlap(zip(r["requested_colors"], map(cell, r["requested"])),
                                              zip(d["color_index"], map(cell, d["centers"])))
                                     for r, d in zip(recs, det)) / (k * len(recs))
            shapes = [d.get("shape_index", [] if not d["centers"] else None) for d in det]  # none: nothing found
            if all(s is not None for s in shapes):  # the heat-map detector classifies shapes
                row["shape"] = sum(_overlap(r["requested_shapes"], s) for r, s in zip(recs, shapes)) / (k * len(recs))
        rows.append(row)
    return rows


def load_text_probe(f: ModelFacts) -> dict | None:
    path = f.locality_dir / layout.TEXT_PROBE if f.locality_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def _verdict(supported: bool, partly: bool = False) -> str:
    return "supported" if supported else "partly" if partly else "not supported"


def statements(trained: dict, control: dict, criteria: ReportConfig) -> list[list[object]]:
    """Rows (statement, trained, control, criterion, verdict) for the paper's three SDXL findings
    (criteria applied to the trained model's means over sigma)."""
    t, c = trained["summary"], control["summary"]
    spatial_local, absent, orthogonal = criteria.spatial_local, criteria.phrase_absent, criteria.orthogonal
    spatial = t["spatial_mass_within"]
    pixel = t["pixel_phrase_share"]
    offdiag = {b: v for b, v in t["colour_offdiag"].items() if v is not None}
    best = min(offdiag, key=offdiag.get) if offdiag else None
    ctrl_best = c["colour_offdiag"].get(best) if best else None
    r = trained["radius_px"]
    return [
        [f"(1) spatially local in pixel space (x0's Jacobian: {num(t.get('spatial_mass_within_x0'))}, random "
         f"{num(c.get('spatial_mass_within_x0'))})", num(spatial), num(c["spatial_mass_within"]),
         f"Jacobian mass within {r:g} px ≥ {spatial_local}", _verdict(spatial is not None and spatial >= spatial_local)],
        ["(2) conditionally non-local in pixel space", num(pixel), num(c["pixel_phrase_share"]),
         f"normalised phrase share within {r:g} px < {absent}",
         _verdict(pixel is not None and pixel < absent, pixel is not None and pixel < 2 * absent)],
        [f"(3) local conditional structure in feature space (colour directions at {best})",
         num(offdiag.get(best)), num(ctrl_best), f"mean off-diagonal abs. cosine < {orthogonal} (and below the control)",
         _verdict(best is not None and offdiag[best] < orthogonal and (ctrl_best is None or offdiag[best] < ctrl_best),
                  best is not None and ctrl_best is not None and offdiag[best] < ctrl_best)],
    ]


def location_model_rows(facts: list[ModelFacts]) -> list[list[object]]:
    """The location-token models' counterparts: move and presence index in pixel space, and the
    feature-space share of a conditioner's effect within the radius, normalised to chance."""
    rows = []
    for f in facts:
        if not f.locality_dir:
            continue
        cl = (f.features or {}).get("conditional_locality") or {}
        feature = normalised_share(cl.get("mass_within"), cl.get("chance"))
        rows.append([f.name, f.arch, num(f.locality_index), num(f.presence_index), num(feature)])
    return rows


def text_model_section(cfg, text_facts: list[ModelFacts], location_facts: list[ModelFacts]) -> Section | None:
    if not text_facts:
        return None
    sec = Section("A text-conditioned diffusers UNet trained here (the SDXL findings on learned weights)")
    sec.blocks.append(Text(
        "A diffusers `UNet2DConditionModel` laid out like SDXL's (no attention at the finest level, a "
        "transformer reading the prompt at every other level) is trained on captions of the same scenes "
        "(`large red metal cube top left and ...`: size, colour, material, shape and a cell of a 3 × 3 grid per "
        "object), read by a word tokenizer and a small caption encoder trained with it. It is trained through "
        "locodiff's EDM loss as a v-prediction UNet (EDM preconditioning with σ_data = 1), saved as a diffusers "
        "folder and reloaded the way `probe-diffusers` loads SDXL for the probes below. A caption has no exact "
        "locations, so length generalization is scored without them: count accuracy and the share of requested "
        "colours, caption cells and (colour, cell) pairs found among the detections. A model trained on "
        "captions without positions (`model.caption.positions = false`: `large red metal cube and ...`) is "
        "the paper's case for SDXL, prompts that name objects and not where they are: its phrases can only "
        "become local if the network places them; each statement below is stated for each caption kind."))
    for f in text_facts:
        if f.eval_records:
            sec.blocks.append(length_table(cfg, f))
        probe = load_text_probe(f)
        if probe is not None:
            sec.blocks += probe_blocks(cfg, f, probe, location_facts)
    return sec


def positional(cfg, f: ModelFacts) -> bool:
    """Whether the model's captions name each object's cell (``model.caption.positions``)."""
    spec = cfg.models.get(f.name)
    caption = None if spec is None else spec.model.caption
    return caption is None or caption.positions


def caption_kind(cfg, f: ModelFacts) -> str:
    return "captions with positions" if positional(cfg, f) else "captions without positions"


def length_table(cfg, f: ModelFacts) -> Table:
    """Length generalization of a caption model, scored without locations (and without cells when
    its captions name none)."""
    cells = positional(cfg, f)
    rows = [[r["k"], r["images"], num(r["count"]), f"{r['mean_detected']:.1f}", num(r.get("colour")),
             num(r.get("cell")) if cells else "–", num(r.get("colour_cell")) if cells else "–", num(r.get("shape"))]
            for r in text_scores(f.eval_records)]
    return Table(["k", "images", "count accuracy", "mean detected", "colour found", "cell found", "colour in cell",
                  "shape found"], rows,
                 f"{f.name} ({caption_kind(cfg, f)}): length generalization of the caption model (trained on "
                 f"{cfg.data.train_counts[0]}–{cfg.data.train_counts[-1]} objects). Shares are "
                 "multiset overlaps, which chance alone raises as k grows (8 colours, 3 shapes, 9 "
                 "cells); shapes are read by the detector, whose shape accuracy on real renders is "
                 "in the setup section's detector ceiling.")


def probe_blocks(cfg, f: ModelFacts, probe: dict, location_facts: list[ModelFacts]) -> list:
    """The three statements, their numbers per noise level and per word class, and the caption
    model beside the location-token models."""
    trained, control = probe["trained"], probe["random"]
    example = "large red metal cube top left" if positional(cfg, f) else "large red metal cube"
    return [
        Table(["statement (paper, for SDXL)", f"{f.name} ({caption_kind(cfg, f)})", "random weights", "criterion",
               "verdict"],
              statements(trained, control, cfg.report),
              "Means over the probed noise levels. The control: the same architecture and "
              "caption encoder with random weights."),
        per_sigma_table(f, trained),
        word_class_table(f, trained, control),
        colour_table(f, trained, control),
        beside_location_models(f, trained, location_facts),
        Text(f"The saved diffusers folder: `{f.locality_dir / 'diffusers'}`; probe it like SDXL with "
             f"`locodiff probe-diffusers --model {f.locality_dir / 'diffusers'} --caption \"{example}\"`."),
    ]


def per_sigma_table(f: ModelFacts, trained: dict) -> Table:
    blocks, radius = trained["blocks"], trained["radius_px"]
    rows = [[r["sigma"], num(r["spatial_mass_within"]), num(r.get("spatial_mass_within_x0")),
             num(r["phrase_share"]["score"]["normalised"])]
            + [num(r["phrase_share"][b]["normalised"]) for b in blocks] for r in trained["per_sigma"]]
    return Table(["σ", "spatial mass: score", "spatial mass: x0", "phrase share: score"]
                 + [f"phrase share: {b}" for b in blocks],
                 rows, f"{f.name} per noise level. Spatial: Jacobian mass within {radius:g} "
                 "px of the output pixel (the score's is dominated by its -x/σ² diagonal; x0's shows "
                 "how far the network reaches). Phrase share: where an object's phrase moves the "
                 f"score and each block's features, normalised share within {radius:g} "
                 "px of the object (0 = chance, 1 = confined).")


def word_class_table(f: ModelFacts, trained: dict, control: dict) -> Table:
    classes = sorted({c for r in trained["per_sigma"] for c in r["token_concentration"]})
    rows = [[name] + [num(sum(r["token_concentration"].get(c, float("nan")) for r in res["per_sigma"])
                          / len(res["per_sigma"])) for c in classes]
            for name, res in ((f.name, trained), ("random weights", control))]
    return Table(["model"] + classes, rows,
                 f"Token concentration by word class: each token's share of its squared influence on "
                 f"its top 10% of probed pixels (chance {trained['chance_concentration']:.2f}), mean over σ.")


def colour_table(f: ModelFacts, trained: dict, control: dict) -> Table:
    cos = [[b, num(trained["summary"]["colour_offdiag"].get(b)), num(control["summary"]["colour_offdiag"].get(b))]
           for b in trained["blocks"]]
    return Table(["block", f"{f.name}: colour abs. cosine", "random: colour abs. cosine"], cos,
                 "Mean off-diagonal absolute cosine between colour concept directions (one centred object "
                 "per colour minus the empty caption); 0 = orthogonal.")


def beside_location_models(f: ModelFacts, trained: dict, location_facts: list[ModelFacts]) -> Table:
    presence = f"{f.presence_index:.2f}" if f.presence_index is not None else "–"
    best = max((v for v in trained["summary"]["feature_phrase_share"].values() if v is not None), default=None)
    text_row = [f.name, f.arch, "– (locations only as words)", presence, num(best)]
    return Table(["model", "arch", "move index (pixel)", "presence index (pixel)",
                  "feature-space share (normalised)"], location_model_rows(location_facts) + [text_row],
                 "Beside locodiff's location-token models: the presence index (what removing one "
                 "object's label or phrase changes, within the radius) is the same statistic for "
                 "both; the feature-space column is the location Jacobian's share at the network's "
                 "middle for the location models, the best block's phrase share for the caption model.")
