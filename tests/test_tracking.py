"""Tracked runs: the report_to choices, their errors, and a run that asks for none writes none."""

import importlib.util

import numpy as np
import pytest
from typer.testing import CliRunner

from locodiff.cli import app
from locodiff.errors import ConfigError, LocodiffError
from locodiff.tracking import Tracker, resolved_report_to


def test_auto_means_tensorboard_when_it_is_installed():
    installed = importlib.util.find_spec("tensorboard") is not None
    assert resolved_report_to("auto") == ("tensorboard" if installed else "none")
    assert resolved_report_to("none") == "none"
    with pytest.raises(ConfigError, match="report_to='comet'"):
        resolved_report_to("comet")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_is_one_clear_error(tmp_path):
    with pytest.raises(LocodiffError, match="needs the wandb package"):
        Tracker("wandb", tmp_path)
    res = CliRunner().invoke(app, ["train", "exp1", "-p", "micro", "-s", f"out_dir={tmp_path}", "--report-to", "wandb"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "needs the wandb package" in res.output


def test_none_writes_nothing_and_skips_non_finite_values(tmp_path):
    with Tracker("none", tmp_path) as tracker:
        tracker.log({"a": 1.0}, 0)
        tracker.log_image("grid", np.zeros((4, 4, 3), np.uint8), 0)
    assert not (tmp_path / "tracking").exists()
    with Tracker("tensorboard", tmp_path) as tracker:
        tracker.log({"a": float("nan"), "b": None, "c": 2.0}, 3)
    assert any((tmp_path / "tracking").glob("events.out.tfevents*"))


def test_train_report_to_none_leaves_no_tracking_folder(tmp_path):
    res = CliRunner().invoke(app, ["train", "exp1", "-p", "micro", "-s", f"out_dir={tmp_path}",
                                   "-s", "models.exp1.train.total_images=16", "--report-to", "none"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "models").iterdir()
    assert (run / "metrics.jsonl").is_file() and not (run / "tracking").exists()
