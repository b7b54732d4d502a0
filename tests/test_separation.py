"""The mechanism in the paper's dichotomous form: the AUROC with which a locality statistic
separates (model, k) points that generalize from points that fail, and its interval."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.evaluations import evaluation

from locodiff.locality.config import ExtrapolationOptions
from locodiff.locality.extrapolation import SUMS, ExtrapolationResult
from locodiff.report.claims import mechanism
from locodiff.report.facts import ModelFacts
from locodiff.report.separation import auroc
from locodiff.report.summary import claims_table
from locodiff.stages.config import load_study_config

SIGMAS = [0.5, 2.0, 5.0]


def probe(efficacy: dict[int, float], scenes: int = 4, spread: float = 0.05) -> ExtrapolationResult:
    """A saved probe whose efficacy at k is ``efficacy[k]`` (scene by scene it varies by ``spread``)."""
    sums = {}
    for k, value in efficacy.items():
        rows = []
        for s in range(scenes):
            row = dict.fromkeys(SUMS, 0.0)
            row.update(own2=1.0, effect_on_own=value + spread * (s - (scenes - 1) / 2), units=k)
            rows.append([[row[n] for n in SUMS] for _ in SIGMAS])
        sums[k] = torch.tensor(rows, dtype=torch.float64)
    options = ExtrapolationOptions(counts=tuple(efficacy), sigmas=tuple(SIGMAS))
    return ExtrapolationResult.from_sums(options, sums, torch.Generator().manual_seed(0), {})


def model(tmp_path, name: str, recall: dict[int, float], efficacy: dict[int, float], samples: int = 8) -> ModelFacts:
    """A model that placed its one object at k = 1 and drew ``recall[k]`` of k objects beyond."""
    records = []
    for k, r in recall.items():
        hits = round(r * k * samples)  # spread over the samples as evenly as they go
        records += [{"k": k, "pairs": [[0, 0]] * (hits // samples + (i < hits % samples))} for i in range(samples)]
    rows = {1: {"placed": 1.0, "recall": 1.0}, **{k: {"recall": r} for k, r in recall.items()}}
    return ModelFacts(name, "exp1", "cross_attention", "all", "", 1, tmp_path, evaluation=evaluation(rows),
                      eval_records=records, extrapolation=probe(efficacy))


def test_auroc_counts_pairs_and_ties():
    scores = np.array([0.9, 0.8, 0.8, 0.1, np.nan])
    positive = np.array([True, True, False, False, True])
    assert auroc(scores, positive, ~positive) == pytest.approx((1 + 1 + 1 + 0.5) / 4)  # the NaN is left out
    assert np.isnan(auroc(scores, positive, np.zeros(5, bool)))


def test_local_generalizers_and_coupled_failures_separate(tmp_path):
    cfg = load_study_config("micro", sets=["evaluate.counts=[0,1,2,4,6]"])
    ks = (4, 6)
    good = model(tmp_path, "good", dict.fromkeys(ks, 0.9), {4: 0.97, 6: 0.93})
    bad = model(tmp_path, "bad", {4: 0.25, 6: 0.125}, {4: 0.4, 6: 0.3})
    result = mechanism(cfg, [good, bad])["efficacy"]
    assert result.auroc == 1.0 and result.lo == 1.0 and set(result.failing) == {"bad@4", "bad@6"}
    assert result.supported(cfg.report)
    row = claims_table(cfg, [good, bad]).rows[-1]
    assert row[1] == "**supported**" and row[2].startswith("AUROC 1.00 [1.00, 1.00] (efficacy; 2 generalizing vs 2")
    # a failing model as local as the good one: no separation, and the verdict says so
    local_failure = model(tmp_path, "bad", {4: 0.25, 6: 0.125}, {4: 0.97, 6: 0.93})
    result = mechanism(cfg, [good, local_failure])["efficacy"]
    assert result.auroc == pytest.approx(0.5) and not result.supported(cfg.report)


def test_the_interval_moves_points_across_the_recall_line(tmp_path):
    """A point near the recall criterion changes side under resampling, so the interval widens."""
    cfg = load_study_config("micro", sets=["evaluate.counts=[0,1,2,4,6]"])
    cfg = replace(cfg, report=replace(cfg.report, separates_lo=0.99))
    good = model(tmp_path, "good", {4: 0.9, 6: 0.78}, {4: 0.97, 6: 0.5})  # 6: not quite generalizing
    edge = model(tmp_path, "edge", {4: 0.8, 6: 0.25}, {4: 0.45, 6: 0.3})  # 4: just generalizing, not local
    bad = model(tmp_path, "bad", {4: 0.25, 6: 0.125}, {4: 0.6, 6: 0.5})
    result = mechanism(cfg, [good, edge, bad])["efficacy"]
    assert result.lo < result.auroc <= result.hi
    assert not result.supported(cfg.report)
    assert mechanism(cfg, [good])["efficacy"].auroc is None  # nothing fails: no separation to judge


def test_the_ablation_section_sets_each_network_beside_the_others(tmp_path):
    from locodiff.report.ablation import ablation_section

    variant = ('models.exp1_group_softmax.model={arch="cross_attention", channels=[8, 16], norm_groups=4, '
               'head_dim=8, token_dim=16}')
    cfg = load_study_config("micro", sets=["evaluate.counts=[0,1,2,4,6]", variant,
                                           "models.exp1_group_softmax.role=ablation"])
    pair = [model(tmp_path, "exp1", dict.fromkeys((4, 6), 0.9), {4: 0.97, 6: 0.93}),
            model(tmp_path, "exp2", {4: 0.25, 6: 0.125}, {4: 0.4, 6: 0.3})]
    pair[1].role, pair[1].label_policy = "exp2", "one"
    assert ablation_section(cfg, pair, tmp_path) is None  # no ablation model: no section
    coupled = model(tmp_path, "exp1_group_softmax", {4: 0.5, 6: 0.3}, {4: 0.6, 6: 0.5})
    coupled.role = "ablation"
    section = ablation_section(cfg, pair + [coupled], tmp_path)
    rows = {row[0]: row for row in section.blocks[1].rows}
    assert rows["exp1"][1] == "PixelNorm + sigmoid" and rows["exp1_group_softmax"][1] == "GroupNorm + softmax"
    assert rows["exp2"][2] == "one" and rows["exp1_group_softmax"][3].endswith("0.50 / 0.30")
    assert (tmp_path / "coupling_ablation.png").stat().st_size > 10_000
    assert rows["exp1"][5] == "– / –"  # no GroupNorm to hold: said as not measured, never 'nan'
