"""The whole study from one config: data -> models -> evaluation -> locality -> report.

Each stage is a thin function from the config to saved results in the folders ``layout`` names,
so re-running skips finished work and an interrupted study resumes where it stopped. Models,
evaluations and probes run ``jobs`` at a time (``jobs.run_jobs``).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from rich.console import Console

from .. import layout
from ..checkpoints import latest_checkpoint
from ..conditioning import Conditioning
from ..config import config_hash, to_dict
from ..errors import ConfigError
from ..evaluate.crowding import study_crowding
from ..evaluate.runner import build_detector
from ..evaluate.validation import ValidationSpec, validate_detector
from ..hardware import busy_core_seconds, cores, machine
from ..io import atomic_path, write_json_atomic
from ..locks import folder_lock
from ..progress import LOG_EVERY_S, duration
from ..report import write_report
from ..scenes.dataset import SceneDataset, build_dataset
from ..scenes.figures import data_contact_sheet
from .config import StudyConfig
from .jobs import run_jobs
from .plan import STAGES, detector_job, plan_stage, seeded_models, study_device
from .subjects import record_models, write_intervention


# ----- stages ---------------------------------------------------------------------------------

def stage_data(cfg: StudyConfig, console: Console) -> Path:
    root = build_dataset(cfg.data, cfg.out_dir, device=study_device(cfg), progress=True)
    sheet = root / layout.CONTACT_SHEET
    if not sheet.exists():
        with atomic_path(sheet) as tmp:
            data_contact_sheet(cfg.data, root=root).save(tmp, format="PNG")
    console.print(f"  data: {root}")
    return root


def stage_train(cfg: StudyConfig, console: Console, with_detector: bool = False) -> None:
    """Train every enabled model not yet finished, ``cfg.jobs`` at a time and longest first, with
    live progress. With ``with_detector`` the evaluation's learned detector trains alongside when
    not cached."""
    plan = plan_stage(cfg, "train", timed=cfg.jobs > 1)  # one at a time, the order changes nothing
    for j in plan.jobs:
        if j.done and j.key != "detector":
            console.print(f"  {j.key}: {j.note}")
    jobs = {key: job for key, job in plan.runnable().items() if with_detector or key != "detector"}
    for name, info in run_jobs(jobs, cfg.jobs, console).items():
        if name != "detector":
            console.print(f"  {name}: {info['images_seen']} images in {info['wall_s']:.0f} s "
                          f"({info['images_per_s']:.0f} img/s), final loss {info['final_loss']:.4f}")


def run_planned(cfg: StudyConfig, stage: str, console: Console) -> None:
    """Run a stage's unfinished jobs from its plan, saying which were done already."""
    plan = plan_stage(cfg, stage, timed=cfg.jobs > 1)
    for j in plan.jobs:
        if j.done:
            console.print(f"  {j.key}: {j.note}")
    run_jobs(plan.runnable(), cfg.jobs, console)


def stage_evaluate(cfg: StudyConfig, console: Console) -> None:
    """Length generalization of every trained model (cached per checkpoint and eval config)."""
    detector = detector_job(cfg, torch.get_num_threads(), timed=False)
    if not detector.done:
        run_jobs({"detector": detector.job}, 1, console)
    prepare_subjects(cfg)
    write_detector_ceiling(cfg)
    write_crowding(cfg)
    run_planned(cfg, "evaluate", console)


def write_detector_ceiling(cfg: StudyConfig) -> Path:
    """The detector's accuracy on ground-truth renders of the test scenes: the ceiling that every
    model score must be read against (cached)."""
    path = cfg.ceiling_path()
    if not path.is_file():
        ev = cfg.evaluate
        detector = build_detector(cfg.data, ev, cfg.data.resolution, cfg.detector_cache())
        table = validate_detector(detector, cfg.data, ValidationSpec.ceiling(ev, cfg.data.resolution))
        write_json_atomic(path, table)
    return path


