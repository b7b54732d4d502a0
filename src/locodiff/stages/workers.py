"""What one job of a stage does, as top-level functions so that spawned worker processes can
import them (``jobs.run_jobs``); each runs on the threads it is given and returns a small summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..evaluate.config import EvalConfig
from ..evaluate.runner import build_detector
from ..locality.config import LocalityOptions
from ..train.config import RunConfig
from ..train.run import train_run
from .evaluation import evaluate_run
from .jobs import torch_threads
from .probe import probe_run


def train_worker(run_cfg: RunConfig, folder: str, data_root: str, threads: int) -> dict:
    with torch_threads(threads):
        result = train_run(run_cfg, Path(folder), data_root=Path(data_root), progress=False)
    return {"images_seen": result.images_seen, "wall_s": result.wall_s,
            "images_per_s": result.images_per_s, "final_loss": result.final_loss}


def detector_worker(data_cfg, eval_cfg: EvalConfig, cache: str, device: str, threads: int) -> str:
    with torch_threads(threads):
        return build_detector(data_cfg, eval_cfg, data_cfg.resolution, cache, device=device).name


def eval_worker(folder: str, eval_cfg: EvalConfig, cache: str, device: str, threads: int) -> dict:
    with torch_threads(threads):
        return evaluate_run(folder, eval_cfg, cache, device).summary


def locality_worker(folder: str, data_root: str, options: LocalityOptions, seed: int, threads: int) -> str:
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


def emergence_worker(work: CheckpointWork, threads: int) -> str:
    with torch_threads(threads):
        ckpt = Path(work.checkpoint)
        evaluate_run(work.folder, work.eval_cfg, work.detector_cache, work.device, checkpoint=ckpt)
        return str(probe_run(work.folder, work.data_root, work.options, work.seed, checkpoint=ckpt))
