"""What the report knows about each model, read once from the files the stages wrote.

Every section formats these facts; none reads a result file itself. ``gather`` takes one seed's
view of the study (the first seed unless told), ``gather_seeds`` every seed's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import layout
from ..evaluate.runner import EvalResult, evaluation_dir
from ..io import read_jsonl
from ..locality.extrapolation import ExtrapolationResult
from ..locality.feature_space import load_features
from ..locality.result import mean_normalised_index, mean_presence_index
from ..checkpoints import latest_checkpoint, read_state
from ..run_record import read_model_record, training_time


@dataclass
class ModelFacts:
    """Everything the report says about one model, read from its run folder."""

    name: str
    role: str
    arch: str
    label_policy: str
    description: str
    folder: Path
    params: int | None = None  # from the training run's model.json (None: not trained yet)
    # what the model reads (an intervention: what its base reads); a model not trained yet has no
    # model.json and is listed with the location models until it is
    conditioned_on: str = "locations"
    images_seen: int = 0
    images_per_s: float | None = None
    train_seconds: float | None = None
    final_loss: float | None = None
    evaluation: EvalResult | None = None  # eval.json
    eval_dir: Path | None = None
    eval_records: list[dict] = field(default_factory=list)  # eval.jsonl
    locality_dir: Path | None = None
    locality: dict | None = None  # the probe's summary.json
    locality_index: float | None = None  # its mean normalised conditional-locality index
    presence_index: float | None = None  # the same index of each conditioner's presence (removal) effect
    features: dict | None = None  # features.json (feature-space results)
    extrapolation: ExtrapolationResult | None = None  # the probe at k = 1..10 (extrapolation.json)


def location_models(facts: list[ModelFacts]) -> list[ModelFacts]:
    """The location-token family the paper's CLEVR claims are about (caption models have their
    own section: their locations are words, so a location Jacobian says nothing)."""
    return [f for f in facts if f.conditioned_on == "locations"]


def caption_models(facts: list[ModelFacts]) -> list[ModelFacts]:
    return [f for f in facts if f.conditioned_on == "captions"]


def gather(cfg, seed: int | None = None) -> list[ModelFacts]:
    """Facts of every enabled model and intervention under ``seed`` (default: the study's first)."""
    cfg = cfg.per_seed()[cfg.seed_list()[0] if seed is None else seed]
    facts = []
    for name, spec in cfg.enabled_models().items():
        f = ModelFacts(name, spec.role, spec.model.arch, spec.label_policy, spec.description, cfg.run_dir(name))
        facts.append(_read_results(cfg, f, f.folder))
    for name, spec in cfg.enabled_interventions().items():
        base = cfg.models[spec.base]
        f = ModelFacts(name, spec.role, f"{spec.form}({spec.base}, r={spec.radius_px:g} px)", base.label_policy,
                       spec.description, cfg.intervention_dir(name))
        facts.append(_read_results(cfg, f, cfg.run_dir(spec.base)))
    return facts


def _read_results(cfg, f: ModelFacts, train_dir: Path) -> ModelFacts:
    """Training facts from ``train_dir``, evaluation and locality results from ``f.folder``."""
    record = read_model_record(train_dir)
    if record is not None:
        f.params, f.conditioned_on = record.params, record.conditioned_on
    ckpt = latest_checkpoint(train_dir) if train_dir.exists() else None
    if ckpt is None:
        return f
    f.images_seen = read_state(ckpt)["images_seen"]
    f.train_seconds, f.images_per_s, f.final_loss = training_time(read_jsonl(train_dir / layout.TRAIN_METRICS))
    ev = evaluation_dir(f.folder, cfg.evaluate, ckpt.name)
    f.evaluation = EvalResult.load(ev)
    if f.evaluation is not None:
        f.eval_dir, f.eval_records = ev, read_jsonl(ev / layout.EVAL_RECORDS)
    loc = layout.probe_dir(f.folder, cfg.locality, ckpt.name)
    if (loc / layout.PROBE_SUMMARY).is_file():
        f.locality_dir, f.locality = loc, json.loads((loc / layout.PROBE_SUMMARY).read_text())
        f.locality_index = mean_normalised_index(f.locality)
        f.presence_index = mean_presence_index(f.locality)
        f.features = load_features(loc) or None
        f.extrapolation = ExtrapolationResult.load(loc)
    return f


# ----- numbers the text is written from ------------------------------------------------------------


def headline(f: ModelFacts) -> str:
    """The accuracy a model is judged by. With labels ``all`` the training images hold exactly the
    labelled objects, so extra objects are errors (``success``: exact count, all placed). With
    ``one`` the training images also hold unlabelled objects, so extras are the data's own
    clutter and what counts is an object at every requested location (``placed``)."""
    return "success" if f.label_policy == "all" else "placed"


def accuracy_at(f: ModelFacts, k: int, kind: str | None = None) -> float | None:
    return f.evaluation.at(k, kind or headline(f)) if f.evaluation else None


def learned_conditioner(f: ModelFacts, threshold: float) -> bool | None:
    """Does the model place a single requested object? Failure at larger k means nothing otherwise."""
    s = accuracy_at(f, 1, "placed")
    return None if s is None else s >= threshold


def num(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def recall_per_k(f: ModelFacts) -> dict[int, float]:
    """Recall at every evaluated k >= 1, from eval.json."""
    per_k = f.evaluation.per_k if f.evaluation else {}
    return {k: m.recall for k, m in per_k.items() if m.recall is not None}


def recall_beyond(f: ModelFacts) -> tuple[float | None, float | None]:
    """(lowest, mean) recall over the extrapolation range, from eval.json."""
    beyond = f.evaluation.summary["recall"].extrapolation
    return beyond.min, beyond.auc


def gather_seeds(cfg) -> dict[int, list[ModelFacts]]:
    """``gather`` under every seed of the study."""
    return {seed: gather(cfg, seed) for seed in cfg.seed_list()}
