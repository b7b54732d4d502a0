"""A training run's folder as a trained model: its config and its Denoiser at a checkpoint (the
checkpoint files themselves are ``locodiff.checkpoints``)."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..checkpoints import latest_checkpoint, load_weights, no_checkpoint
from ..config import from_dict
from ..denoiser import Denoiser
from ..errors import CheckpointError, ConfigError
from ..layout import RUN_CONFIG
from ..models import as_denoiser, build_network
from .config import RunConfig


def read_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a locodiff run folder (no config.json)")
    try:
        return from_dict(RunConfig, json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    except ConfigError as e:
        raise CheckpointError(
            f"{path} does not describe a run this locodiff ({__version__}) can read, so it was probably made by "
            f"another version or edited by hand ({e}); train into a new folder, or use the version that made it"
        ) from None


def load_denoiser(run_dir: Path, ema: bool = True, checkpoint: Path | None = None) -> tuple[Denoiser, RunConfig]:
    """The trained Denoiser of a run (EMA weights by default, of the latest checkpoint unless
    ``checkpoint`` names another) and its config."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(no_checkpoint(run_dir))
    net = build_network(cfg.model)
    load_weights(net, ckpt / ("ema.safetensors" if ema else "model.safetensors"))
    return as_denoiser(net).eval().requires_grad_(False), cfg

