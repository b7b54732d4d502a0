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
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..config import config_hash, from_dict, to_dict
from ..diffusion import EDMLoss, EDMPrecond
from ..errors import CheckpointError, ConfigError, LocodiffError
from ..io import write_json_atomic
from ..models import ModelConfig, build_network
from ..scenes.dataset import DataConfig
from .checkpoint import latest_checkpoint, load_weights, read_state
from .config import TrainConfig
from .loop import BatchSource, TrainResult, train_loop

# TrainConfig fields that do not change the weights reached after a given number of images.
SCHEDULE_ONLY = (
    "total_images", "log_every_images", "checkpoint_every_images", "sample_every_images",
    "sample_steps", "keep_checkpoints", "threads", "time_budget_s",
)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one trained model."""

    name: str = "model"  # label used in reports
    seed: int = 0  # initialisation and data-order seed
    label_policy: Literal["all", "one"] = "all"  # which objects' locations are conditioners
    # (shape, colour) pairs held out of training: scenes holding any such object are skipped
    holdout_combos: tuple[tuple[str, str], ...] = ()
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.holdout_indices()

    def holdout_indices(self) -> tuple[tuple[int, int], ...]:
        """The held-out pairs as (shape, colour) vocabulary indices. A pair the data never draws
        (e.g. its colour is not among data.scene.colors) is held out trivially; holding out every
        pair the data draws leaves nothing to train on and is an error."""
        from ..scenes import vocab

        try:
            pairs = vocab.combo_indices(self.holdout_combos)
        except LocodiffError as e:
            raise ConfigError(f"{self.name}: holdout_combos: {e}") from None
        if pairs and set(self.data.scene.allowed_combos()) <= set(pairs):
            raise ConfigError(f"{self.name}: holdout_combos holds out every (shape, colour) pair the data "
                              f"draws (shapes {list(self.data.scene.shapes)}, colors {list(self.data.scene.colors)})")
        return pairs

    def identity_hash(self) -> str:
        """Hash of what determines the weights (schedule-only training options excluded)."""
        d = to_dict(dataclasses.replace(self, name="", model=self.model.resolved()))
        d["data"] = self.data.identity()
        if not d["holdout_combos"]:  # the default: keep hashes of earlier runs
            d.pop("holdout_combos")
        for key in SCHEDULE_ONLY:
            d["train"].pop(key)
        if d["train"]["locality_penalty"] == 0:  # no penalty: its options change nothing
            d["train"].pop("locality_penalty")
            d["train"].pop("locality_window_px")
        # Options added later, at their defaults: dropped so that earlier runs keep their hashes.
        for section, key, default in (("train", "locality_fraction", 1.0), ("train", "p_mean", -1.2),
                                      ("train", "p_std", 1.2), ("model", "patch_size", 1),
                                      ("model", "shared_position", False), ("model", "position_bias_px", 0.0)):
            if d[section].get(key) == default:
                d[section].pop(key)
        return config_hash(d)


def _log(run_dir: Path, msg: str) -> None:
    with open(run_dir / "log.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")


def read_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a locodiff run folder (no config.json)")
    try:
        return from_dict(RunConfig, json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def prepare_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Create the run folder, or check that an existing one was made by the same config."""
    run_dir = Path(run_dir)
    if (run_dir / "config.json").exists():
        old = read_run_config(run_dir)
        if old.identity_hash() != cfg.identity_hash():
            raise CheckpointError(
                f"{run_dir} holds a run made with a different config (hash "
                f"{old.identity_hash()} vs {cfg.identity_hash()}); choose another run folder "
                "or delete this one — nothing was changed"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = dataclasses.replace(cfg, model=cfg.model.resolved())
    write_json_atomic(run_dir / "config.json", to_dict(resolved))


def build_model(cfg: RunConfig) -> torch.nn.Module:
    """The raw network, initialised deterministically from the run's seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_network(cfg.model)


def default_source(cfg: RunConfig, data_root: Path | None = None) -> BatchSource:
    """Batches from the cached training split at ``data_root``, else rendered on the fly."""
    from ..scenes.dataset import SceneDataset
    from .data import CachedBatches, StreamBatches

    holdout = cfg.holdout_indices()
    if data_root is not None:
        return CachedBatches(SceneDataset(data_root, "train"), cfg.label_policy, cfg.seed, holdout)
    return StreamBatches(cfg.data, cfg.label_policy, cfg.seed, holdout)


def _with_sample_grids(cfg: RunConfig, run_dir: Path, then=None):
    """Checkpoint callback writing ``samples/grid-<images>.png`` whenever ``sample_every_images``
    has been crossed since the last grid, and at the end of training."""
    every, total = cfg.train.sample_every_images, cfg.train.total_images

    def on_checkpoint(ema_net, images_seen: int) -> None:
        from .sampling import training_grid

        grids = sorted((run_dir / "samples").glob("grid-*.png"))
        last = int(grids[-1].stem.split("-")[1]) if grids else 0
        if images_seen >= total or (every > 0 and images_seen // every > last // every):
            with torch.no_grad():
                training_grid(ema_net, cfg.data, images_seen, run_dir / "samples", cfg.train.sample_steps)
        if then is not None:
            then(ema_net, images_seen)

    return on_checkpoint


def training_loss(train: TrainConfig):
    """The EDM loss, plus the conditional-locality penalty when ``train.locality_penalty > 0``."""
    if train.locality_penalty == 0:
        return EDMLoss(p_mean=train.p_mean, p_std=train.p_std)
    from ..intervene.training import LocalityPenaltyLoss

    return LocalityPenaltyLoss(train.locality_penalty, train.locality_window_px, fraction=train.locality_fraction,
                               base=EDMLoss(p_mean=train.p_mean, p_std=train.p_std))


def train_run(
    cfg: RunConfig, run_dir: Path, source: BatchSource | None = None, data_root: Path | None = None,
    on_checkpoint=None, progress: bool = True,
) -> TrainResult:
    """Train (or resume) the run in ``run_dir``; see ``default_source`` for the data."""
    run_dir = Path(run_dir)
    source = source if source is not None else default_source(cfg, data_root)
    prepare_run_dir(cfg, run_dir)
    net = build_model(cfg)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        _log(run_dir, f"resume from {ckpt.name} ({read_state(ckpt)['images_seen']} images)")
    _log(run_dir, f"start: {cfg.name} arch={cfg.model.arch} policy={cfg.label_policy} "
                  f"params={sum(p.numel() for p in net.parameters())} torch={torch.__version__} "
                  f"host={platform.node()} threads={torch.get_num_threads()}")
    result = train_loop(
        run_dir, net, EDMPrecond, training_loss(cfg.train), source, cfg.train, cfg.seed, cfg.identity_hash(),
        on_checkpoint=_with_sample_grids(cfg, run_dir, on_checkpoint), progress=progress,
    )
    _log(run_dir, f"stop: {result}")
    return result


def load_denoiser(run_dir: Path, ema: bool = True) -> tuple[EDMPrecond, RunConfig]:
    """The trained Denoiser of a run (EMA weights by default) and its config."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"run {run_dir} has no checkpoint yet; train it first")
    net = build_network(cfg.model)
    load_weights(net, ckpt / ("ema.safetensors" if ema else "model.safetensors"))
    return EDMPrecond(net).eval().requires_grad_(False), cfg
