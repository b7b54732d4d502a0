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
from ..conditioning import Conditioning
from ..config import config_hash, to_dict
from ..errors import ConfigError
from ..evaluate.config import EvalConfig
from ..evaluate.crowding import study_crowding
from ..evaluate.heatmap import detector_key, training_seconds_per_image as detector_seconds_per_image
from ..evaluate.runner import build_detector
from .evaluation import evaluate_run
from ..evaluate.validation import ValidationSpec, validate_detector
from .subjects import record_models, subject_checkpoint, subject_checkpoints, write_intervention
from ..hardware import busy_core_seconds, cores, machine
from ..io import atomic_path, read_jsonl, write_json_atomic
from .jobs import Job, last_record, run_jobs, torch_threads
from ..locality.config import LocalityOptions
from .probe import probe_complete, probe_run
from ..models.registry import forward_flops, training_seconds_per_image
from ..progress import LOG_EVERY_S, duration
from ..report import write_report
from ..scenes.dataset import SceneDataset, build_dataset
from ..scenes.figures import data_contact_sheet
from .config import StudyConfig
from ..checkpoints import latest_checkpoint, read_state
from ..train.config import RunConfig
from ..train.run import train_run

STAGES = ("data", "train", "evaluate", "locality", "emergence", "report")
# Timing a network for the schedule: at most this many images per step, and at most this many
# FLOPs (a GPU preset's batch would take minutes on a laptop, and may not fit its memory).
TIMED_BATCH, TIMED_FLOPS = 32, 20e9


def images_trained(folder: Path) -> int:
    ckpt = latest_checkpoint(folder)
    return read_state(ckpt)["images_seen"] if ckpt is not None else 0


def is_trained(cfg: StudyConfig, name: str) -> bool:
    return images_trained(cfg.run_dir(name)) >= cfg.models[name].train.total_images


def seeded_models(cfg: StudyConfig) -> dict[str, tuple[StudyConfig, str]]:
    """Every model the study trains, under every seed: ``seeded_name`` -> (that seed's config, name)."""
    return {cfg.seeded_name(name, seed): (sub, name)
            for seed, sub in cfg.per_seed().items() for name in sub.enabled_models()}


def worker_threads(cfg: StudyConfig) -> int:
    return torch.get_num_threads() if cfg.jobs == 1 else 1


# ----- workers (top level so that spawned processes can import them) -----------------------------

def _train_worker(run_cfg: RunConfig, folder: str, data_root: str, threads: int) -> dict:
    with torch_threads(threads):
        result = train_run(run_cfg, Path(folder), data_root=Path(data_root), progress=False)
    return {"images_seen": result.images_seen, "wall_s": result.wall_s,
            "images_per_s": result.images_per_s, "final_loss": result.final_loss}


def _detector_worker(data_cfg, eval_cfg: EvalConfig, cache: str, device: str, threads: int) -> str:
    with torch_threads(threads):
        return build_detector(data_cfg, eval_cfg, data_cfg.resolution, cache, device=device).name


def _eval_worker(folder: str, eval_cfg: EvalConfig, cache: str, device: str, threads: int) -> dict:
    with torch_threads(threads):
        return evaluate_run(folder, eval_cfg, cache, device).summary


def _locality_worker(folder: str, data_root: str, options: LocalityOptions, seed: int, threads: int) -> str:
    with torch_threads(threads):
        return str(probe_run(folder, data_root, options, seed))


@dataclass(frozen=True)
class CheckpointWork:
    """One kept checkpoint of the emergence stage: evaluate it, then probe its locality."""

    folder: str
    checkpoint: str
    data_root: str
    eval_cfg: EvalConfig
    options: LocalityOptions
    seed: int
    detector_cache: str
    device: str


def _emergence_worker(work: CheckpointWork, threads: int) -> str:
    with torch_threads(threads):
        ckpt = Path(work.checkpoint)
        evaluate_run(work.folder, work.eval_cfg, work.detector_cache, work.device, checkpoint=ckpt)
        return str(probe_run(work.folder, work.data_root, work.options, work.seed, checkpoint=ckpt))


# ----- stages ---------------------------------------------------------------------------------

