"""Each claim is computed once: every section that states it prints the same number, a missing
value is left out (never counted as zero), and the criteria come from the config's [report]."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.evaluations import evaluation

from locodiff.errors import ConfigError
from locodiff.report.build import findings_section
from locodiff.report.summary import claim_lines, summary_section
from locodiff.report.claims import colour_by_block, colour_composition, locality_correlation
from locodiff.report.config import ReportConfig
from locodiff.report.facts import ModelFacts
from locodiff.report.figures import FigureFolder
from locodiff.stages.config import load_study_config


def facts(tmp_path, name: str, index: float | None, mean_recall: float | None, placed: float = 1.0) -> ModelFacts:
    rows = {1: {"placed": placed, "success": placed, "recall": 1.0}}
    if mean_recall is not None:  # none: the model was not evaluated beyond training
        rows[4] = {"recall": mean_recall}
    return ModelFacts(name, "other", "spatial", "one", "", 1, tmp_path, evaluation=evaluation(rows, extrapolation=(4, 4)),
                      locality_dir=tmp_path, locality_index=index)


def four_models(tmp_path) -> list[ModelFacts]:
    # a's recall is missing: counted as zero it would turn the ranking around
    return [facts(tmp_path, "a", 0.9, None), facts(tmp_path, "b", 0.8, 0.9),
            facts(tmp_path, "c", 0.5, 0.5), facts(tmp_path, "d", 0.1, 0.2)]


def test_a_model_missing_its_recall_is_left_out(tmp_path):
    cfg = load_study_config("micro")
    correlation = locality_correlation(cfg, four_models(tmp_path))
    assert correlation.models == ("b", "c", "d")
    assert correlation.rho == pytest.approx(1.0)


def test_below_three_models_no_correlation_is_claimed(tmp_path):
    cfg = load_study_config("micro")
    assert locality_correlation(cfg, four_models(tmp_path)[:3]) is None


def test_every_section_prints_the_one_rho(tmp_path):
    cfg = load_study_config("micro")
    models = four_models(tmp_path)
    summary = summary_section(cfg, models, FigureFolder(tmp_path / "figures")).blocks
    texts = [b.text for b in findings_section(cfg, models).blocks + summary
             if hasattr(b, "text")] + claim_lines(cfg, models)
    printed = {m for t in texts for m in re.findall(r"(?:is|Spearman|beyond training:) (-?\d\.\d\d)", t)}
    assert printed == {"1.00"}, texts


def test_the_criterion_comes_from_the_config(tmp_path):
    models = four_models(tmp_path)
    cfg = load_study_config("micro")
    assert any("**supported**" in line and "Spearman 1.00" in line for line in claim_lines(cfg, models))
    strict = replace(cfg, report=replace(cfg.report, claim_rho=1.0))
    line = next(line for line in claim_lines(strict, models) if "Spearman 1.00" in line)
    assert "**not supported**" in line and "criterion > 1.0" in line


def test_report_criteria_are_checked():
    with pytest.raises(ConfigError, match="report.generalizes"):
        ReportConfig(generalizes=1.5)
    with pytest.raises(ConfigError, match="report.weak_rho"):
        ReportConfig(weak_rho=0.6, claim_rho=0.5)
    with pytest.raises(ConfigError, match="report.fails"):
        load_study_config("micro", sets=["report.fails=-1"])


def test_colour_composition_needs_distinct_colours_and_local_features():
    def model(name, concept, effect, mass, chance=0.1):
        f = ModelFacts(name, "exp1", "cross_attention", "all", "", 1, Path("."))
        f.features = {"block": "middle.1", "colors": {"offdiag_abs_mean": concept},
                      "attributes": None if effect is None else {"color_offdiag_abs_mean": effect},
                      "block_locality": {"mass_within": mass, "chance": chance}}
        return f

    plain = ModelFacts("plain", "exp1", "cross_attention", "all", "", 1, Path("."))
    claims = colour_composition([model("a", 0.9, 0.2, 0.91), model("b", 0.3, None, 0.2), model("c", 0.9, 0.7, 0.2),
                                 plain], ReportConfig())
    assert [c.model for c in claims] == ["a", "b", "c"]  # a model without colour features makes no claim
    a, b, c = claims
    assert a.distinct and a.local and a.word == "**supported**"  # judged by the effects, not the concepts
    assert abs(a.feature_locality - 0.9) < 1e-9  # (0.91 - 0.1) / (1 - 0.1)
    assert b.distinct and not b.local and b.word == "**partly supported**"  # no effects: the concepts
    assert not c.distinct and not c.local and c.word == "**not supported**"


def test_colour_composition_is_judged_at_every_block_and_each_model_at_its_best():
    f = ModelFacts("m", "exp1", "cross_attention", "all", "", 1, Path("."))
    row = lambda block, effect, mass: {"block": block, "concept_abs_cos": 0.9, "effect_abs_cos": effect,  # noqa: E731
                                       "mass_within": mass, "chance": None if mass is None else 0.1}
    f.features = {"block": "middle.1", "colors": {"offdiag_abs_mean": 0.9},
                  "per_block": [row("encoder.0", 0.2, None), row("encoder.1", 0.7, 0.95), row("decoder.1", 0.3, 0.8),
                                row("decoder.0", 0.2, 0.99)]}
    blocks = colour_by_block(f, ReportConfig())
    assert [b.word for b in blocks] == ["**partly supported**", "**partly supported**", "**supported**", "**supported**"]
    (best,) = colour_composition([f], ReportConfig())
    assert best.block == "decoder.1" and best.word == "**supported**"  # the first block meeting both
    f.features["per_block"] = [row("encoder.0", 0.7, None), row("encoder.1", 0.7, 0.2)]
    (best,) = colour_composition([f], ReportConfig())
    assert best.block == "encoder.0" and best.word == "**not supported**"  # none meets either: the first
