"""The whole study on the micro preset: every stage, caching, resuming, and its CLI verbs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from locodiff.cli import app
from locodiff.errors import ConfigError
from locodiff.study import run_dir, run_study, subject_dirs
from locodiff.study_config import load_study_config


def micro(tmp_path, *sets):
    return load_study_config("micro", sets=[f"out_dir={tmp_path}", "jobs=1", *sets])


def quiet() -> Console:
    return Console(quiet=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete micro study, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("study")
    cfg = micro(out)
    run_study(cfg, console=quiet())
    return cfg


def test_every_stage_writes_its_results(finished):
    cfg = finished
    assert set(subject_dirs(cfg)) == {"exp1", "exp2", "exp3_local", "exp3_masked"}
    for name, folder in subject_dirs(cfg).items():
        (eval_dir,) = folder.glob("eval-*")
        summary = json.loads((eval_dir / "eval.json").read_text())
        assert [r["k"] for r in summary["per_k"]] == list(cfg.evaluate.counts)
        assert all(r["n_images"] == cfg.evaluate.per_count for r in summary["per_k"])
        (probe,) = folder.glob("locality-*")
        loc = json.loads((probe / "summary.json").read_text())
        assert loc["sigmas"] == list(cfg.locality.sigmas)
        assert loc["meta"]["model"] == name
    report = Path(cfg.out_dir) / "report"
    md = (report / "report.md").read_text()
    for heading in ("## Setup", "## Length generalization", "## Locality of the learned score", "## Findings"):
        assert heading in md
    for name in subject_dirs(cfg):
        assert f"| {name} |" in md
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (report / link).is_file(), link
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(re.findall(r"\]\((figures/[^)]+)\)", md))


def test_the_local_model_is_more_local_than_the_attention_model(finished):
    """Even untrained, a score local by construction must score far higher on the index."""
    index = {}
    for name, folder in subject_dirs(finished).items():
        (probe,) = folder.glob("locality-*")
        summaries = json.loads((probe / "summary.json").read_text())["summaries"]
        index[name] = sum(s["index"]["normalised"]["mean"] for s in summaries) / len(summaries)
    assert index["exp3_local"] > index["exp1"] + 0.2
    assert index["exp3_masked"] > index["exp2"] + 0.2


def test_rerun_skips_finished_work(finished):
    cfg = finished
    stamps = {p: p.stat().st_mtime_ns for p in Path(cfg.out_dir).rglob("*")
              if p.is_file() and p.parent.name != "figures" and "report" not in p.parts and p.name != "timings.json"
              and p.name != "study_config.json"}
    result = run_study(cfg, console=quiet())
    assert result.stage_seconds["train"] < 5 and result.stage_seconds["evaluate"] < 5
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert changed == []


def test_changing_one_model_retrains_only_that_model(tmp_path):
    cfg = micro(tmp_path, "evaluate.counts=[1]", "evaluate.per_count=1")
    run_study(cfg, only=["data", "train", "evaluate"], console=quiet())
    before = {n: run_dir(cfg, n, s) for n, s in cfg.enabled_models().items()}
    changed = micro(tmp_path, "evaluate.counts=[1]", "evaluate.per_count=1", "models.exp2.train.lr=1e-3")
    after = {n: run_dir(changed, n, s) for n, s in changed.enabled_models().items()}
    assert after["exp1"] == before["exp1"] and after["exp3_local"] == before["exp3_local"]
    assert after["exp2"] != before["exp2"]
    run_study(changed, only=["train", "evaluate"], console=quiet())
    assert len(list(after["exp2"].glob("eval-*"))) == 1
    assert len(list(before["exp1"].glob("eval-*"))) == 1  # not re-evaluated under a new folder


def test_evaluating_before_training_names_the_fix(tmp_path):
    cfg = micro(tmp_path)
    with pytest.raises(ConfigError, match="not trained yet"):
        run_study(cfg, only=["evaluate"], console=quiet())


def test_report_before_anything_ran_says_so(tmp_path):
    cfg = micro(tmp_path)
    run_study(cfg, only=["report"], console=quiet())
    md = (tmp_path / "report" / "report.md").read_text()
    assert "No model has been evaluated yet" in md and "No model has been probed yet" in md


def test_bad_locality_options_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="locality.counts"):
        micro(tmp_path, "locality.counts=[0]")
    with pytest.raises(ConfigError, match="locality.sigmas"):
        micro(tmp_path, "locality.sigmas=[]")


def test_cli_verbs_on_a_finished_study(finished):
    runner = CliRunner()
    base = ["-p", "micro", "-s", f"out_dir={finished.out_dir}"]
    folder = run_dir(finished, "exp1", finished.models["exp1"])
    res = runner.invoke(app, ["evaluate", str(folder), *base, "--counts", "1", "--per-count", "1"])
    assert res.exit_code == 0, res.output
    assert "| 1 | 1 |" in res.output
    res = runner.invoke(app, ["locality", str(folder), *base])
    assert res.exit_code == 0, res.output
    assert "normalised" in res.output
    res = runner.invoke(app, ["report", *base])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", str(folder.parent / "missing"), *base])
    assert res.exit_code == 2 and "error" in res.output
