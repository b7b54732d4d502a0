"""Tracked runs: what training and evaluation record, shown in the trackers researchers watch.

``metrics.jsonl``, ``eval.json`` and ``summary.json`` stay the source of truth; a tracker is a view
of the same numbers through accelerate's tracker classes. ``report_to`` (``train.report_to``,
``--report-to``): "auto" (TensorBoard when it is installed, else none), "tensorboard", "mlflow",
"wandb" (offline only: nothing here reaches a service) or "none". Each run folder gets one
``tracking/`` folder that its training, evaluations and probes all write to, the step being the
images the model had seen, so ``tensorboard --logdir OUT/models`` shows every model of a study.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker

from .errors import ConfigError, LocodiffError
from .layout import TRACKING_DIR

REPORT_TO = ("auto", "tensorboard", "mlflow", "wandb", "none")
_NEEDS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_report_to(report_to: str) -> str:
    if report_to not in REPORT_TO:
        raise ConfigError(f"report_to={report_to!r}: expected one of {', '.join(REPORT_TO)}")
    return report_to


def resolved_report_to(report_to: str) -> str:
    """"auto" becomes "tensorboard" when the package is installed and "none" otherwise; a tracker
    asked for by name must be installed (one clear error naming the package)."""
    check_report_to(report_to)
    if report_to == "auto":
        return "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    if report_to != "none" and importlib.util.find_spec(_NEEDS[report_to]) is None:
        raise LocodiffError(f"--report-to {report_to} needs the {_NEEDS[report_to]} package: pip install {_NEEDS[report_to]}")
    return report_to


def _accelerate_tracker(kind: str, folder: Path) -> GeneralTracker:
    if kind == "tensorboard":
        return TensorBoardTracker(TRACKING_DIR, folder)
    if kind == "mlflow":
        return MLflowTracker(experiment_name=folder.name, logging_dir=(folder / TRACKING_DIR / "mlruns").as_uri())
    os.environ["WANDB_MODE"] = "offline"  # never online: runs stay on this machine
    return WandBTracker(folder.name, dir=str(folder / TRACKING_DIR), mode="offline")


class Tracker:
    """Scalars and images for one run folder, to the trackers ``report_to`` names (maybe none).
    Under a launcher, open it on every process after accelerate's state exists (``PartialState()``):
    only the main process writes."""

    def __init__(self, report_to: str, folder: str | Path) -> None:
        self.kind, self.folder = resolved_report_to(report_to), Path(folder)
        self.trackers: list[GeneralTracker] | None = None  # started at the first value: no empty files

    def _started(self) -> list[GeneralTracker]:
        if self.trackers is None:
            self.trackers = []
            if self.kind != "none":
                tracker = _accelerate_tracker(self.kind, self.folder)
                tracker.start()  # on the main process only (accelerate's own check)
                self.trackers.append(tracker)
        return self.trackers

    def log(self, values: dict[str, float | None], step: int) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}
        for tracker in self._started() if values else []:
            tracker.log(values, step=step)

    def log_image(self, name: str, image: np.ndarray, step: int) -> None:
        """One [H, W, 3] uint8 image (a sample grid)."""
        for tracker in self._started():
            if tracker.name == "tensorboard":
                tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")
            elif hasattr(tracker, "log_images"):
                tracker.log_images({name: [image]}, step=step)

    def close(self) -> None:
        for tracker in self.trackers or []:
            tracker.finish()
        self.trackers = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
