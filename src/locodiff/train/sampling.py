"""Sampling from a trained run: grids for people, tensors for further analysis."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..conditioning import Conditioning
from ..config import config_hash
from ..diffusion import ClassifierFreeGuidance
from ..models import as_denoiser
from ..imaging import image_grid, save_png
from ..io import atomic_path, save_tensors
from ..scenes.conditioners import make_conditioning
from ..scenes.config import DataConfig
from ..scenes.dataset import SceneSource
from ..scenes.scene import SceneBatch
from ..diffusion.samplers import sample_in_batches


def requested_scenes(
    data: DataConfig, counts: Sequence[int], per_count: int, seed: int
) -> tuple[torch.Tensor, Conditioning]:
    """Ground-truth renders and their all-objects conditionings: ``per_count`` scenes per k.

    The scenes follow the data set's placement rules (separated, visible), so the requested
    locations are ones a real scene can have. Returns images in [-1, 1] and the conditioning.
    """
    ks = torch.tensor(list(counts)).repeat_interleave(per_count)
    slots = max(max(counts), 1)
    batch = SceneSource(data).render(ks, torch.Generator().manual_seed(seed), slots)

    cond = make_conditioning(SceneBatch.from_tensors(batch), batch["centers"], "all")
    return batch["images"].float() / 127.5 - 1.0, cond


@torch.no_grad()
def generate(denoiser, cond: Conditioning, resolution: int, steps: int = 18, guidance: float = 1.0,
             seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """Heun samples for every row of ``cond`` (in chunks), images in [-1, 1]."""
    model = denoiser if guidance == 1.0 else ClassifierFreeGuidance(denoiser, guidance)
    params = getattr(denoiser, "parameters", None)
    device = next(params()).device if params is not None and any(True for _ in params()) else torch.device("cpu")
    batches = sample_in_batches(model, cond, resolution, steps, torch.Generator().manual_seed(seed), batch_size,
                                device=device)
    return torch.cat([images.cpu() for _, _, images in batches])


GRID_COUNTS = (1, 2, 3, 5, 8)  # a training-time grid: the trained range and two counts beyond


def training_grid(net, data: DataConfig, images_seen: int, out_dir: Path, steps: int, per_count: int = 6) -> Path:
    """Samples of the current EMA weights for a few counts, one row per count:
    ``out_dir/grid-<images>.png`` (the same requested scenes at every point of training)."""

    denoiser = as_denoiser(net).eval()
    _, cond = requested_scenes(data, GRID_COUNTS, per_count, seed=0)
    images = generate(denoiser, cond, data.resolution, steps, seed=0)
    scale = max(1, 96 // data.resolution)
    return save_png(image_grid(images, nrow=per_count, scale=scale), Path(out_dir) / f"grid-{images_seen:010d}.png")


@dataclass(frozen=True)
class SampleRequest:
    """What ``locodiff sample`` was asked: explicit ``locations`` (one image's (x, y) list, drawn
    ``per_count`` times) or test scenes with each of ``counts`` objects."""

    locations: tuple[tuple[float, float], ...] | None
    counts: tuple[int, ...] = (1, 2, 3)
    per_count: int = 8
    steps: int = 18
    guidance: float = 1.0
    seed: int = 0

    def name(self) -> str:
        """A file name stem that says what was asked: ``samples-k1-3-<hash>`` or
        ``samples-locations-<hash>``, the hash over every option, so two requests never share one."""
        what = "locations" if self.locations is not None else "k" + "-".join(map(str, self.counts))
        return f"samples-{what}-{config_hash(asdict(self))[:8]}"


def sample_run(denoiser, data: DataConfig, out: Path, request: SampleRequest) -> list[Path]:
    """Sample ``denoiser`` (a run's or an intervention's) as ``request`` asks: a PNG grid (one row
    per count) and the images, locations and mask in a .safetensors file, named by the request."""
    res = data.resolution
    if request.locations is not None:
        cond = Conditioning.from_lists([list(request.locations)] * request.per_count)
        rows = 1
    else:
        _, cond = requested_scenes(data, request.counts, request.per_count, request.seed)
        rows = len(request.counts)
    images = generate(denoiser, cond, res, request.steps, request.guidance, request.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = save_png(image_grid(images, nrow=len(images) // rows, scale=max(1, 128 // res)),
                   out / f"{request.name()}.png")
    tensors = out / f"{request.name()}.safetensors"
    with atomic_path(tensors) as tmp:
        save_tensors({"images": images.contiguous(), "locations": cond.locations.contiguous(),
                      "mask": cond.mask.contiguous()}, str(tmp))
    return [png, tensors]