def stage_data(cfg: StudyConfig, console: Console) -> Path:
    root = build_dataset(cfg.data, cfg.out_dir, device=study_device(cfg), progress=True)
    sheet = root / layout.CONTACT_SHEET
    if not sheet.exists():
        with atomic_path(sheet) as tmp:
            data_contact_sheet(cfg.data, root=root).save(tmp, format="PNG")
    console.print(f"  data: {root}")
    return root


def needs_detector_training(cfg: StudyConfig) -> bool:
    if cfg.evaluate.detector != "heatmap":
        return False
    folder = layout.detector_dir(cfg.detector_cache(), detector_key(cfg.data, cfg.evaluate.heatmap))
    return not (folder / "detector.safetensors").is_file()


def _detector_job(cfg: StudyConfig, threads: int, cost: float = 0.0) -> Job:
    folder = layout.detector_dir(cfg.detector_cache(), detector_key(cfg.data, cfg.evaluate.heatmap))
    return Job(_detector_worker, (cfg.data, cfg.evaluate, str(cfg.detector_cache()), study_device(cfg), threads),
               cfg.evaluate.heatmap.train_images, lambda: last_record(folder / "training_log.jsonl", "images_seen"),
               cost=cost)


def stage_train(cfg: StudyConfig, data_root: Path, console: Console, with_detector: bool = False) -> None:
    """Train every enabled model not yet finished, ``cfg.jobs`` at a time and longest first, with
    live progress. With ``with_detector`` the evaluation's learned detector trains alongside when
    not cached."""
    models = seeded_models(cfg)
    threads = worker_threads(cfg)
    costs = training_costs(cfg) if cfg.jobs > 1 else {}  # one at a time, the order changes nothing
    jobs: dict[str, Job] = {}
    for key, (sub, name) in models.items():
        folder = sub.run_dir(name)
        if is_trained(sub, name):
            console.print(f"  {key}: trained already ({folder.name})")
            continue
        jobs[key] = Job(_train_worker, (sub.run_config(name), str(folder), str(data_root), threads),
                        cfg.models[name].train.total_images,
                        lambda f=folder: last_record(f / layout.TRAIN_METRICS, "images_seen"),
                        lambda f=folder: _loss_detail(f / layout.TRAIN_METRICS), cost=costs.get(key, 0.0))
    if with_detector and needs_detector_training(cfg):
        jobs["detector"] = _detector_job(cfg, threads, cost=costs.get("detector", 0.0))
    for name, info in run_jobs(jobs, cfg.jobs, console).items():
        if name in models:
            console.print(f"  {name}: {info['images_seen']} images in {info['wall_s']:.0f} s "
                          f"({info['images_per_s']:.0f} img/s), final loss {info['final_loss']:.4f}")