def write_crowding(cfg: StudyConfig) -> Path:
    """How crowded training and test windows are (``evaluate.crowding``), cached; seconds to compute."""
    path = cfg.crowding_path()
    if not path.is_file():
        train = SceneDataset(layout.dataset_root(cfg.data, cfg.out_dir), "train").tensors
        tables = study_crowding(cfg.data, Conditioning(train["centers"], train["mask"]), cfg.evaluate,
                                cfg.crowding_radii())
        write_json_atomic(path, {"resolution": cfg.data.resolution, "tables": [t.to_dict() for t in tables]})
    return path


def stage_locality(cfg: StudyConfig, console: Console) -> None:
    """Jacobian locality probe of every trained model (cached per checkpoint and options)."""
    prepare_subjects(cfg)
    run_planned(cfg, "locality", console)


def stage_emergence(cfg: StudyConfig, console: Console) -> None:
    """Recall at a few k and the locality probe at every kept checkpoint of ``emergence.models``
    (cached per checkpoint like the final ones): how both grew over training."""
    plan = plan_stage(cfg, "emergence", timed=cfg.jobs > 1)
    for key, (_, folder) in cfg.emergence_runs().items():
        kept = [j for j in plan.jobs if j.folder == folder]
        console.print(f"  {key}: {len(kept)} checkpoints kept, {sum(not j.done for j in kept)} to measure")
    run_jobs(plan.runnable(), cfg.jobs, console)


def report_study(cfg: StudyConfig) -> Path:
    """The report from the saved results (runs trained by an older locodiff get their
    ``model.json`` first)."""
    record_models(cfg)
    with folder_lock(cfg.report_dir(), "the report is being written"):
        return write_report(cfg, cfg.report_dir())


def stage_report(cfg: StudyConfig, console: Console) -> Path:
    path = report_study(cfg)
    console.print(f"  report: {path}")
    return path


def prepare_subjects(cfg: StudyConfig) -> dict[str, tuple[int, Path]]:
    """Check that every model is trained (under every seed) and write each intervention's folder
    (it only names its base run); returns everything the study evaluates as
    ``StudyConfig.seeded_subjects`` does: ``seeded_name`` -> (seed, folder)."""
    for key, (sub, name) in seeded_models(cfg).items():
        folder = sub.run_dir(name)
        if latest_checkpoint(folder) is None:
            raise ConfigError(f"model {key!r} is not trained yet ({folder}); run the train stage first")
    for sub in cfg.per_seed().values():
        for name, spec in sub.enabled_interventions().items():
            write_intervention(sub.intervention_dir(name), spec, sub.run_dir(spec.base))
    return cfg.seeded_subjects()


# ----- the driver -----------------------------------------------------------------------------

def core_use(busy: float | None, seconds: float) -> str:
    """How many of the machine's cores a stage kept busy (measured for the whole machine)."""
    if busy is None or seconds < 1:
        return ""
    return f"; cores busy {busy / seconds:.2f} of {cores()} ({100 * busy / (seconds * cores()):.0f}%)"


def record_timing(out: Path, stage: str, seconds: float, cfg_hash: str, busy: float | None = None) -> None:
    """Add a stage's wall time (and the machine's busy core-seconds meanwhile) to ``timings.json``:
    per stage, the time spent on the current config over every run (a resumed run adds its part, a
    cached stage adds ~0)."""
    path = out / layout.TIMINGS
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        data = {}
    if data.get("config_hash") != cfg_hash:
        data = {"config_hash": cfg_hash, "stage_seconds": {}}
    data["stage_seconds"][stage] = round(data["stage_seconds"].get(stage, 0.0) + seconds, 2)
    machines = data.setdefault("machines", [])  # every machine a part of the study ran on
    if machine() not in machines:
        machines.append(machine())
    if busy is not None:
        spent = data.setdefault("busy_core_seconds", {})
        spent[stage] = round(spent.get(stage, 0.0) + busy, 2)
        data["cores"] = cores()
    write_json_atomic(path, data)


def recorded_seconds(out: Path, cfg: StudyConfig) -> float:
    """Wall time ``timings.json`` holds for ``cfg``: every stage, every run of it so far."""
    try:
        data = json.loads((out / layout.TIMINGS).read_text())
    except (OSError, json.JSONDecodeError):
        return 0.0
    return sum(data.get("stage_seconds", {}).values()) if data.get("config_hash") == config_hash(cfg) else 0.0


