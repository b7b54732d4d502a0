"""Interventions in a study: a trained model wrapped so that its score is made local, stored as
a folder beside the training runs so that evaluation and the locality probe treat both alike.

    <out_dir>/models/<name>-<hash>/intervention.json    the spec and the base run's folder (relative)

``load_subject(folder)`` loads either kind: a training run's EMA denoiser, or the intervention
built on its base run's latest EMA weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import from_dict, to_dict
from ..errors import LocodiffError
from ..io import write_json_atomic
from ..layout import INTERVENTION, RUN_CONFIG
from ..run_record import read_model_record, write_model_record
from ..checkpoints import latest_checkpoint, list_checkpoints
from ..train.run import model_record
from ..train.run_folder import load_denoiser, read_run_config
from ..intervene.config import InterventionSpec
from ..intervene.masked import masked_composition

INTERVENTION_FILE = INTERVENTION


def write_intervention(folder: Path, spec: InterventionSpec, base_run: Path) -> None:
    """The spec and the base run's folder, stored relative to ``folder`` so that a run tree can be
    moved or copied whole."""
    folder.mkdir(parents=True, exist_ok=True)
    base = os.path.relpath(Path(base_run).resolve(), Path(folder).resolve())
    record = {"spec": to_dict(spec), "base_run": Path(base).as_posix()}
    path = folder / INTERVENTION_FILE
    if not path.exists() or json.loads(path.read_text()) != record:
        write_json_atomic(path, record)


def read_intervention(folder: Path) -> tuple[InterventionSpec, Path]:
    try:
        record = json.loads((Path(folder) / INTERVENTION_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LocodiffError(f"{folder}/{INTERVENTION_FILE} is missing or unreadable: {e}") from None
    return from_dict(InterventionSpec, record["spec"]), base_run_folder(Path(folder), record["base_run"])


def base_run_folder(folder: Path, stored: str) -> Path:
    """The base run an intervention names: relative to the intervention's folder; an absolute path
    (as older versions wrote it) is used if it still exists, else its namesake beside ``folder``
    (the tree was moved)."""
    path = Path(stored)
    if not path.is_absolute():
        return (folder / path).resolve()
    sibling = folder.parent / path.name
    return path if path.exists() or not sibling.exists() else sibling


def training_run(folder: Path) -> Path:
    """The training run a subject's weights come from (for an intervention: its base run)."""
    return read_intervention(folder)[1] if (folder / INTERVENTION_FILE).is_file() else folder


def subject_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint a subject's results belong to (for an intervention: its base run's)."""
    run = training_run(Path(folder))
    return latest_checkpoint(run) if run.exists() else None


def subject_checkpoints(folder: str | Path) -> list[Path]:
    """Every checkpoint kept for a subject, oldest first (the newest one verified)."""
    run = training_run(Path(folder))
    return list_checkpoints(run) if run.exists() and latest_checkpoint(run) is not None else []


def load_subject(folder: str | Path, checkpoint: Path | None = None):
    """``(denoiser, run_config)`` of a training run or of an intervention folder, at ``checkpoint``
    (a folder of the run's ``checkpoints/``; default: the latest)."""
    folder = Path(folder)
    if not (folder / INTERVENTION_FILE).is_file():
        return load_denoiser(folder, checkpoint=checkpoint)
    spec, base_run = read_intervention(folder)
    denoiser, run_cfg = load_denoiser(base_run, checkpoint=checkpoint)
    return masked_composition(denoiser, spec.radius_px, "null", spec.softness_px), run_cfg


def record_models(cfg) -> None:
    """Write ``model.json`` (``run_record``) into every trained run of the study ``cfg`` that lacks
    it (runs trained before training wrote one), so that the report reads it there."""
    for seed_cfg in cfg.per_seed().values():
        for name in seed_cfg.enabled_models():
            run = seed_cfg.run_dir(name)
            if (run / RUN_CONFIG).is_file() and read_model_record(run) is None:
                write_model_record(run, model_record(read_run_config(run)))
