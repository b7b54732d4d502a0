"""The report's training sections judged from numbers: trained-in verdicts, emergence order,
intervals over seeds and the run-clustered rank correlation."""

from __future__ import annotations

import math

import pytest

from helpers.evaluations import evaluation

from locodiff.report.config import ReportConfig
from locodiff.report.facts import ModelFacts
from locodiff.report.claims import clustered_spearman
from locodiff.report.training import emergence_line, mean_interval, trained_in_form, trained_in_statement
from locodiff.stages.config import load_study_config

PENALISED = ["models.exp3_local.train.locality.weight=1.0", 'models.exp3_local.train.locality.form="composition"']


def facts(tmp_path, name, role, placed_k1, recall_last_two):
    rows = {1: {"placed": placed_k1, "recall": placed_k1}} | {k: {"recall": r} for k, r in zip((2, 4), recall_last_two)}
    return ModelFacts(name, role, "x", "one", "", 1, tmp_path, evaluation=evaluation(rows))


@pytest.mark.parametrize("form_recall, expected", [((0.95, 0.9), "**supported**"), ((0.7, 0.6), "**partly supported**"),
                                                   ((0.3, 0.2), "**not supported**")])
def test_the_trained_in_verdict_follows_recall_at_the_largest_counts(tmp_path, form_recall, expected):
    cfg = load_study_config("micro", sets=PENALISED)  # micro's counts: 0, 1, 2, 4
    assert "masked composition" in trained_in_form(cfg.models["exp3_local"])
    line = trained_in_statement(cfg, [facts(tmp_path, "exp2", "exp2", 0.9, (0.5, 0.4)),
                                    facts(tmp_path, "exp3_local", "exp3", 0.9, form_recall),
                                    facts(tmp_path, "exp3_masked", "exp3", 0.9, (0.85, 0.85))])
    assert line.startswith(f"Locality trained in: {expected}")
    assert "bar: 0.85" in line  # the post hoc intervention sets the bar above 0.8


def test_a_form_that_never_learned_its_label_is_no_support(tmp_path):
    cfg = load_study_config("micro", sets=PENALISED)
    line = trained_in_statement(cfg, [facts(tmp_path, "exp3_local", "exp3", 0.1, (0.95, 0.95))])
    assert "**not supported**" in line and "no training-time form learned its label" in line
    assert trained_in_statement(load_study_config("micro"), []) is None  # no form, no verdict


def test_emergence_says_whether_locality_came_before_extrapolation():
    points = [{"images_seen": n * 1000, "index": i, "presence": p, "recall": {8: r}}
              for n, i, p, r in ((10, 0.5, 0.3, 0.1), (20, 0.9, 0.85, 0.4), (30, 0.95, 0.9, 0.85))]
    line = emergence_line("m", points, 8, ReportConfig())
    assert "presence index ≥ 0.8 at 20k images" in line and "recall at k = 8 ≥ 0.8 at 30k images" in line
    assert line.endswith("came before extrapolation.")
    late = [dict(p, presence=0.1) for p in points]
    assert "presence index ≥ 0.8 never" in emergence_line("m", late, 8, ReportConfig())


def test_intervals_over_seeds_and_a_run_clustered_correlation():
    m, lo, hi = mean_interval([0.8, 0.9, 1.0])
    assert m == pytest.approx(0.9) and lo < 0.8 and hi > 1.0  # t with 2 degrees of freedom is wide
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5) and mean_interval([]) is None
    runs = {f"r{i}": [(i / 10, i / 10, i / 10 + 0.01 * j) for j in range(3)] for i in range(6)}
    rho, lo, hi, n = clustered_spearman(runs, 0, seed=0)
    assert n == 18 and rho > 0.9 and lo > 0.5 and hi <= 1.0
    assert clustered_spearman({"a": runs["r0"], "b": runs["r1"]}, 0, seed=0) is None  # too few runs
    assert not math.isnan(clustered_spearman(runs, 1, seed=0)[0])
