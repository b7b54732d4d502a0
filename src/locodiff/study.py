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

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .config import config_hash, to_dict
from .errors import ConfigError
from .io import read_jsonl, write_json_atomic
from .scenes.dataset import build_dataset, dataset_root
from .study_config import ModelSpec, StudyConfig
from .train.checkpoint import latest_checkpoint, read_state
from .train.run import RunConfig, train_run

STAGES = ("data", "train", "evaluate", "locality", "report")


def run_config(cfg: StudyConfig, name: str, spec: ModelSpec) -> RunConfig:
    return RunConfig(
        name=name, seed=cfg.seed, label_policy=spec.label_policy, data=cfg.data,
        model=spec.model, train=spec.train,
    )


def run_dir(cfg: StudyConfig, name: str, spec: ModelSpec) -> Path:
    return Path(cfg.out_dir) / "models" / f"{name}-{run_config(cfg, name, spec).identity_hash()}"


def images_trained(folder: Path) -> int:
    ckpt = latest_checkpoint(folder)
    return read_state(ckpt)["images_seen"] if ckpt is not None else 0


def is_trained(cfg: StudyConfig, name: str, spec: ModelSpec) -> bool:
    return images_trained(run_dir(cfg, name, spec)) >= spec.train.total_images


# ----- stages ---------------------------------------------------------------------------------


def stage_data(cfg: StudyConfig, console: Console) -> Path:
    root = build_dataset(cfg.data, cfg.out_dir, progress=True)
    console.print(f"  data: {root}")
    return root


def _train_worker(run_cfg: RunConfig, folder: str, data_root: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    result = train_run(run_cfg, Path(folder), data_root=Path(data_root), progress=False)
    return {"images_seen": result.images_seen, "wall_s": result.wall_s,
            "images_per_s": result.images_per_s, "final_loss": result.final_loss}


def stage_train(cfg: StudyConfig, data_root: Path, console: Console) -> dict[str, Path]:
    """Train every enabled model not yet finished, ``cfg.jobs`` at a time, with live progress."""
    models = cfg.enabled_models()
    folders = {name: run_dir(cfg, name, spec) for name, spec in models.items()}
    todo = [n for n, s in models.items() if not is_trained(cfg, n, s)]
    for name in models:
        if name not in todo:
            console.print(f"  {name}: trained already ({folders[name].name})")
    if not todo:
        return folders
    threads = max(1, (torch.get_num_threads() if cfg.jobs == 1 else 1))
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=ctx) as pool, _progress(console) as bar:
        tasks = {n: bar.add_task(n, total=models[n].train.total_images,
                                 completed=images_trained(folders[n])) for n in todo}
        futures = {
            n: pool.submit(_train_worker, run_config(cfg, n, models[n]), str(folders[n]),
                           str(data_root), threads)
            for n in todo
        }
        while not all(f.done() for f in futures.values()):
            for n in todo:
                bar.update(tasks[n], completed=_latest_images(folders[n]))
            time.sleep(1.0)
        for n, f in futures.items():
            info = f.result()  # re-raises a worker's error with its message
            bar.update(tasks[n], completed=info["images_seen"])
            console.print(f"  {n}: {info['images_seen']} images in {info['wall_s']:.0f} s "
                          f"({info['images_per_s']:.0f} img/s), final loss {info['final_loss']:.4f}")
    return folders


def _latest_images(folder: Path) -> int:
    records = read_jsonl(folder / "metrics.jsonl")
    return records[-1]["images_seen"] if records else 0


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("  {task.description:<16}"), BarColumn(), TextColumn("{task.completed}/{task.total} img"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


# ----- the driver -----------------------------------------------------------------------------


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
    write_json_atomic(out / "study_config.json", to_dict(cfg))
    seconds: dict[str, float] = {}
    data_root = dataset_root(cfg.data, cfg.out_dir)
    runs = {n: run_dir(cfg, n, s) for n, s in cfg.enabled_models().items()}
    stage_fns: dict[str, Callable[[], object]] = {
        "data": lambda: stage_data(cfg, console),
        "train": lambda: stage_train(cfg, data_root, console),
    }
    for i, stage in enumerate(STAGES):
        if stage not in only or stage not in stage_fns:
            continue
        console.rule(f"[bold]stage {i + 1}/{len(STAGES)}: {stage}")
        start = time.perf_counter()
        stage_fns[stage]()
        seconds[stage] = time.perf_counter() - start
        console.print(f"  {stage} done in {seconds[stage]:.1f} s")
    timing_path = out / "timings.json"
    write_json_atomic(timing_path, {"stage_seconds": seconds, "config_hash": config_hash(cfg)})
    return StudyResult(out, seconds, runs)
