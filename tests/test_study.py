"""The whole study on the micro preset: every stage, caching, resuming, and its CLI verbs."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from helpers.browser import Browser, chromium
from helpers.evaluations import evaluation

from locodiff import layout
from locodiff.cli import app
from locodiff.errors import ConfigError, LocodiffError
from locodiff.evaluate.runner import evaluation_dir
from locodiff.stages.subjects import base_run_folder, subject_checkpoint, training_run
from locodiff.locality.result import mean_normalised_index
from locodiff.report.explorer import quantized_map, quantized_pair
from locodiff.locality.extrapolation import ExtrapolationResult
from locodiff.stages.predict import predict
from locodiff.stages.study import run_study
from locodiff.stages.config import PRESETS, load_study_config


ROOT = Path(__file__).resolve().parents[1]


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
    assert set(cfg.subject_dirs()) == {"exp1", "exp2", "exp3_local", "exp3_masked", "exp1_combo"}
    for name, folder in cfg.subject_dirs().items():
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
    for name in cfg.subject_dirs():
        assert f"| {name} |" in md
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (report / link).is_file(), link
    html = (report / "report.html").read_text()
    assert html.count("<img src='data:image/png;base64,") == len(re.findall(r"\]\((figures/[^)]+)\)", md))


def test_the_local_model_is_more_local_than_the_attention_model(finished):
    """Even untrained, a score local by construction must score far higher on the index."""
    index = {}
    for name, folder in finished.subject_dirs().items():
        (probe,) = folder.glob("locality-*")
        summaries = json.loads((probe / "summary.json").read_text())["summaries"]
        index[name] = sum(s["index"]["normalised"]["mean"] for s in summaries) / len(summaries)
    assert index["exp3_local"] > index["exp1"] + 0.2
    assert index["exp3_masked"] > index["exp2"] + 0.2
    # Feature space: a local network's concept directions for different grid cells barely overlap.
    cos = {}
    for name in ("exp1", "exp3_local"):
        (probe,) = finished.subject_dirs()[name].glob("locality-*")
        cos[name] = json.loads((probe / "features.json").read_text())["offdiag_abs_mean"]
    assert cos["exp3_local"] < 0.2 < cos["exp1"]


def test_held_out_combinations_run_through_every_stage(finished):
    folder = finished.subject_dirs()["exp1_combo"]
    assert len(json.loads((folder / "config.json").read_text())["holdout_combos"]) == 6
    (eval_dir,) = folder.glob("eval-*")
    lines = [json.loads(line) for line in (eval_dir / "eval.jsonl").read_text().splitlines()]
    assert all(r["requested_shapes"] is not None for r in lines if r["k"])
    assert sum(sum(r["requested_heldout"]) for r in lines if r["k"]) > 0  # test scenes ask for held-out pairs
    (probe,) = folder.glob("locality-*")
    feats = json.loads((probe / "features.json").read_text())
    assert "attributes" in feats and feats["attributes"]["interaction_heldout_mean"] is not None
    assert feats["conditional_locality"]["conditioners"] > 0
    md = (Path(finished.out_dir) / "report" / "report.md").read_text()
    assert "**Held-out combinations.**" in md and "| exp1_combo | 6 |" in md
    assert "**exp1_combo** never saw 6 (shape, colour) pairs" in md
    assert "## Large text-to-image models" not in md  # nothing of the kind was measured: no empty section


def test_rerun_skips_finished_work(finished):
    cfg = finished
    stamps = {p: p.stat().st_mtime_ns for p in Path(cfg.out_dir).rglob("*")
              if p.is_file() and p.parent.name != "figures" and "report" not in p.parts and p.name != "timings.json"
              and p.name not in ("study_config.json", ".lock")}  # a lock names its last holder
    result = run_study(cfg, console=quiet())
    assert result.stage_seconds["train"] < 5 and result.stage_seconds["evaluate"] < 5
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert changed == []


def test_changing_one_model_retrains_only_that_model(tmp_path):
    cfg = micro(tmp_path, "evaluate.counts=[1]", "evaluate.per_count=1")
    run_study(cfg, only=["data", "train", "evaluate"], console=quiet())
    before = {n: cfg.run_dir(n) for n in cfg.enabled_models()}
    changed = micro(tmp_path, "evaluate.counts=[1]", "evaluate.per_count=1", "models.exp2.train.lr=1e-3")
    after = {n: changed.run_dir(n) for n in changed.enabled_models()}
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


def test_config_strings_come_out_inert_in_the_html_report(tmp_path):
    cfg = micro(tmp_path, "models.exp1.description='<script>alert(1)</script> & <b>bold</b>'")
    run_study(cfg, only=["report"], console=quiet())
    html = (tmp_path / "report" / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "<script>alert" not in html and "<b>bold" not in html


def test_bad_locality_options_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="locality.counts"):
        micro(tmp_path, "locality.counts=[0]")
    with pytest.raises(ConfigError, match="locality.sigmas"):
        micro(tmp_path, "locality.sigmas=[]")


def test_cli_verbs_on_a_finished_study(finished):
    runner = CliRunner()
    base = ["-p", "micro", "-s", f"out_dir={finished.out_dir}"]
    folder = finished.run_dir("exp1")
    res = runner.invoke(app, ["evaluate", str(folder), *base, "--counts", "1", "--per-count", "1"])
    assert res.exit_code == 0, res.output
    assert "| 1 | 1 |" in res.output
    res = runner.invoke(app, ["train", "exp1", *base])  # finished: said so, with the saved numbers
    assert res.exit_code == 0 and "exp1: already trained (64 images, final loss 0." in res.output, res.output
    assert "nan" not in res.output
    res = runner.invoke(app, ["locality", str(folder), *base])
    assert res.exit_code == 0, res.output
    assert "normalised" in res.output and "where generalization is asked" in res.output and "efficacy" in res.output
    exp2 = finished.run_dir("exp2")
    res = runner.invoke(app, ["intervene", str(exp2), *base, "--radius", "2", "--no-locality",
                              "-s", "evaluate.counts=[2]", "-s", "evaluate.per_count=1"])
    assert res.exit_code == 0, res.output
    (made,) = exp2.parent.glob("exp2-masked-*")
    assert (made / "intervention.json").is_file() and list(made.glob("eval-*/eval.json"))
    res = runner.invoke(app, ["report", str(finished.out_dir)])
    assert res.exit_code == 0, res.output
    md = (Path(finished.out_dir) / "report" / "report.md").read_text()
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| exp")]
    assert rows[: len(finished.models)] == list(finished.models)  # the preset's order, not sorted
    res = runner.invoke(app, ["report", str(folder)])  # not a study folder
    assert res.exit_code == 2 and "study_config.json" in res.output
    res = runner.invoke(app, ["evaluate", str(folder.parent / "missing"), *base])
    assert res.exit_code == 2 and "error" in res.output


def test_the_intervene_verb_and_the_study_write_one_folder(finished):
    """One intervention, one folder: ``locodiff intervene`` on the study's base run with the
    study's options reuses the study's results instead of making a second folder."""
    spec = finished.interventions["exp3_masked"]
    study_folder = finished.intervention_dir("exp3_masked")
    before = sorted(p.name for p in study_folder.iterdir())
    res = CliRunner().invoke(app, ["intervene", str(finished.run_dir(spec.base)), "--name", "exp3_masked",
                                   "--radius", str(spec.radius_px), "--softness", str(spec.softness_px),
                                   "--no-locality", "-p", "micro", "-s", f"out_dir={finished.out_dir}"])
    assert res.exit_code == 0, res.output
    assert f"results in {study_folder}" in res.output
    assert sorted(p.name for p in study_folder.iterdir()) == before  # its evaluation was found, not redone


def test_a_moved_run_tree_still_evaluates_its_intervention(finished, tmp_path):
    """Stored paths are relative: a copy of the whole tree finds its own base run, and
    ``locodiff evaluate`` on the intervention there finds its evaluation (nothing redone)."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(finished.out_dir, moved)
    folder = moved / finished.intervention_dir("exp3_masked").relative_to(finished.out_dir)
    base = moved / finished.run_dir(finished.interventions["exp3_masked"].base).relative_to(finished.out_dir)
    assert training_run(folder) == base.resolve()
    before = sorted(p.name for p in folder.rglob("*"))
    res = CliRunner().invoke(app, ["evaluate", str(folder), "-p", "micro", "-s", f"out_dir={moved}"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_more_counts_later_extend_the_same_evaluation(finished, tmp_path):
    """An evaluation's folder does not depend on the counts asked: asking for more evaluates just
    those, beside the finished ones, and eval.json then covers all of them."""
    tree = tmp_path / "tree"
    shutil.copytree(finished.out_dir, tree)
    run = tree / finished.run_dir("exp1").relative_to(finished.out_dir)
    ckpt = subject_checkpoint(run).name
    folder = layout.eval_dir(run, finished.evaluate, ckpt)
    before = (folder / "eval.jsonl").read_text()
    res = CliRunner().invoke(app, ["evaluate", str(run), "-p", "micro", "-s", f"out_dir={tree}", "--counts", "0-5"])
    assert res.exit_code == 0, res.output
    after = (folder / "eval.jsonl").read_text()
    assert after.startswith(before)  # the finished counts were kept, not sampled again
    assert {json.loads(line)["k"] for line in after[len(before):].splitlines()} == {3, 5}
    assert [r["k"] for r in json.loads((folder / "eval.json").read_text())["per_k"]] == [0, 1, 2, 3, 4, 5]


def test_an_evaluation_folder_named_by_an_older_version_is_adopted(finished, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(finished.out_dir, tree)
    run = tree / finished.run_dir("exp1").relative_to(finished.out_dir)
    ckpt = subject_checkpoint(run).name
    current, legacy = layout.eval_dir(run, finished.evaluate, ckpt), layout.legacy_eval_dir(run, finished.evaluate, ckpt)
    assert current != legacy
    current.rename(legacy)
    assert evaluation_dir(run, finished.evaluate, ckpt) == current and current.is_dir() and not legacy.exists()


def test_an_absolute_base_run_from_an_older_version_follows_a_moved_tree(tmp_path):
    (tmp_path / "models" / "exp2-abc").mkdir(parents=True)
    intervention = tmp_path / "models" / "exp3-def"
    assert base_run_folder(intervention, "/gone/runs/models/exp2-abc") == tmp_path / "models" / "exp2-abc"
    assert base_run_folder(intervention, "../exp2-abc") == (tmp_path / "models" / "exp2-abc").resolve()


def test_a_saved_study_config_reloads_alone(finished, tmp_path):
    """The study_config.json a study saves is complete: loading it puts no preset underneath, so a
    micro study does not gain the quick preset's models (the default --preset)."""
    saved = load_study_config("quick", Path(finished.out_dir) / "study_config.json")
    assert saved == finished
    res = CliRunner().invoke(app, ["study", "-c", str(Path(finished.out_dir) / "study_config.json"), "--dry-run"])
    assert res.exit_code == 0 and json.loads(res.stdout)["models"].keys() == finished.models.keys()
    assert "predicted cost on this machine" in res.stderr  # beside the config, not in it


def test_train_help_names_where_model_names_come_from():
    res = CliRunner().invoke(app, ["train", "--help"])
    text = " ".join(res.output.replace("│", " ").split())  # the help box's borders split lines
    assert res.exit_code == 0 and "a models.NAME table of the preset or --config file" in text


def test_errors_are_one_line_and_tracebacks_only_with_debug(tmp_path):
    args = ["train", "nope", "-p", "micro", "-s", f"out_dir={tmp_path}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "no model named 'nope'" in res.output
    res = CliRunner().invoke(app, ["--debug", *args])
    assert res.exit_code == 1 and isinstance(res.exception, LocodiffError)


@pytest.mark.skipif(chromium() is None, reason="no chromium on this machine (.ci/run installs Debian's package)")
def test_report_renders_in_a_real_browser(finished, tmp_path):
    """Headless Chromium loads report.html: every embedded figure decodes and no section is empty."""
    import subprocess

    html_path = Path(finished.out_dir) / "report" / "report.html"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(cmd + ["--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    n_images = int(re.search(r'data-images="(\d+)"', body.group(1)).group(1))
    n_ok = int(re.search(r'data-images-ok="(\d+)"', body.group(1)).group(1))
    assert n_images >= 8 and n_ok == n_images
    sections = re.split(r"<h2 id=\"[^\"]+\">", dom.split("</h1>", 1)[1])[1:]
    assert len(sections) >= 5
    for sec in sections:
        title, content = sec.split("</h2>", 1)
        assert re.search(r"<(p|table|figure|pre)\b", content), f"section {title!r} is empty"
    ids = re.findall(r'<h2 id="([^"]+)"', dom)  # every section has an anchor, and the contents link them all
    assert len(set(ids)) == len(sections) and re.findall(r'<a href="#([^"]+)"', dom)[:len(ids)] == ids
    assert re.search(r"<details><summary>show \(\d+ lines\)</summary><pre>\{", dom)  # the config starts folded
    cells = re.findall(r"<td[^>]*>(.*?)</td>", dom)
    assert cells and not any("**" in c for c in cells)  # verdicts in bold, not in asterisks
    assert re.search(r"<td class=\"?t\"?><b>(not )?supported</b></td>", dom)
    shot = tmp_path / "shot.png"
    subprocess.run(cmd + [f"--screenshot={shot}", "--window-size=1000,1400", html_path.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_a_stopped_training_resumes_from_its_checkpoint(tmp_path):
    """A study stopped mid-train (here: a shorter schedule) continues where it stopped."""
    short = micro(tmp_path, "models.exp1.train.total_images=32")
    run_study(short, only=["data", "train"], console=quiet())
    full = micro(tmp_path)
    folder = full.run_dir("exp1")
    assert folder == short.run_dir("exp1")  # schedule is not identity
    steps_before = len((folder / "metrics.jsonl").read_text().splitlines())
    run_study(full, only=["train"], console=quiet())
    log = (folder / "log.txt").read_text()
    assert "resum" in log.lower()
    images = [json.loads(line)["images_seen"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert images[-1] == 64 and len(images) > steps_before and images == sorted(images)


def _children(pid: int) -> list[int]:
    kids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            kids.append(int(status.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to find worker processes")
def test_sigterm_stops_the_worker_processes_too(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "locodiff.cli", "study", "-p", "micro", "-s", f"out_dir={str(tmp_path)!r}",
           "-s", "jobs=2", "-s", "train.total_images=1000000", "--only", "data,train"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob("models/*/metrics.jsonl")):
            time.sleep(0.5)
        assert list(tmp_path.glob("models/*/metrics.jsonl")), "training never started"
        workers = [p for p in _children(proc.pid) if "multiprocessing" in _cmdline(p)]
        assert workers
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        assert rc == 130, proc.stderr.read()
        time.sleep(1.0)
        assert [p for p in workers if "multiprocessing" in _cmdline(p)] == []
    finally:  # never leave a million-image training behind, whatever failed above
        proc.kill()
        for p in workers:
            if "multiprocessing" in _cmdline(p):
                os.kill(p, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_a_probe_missing_its_feature_results_is_completed(finished):
    """An interrupted locality probe (summary written, features not yet) is finished on the next run."""
    folders = finished.subject_dirs()
    (masked,) = folders["exp3_masked"].glob("locality-*")
    assert "skipped" in json.loads((masked / "features.json").read_text())  # no .net: a note, not a gap
    (probe,) = folders["exp1"].glob("locality-*")
    before = (probe / "features.json").read_text()
    (probe / "features.json").unlink()
    run_study(finished, only=["locality"], console=quiet())
    assert (probe / "features.json").read_text() == before  # recomputed, same seeds, same numbers


def test_progress_line_for_logs_names_each_running_job():
    from locodiff.stages.jobs import Job, Watch, progress_line

    jobs = {"exp1": Job(print, (), total=200, poll=lambda: 50), "exp2": Job(print, (), total=10, poll=lambda: 10),
            "queued": Job(print, (), total=4, poll=lambda: 0), "broken": Job(print, (), total=4, poll=lambda: int("x"))}
    watch = Watch(began={"exp1": (time.monotonic(), 50), "broken": (time.monotonic(), 0)})
    line = progress_line(jobs, {"exp1", "broken", "queued"}, watch)
    assert "exp1 50/200 (25%)" in line and "broken 0/4 (0%)" in line and "exp2" not in line
    assert "] 1/4 done, 2 started, 1 queued; " in line  # how far the stage is as a whole
    assert "ETA" not in line  # nothing has moved yet
    # 30 units in the 60 s since it began: 0.5/s, 300 s for the 150 left; the detail follows
    jobs["exp1"].detail = lambda: "loss 0.0412"
    watch = Watch(began={"exp1": (time.monotonic() - 60, 20)})
    line = progress_line(jobs, {"exp1", "queued"}, watch)
    assert "exp1 50/200 (25%, 0.5/s, ETA 5m00s, loss 0.0412)" in line
    # a job resumed from an earlier session (units done) that has not begun to run is queued
    line = progress_line(jobs, {"exp1", "queued"}, Watch())
    assert "] 2/4 done, 0 started, 2 queued; " in line and "exp1" not in line


def test_the_stage_eta_counts_queued_jobs_at_the_moving_jobs_pace():
    """exp1 moves at 0.5/s: its 180 units from the start take 360 s for a cost of 36, 10 s per unit
    of cost; the queued jobs of cost 12 and 30 then take 120 s and 300 s. On two workers: exp1's
    300 s left, then the 300 s job beside it and the 120 s job after the shorter: 420 s."""
    from locodiff.stages.jobs import Job, Watch, progress_line

    jobs = {"exp1": Job(print, (), total=200, poll=lambda: 50, cost=36.0),
            "small": Job(print, (), total=8, poll=lambda: 0, cost=12.0),
            "large": Job(print, (), total=8, poll=lambda: 0, cost=30.0)}
    watch = Watch(began={"exp1": (time.monotonic() - 60, 20)})
    assert "stage ETA ~7m00s" in progress_line(jobs, set(jobs), watch, workers=2)
    assert "stage ETA ~12m00s" in progress_line(jobs, set(jobs), watch, workers=1)
    jobs["large"].cost = 0.0  # a job of unknown cost: no stage ETA rather than a wrong one
    assert "stage ETA" not in progress_line(jobs, set(jobs), watch, workers=2)


def test_each_stage_starts_by_saying_where_the_study_stands():
    from locodiff.stages.study import outlook

    stages, predicted = ["data", "train", "evaluate", "locality", "report"], {"data": 15, "train": 1800, "evaluate": 180}
    assert outlook("train", stages, predicted, 20.0) == (
        "  study: 20s so far; predicted ~30m00s for train, ~3m00s for the stages after it (locality, report not predicted)")
    assert outlook("report", stages, predicted, 4000.0) == "  study: 1h06m so far; report not predicted"


def test_claims_are_judged_from_recall_and_name_their_numbers(tmp_path):
    from locodiff.report.facts import ModelFacts
    from locodiff.report.summary import claims_table
    from locodiff.stages.config import load_study_config

    cfg = load_study_config("micro")

    def facts(name, role, policy, placed_k1, low, mean):
        # recall measured at k = 4 and 10 only: lowest `low`, mean (the normalised area) `mean`
        rows = {1: {"placed": placed_k1, "recall": placed_k1}, 4: {"recall": low}, 10: {"recall": 2 * mean - low}}
        return ModelFacts(name, role, "cross_attention", policy, "", 1, tmp_path, evaluation=evaluation(rows))

    table = claims_table(cfg, [facts("a", "exp1", "all", 1.0, 0.85, 0.9), facts("b", "exp2", "one", 0.9, 0.2, 0.3),
                               facts("c", "exp3", "one", 0.9, 0.7, 0.8), facts("d", "exp2", "one", 0.1, 0.0, 0.1)])
    rows = {row[0].rsplit(" — ", 1)[1]: row[1:] for row in table.rows}
    assert rows["a"][:2] == ["**supported**", "lowest recall at k = 4–10: 0.85 (mean 0.90)"]
    assert rows["b"][:2] == ["**supported**", "mean recall at k = 4–10: 0.30; placed at k = 1: 0.90"]
    assert rows["c"][0] == "**not supported**"
    # a model that never learned its label cannot support "Exp 2 fails"
    assert rows["d"][0] == "**not supported**" and "placed at k = 1: 0.10" in rows["d"][1]
    assert [row[0].split(" — ")[0][:5] for row in table.rows] == ["Exp 1", "Exp 2", "Exp 2", "Exp 3"]


# full's dry run times each of its ~10 networks' training step and a miniature of its probe (about a
# minute on two busy cores): slow; quick's covers the same path
@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p == "full" else p for p in PRESETS])
def test_every_preset_is_a_valid_study(preset):
    res = CliRunner().invoke(app, ["study", "--preset", preset, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["models"]


def test_the_gpu_preset_is_quick_at_twice_the_pixels():
    quick, gpu = load_study_config("quick"), load_study_config("gpu")
    assert gpu.data.resolution == 2 * quick.data.resolution
    assert set(gpu.models) == set(quick.models)
    for name in ("exp1", "exp2"):  # the same pair
        pair = (gpu.models[name].model, quick.models[name].model)
        assert pair[0].norm == pair[1].norm == "pixel" and pair[0].cross_attention == pair[1].cross_attention
    assert gpu.locality.radius_px == 2 * quick.locality.radius_px
    ex, ex_gpu = quick.locality.extrapolation, gpu.locality.extrapolation
    assert (ex_gpu.window_px, ex_gpu.far_px) == (2 * ex.window_px, 2 * ex.far_px)
    assert gpu.evaluate.tolerance_px == 2 * quick.evaluate.tolerance_px and gpu.evaluate.per_count >= 128
    assert gpu.models["exp3_local"].model.local.radius == 2 * quick.models["exp3_local"].model.local.radius
    assert gpu.interventions["exp3_masked"].radius_px == 2 * quick.interventions["exp3_masked"].radius_px
    assert all(s.train.precision == "bf16" for s in gpu.models.values())


def test_results_over_training_from_every_kept_checkpoint(finished):
    """``--checkpoints all`` measures every kept checkpoint (each in its own folder, keyed by the
    checkpoint) and prints one row per checkpoint, oldest first."""
    runner = CliRunner()
    folder = finished.run_dir("exp2")
    base = [str(folder), "-p", "micro", "-s", f"out_dir={finished.out_dir}", "--checkpoints", "all"]
    res = runner.invoke(app, ["locality", *base])
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines() if line[:1].isdigit()]
    assert [r[0] for r in rows] == ["32", "64"]  # images seen at each kept checkpoint
    assert len({r[-1] for r in rows}) == 2 and all((folder / r[-1] / "summary.json").is_file() for r in rows)
    res = runner.invoke(app, ["evaluate", *base, "--counts", "1", "--per-count", "1"])
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines() if line[:1].isdigit()]
    assert [r[0] for r in rows] == ["32", "64"] and len({r[-1] for r in rows}) == 2
    res = runner.invoke(app, ["locality", *base[:-1], "some"])
    assert res.exit_code == 2 and "expected latest or all" in res.output
    masked = finished.intervention_dir("exp3_masked")  # an intervention is measured like a run
    res = runner.invoke(app, ["locality", str(masked), "-p", "micro", "-s", f"out_dir={finished.out_dir}"])
    assert res.exit_code == 0 and f"results in {masked}" in res.output, res.output


def test_seeds_and_emergence_are_trained_cached_and_reported(tmp_path):
    from locodiff.stages.config import EmergenceOptions
    from locodiff.checkpoints import list_checkpoints, read_state

    cfg = micro(tmp_path, "seeds=[0, 1]", 'emergence.models=["exp2"]', "emergence.counts=[1, 2]",
                "emergence.per_count=2", "models.exp1.enabled=false", "models.exp1_combo.enabled=false",
                "models.exp3_local.seeds=[1]")
    run_study(cfg, console=quiet())
    assert set(cfg.seeded_subject_dirs()) == {"exp2@s0", "exp2@s1", "exp3_masked@s0", "exp3_masked@s1", "exp3_local@s1"}
    folders = [cfg.per_seed()[s].run_dir("exp2") for s in (0, 1)]
    assert folders[0] != folders[1]
    weights = [(list_checkpoints(f)[-1] / "model.safetensors").read_bytes() for f in folders]
    assert weights[0] != weights[1]  # the seed reaches the weights
    ev = cfg.emergence.eval_config(cfg.evaluate)
    for folder in folders:
        checkpoints = list_checkpoints(folder)
        assert [read_state(c)["images_seen"] for c in checkpoints] == [32, 64]
        for ckpt in checkpoints:
            e = json.loads((layout.eval_dir(folder, ev, ckpt.name) / "eval.json").read_text())
            # the last checkpoint's folder is the study's own evaluation (same samples per k), extended
            expected = [1, 2] if ckpt != checkpoints[-1] else sorted({1, 2} | set(cfg.evaluate.counts))
            assert [r["k"] for r in e["per_k"]] == expected
            probe = layout.probe_dir(folder, cfg.emergence.locality_options(cfg.locality), ckpt.name)
            assert (probe / "summary.json").is_file()
            assert sorted(json.loads((probe / "extrapolation.json").read_text())["per_k"]) == ["1", "2"]
    stamps = {p: p.stat().st_mtime_ns for f in folders for p in f.rglob("*.safetensors")}
    run_study(cfg, console=quiet())  # everything cached: nothing retrained or re-measured
    assert stamps == {p: p.stat().st_mtime_ns for f in folders for p in f.rglob("*.safetensors")}
    md = (Path(cfg.out_dir) / "report" / "report.md").read_text()
    assert "## Seeds" in md and re.search(r"\| exp2 \| 2 \| ", md) and re.search(r"\| exp3_local \| 1 \| ", md)
    assert "## Locality over training" in md and "**exp2@s0**" in md and "**exp2@s1**" in md
    assert (Path(cfg.out_dir) / "report" / "figures" / "emergence.png").is_file()
    with pytest.raises(ConfigError, match="emergence.models"):
        micro(tmp_path, 'emergence.models=["nope"]')
    with pytest.raises(ConfigError, match="distinct"):
        micro(tmp_path, "seeds=[1, 1]")
    with pytest.raises(ConfigError, match=r"models.exp2.seeds=\[2\]"):
        micro(tmp_path, "seeds=[0, 1]", "models.exp2.seeds=[2]")
    with pytest.raises(ConfigError, match="per_count"):
        EmergenceOptions(per_count=0)


def test_a_model_limited_to_some_seeds_takes_its_interventions_with_it(tmp_path):
    from locodiff.stages.plan import seeded_models

    cfg = micro(tmp_path, "seeds=[0, 1]", "models.exp2.seeds=[1]", "models.exp1_combo.seeds=[0]")
    assert set(seeded_models(cfg)) == {"exp1@s0", "exp1@s1", "exp2@s1", "exp3_local@s0", "exp3_local@s1",
                                       "exp1_combo@s0"}
    assert {k for k in cfg.seeded_subject_dirs() if k.startswith("exp3_masked")} == {"exp3_masked@s1"}


def training_costs(cfg) -> dict[str, float]:
    """The train stage's plan: the cost of every job not done yet."""
    from locodiff.stages.plan import plan_stage

    return {j.key: j.cost for j in plan_stage(cfg, "train").todo()}


def test_training_costs_are_measured_step_times_times_images_and_penalty(tmp_path):
    """Each job's cost is its images left x a training image's seconds measured on this machine x
    the locality penalty's extra passes: exp3_penalty has exp2's network and images, so it costs
    exactly its penalty factor more; a half-trained run costs what it has left."""

    cfg = load_study_config("quick", ROOT / "examples" / "trained_in.toml", [f"out_dir={tmp_path}", "seeds=[0, 1]"])
    costs = training_costs(cfg)
    factor = cfg.models["exp3_penalty"].train.locality.cost_factor()
    assert factor > 1 and costs["exp3_penalty@s0"] == pytest.approx(factor * costs["exp2@s0"], rel=1e-12)
    assert costs["exp2@s0"] == pytest.approx(costs["exp2@s1"], rel=1e-12)  # measured once per network
    assert costs["detector"] > 0


def test_a_partly_trained_model_costs_what_it_has_left(finished):
    """Extending a finished run (total_images is not part of its identity) costs the images added."""
    from locodiff.models.registry import training_seconds_per_image

    assert training_costs(finished) == {}
    cfg = micro(finished.out_dir, "models.exp1.train.total_images=256")
    costs = training_costs(cfg)
    assert set(costs) == {"exp1"}  # the rest are trained, and so is the detector
    assert costs["exp1"] == pytest.approx((256 - 64) * training_seconds_per_image(cfg.models["exp1"].model, 16))


def test_the_train_stage_hands_its_jobs_their_measured_costs(tmp_path, monkeypatch):
    """With two jobs at a time the train stage gives every model and the detector its measured
    cost, which run_jobs starts longest first (tests/test_jobs.py)."""
    import locodiff.stages.study as study

    seen = {}
    monkeypatch.setattr(study, "run_jobs", lambda jobs, workers, console: seen.update(jobs) or {})
    cfg = micro(tmp_path, "jobs=2")
    study.stage_train(cfg, quiet(), with_detector=True)
    costs = training_costs(cfg)
    assert set(seen) == set(costs) == {"exp1", "exp2", "exp3_local", "exp1_combo", "detector"}
    assert all(seen[k].cost == costs[k] > 0 for k in seen)


@pytest.mark.parametrize("preset", ["micro", "full", "paper"])
def test_every_preset_can_be_scheduled(preset, tmp_path):
    """Every model of a preset (the caption and attribute models included) and the detector get a
    measured cost, so the train stage can order its jobs (the paper preset's networks are timed on
    a batch small enough for a laptop: plan.TIMED_FLOPS)."""
    from locodiff.stages.plan import seeded_models

    costs = training_costs(load_study_config(preset, sets=[f"out_dir={tmp_path}"]))
    assert sorted(costs) == sorted([*seeded_models(load_study_config(preset)), "detector"])
    assert all(c > 0 for c in costs.values())


def _tensorboard(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_the_trackers_show_what_the_result_files_hold(finished):
    """TensorBoard (the default when installed) gets training's, evaluation's and the probe's
    numbers at the images seen; read back, they equal metrics.jsonl, eval.json and summary.json."""
    folder = finished.subject_dirs()["exp1"]
    acc = _tensorboard(folder / "tracking")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    losses = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert losses.keys() == {r["images_seen"] for r in records}
    assert all(losses[r["images_seen"]] == pytest.approx(r["loss"], rel=1e-6) for r in records)
    assert any(k.startswith("train/loss sigma") for k in acc.Tags()["scalars"])
    images_seen = records[-1]["images_seen"]
    checkpoint = subject_checkpoint(folder).name  # (other tests evaluate earlier checkpoints too)
    for row in json.loads((evaluation_dir(folder, finished.evaluate, checkpoint) / "eval.json").read_text())["per_k"]:
        if row["recall"] is not None:
            at = {e.step: e.value for e in acc.Scalars(f"eval/recall k={row['k']:02d}")}  # (and earlier checkpoints)
            assert at[images_seen] == pytest.approx(row["recall"], rel=1e-6)
    probe = layout.probe_dir(folder, finished.locality, checkpoint)
    at = {e.step: e.value for e in acc.Scalars("locality/normalised index")}
    assert at[images_seen] == pytest.approx(mean_normalised_index(json.loads((probe / "summary.json").read_text())), rel=1e-6)
    extrapolation = ExtrapolationResult.load(probe)  # the headline: efficacy per k where generalization is asked
    logged = [k for k in extrapolation.per_k if f"locality/efficacy k={k:02d}" in acc.Tags()["scalars"]]
    assert logged and all({e.step: e.value for e in acc.Scalars(f"locality/efficacy k={k:02d}")}[images_seen]
                          == pytest.approx(extrapolation.band("efficacy", k).mean, rel=1e-6) for k in logged)
    grid = acc.Images("samples/grid (rows: 1, 2, 3, 5, 8 objects)")[-1]
    assert Image.open(io.BytesIO(grid.encoded_image_string)).size == Image.open(max((folder / "samples").glob("grid-*.png"))).size


READ_MAP = """(() => {
  const c = document.querySelector('canvas.explorer-map[data-model="exp1"][data-sigma="0"]');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  return {kind: c.dataset.kind, index: +c.dataset.index, red: Array.from(d.filter((_, i) => i % 4 === 0))};
})()"""


READ_EFFECT = """(() => {
  const c = document.querySelector('canvas.explorer-effect[data-model="exp1"][data-which="WHICH"]');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  return {k: c.dataset.k, index: +c.dataset.index, red: Array.from(d.filter((_, i) => i % 4 === 0))};
})()"""


@pytest.mark.skipif(chromium() is None, reason="no chromium on this machine (.ci/run installs Debian's package)")
def test_the_explorer_shows_the_saved_jacobian_of_what_is_clicked(finished):
    """In headless Chromium: the explorer opens on a conditioner's map; a real click on a probed
    pixel (then on a conditioner) changes the map shown to exactly the saved Jacobian map; at the
    largest k, a conditioner's effect alone and among the others are the probe's saved maps;
    hovering a sample names what was found; every image decodes and the console stays free of
    errors."""
    html_path = Path(finished.out_dir) / "report" / "report.html"
    folder = finished.subject_dirs()["exp1"]
    probe = layout.probe_dir(folder, finished.locality, subject_checkpoint(folder).name)
    arrays = load_file(str(probe / "maps.safetensors"))
    pixel_maps, _ = quantized_map(arrays["pixel_energy"])  # [S, B, M, H, W]: sigma 0, scene 0 below
    cond_maps, _ = quantized_map(arrays["cond_sensitivity"][:, :, arrays["mask"][0]])
    height, width = pixel_maps.shape[-2:]
    m = next(i for i in range(1, pixel_maps.shape[2]) if not np.array_equal(pixel_maps[0, 0, i], pixel_maps[0, 0, 0]))
    with Browser() as browser:
        browser.open(html_path.as_uri(), "document.getElementById('explorer')?.dataset.ready === '1' && "
                     "[...document.images].every(e => e.complete)")
        assert browser.evaluate("[...document.images].every(e => e.naturalWidth > 0)")
        opened = browser.evaluate(READ_MAP)  # it opens on an object: conditioner 1's map, not a background pixel's
        assert (opened["kind"], opened["index"]) == ("cond", 0)
        assert np.array_equal(np.reshape(opened["red"], (height, width)), cond_maps[0, 0, 0])
        browser.click('#explorer svg [data-pixel="0"]')
        before = browser.evaluate(READ_MAP)
        assert (before["kind"], before["index"]) == ("pixel", 0)
        assert np.array_equal(np.reshape(before["red"], (height, width)), pixel_maps[0, 0, 0])
        browser.click(f'#explorer svg [data-pixel="{m}"]')
        after = browser.evaluate(READ_MAP)
        assert (after["kind"], after["index"]) == ("pixel", m) and after["red"] != before["red"]
        assert np.array_equal(np.reshape(after["red"], (height, width)), pixel_maps[0, 0, m])
        shown_dc = browser.evaluate("document.querySelector('canvas.explorer-map[data-model=\"exp1\"][data-sigma=\"0\"]')"
                                    ".parentElement.querySelector('.ex-dc').textContent")
        row, col = arrays["pixels"][0, m]
        saved = arrays["cond_sensitivity"][0, 0][arrays["mask"][0]]  # [N, H, W]
        values = [float(v) for v in shown_dc.removeprefix("d/dc: ").split(" | ")]
        assert np.allclose(values, saved[:, row, col], rtol=0.06, atol=saved.max() / 255)  # bytes, 2 digits shown
        browser.click('#explorer svg [data-conditioner="0"]')
        shown = browser.evaluate(READ_MAP)
        assert (shown["kind"], shown["index"]) == ("cond", 0)
        assert np.array_equal(np.reshape(shown["red"], (height, width)), cond_maps[0, 0, 0])
        browser.hover("#explorer .ex-sample")
        assert browser.evaluate("document.getElementById('explorer-hover').textContent").startswith("sample 0:")
        effects = load_file(str(probe / "extrapolation_maps.safetensors"))
        k = max(int(key[1:3]) for key in effects if key.endswith(".effects"))
        pair, _ = quantized_pair(effects[f"k{k:02d}.effects"][0])  # [alone | among, k, H, W]
        browser.click('#explorer svg [data-effect-conditioner="1"]')
        for which, row in (("alone", 0), ("among", 1)):
            shown = browser.evaluate(READ_EFFECT.replace("WHICH", which))
            assert (shown["k"], shown["index"]) == (str(k), 1)
            assert np.array_equal(np.reshape(shown["red"], pair[row, 1].shape), pair[row, 1])
        browser.screenshot(Path(finished.out_dir) / "explorer.png", "#explorer")
        assert browser.errors() == []


def test_a_finished_study_predicts_no_more_work(finished):
    p = predict(finished)
    assert p.seconds["data"] == p.seconds["train"] == p.seconds["evaluate"] == p.seconds["locality"] == 0
    timings = json.loads((Path(finished.out_dir) / "timings.json").read_text())
    if "busy_core_seconds" in timings:  # Linux: how busy the cores were in each stage
        assert set(timings["busy_core_seconds"]) <= set(timings["stage_seconds"]) and timings["cores"] >= 1


def test_an_interrupted_stage_keeps_its_time(tmp_path, monkeypatch):
    """A long study is stopped and resumed: the time a stage ran before the interruption is in
    timings.json, and the resumed run adds to it."""
    import locodiff.stages.study as study

    def slow_then_interrupted(*args, **kwargs):
        time.sleep(0.3)
        raise KeyboardInterrupt

    cfg = micro(tmp_path)
    monkeypatch.setattr(study, "stage_data", slow_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, only=["data"], console=quiet())
    first = json.loads((tmp_path / "timings.json").read_text())["stage_seconds"]["data"]
    assert first >= 0.3
    # a resumed study's "so far" counts the earlier run; another config's time is not this one's
    assert study.recorded_seconds(tmp_path, cfg) == pytest.approx(first)
    assert study.recorded_seconds(tmp_path, micro(tmp_path, "seed=1")) == 0.0
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, only=["data"], console=quiet())
    assert json.loads((tmp_path / "timings.json").read_text())["stage_seconds"]["data"] >= first + 0.3


def test_a_stage_records_its_time_while_it_runs(tmp_path):
    """A study killed outright (kill -9: no chance to write on the way out) keeps all but the last
    beat of a stage's time: timings.json grows while the stage runs."""
    from locodiff.hardware import machine
    from locodiff.stages.study import StageClock

    path = tmp_path / "timings.json"
    with StageClock(tmp_path, "train", "abc", every_s=0.05) as clock:
        time.sleep(0.4)
        midway = json.loads(path.read_text())["stage_seconds"]["train"]
    assert 0.2 <= midway <= 0.4 and clock.seconds >= 0.4
    assert json.loads(path.read_text())["stage_seconds"]["train"] == pytest.approx(clock.seconds, abs=0.05)
    assert json.loads(path.read_text())["machines"] == [machine()]  # named beside the times in the report
