"""Load a diffusers UNet (Stable Diffusion 1.x/2.x, SDXL, a saved locodiff text model) from a local
folder as a locodiff ``Denoiser`` (``models.diffusers_unet.DiffusersDenoiser``). diffusers itself
is imported only here, when loading from disk, so ``import locodiff`` works without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..conditioning import Prompt
from ..errors import CheckpointError, InputError
from ..io import notice
from ..models.diffusers_unet import SCHEDULER_FILE, DiffusersDenoiser, PredictionType, TimestepMode

# ----- loading from disk ---------------------------------------------------------------------


def load_diffusers_unet(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    *,
    prompt: Prompt | None = None,
    prediction_type: PredictionType | None = None,
    timestep: TimestepMode = "interpolate",
    allow_pickle: bool = False,
) -> DiffusersDenoiser:
    """Load a UNet and its scheduler from a local directory, never from the network.

    ``path`` is a pipeline folder (``unet/config.json`` + weights, ``scheduler/
    scheduler_config.json``) or a UNet folder (``config.json`` + weights) with the scheduler
    config beside it, in ``scheduler/`` below it, or in ``../scheduler``. Weights must be
    safetensors: a ``.bin`` file is a pickle, and unpickling a file from someone else can run
    their code; ``allow_pickle=True`` (``--allow-pickle``) loads one anyway, with a warning.
    """
    root = Path(path).expanduser()
    subfolder, unet_dir, scheduler_file = _find_unet(root)
    try:
        from diffusers import UNet2DConditionModel
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InputError(
            "loading a diffusers UNet needs the diffusers package: "
            "pip install 'locodiff[diffusers]'"
        ) from e
    use_safetensors = _check_weights(unet_dir, allow_pickle)
    try:
        unet = UNet2DConditionModel.from_pretrained(
            str(root), subfolder=subfolder, torch_dtype=dtype, local_files_only=True, use_safetensors=use_safetensors,
        )
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"could not load UNet weights from {unet_dir}: expected config.json and "
            f"diffusion_pytorch_model.safetensors there ({e})"
        ) from e
    scheduler = load_scheduler(scheduler_file)
    unet = unet.to(device).eval()  # type: ignore[union-attr]
    if prompt is not None:
        prompt = prompt.to(device=device)
    return DiffusersDenoiser(
        unet, scheduler, prompt, prediction_type=prediction_type, timestep=timestep
    ).eval()


def _find_unet(root: Path) -> tuple[str | None, Path, Path]:
    """(subfolder, UNet folder, scheduler config) of a pipeline or UNet folder, or one clear error."""
    if not root.is_dir():
        raise CheckpointError(
            f"model directory {root} does not exist; expected a local diffusers pipeline folder "
            "(unet/ and scheduler/) or a UNet folder (config.json + weights)"
        )
    if (root / "unet" / "config.json").is_file():
        subfolder, unet_dir, scheduler_dirs = "unet", root / "unet", [root / "scheduler"]
    elif (root / "config.json").is_file():
        subfolder, unet_dir = None, root
        scheduler_dirs = [root, root / "scheduler", root.parent / "scheduler"]
    else:
        raise CheckpointError(
            f"no UNet config in {root}: expected {root / 'unet' / 'config.json'} (pipeline "
            f"folder) or {root / 'config.json'} (UNet folder)"
        )
    scheduler_file = next((d / SCHEDULER_FILE for d in scheduler_dirs if (d / SCHEDULER_FILE).is_file()), None)
    if scheduler_file is None:
        looked = ", ".join(str(d / SCHEDULER_FILE) for d in scheduler_dirs)
        raise CheckpointError(f"no scheduler config for {root}: looked for {looked}")
    return subfolder, unet_dir, scheduler_file


def _check_weights(unet_dir: Path, allow_pickle: bool) -> bool:
    """Whether to load safetensors; pickled weights only when allowed, with a word to the user."""
    has_safetensors = any(unet_dir.glob("*.safetensors"))
    if not has_safetensors and any(unet_dir.glob("*.bin")):
        if not allow_pickle:
            raise CheckpointError(
                f"{unet_dir} holds only pickled weights (.bin); unpickling can run code from whoever made "
                "the file. Convert them to safetensors, or pass --allow-pickle if you trust the source"
            )
        notice(f"loading pickled weights from {unet_dir} (--allow-pickle): only do this for files you trust")
    return not (allow_pickle and not has_safetensors)


def load_scheduler(config_file: str | Path) -> Any:
    """Build the scheduler named by ``_class_name`` in a ``scheduler_config.json``."""
    config_file = Path(config_file)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read scheduler config {config_file}: {e}") from e
    import diffusers

    name = config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise InputError(f"{config_file}: unknown scheduler class {name!r}")
    scheduler = cls.from_config(config)
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise InputError(
            f"{config_file}: scheduler {name} has no alphas_cumprod; expected a DDPM-family "
            "scheduler (flow-matching models are not supported)"
        )
    return scheduler
