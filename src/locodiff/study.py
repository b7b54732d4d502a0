"""The whole study from one config: data -> models -> evaluation -> locality -> report.

Every stage writes into folders named by the hash of the config that determines it, so
re-running skips finished work, an interrupted study resumes where it stopped, and changing one
model's config re-runs only that model and what depends on it:

    <out_dir>/data/<data hash>/                 rendered train/test splits (scenes.dataset)
    <out_dir>/models/<name>-<run hash>/         training run (train.run): checkpoints, metrics
        eval-<eval hash>/                       evaluation per k (evaluate)
        locality-<probe hash>/                  locality probe (locality)
    <out_dir>/report/                           report.md, report.html and figures

Models train ``jobs`` at a time in separate processes. On a 2-core CPU two single-threaded
processes beat one two-threaded process for these small networks (threads fight over the cores
and small convolutions do not split well).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .config import config_hash, to_dict
from .errors import ConfigError, StudyError
from .conditioning import Conditioning
from .evaluate.crowding import study_crowding
from .evaluate.heatmap import detector_key
from .evaluate.runner import EvalConfig, build_detector, eval_folder, evaluate_run
from .evaluate.validation import validate_detector
from .io import atomic_path, read_jsonl, write_json_atomic
from .locality.run import probe_complete, probe_folder, probe_run
from .report import write_report
from .scenes.dataset import SceneDataset, build_dataset, dataset_root
from .scenes.figures import data_contact_sheet
from .study_config import LocalityOptions, ModelSpec, StudyConfig
from .intervene.subject import InterventionSpec, subject_checkpoint, write_intervention
from .train.checkpoint import latest_checkpoint, read_state
from .train.run import RunConfig, train_run

STAGES = ("data", "train", "evaluate", "locality", "report")




def run_config(cfg: StudyConfig, name: str, spec: ModelSpec) -> RunConfig:
    return RunConfig(
        name=name, seed=cfg.seed, label_policy=spec.label_policy, holdout_combos=spec.holdout_combos,
        data=cfg.data, model=spec.model, train=spec.train,
    )


def run_dir(cfg: StudyConfig, name: str, spec: ModelSpec) -> Path:
    return Path(cfg.out_dir) / "models" / f"{name}-{run_config(cfg, name, spec).identity_hash()}"


def images_trained(folder: Path) -> int:
    ckpt = latest_checkpoint(folder)
    return read_state(ckpt)["images_seen"] if ckpt is not None else 0


def is_trained(cfg: StudyConfig, name: str, spec: ModelSpec) -> bool:
    return images_trained(run_dir(cfg, name, spec)) >= spec.train.total_images


# ----- running jobs in worker processes --------------------------------------------------------


@dataclass
class Job:
    """One unit of parallel work: ``fn(*args)`` in a worker, progress polled from its files."""

    fn: Callable
    args: tuple
    total: int = 1
    poll: Callable[[], int] | None = None  # completed units, read from files the job writes


def worker_threads(cfg: StudyConfig) -> int:
    return torch.get_num_threads() if cfg.jobs == 1 else 1


def run_jobs(jobs: dict[str, Job], workers: int, console: Console) -> dict[str, object]:
    """Run every job in ``workers`` spawned processes with one live progress bar per job.

    With one worker the jobs run one after another in a thread of this process instead (no
    start-up cost, same live progress). All jobs run to the end even if one fails (their finished work is kept); then the first
    failure is raised with the worker's own message.
    """
    if not jobs:
        return {}
    results: dict[str, object] = {}
    errors: list[BaseException] = []
    pool_cm = (ThreadPoolExecutor(max_workers=1) if workers == 1 else
               ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")))
    with pool_cm as pool, _progress(console) as bar, _stop_workers_on_interrupt(pool):
        tasks = {n: bar.add_task(n, total=j.total, completed=_poll(j)) for n, j in jobs.items()}
        futures = {n: pool.submit(j.fn, *j.args) for n, j in jobs.items()}
        pending = set(futures)
        last_line = time.monotonic()
        while pending:
            time.sleep(0.5)
            if not console.is_terminal and time.monotonic() - last_line >= LOG_EVERY_S:
                console.print(progress_line(jobs, pending))  # a log file gets no live bars
                last_line = time.monotonic()
            for n in sorted(pending):
                bar.update(tasks[n], completed=_poll(jobs[n]))
                if futures[n].done():
                    pending.discard(n)
                    try:
                        results[n] = futures[n].result()
                        bar.update(tasks[n], completed=jobs[n].total)
                    except Exception as e:  # noqa: BLE001 - reported after the others finish
                        console.print(f"  [red]{n} failed: {e}")
                        errors.append(e)
    if errors:
        if isinstance(errors[0], BrokenProcessPool):
            raise StudyError(
                "a worker process died (killed from outside, or out of memory?); finished work and the "
                "last checkpoints are kept: run the same command again to resume"
            ) from None
        raise errors[0]
    return results


@contextmanager
def _stop_workers_on_interrupt(pool):
    """On Ctrl-C or SIGTERM stop the worker processes too, instead of leaving them training
    orphaned; every run resumes from its last checkpoint on the next call."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if in_main else None
    try:
        yield
    except KeyboardInterrupt:
        processes = list((getattr(pool, "_processes", None) or {}).values())  # empty for threads
        for process in processes:
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


