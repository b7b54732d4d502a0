"""A training run: config -> run folder with config.json, log.txt, metrics.jsonl, checkpoints.

``train_run`` is what ``locodiff train`` and the study call. Re-running it on the same folder
resumes; running it on a folder made by a different config is refused (nothing is touched).
Options that only change how long or how verbosely a run goes (``total_images``, logging and
checkpoint intervals, threads, time budget) may change between resumes: they do not change the
weights a given number of images produces.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from PIL import Image

from ..config import to_dict
from ..errors import CheckpointError
from ..io import write_json_atomic
from ..layout import RUN_CONFIG, run_identity
from ..locks import folder_lock
from ..models import build_network, conditioned_on, describe
from ..run_record import ModelRecord, write_model_record
from ..scenes.dataset import SceneDataset
from ..tracking import Tracker
from ..checkpoints import latest_checkpoint, read_state
from .run_folder import read_run_config
from .config import RunConfig
from .data import CachedBatches, StreamBatches
from .loop import BatchSource, TrainResult, train_loop
from .penalty import training_loss
from .sampling import training_grid


def is_main_process() -> bool:
    """Whether this is the first (or only) process of a run; launchers set RANK for the others."""
    return os.environ.get("RANK", "0") == "0"


def _log(run_dir: Path, msg: str) -> None:
    if not is_main_process():
        return
    with open(run_dir / "log.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")


def prepare_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Create the run folder, or check that an existing one was made by the same config."""
    run_dir = Path(run_dir)
    if (run_dir / RUN_CONFIG).exists():
        old = read_run_config(run_dir)
        if run_identity(old) != run_identity(cfg):
            raise CheckpointError(
                f"{run_dir} holds a run made with a different config (hash "
                f"{run_identity(old)} vs {run_identity(cfg)}); choose another run folder "
                "or delete this one — nothing was changed"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = to_dict(dataclasses.replace(cfg, model=cfg.model.resolved()))
    path = run_dir / RUN_CONFIG
    if not path.exists() or json.loads(path.read_text()) != resolved:  # e.g. total_images raised
        write_json_atomic(path, resolved)


def build_model(cfg: RunConfig) -> torch.nn.Module:
    """The raw network, initialised deterministically from the run's seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_network(cfg.model)


def default_source(cfg: RunConfig, data_root: Path | None = None) -> BatchSource:
    """Batches from the cached training split at ``data_root``, else rendered on the fly."""
    holdout = cfg.holdout_indices()
    if data_root is not None:
        return CachedBatches(SceneDataset(data_root, "train"), cfg.label_policy, cfg.seed, holdout)
    return StreamBatches(cfg.data, cfg.label_policy, cfg.seed, holdout)


def _with_sample_grids(cfg: RunConfig, run_dir: Path, tracker: Tracker, then=None):
    """Checkpoint callback writing ``samples/grid-<images>.png`` (also shown in the tracker) whenever
    ``sample_every_images`` has been crossed since the last grid, and at the end of training."""
    every, total = cfg.train.sample_every_images, cfg.train.total_images

    def on_checkpoint(ema_net, images_seen: int) -> None:
        grids = sorted((run_dir / "samples").glob("grid-*.png"))
        last = int(grids[-1].stem.split("-")[1]) if grids else 0
        if images_seen >= total or (every > 0 and images_seen // every > last // every):
            with torch.no_grad():
                grid = training_grid(ema_net, cfg.data, images_seen, run_dir / "samples", cfg.train.sample_steps)
            tracker.log_image("samples/grid (rows: 1, 2, 3, 5, 8 objects)", np.asarray(Image.open(grid).convert("RGB")),
                              images_seen)
        if then is not None:
            then(ema_net, images_seen)

    return on_checkpoint


def model_record(cfg: RunConfig) -> ModelRecord:
    """What the report reads of a run's network (``run_record``), from its config."""
    return ModelRecord(describe(cfg.model).param_count, conditioned_on(cfg.model.arch))


def train_run(
    cfg: RunConfig, run_dir: Path, source: BatchSource | None = None, data_root: Path | None = None,
    on_checkpoint=None, progress: bool = True,
) -> TrainResult:
    """Train (or resume) the run in ``run_dir``; see ``default_source`` for the data. One process
    (of a launch: its first) holds the folder's lock; a second one waits, then finds it trained."""
    run_dir = Path(run_dir)
    lock = folder_lock(run_dir, f"run {run_dir.name} is being trained") if is_main_process() else nullcontext()
    with lock:
        return _train(cfg, run_dir, source, data_root, on_checkpoint, progress)


def _train(cfg: RunConfig, run_dir: Path, source: BatchSource | None, data_root: Path | None, on_checkpoint,
           progress: bool) -> TrainResult:
    source = source if source is not None else default_source(cfg, data_root)
    prepare_run_dir(cfg, run_dir)
    write_model_record(run_dir, model_record(cfg))
    net = build_model(cfg)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        _log(run_dir, f"resume from {ckpt.name} ({read_state(ckpt)['images_seen']} images)")
    _log(run_dir, f"start: {cfg.name} arch={cfg.model.arch} policy={cfg.label_policy} "
                  f"params={sum(p.numel() for p in net.parameters())} torch={torch.__version__} "
                  f"host={platform.node()} threads={torch.get_num_threads()}")
    # the process group (under a launcher) as training's Accelerator makes it, before the tracker
    PartialState(cpu=not torch.cuda.is_available())
    with Tracker(cfg.train.report_to, run_dir) as tracker:
        result = train_loop(
            run_dir, net, training_loss(cfg.train), source, cfg,
            on_checkpoint=_with_sample_grids(cfg, run_dir, tracker, on_checkpoint), progress=progress, tracker=tracker,
        )
    _log(run_dir, f"stop: {result}")
    return result


