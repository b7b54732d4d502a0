"""Every option is checked where it enters: a walk over the study's config dataclasses tries a
NaN, a negative and a wrong-kind value on each option, through ``--set`` as a user would, and
expects one ``ConfigError`` naming the option."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import get_args, get_origin, get_type_hints

import pytest
from typer.testing import CliRunner

from locodiff.cli import app
from locodiff.config import ConfigError
from locodiff.stages.config import ModelSpec, StudyConfig, load_study_config

# The options that may be negative, each declared SIGNED where it is defined.
SIGNED_OPTIONS = {"data.camera.azimuth_deg", "data.camera.target_x", "data.camera.target_y", "train.p_mean",
                  "models.exp1.train.p_mean", "report.claim_rho", "report.weak_rho",
                  "models.exp1.model.cross_attention.sigmoid_bias"}


def _leaf_types(tp) -> list:
    if get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in get_args(tp) if a is not type(None)]
    return [tp]


def options(cls, prefix: str = "") -> list[tuple[str, object, dataclasses.Field]]:
    """(dotted option, its type, its field) for every scalar option under ``cls``."""
    found = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        for tp in _leaf_types(hints[f.name]):
            if dataclasses.is_dataclass(tp):
                found += options(tp, f"{prefix}{f.name}.")
            elif tp in (int, float, bool, str) or get_origin(tp) is typing.Literal:
                found.append((prefix + f.name, tp, f))
    return found


OPTIONS = options(StudyConfig) + options(ModelSpec, "models.exp1.")
NUMERIC = [(name, tp) for name, tp, _ in OPTIONS if tp in (int, float)]


def refused(option: str, value: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_study_config("micro", sets=[f"{option}={value}"])
    return str(e.value)


def test_the_walk_reaches_every_section():
    sections = {name.split(".")[0] for name, _, _ in OPTIONS}
    assert {"data", "train", "evaluate", "locality", "emergence", "report", "models"} <= sections
    assert len(NUMERIC) > 100


@pytest.mark.parametrize("option,tp", NUMERIC, ids=[n for n, _ in NUMERIC])
def test_numbers_refuse_nan_negative_and_words(option, tp):
    if tp is float:
        assert option.split(".")[-1] in refused(option, "nan")
        assert option.split(".")[-1] in refused(option, "inf")
    assert option.split(".")[-1] in refused(option, '"many"')
    if option not in SIGNED_OPTIONS:
        assert option.split(".")[-1] in refused(option, "-3")


def test_the_signed_options_are_exactly_those_declared():
    declared = {name for name, tp, f in OPTIONS if f.metadata.get("signed")}
    assert declared == SIGNED_OPTIONS


@pytest.mark.parametrize("option", [n for n, tp, _ in OPTIONS if tp is bool])
def test_switches_refuse_words(option):
    assert option.split(".")[-1] in refused(option, '"yes"')


@pytest.mark.parametrize("option", [n for n, tp, _ in OPTIONS if tp is str or get_origin(tp) is typing.Literal])
def test_words_refuse_numbers(option):
    assert option.split(".")[-1] in refused(option, "3")


@pytest.mark.parametrize("args, fragment", [
    (["train", "exp1", "--preset", "micro", "--set", "train.lr=nan"], "train.lr: expected a finite number"),
    (["sample", "RUN", "--counts", "0-2", "--per-count", "-3"], "--per-count"),
    (["sample", "RUN", "--guidance", "nan"], "--guidance"),
    (["study", "--preset", "micro", "--dry-run", "-c", "FOLDER"], "is a folder"),
])
def test_the_command_line_refuses_bad_values_in_one_line(tmp_path, args, fragment):
    args = [str(tmp_path) if a in ("RUN", "FOLDER") else a for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output