class StageClock:
    """Times a stage into ``timings.json`` as it runs: every ``every_s`` the time since the last
    record is added (with the busy core-seconds), and the rest when the stage ends however it ends,
    so a study killed outright (kill -9, a machine taken away) loses at most ``every_s`` of it."""

    def __init__(self, out: Path, stage: str, cfg_hash: str, every_s: float = LOG_EVERY_S) -> None:
        self.out, self.stage, self.cfg_hash, self.every_s = out, stage, cfg_hash, every_s
        self.seconds, self.busy = 0.0, None
        self._stop = threading.Event()

    def __enter__(self) -> "StageClock":
        self._last, self._busy_then = time.perf_counter(), busy_core_seconds()
        self._beat = threading.Thread(target=self._beats, daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._beat.join()
        self._record()

    def _beats(self) -> None:
        while not self._stop.wait(self.every_s):
            self._record()

    def _record(self) -> None:  # from the beat thread, then once more after it has stopped
        now, busy = time.perf_counter(), busy_core_seconds()
        used = None if busy is None or self._busy_then is None else busy - self._busy_then
        record_timing(self.out, self.stage, now - self._last, self.cfg_hash, used)
        self.seconds += now - self._last
        self.busy = None if used is None else (self.busy or 0.0) + used
        self._last, self._busy_then = now, busy


@dataclass
class StudyResult:
    out_dir: Path
    stage_seconds: dict[str, float]
    runs: dict[str, Path]


def outlook(stage: str, stages: Sequence[str], predicted: dict[str, float], elapsed: float) -> str:
    """``  study: 12m04s so far; predicted ~31m00s for train, ~3m10s for the stages after it (locality,
    emergence, report not predicted)``: where a long study stands, said as each stage starts."""
    after = list(stages[list(stages).index(stage) + 1:])
    line = f"  study: {duration(elapsed)} so far; " + (
        f"predicted ~{duration(predicted[stage])} for {stage}" if stage in predicted else f"{stage} not predicted")
    if after:
        unknown = [s for s in after if s not in predicted]
        line += f", ~{duration(sum(predicted.get(s, 0.0) for s in after))} for the stages after it"
        line += f" ({', '.join(unknown)} not predicted)" if unknown else ""
    return line


def run_study(
    cfg: StudyConfig, only: Sequence[str] | None = None, console: Console | None = None,
    predicted: dict[str, float] | None = None,
) -> StudyResult:
    """Run the stages in order (or just ``only``), skipping whatever is already done; with
    ``predicted`` (seconds per stage, ``locodiff.stages.predict``) each stage starts by saying where the
    study stands."""
    console = console or Console()
    only = list(only or STAGES)
    unknown = [s for s in only if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; expected some of {list(STAGES)}")
    if not cfg.enabled_models() and any(s in only for s in STAGES[1:]):
        raise ConfigError("the config defines no enabled models ([models.NAME] tables)")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(layout.study_config_path(out), to_dict(cfg), sort_keys=False)  # models in preset order
    seconds: dict[str, float] = {}
    stage_fns: dict[str, Callable[[], object]] = {
        "data": lambda: stage_data(cfg, console),
        "train": lambda: stage_train(cfg, console, with_detector="evaluate" in only),
        "evaluate": lambda: stage_evaluate(cfg, console),
        "locality": lambda: stage_locality(cfg, console),
        "emergence": lambda: stage_emergence(cfg, console),
        "report": lambda: stage_report(cfg, console),
    }
    for i, stage in enumerate(STAGES):
        if stage not in only:
            continue
        console.rule(f"[bold]stage {i + 1}/{len(STAGES)}: {stage}")
        if predicted is not None:  # the time so far counts earlier runs of this config too (a resumed study)
            console.print(outlook(stage, [s for s in STAGES if s in only], predicted, recorded_seconds(out, cfg)))
        clock = StageClock(out, stage, config_hash(cfg))
        with clock:  # an interrupted stage's time counts too: a resumed study adds the rest
            stage_fns[stage]()
        seconds[stage] = clock.seconds
        console.print(f"  {stage} done in {clock.seconds:.1f} s{core_use(clock.busy, clock.seconds)}")
    return StudyResult(out, seconds, cfg.seeded_subject_dirs())
