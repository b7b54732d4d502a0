"""Fault injection: kill -9 in the middle of a stage, a full disk, damaged files, files from
another version. After every fault, the same command again must end where an uninterrupted run
ends: the same eval.json, summary.json and features.json of every model, the same report.

The default run kills a small micro study once inside training (2 worker processes); ``-m slow``
kills it inside evaluation too, and inside every stage at several random points.
"""

from __future__ import annotations

import errno
import json
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from locodiff.cli import app
from locodiff.errors import CheckpointError
from locodiff.io import atomic_path, read_jsonl, write_json_atomic
from locodiff.stages.jobs import last_record
from locodiff.stages.study import run_study
from locodiff.stages.config import load_study_config
from locodiff.train.run_folder import read_run_config

# The micro study cut to what exercises every stage: one model and the detector training in two
# worker processes, an intervention on the model, evaluation, locality, report.
STUDY = [sys.executable, "-m", "locodiff.cli", "study", "-p", "micro", "-s", "jobs=2",
         "-s", "models.exp2.enabled=false", "-s", "interventions.exp3_masked.base=exp1",
         "-s", "models.exp3_local.enabled=false", "-s", "models.exp1_combo.enabled=false",
         "-s", "evaluate.counts=[0,1,2]", "-s", "locality.sigmas=[2.0]", "-s", "locality.pixels=2"]
RESULTS = ("eval.json", "summary.json", "features.json")
ONLY_EXP1 = ["models.exp2.enabled=false", "models.exp3_local.enabled=false", "models.exp1_combo.enabled=false",
             "interventions.exp3_masked.enabled=false"]


def study_command(out: Path) -> list[str]:
    return [*STUDY, "-s", f"out_dir={str(out)!r}"]


def results(out: Path) -> dict[str, object]:
    """Every result file of a study by its path below out_dir, as parsed JSON."""
    found = {str(p.relative_to(out)): json.loads(p.read_text()) for name in RESULTS for p in out.rglob(name)}
    report = (out / "report" / "report.md").read_text()
    found["report.md"] = _comparable_report(report, out)
    return found