def training_costs(cfg: StudyConfig) -> dict[str, float]:
    """Core-seconds each unfinished training job needs on this machine: the images it has left
    times a training image's seconds measured now on one thread, the locality penalty's extra
    passes counted from where it starts; the detector's too when it is not trained yet. What the
    train stage orders its jobs by (longest first, so the last to finish does not start late) and
    ``predict`` sums."""
    costs = {}
    for key, (sub, name) in seeded_models(cfg).items():
        train = sub.models[name].train
        done = images_trained(sub.run_dir(name))
        if done < train.total_images:
            model = sub.models[name].model
            batch = max(1, min(train.batch_size, TIMED_BATCH, int(TIMED_FLOPS // (3 * forward_flops(model)))))
            costs[key] = training_seconds_per_image(model, batch) * train.locality.images_cost(done, train.total_images)
    if needs_detector_training(cfg):
        heat = cfg.evaluate.heatmap
        costs["detector"] = heat.train_images * detector_seconds_per_image(heat)
    return costs


def sampling_costs(cfg: StudyConfig, counts: Sequence[int]) -> dict[str, float]:
    """Forward FLOPs of one sampler pass of every subject at the object ``counts`` (a masked
    composition runs its base model k + 1 times at k objects): what orders the evaluation and
    probe jobs, whose number of passes is the same for every subject."""
    per_k = sum(k + 1 for k in counts) / max(1, len(counts))
    costs = {}
    for seed, sub in cfg.per_seed().items():
        for name in sub.enabled_models():
            costs[cfg.seeded_name(name, seed)] = forward_flops(sub.models[name].model)
        for name, spec in sub.enabled_interventions().items():
            costs[cfg.seeded_name(name, seed)] = per_k * forward_flops(sub.models[spec.base].model)
    return costs


def _loss_detail(metrics: Path) -> str:
    records = read_jsonl(metrics, quiet=True) if metrics.exists() else []
    return f"loss {records[-1]['loss']:.4f}" if records else ""


def stage_evaluate(cfg: StudyConfig, console: Console) -> None:
    """Length generalization of every trained model (cached per checkpoint and eval config)."""
    if needs_detector_training(cfg):
        run_jobs({"detector": _detector_job(cfg, torch.get_num_threads())}, 1, console)
    ev = cfg.evaluate
    runs = prepare_subjects(cfg)
    write_detector_ceiling(cfg)
    write_crowding(cfg)
    costs = sampling_costs(cfg, ev.counts)
    jobs = {}
    for name, (_, folder) in runs.items():
        out = layout.eval_dir(folder, ev, subject_checkpoint(folder).name)
        if (out / layout.EVAL_SUMMARY).is_file():
            console.print(f"  {name}: evaluated already ({out.name})")
            continue
        jobs[name] = Job(_eval_worker, (str(folder), ev, str(cfg.detector_cache()), study_device(cfg),
                                        worker_threads(cfg)),
                         ev.per_count * len(ev.counts), lambda o=out: _lines(o / layout.EVAL_RECORDS),
                         cost=costs.get(name, 0.0))
    run_jobs(jobs, cfg.jobs, console)


def _lines(path: Path) -> int:
    return sum(1 for _ in open(path)) if path.exists() else 0


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


def stage_locality(cfg: StudyConfig, data_root: Path, console: Console) -> None:
    """Jacobian locality probe of every trained model (cached per checkpoint and options)."""
    costs = sampling_costs(cfg, cfg.locality.extrapolation.counts or cfg.locality.counts)
    jobs = {}
    for name, (seed, folder) in prepare_subjects(cfg).items():
        out = layout.probe_dir(folder, cfg.locality, subject_checkpoint(folder).name)
        if probe_complete(out):
            console.print(f"  {name}: probed already ({out.name})")
            continue
        jobs[name] = Job(_locality_worker, (str(folder), str(data_root), cfg.locality, seed, worker_threads(cfg)),
                         cost=costs.get(name, 0.0))
    run_jobs(jobs, cfg.jobs, console)


def stage_emergence(cfg: StudyConfig, data_root: Path, console: Console) -> None:
    """Recall at a few k and the locality probe at every kept checkpoint of ``emergence.models``
    (cached per checkpoint like the final ones): how both grew over training."""
    ev, options = cfg.emergence.eval_config(cfg.evaluate), cfg.emergence.locality_options(cfg.locality)
    jobs = {}
    for key, (seed, folder) in cfg.emergence_runs().items():
        checkpoints = subject_checkpoints(folder)
        todo = [c for c in checkpoints if not ((layout.eval_dir(folder, ev, c.name) / layout.EVAL_SUMMARY).is_file()
                                               and probe_complete(layout.probe_dir(folder, options, c.name)))]
        console.print(f"  {key}: {len(checkpoints)} checkpoints kept, {len(todo)} to measure")
        for ckpt in todo:
            jobs[f"{key}@{read_state(ckpt)['images_seen']}"] = Job(
                _emergence_worker, (CheckpointWork(str(folder), str(ckpt), str(data_root), ev, options, seed,
                                                   str(cfg.detector_cache()), study_device(cfg)),
                                    worker_threads(cfg)))
    run_jobs(jobs, cfg.jobs, console)


def report_study(cfg: StudyConfig) -> Path:
    """The report from the saved results (runs trained by an older locodiff get their
    ``model.json`` first)."""
    record_models(cfg)
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


def study_device(cfg: StudyConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


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
    data_root = layout.dataset_root(cfg.data, cfg.out_dir)
    stage_fns: dict[str, Callable[[], object]] = {
        "data": lambda: stage_data(cfg, console),
        "train": lambda: stage_train(cfg, data_root, console, with_detector="evaluate" in only),
        "evaluate": lambda: stage_evaluate(cfg, console),
        "locality": lambda: stage_locality(cfg, data_root, console),
        "emergence": lambda: stage_emergence(cfg, data_root, console),
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
