"""Where every result lives, and what names its folder: one module for the whole study layout.

A folder is named by the hash of the config that determines its content (``identity_dict``:
options marked ``NOT_IDENTITY`` in their dataclass do not count), so re-running finds finished
work, an interrupted stage resumes, and changing one model's config redoes only what depends on
it. The study, the report, every CLI verb and the tests take their paths from here:

    <out_dir>/data/<data hash>/                   rendered train/test splits (scenes.dataset)
    <out_dir>/models/<name>-<run hash>/           training run: config.json, checkpoints, metrics
    <out_dir>/models/<name>-<intervention hash>/  post hoc intervention on a run (intervention.json)
        eval-<eval hash>/                         evaluation per k (evaluate)
        locality-<probe hash>/                    locality probe (locality)
    <out_dir>/detectors/heatmap-<detector hash>/  the learned detector (evaluate.heatmap)
    <out_dir>/detectors/ceiling-<hash>.json       the detector's accuracy on ground truth
    <out_dir>/crowding/crowding-<hash>.json       crowding of training and test windows
    <out_dir>/report/                             report.md, report.html and figures

This module imports no stage: it reads configs by their fields, so any module may use it.
"""

from __future__ import annotations

import dataclasses

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import config_hash, identity_dict, to_dict

if TYPE_CHECKING:  # types only: importing the stages here would make every stage import them all
    from .evaluate.config import EvalConfig
    from .intervene.config import InterventionSpec
    from .locality.config import LocalityOptions
    from .train.config import RunConfig

DETECTOR_VERSION = 2  # bump when the detector's network, targets or decoding change meaning


# ----- file names inside those folders: written by one stage, read by others -------------------

RUN_CONFIG = "config.json"  # a training run's RunConfig (run_folder)
TRAIN_METRICS = "metrics.jsonl"  # its losses and rate, one line per logging interval
MODEL_RECORD = "model.json"  # what its network is: parameter count, what it reads (run_record)
CHECKPOINT_STATE = "state.json"  # a checkpoint's step, images seen and checksums
INTERVENTION = "intervention.json"  # an intervention's spec and its base run (intervention_folder)
EVAL_SUMMARY = "eval.json"  # an evaluation's per-k metrics and summary (eval_dir)
EVAL_RECORDS = "eval.jsonl"  # its per-image records
PROBE_SUMMARY = "summary.json"  # a locality probe's summary (probe_dir)
EXTRAPOLATION = "extrapolation.json"  # the probe at the evaluation's counts
EXTRAPOLATION_MAPS = "extrapolation_maps.safetensors"  # its effect maps of a scene per k (the explorer's)
FEATURES = "features.json"  # the feature-space results (or why there are none)
TEXT_PROBE = "text_probe.json"  # a caption model's three SDXL statements
CONTACT_SHEET = "contact_sheet.png"  # a data set's first images (dataset_root)
TIMINGS = "timings.json"  # the study's wall time per stage (out_dir)
TRACKING_DIR = "tracking"  # a run folder's tracker files (TensorBoard events, ...)


# ----- identities -------------------------------------------------------------------------------

def run_identity(run: RunConfig) -> str:
    """Hash of what determines a trained model's weights (its name and schedule do not)."""
    return config_hash(identity_dict(replace(run, model=run.model.resolved())))


def intervention_identity(spec: InterventionSpec, base: RunConfig) -> str:
    """An intervention is its spec applied to one base run: the same pair, the same folder."""
    return config_hash({"base": run_identity(base), "spec": identity_dict(spec)})


# Evaluation options that extend a finished evaluation rather than change it: asking for more
# counts later evaluates just those, in the same folder (each k is sampled from its own stream).
EVAL_EXTENSIBLE = ("counts", "grid_per_count")


def eval_identity(config: EvalConfig, checkpoint: str) -> str:
    options = {k: v for k, v in to_dict(config).items() if k not in EVAL_EXTENSIBLE}
    key: dict[str, Any] = {"config": options, "checkpoint": checkpoint}
    if config.detector == "heatmap":  # a retrained detector (new version) scores afresh, elsewhere
        key["detector_version"] = DETECTOR_VERSION
    return config_hash(key)


def legacy_eval_identity(config: EvalConfig, checkpoint: str) -> str:
    """The identity evaluation folders had before the counts left it (locodiff before 2026-12-06);
    such a folder is renamed to ``eval_identity`` when found (``evaluate.runner.evaluation_dir``)."""
    key: dict[str, Any] = {"config": to_dict(config), "checkpoint": checkpoint}
    if config.detector == "heatmap":
        key["detector_version"] = DETECTOR_VERSION
    return config_hash(key)


# ----- folders of one subject (a training run or an intervention) -------------------------------

def models_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "models"


def run_folder(models: str | Path, run: RunConfig) -> Path:
    """A training run's folder inside a models folder (``models_dir``)."""
    return Path(models) / f"{run.name}-{run_identity(run)}"


def intervention_folder(models: str | Path, name: str, spec: InterventionSpec, base: RunConfig) -> Path:
    """An intervention's folder beside its base run (the study and ``locodiff intervene`` alike)."""
    return Path(models) / f"{name}-{intervention_identity(spec, base)}"


def eval_dir(subject: str | Path, config: EvalConfig, checkpoint: str) -> Path:
    """Where the evaluation of ``subject``'s ``checkpoint`` under ``config`` is stored."""
    return Path(subject) / f"eval-{eval_identity(config, checkpoint)}"


def legacy_eval_dir(subject: str | Path, config: EvalConfig, checkpoint: str) -> Path:
    return Path(subject) / f"eval-{legacy_eval_identity(config, checkpoint)}"


def probe_dir(subject: str | Path, options: LocalityOptions, checkpoint: str) -> Path:
    """Where the locality probe of ``subject``'s ``checkpoint`` with ``options`` is stored."""
    return Path(subject) / f"locality-{config_hash({'options': to_dict(options), 'checkpoint': checkpoint})}"


# ----- shared folders ------------------------------------------------------------------------

def dataset_root(data: Any, out_dir: str | Path) -> Path:
    """The folder of a data config's rendered splits (``data`` is a ``scenes.DataConfig``)."""
    return Path(out_dir) / "data" / data.cache_key()


def detector_dir(cache: str | Path, key: str) -> Path:
    """A learned detector's folder; ``key`` is ``evaluate.heatmap.detector_key`` (it renders)."""
    return Path(cache) / f"heatmap-{key}"


def data_dict(data) -> dict:
    """``to_dict`` of a data config without the options added later while they hold their default
    (``IDENTITY_UNLESS_DEFAULT``), so that files keyed by the whole data config keep their names."""
    out = to_dict(data)
    for f in dataclasses.fields(data):
        if f.metadata.get("identity") == "unless_default" and getattr(data, f.name) == f.default:
            out.pop(f.name)
    return out


def study_config_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "study_config.json"