def _comparable_report(text: str, out: Path) -> str:
    """The report without what legitimately differs between two runs: where they ran and how long."""
    text = text.replace(str(out), "OUT")
    text = re.sub(r"Wall time per stage.*", "", text)
    return re.sub(r"\| \d+ \| \d+ s \| ", "| . | . | ", text)  # img/s and training seconds per model


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(study_command(out), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return results(out)


def kill_inside(out: Path, stage: str, delay_s: float) -> bool:
    """kill -9 the study (its whole process group) ``delay_s`` after ``stage`` begins; whether the
    kill landed inside the stage (``scripts/crash_anywhere.py``)."""
    return _crash_script().kill_inside(study_command(out), stage, delay_s, signal.SIGKILL)


def _crash_script():
    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    if scripts not in sys.path:  # once, however many kills a test makes
        sys.path.insert(0, scripts)
    import crash_anywhere  # noqa: E402 - a script, importable from its folder

    return crash_anywhere


def kill_and_rerun(tmp_path: Path, stage: str, delay_s: float, uninterrupted: dict) -> bool:
    out = tmp_path / f"{stage}-{delay_s:.2f}"
    landed = kill_inside(out, stage, delay_s)
    rerun = subprocess.run(study_command(out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    got = results(out)
    assert got.keys() == uninterrupted.keys(), (landed, sorted(set(got) ^ set(uninterrupted)))
    for key in got:
        assert got[key] == uninterrupted[key], f"{key} differs after a kill -9 {delay_s:.2f} s into {stage}"
    return landed


@pytest.mark.parametrize("stage,delay_s", [("train", 1.5), pytest.param("evaluate", 1.0, marks=pytest.mark.slow)])
def test_kill_9_inside_a_stage_then_rerun_ends_like_an_uninterrupted_run(tmp_path, uninterrupted, stage, delay_s):
    assert kill_and_rerun(tmp_path, stage, delay_s, uninterrupted), "the stage had finished before the kill"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["data", "train", "evaluate", "locality", "report"])
def test_kill_9_at_random_points_of_every_stage(tmp_path, uninterrupted, stage):
    rng = random.Random(f"faults-{stage}")  # random points, the same ones every run
    for delay_s in sorted(rng.uniform(0.0, 4.0) for _ in range(3)):
        kill_and_rerun(tmp_path, stage, delay_s, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_crash_anywhere_ends_in_the_same_results_byte_for_byte(tmp_path, sig):
    """``scripts/crash_anywhere.py`` on the small study with the emergence stage: killed at seeded
    random moments inside every stage, two rounds, relaunched after each kill, then finished;
    every result file equals an uninterrupted study's byte for byte."""
    crash = _crash_script()
    sets = [a for a in STUDY[STUDY.index("study") + 1:] if a not in ("-s", "-p", "micro")]
    sets.append('emergence.models=["exp1"]')
    alone, crashed = (crash.study_command("micro", tmp_path / name, sets) for name in ("alone", "crashed"))
    subprocess.run(alone, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    landed = crash.crash_anywhere(crashed, 2, sig, random.Random(f"crash-{sig.name}"))
    print(f"kills inside each stage ({sig.name}):", dict(landed))
    assert all(landed[stage] >= 1 for stage in ("train", "evaluate", "locality")), landed
    expected = crash.result_files(tmp_path / "alone")
    assert len(expected) > 15 and not crash.differences(expected, crash.result_files(tmp_path / "crashed"))


def test_a_write_that_fails_midway_leaves_no_file(tmp_path):
    target = tmp_path / "result.json"
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_json_atomic(target, {"a": 1})
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert json.loads(target.read_text()) == {"a": 1}  # the finished file survives a failed rewrite


def _disk_fills_up(monkeypatch) -> None:
    """safetensors' own error for a full disk (what it raised on a 1.4 MB tmpfs), on every write."""
    from safetensors import SafetensorError

    from locodiff import io

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(io, "save_file", full)


def _one_full_disk_line(res) -> str:
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert "the disk is full" in errors[0] and "MiB free" in errors[0] and "run the same command again" in errors[0]
    return errors[0]


@pytest.mark.parametrize("verb", ["render", "train"])
def test_a_full_disk_is_one_clear_line_and_the_rerun_resumes(verb, tmp_path, monkeypatch):
    args = ["render", "-p", "micro", "--out", str(tmp_path)] if verb == "render" else \
        ["train", "exp1", "-p", "micro", "-s", f"out_dir={str(tmp_path)!r}"]
    if verb == "train":  # the data are there; the disk fills up at the first checkpoint
        assert CliRunner().invoke(app, ["render", "-p", "micro", "--out", str(tmp_path)]).exit_code == 0
    with monkeypatch.context() as m:
        _disk_fills_up(m)
        line = _one_full_disk_line(CliRunner().invoke(app, args))
    assert (".safetensors" in line) and str(tmp_path) in line  # names what was being written
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp") or p.name.endswith((".tmp", ".partial"))]
    assert not leftovers, leftovers  # no temporary file left behind
    assert verb == "train" or not list(tmp_path.rglob("shard-*.safetensors"))
    assert CliRunner().invoke(app, args).exit_code == 0  # with room again, the same command finishes


def test_a_damaged_eval_line_is_skipped_and_its_count_redone(tmp_path, capsys):
    cfg = load_study_config("micro", sets=[f"out_dir={str(tmp_path)!r}", "evaluate.counts=[1,2]",
                                           "evaluate.per_count=2", *ONLY_EXP1])
    run_study(cfg, only=["data", "train", "evaluate"])
    (log,) = cfg.run_dir("exp1").glob("eval-*/eval.jsonl")
    before = json.loads((log.parent / "eval.json").read_text())
    lines = log.read_text().splitlines()
    lines[0] = lines[0][:20]  # a torn line in the middle of the log (k = 1)
    log.write_text("\n".join(lines) + "\n")
    (log.parent / "eval.json").unlink()
    run_study(cfg, only=["evaluate"])
    assert "line 1 is damaged" in capsys.readouterr().err
    assert json.loads((log.parent / "eval.json").read_text()) == before
    assert len(read_jsonl(log)) == 4
    lines = log.read_text().splitlines()  # damaged again: progress polls read it quietly
    log.write_text("\n".join([lines[0][:20], *lines[1:]]) + "\n")
    assert last_record(log, "k") == read_jsonl(log, quiet=True)[-1]["k"]
    assert capsys.readouterr().err == ""
    read_jsonl(log)
    assert "line 1 is damaged" in capsys.readouterr().err


def test_a_damaged_probe_map_is_probed_again(tmp_path, capsys):
    cfg = load_study_config("micro", sets=[f"out_dir={str(tmp_path)!r}", *ONLY_EXP1])
    run_study(cfg, only=["data", "train", "locality"])
    (maps,) = cfg.run_dir("exp1").glob("locality-*/maps.safetensors")
    summary = json.loads((maps.parent / "summary.json").read_text())
    maps.write_bytes(maps.read_bytes()[:-7])
    run_study(cfg, only=["locality"])
    assert "probing again" in capsys.readouterr().err
    assert (maps.parent / "maps.safetensors.damaged").is_file()  # evidence kept
    assert json.loads((maps.parent / "summary.json").read_text()) == summary


def test_a_damaged_extrapolation_result_is_measured_again(tmp_path, capsys):
    cfg = load_study_config("micro", sets=[f"out_dir={str(tmp_path)!r}", *ONLY_EXP1])
    run_study(cfg, only=["data", "train", "locality"])
    (saved,) = cfg.run_dir("exp1").glob("locality-*/extrapolation.json")
    before = json.loads(saved.read_text())
    saved.write_text(saved.read_text()[:-9])
    run_study(cfg, only=["locality"])
    assert "extrapolation.json is unreadable; measuring it again" in capsys.readouterr().err
    assert json.loads(saved.read_text()) == before  # same seed, same numbers


def test_a_run_folder_from_another_version_is_a_clear_error(tmp_path):
    cfg = load_study_config("micro", sets=[f"out_dir={str(tmp_path)!r}"])
    folder = cfg.run_dir("exp1")
    folder.mkdir(parents=True)
    saved = {"name": "exp1", "seed": 0, "future_option": 1}
    (folder / "config.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="probably made by another version"):
        read_run_config(folder)
    res = CliRunner().invoke(app, ["locality", str(folder), "-p", "micro", "-s", f"out_dir={str(tmp_path)!r}"])
    assert res.exit_code == 2 and "another version" in res.output


def test_an_interrupted_diffusers_probe_leaves_no_half_file_and_reruns(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    import torch
    from safetensors.torch import save_file
    from test_adapters import CROSS_DIM, TINY_SD1, ad_sched, make_unet

    from locodiff.locality import diffusers_probe as probe_module

    make_unet(TINY_SD1).save_pretrained(tmp_path / "model" / "unet")
    ad_sched("epsilon").save_pretrained(tmp_path / "model" / "scheduler")
    save_file({"encoder_hidden_states": torch.randn(1, 4, CROSS_DIM)}, str(tmp_path / "prompt.safetensors"))
    out = tmp_path / "out"
    args = ["probe-diffusers", "--model", str(tmp_path / "model"), "--embeddings", str(tmp_path / "prompt.safetensors"),
            "--latent-size", "8", "--sigmas", "1", "--pixels", "2", "--out", str(out)]
    real = probe_module.save_figure

    def interrupted(*a, **k):  # Ctrl-C after probe.json, while the figure is being written
        raise KeyboardInterrupt

    monkeypatch.setattr(probe_module, "save_figure", interrupted)
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0
    assert [p.name for p in out.iterdir()] == ["probe.json"]  # complete files only, no temporaries
    json.loads((out / "probe.json").read_text())
    monkeypatch.setattr(probe_module, "save_figure", real)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert {"probe.json", "token_concentration.png"} <= {p.name for p in out.iterdir()}


def test_a_model_name_where_a_run_folder_is_asked_is_one_clear_line(tmp_path):
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "exp1"), "-p", "micro"])
    assert res.exit_code == 2 and "is not a folder; expected a training run folder" in res.output
    (tmp_path / "exp1").mkdir()  # a folder, not trained yet
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "exp1"), "-p", "micro"])
    assert res.exit_code == 2 and "has no checkpoint yet" in res.output
