"""Several processes on one study: one writer per folder (``locodiff.locks``), the others wait and
use the finished work; nothing is done twice and the results are those of one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from locodiff.checkpoints import latest_checkpoint
from locodiff.locks import FolderBusy, NO_WAIT, folder_lock
from locodiff.io import read_jsonl
from locodiff.stages.config import load_study_config

CLI = [sys.executable, "-m", "locodiff.cli"]
MICRO = ["-p", "micro"]


def launch(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def finish(*procs: subprocess.Popen) -> list[str]:
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(outputs)
    return outputs


def weights(run: Path) -> dict:
    return load_file(str(latest_checkpoint(run) / "ema.safetensors"))


def test_a_folder_has_one_writer_and_a_second_says_who_holds_it(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("locodiff.locks.notice", seen.append)
    with folder_lock(tmp_path / "run", "run x is being trained"):
        monkeypatch.setenv(NO_WAIT, "1")
        with pytest.raises(FolderBusy, match=rf"run x is being trained by pid {os.getpid()} since .*not waiting"):
            with folder_lock(tmp_path / "run", "run x is being trained"):
                pass
    with folder_lock(tmp_path / "run", "run x is being trained"):  # released, however the holder ended
        pass


def test_two_trainings_of_one_model_train_it_once(tmp_path):
    """The second waits for the first, then finds the run trained: the same weights as one process
    alone, and every logged image once."""
    solo, shared = tmp_path / "solo", tmp_path / "shared"
    finish(launch("train", "exp1", *MICRO, "-s", f"out_dir={str(solo)!r}"))
    outputs = finish(*(launch("train", "exp1", *MICRO, "-s", f"out_dir={str(shared)!r}") for _ in range(2)))
    run = load_study_config("micro", sets=[f"out_dir={str(shared)!r}"]).run_dir("exp1")
    solo_run = load_study_config("micro", sets=[f"out_dir={str(solo)!r}"]).run_dir("exp1")
    assert any("already trained" in out for out in outputs)
    seen = [r["images_seen"] for r in read_jsonl(run / "metrics.jsonl")]
    assert seen == sorted(set(seen))  # no image trained twice
    a, b = weights(run), weights(solo_run)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_two_models_of_one_study_train_side_by_side(tmp_path):
    """Two terminals on one study: they share its data folder (rendered once) and both finish."""
    out = f"out_dir={str(tmp_path)!r}"
    outputs = finish(launch("train", "exp1", *MICRO, "-s", out), launch("train", "exp2", *MICRO, "-s", out))
    assert all("final loss" in o for o in outputs)


def test_no_wait_stops_with_one_line(tmp_path):
    out = f"out_dir={str(tmp_path)!r}"
    finish(launch("render", *MICRO, "--out", str(tmp_path)))
    run = load_study_config("micro", sets=[out]).run_dir("exp1")
    with folder_lock(run, f"run {run.name} is being trained"):
        proc = launch("--no-wait", "train", "exp1", *MICRO, "-s", out)
        output = proc.communicate(timeout=300)[0]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in output, output
    assert f"is being trained by pid {os.getpid()}" in errors[0] and "--no-wait" in errors[0]


@pytest.mark.slow
def test_two_studies_on_one_out_dir_give_one_studys_results(tmp_path):
    """Launched together on one out_dir, two micro studies both finish, and every result file is
    byte for byte what one study alone writes."""
    alone, shared = tmp_path / "alone", tmp_path / "shared"
    finish(launch("study", *MICRO, "-s", f"out_dir={str(alone)!r}"))
    finish(*(launch("study", *MICRO, "-s", f"out_dir={str(shared)!r}") for _ in range(2)))
    names = ("eval.json", "eval.jsonl", "summary.json", "extrapolation.json", "features.json", "ema.safetensors")
    files = sorted(p.relative_to(alone) for p in alone.rglob("*") if p.name in names)
    assert len(files) > 20
    assert all((alone / f).read_bytes() == (shared / f).read_bytes() for f in files)