LOG_EVERY_S = 60  # without a terminal, one progress line per this many seconds


def progress_line(jobs: dict[str, Job], pending: set[str]) -> str:
    """``  [12:03:04] exp1 65536/150000 (44%), exp2 0/100000 (0%)``: every unfinished job's progress."""
    parts = []
    for n in sorted(pending):
        done, total = _poll(jobs[n]), jobs[n].total
        parts.append(f"{n} {done}/{total} ({done / max(total, 1):.0%})")
    return f"  [{time.strftime('%H:%M:%S')}] " + ", ".join(parts)


def _poll(job: Job) -> int:
    try:
        return min(job.total, job.poll()) if job.poll else 0
    except (OSError, ValueError, KeyError):
        return 0


def _last_record(path: Path, key: str) -> int:
    records = read_jsonl(path) if path.exists() else []
    return int(records[-1][key]) if records else 0


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("  {task.description:<18}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


# ----- workers (top level so that spawned processes can import them) -----------------------------


def _train_worker(run_cfg: RunConfig, folder: str, data_root: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    result = train_run(run_cfg, Path(folder), data_root=Path(data_root), progress=False)
    return {"images_seen": result.images_seen, "wall_s": result.wall_s,
            "images_per_s": result.images_per_s, "final_loss": result.final_loss}


def _detector_worker(data_cfg, eval_cfg: EvalConfig, cache: str, threads: int) -> str:
    torch.set_num_threads(threads)
    return build_detector(data_cfg, eval_cfg, data_cfg.resolution, cache).name


def _eval_worker(folder: str, eval_cfg: EvalConfig, cache: str, device: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    return evaluate_run(folder, eval_cfg, cache, device).summary


def _locality_worker(folder: str, data_root: str, options: LocalityOptions, seed: int, threads: int) -> str:
    torch.set_num_threads(threads)
    return str(probe_run(folder, data_root, options, seed))


# ----- stages ---------------------------------------------------------------------------------


def stage_data(cfg: StudyConfig, console: Console) -> Path:
    root = build_dataset(cfg.data, cfg.out_dir, progress=True)
    sheet = root / "contact_sheet.png"
    if not sheet.exists():
        with atomic_path(sheet) as tmp:
            data_contact_sheet(cfg.data).save(tmp, format="PNG")
    console.print(f"  data: {root}")
    return root


def detector_cache(cfg: StudyConfig) -> Path:
    return Path(cfg.out_dir) / "detectors"


def needs_detector_training(cfg: StudyConfig) -> bool:
    if cfg.evaluate.detector != "heatmap":
        return False
    key = detector_key(cfg.data, cfg.evaluate.heatmap.validate())
    return not (detector_cache(cfg) / f"heatmap-{key}" / "detector.safetensors").is_file()


def stage_train(cfg: StudyConfig, data_root: Path, console: Console, with_detector: bool = False) -> None:
    """Train every enabled model not yet finished, ``cfg.jobs`` at a time, with live progress.

    With ``with_detector`` the evaluation's learned detector trains alongside when not cached.
    """
    models = cfg.enabled_models()
    threads = worker_threads(cfg)
    jobs: dict[str, Job] = {}
    for name, spec in models.items():
        folder = run_dir(cfg, name, spec)
        if is_trained(cfg, name, spec):
            console.print(f"  {name}: trained already ({folder.name})")
            continue
        jobs[name] = Job(_train_worker, (run_config(cfg, name, spec), str(folder), str(data_root), threads),
                         spec.train.total_images, lambda f=folder: _last_record(f / "metrics.jsonl", "images_seen"))
    if with_detector and needs_detector_training(cfg):
        folder = detector_cache(cfg) / f"heatmap-{detector_key(cfg.data, cfg.evaluate.heatmap)}"
        jobs["detector"] = Job(_detector_worker, (cfg.data, cfg.evaluate, str(detector_cache(cfg)), threads),
                               cfg.evaluate.heatmap.train_images,
                               lambda: _last_record(folder / "training_log.jsonl", "images_seen"))
    # Longest models first, so that the slowest does not start last and leave a core idle; the
    # detector (slower per image than any model here) goes first of all.
    jobs = dict(sorted(jobs.items(), key=lambda item: (item[0] != "detector", -item[1].total)))
    for name, info in run_jobs(jobs, cfg.jobs, console).items():
        if name in models:
            console.print(f"  {name}: {info['images_seen']} images in {info['wall_s']:.0f} s "
                          f"({info['images_per_s']:.0f} img/s), final loss {info['final_loss']:.4f}")


def stage_evaluate(cfg: StudyConfig, console: Console) -> None:
    """Length generalization of every trained model (cached per checkpoint and eval config)."""
    if needs_detector_training(cfg):
        run_jobs({"detector": Job(_detector_worker, (cfg.data, cfg.evaluate, str(detector_cache(cfg)),
                                                     torch.get_num_threads()))}, 1, console)
    ev = cfg.evaluate
    runs = trained_runs(cfg)
    write_detector_ceiling(cfg)
    write_crowding(cfg)
    total = ev.per_count * len(ev.counts)
    jobs = {}
    for name, folder in runs.items():
        out = eval_folder(folder, ev, subject_checkpoint(folder).name)
        if (out / "eval.json").is_file():
            console.print(f"  {name}: evaluated already ({out.name})")
            continue
        jobs[name] = Job(_eval_worker, (str(folder), ev, str(detector_cache(cfg)), study_device(cfg),
                                        worker_threads(cfg)),
                         total, lambda o=out: sum(1 for _ in open(o / "eval.jsonl")) if (o / "eval.jsonl").exists() else 0)
    run_jobs(jobs, cfg.jobs, console)


def ceiling_path(cfg: StudyConfig) -> Path:
    ev = cfg.evaluate
    key = config_hash({"data": to_dict(cfg.data), "detector": ev.detector, "heatmap": to_dict(ev.heatmap),
                       "counts": ev.counts, "per_count": ev.per_count, "min_separation": ev.min_separation,
                       "tolerance_px": ev.tolerance_px, "seed": ev.seed})
    return detector_cache(cfg) / f"ceiling-{key}.json"


def write_detector_ceiling(cfg: StudyConfig) -> Path:
    """The detector's accuracy on ground-truth renders of the test scenes: the ceiling that every
    model score must be read against (cached)."""
    path = ceiling_path(cfg)
    if not path.is_file():
        ev = cfg.evaluate
        detector = build_detector(cfg.data, ev, cfg.data.resolution, detector_cache(cfg))
        table = validate_detector(detector, cfg.data, (cfg.data.resolution,), ev.counts, ev.per_count,
                                  {"clean": (0.0, 0.0)}, ev.min_separation, seed=ev.seed)
        write_json_atomic(path, table)
    return path


def crowding_radii(cfg: StudyConfig) -> tuple[float, ...]:
    """Radii of the crowding diagnostic: the locality index's radius and the receptive field of
    every model that is local by construction."""
    radii = {float(cfg.locality.radius_px)}
    for spec in cfg.enabled_models().values():
        if spec.model.arch == "local":
            radii.add(float(spec.model.resolved().local_radius))
    return tuple(sorted(radii))


def crowding_path(cfg: StudyConfig) -> Path:
    ev = cfg.evaluate
    key = config_hash({"data": cfg.data.cache_key(), "counts": ev.counts, "per_count": ev.per_count,
                       "min_separation": ev.min_separation, "seed": ev.seed, "radii": crowding_radii(cfg)})
    return Path(cfg.out_dir) / "crowding" / f"crowding-{key}.json"


def write_crowding(cfg: StudyConfig) -> Path:
    """How crowded training and test windows are (``evaluate.crowding``), cached; seconds to compute."""
    path = crowding_path(cfg)
    if not path.is_file():
        train = SceneDataset(dataset_root(cfg.data, cfg.out_dir), "train").tensors
        tables = study_crowding(cfg.data, Conditioning(train["centers"], train["mask"]), cfg.evaluate,
                                crowding_radii(cfg))
        write_json_atomic(path, {"resolution": cfg.data.resolution, "tables": [t.to_dict() for t in tables]})
    return path


def stage_locality(cfg: StudyConfig, data_root: Path, console: Console) -> None:
    """Jacobian locality probe of every trained model (cached per checkpoint and options)."""
    jobs = {}
    for name, folder in trained_runs(cfg).items():
        out = probe_folder(folder, cfg.locality, subject_checkpoint(folder).name)
        if probe_complete(out):
            console.print(f"  {name}: probed already ({out.name})")
            continue
        jobs[name] = Job(_locality_worker, (str(folder), str(data_root), cfg.locality, cfg.seed, worker_threads(cfg)))
    run_jobs(jobs, cfg.jobs, console)


def stage_report(cfg: StudyConfig, console: Console) -> Path:
    path = write_report(cfg, Path(cfg.out_dir) / "report")
    console.print(f"  report: {path}")
    return path


def intervention_dir(cfg: StudyConfig, name: str, spec: InterventionSpec) -> Path:
    base = cfg.models[spec.base]
    key = config_hash({"base": run_config(cfg, spec.base, base).identity_hash(), "spec": to_dict(spec)})
    return Path(cfg.out_dir) / "models" / f"{name}-{key}"


def subject_dirs(cfg: StudyConfig) -> dict[str, Path]:
    """Folders of everything the study evaluates: enabled models, then interventions."""
    dirs = {n: run_dir(cfg, n, s) for n, s in cfg.enabled_models().items()}
    dirs.update({n: intervention_dir(cfg, n, s) for n, s in cfg.enabled_interventions().items()})
    return dirs


def trained_runs(cfg: StudyConfig) -> dict[str, Path]:
    """Subject folders, ready to load; an untrained model is an error naming the fix."""
    for name, spec in cfg.enabled_models().items():
        folder = run_dir(cfg, name, spec)
        if latest_checkpoint(folder) is None:
            raise ConfigError(f"model {name!r} is not trained yet ({folder}); run the train stage first")
    for name, spec in cfg.enabled_interventions().items():
        write_intervention(intervention_dir(cfg, name, spec), spec, run_dir(cfg, spec.base, cfg.models[spec.base]))
    return subject_dirs(cfg)


def study_device(cfg: StudyConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


# ----- the driver -----------------------------------------------------------------------------


def record_timing(out: Path, stage: str, seconds: float, cfg_hash: str) -> None:
    """Add a stage's wall time to ``timings.json``: per stage, the time spent on the current
    config over every run (a resumed run adds its part, a cached stage adds ~0)."""
    path = out / "timings.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        data = {}
    if data.get("config_hash") != cfg_hash:
        data = {"config_hash": cfg_hash, "stage_seconds": {}}
    data["stage_seconds"][stage] = round(data["stage_seconds"].get(stage, 0.0) + seconds, 2)
    write_json_atomic(path, data)


@dataclass
class StudyResult:
    out_dir: Path
    stage_seconds: dict[str, float]
    runs: dict[str, Path]


def run_study(
    cfg: StudyConfig, only: Sequence[str] | None = None, console: Console | None = None,
) -> StudyResult:
    """Run the stages in order (or just ``only``), skipping whatever is already done."""
    console = console or Console()
    only = list(only or STAGES)
    unknown = [s for s in only if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; expected some of {list(STAGES)}")
    if not cfg.enabled_models() and any(s in only for s in STAGES[1:]):
        raise ConfigError("the config defines no enabled models ([models.NAME] tables)")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "study_config.json", to_dict(cfg), sort_keys=False)  # models in preset order
    seconds: dict[str, float] = {}
    data_root = dataset_root(cfg.data, cfg.out_dir)
    runs = subject_dirs(cfg)
    stage_fns: dict[str, Callable[[], object]] = {
        "data": lambda: stage_data(cfg, console),
        "train": lambda: stage_train(cfg, data_root, console, with_detector="evaluate" in only),
        "evaluate": lambda: stage_evaluate(cfg, console),
        "locality": lambda: stage_locality(cfg, data_root, console),
        "report": lambda: stage_report(cfg, console),
    }
    for i, stage in enumerate(STAGES):
        if stage not in only:
            continue
        console.rule(f"[bold]stage {i + 1}/{len(STAGES)}: {stage}")
        start = time.perf_counter()
        stage_fns[stage]()
        seconds[stage] = time.perf_counter() - start
        console.print(f"  {stage} done in {seconds[stage]:.1f} s")
        record_timing(out, stage, seconds[stage], config_hash(cfg))
    return StudyResult(out, seconds, runs)
