"""Composition in feature space: do different conditioners move a block's features in
orthogonal directions?

For each concept i (here: one conditioner at position i of a regular grid) the mean feature of a
block under that conditioning, minus the mean under the null conditioning, is the concept's
direction ``d_i = mu_i - mu_b``. Projective composition in feature space needs these directions
to be (near) orthogonal — each concept changes its own features and leaves the others' alone —
so the cosine matrix of the ``d_i`` should be close to the identity. The same noisy inputs are
used for every concept, so the differences come from the conditioner alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ..conditioning import Conditioning
from ..io import write_json_atomic

FEATURES_FILE = "features.json"


def default_block(net: nn.Module) -> str:
    """The last block of a UNet's bottleneck (``middle.N``), else the middle block of a plain
    stack (``blocks.N``): a module that is itself called, so that its hook fires."""
    names = dict(net.named_modules())
    for container, pick in (("middle", lambda n: n - 1), ("blocks", lambda n: n // 2)):
        blocks = names.get(container)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
            return f"{container}.{pick(len(blocks))}"
    raise ValueError("no default feature block for this network; name one (see adapters.block_names)")


def grid_locations(n: int) -> Tensor:
    """[n*n, 2] cell centres of an n x n grid over the image, row by row."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1)


@torch.no_grad()
def concept_cosines(denoiser: nn.Module, images: Tensor, sigma: float, block: str | None = None,
                    grid: int = 3, generator: torch.Generator | None = None,
                    colors: Sequence[int] = ()) -> dict:
    """Cosine matrices of concept directions at ``block`` of ``denoiser.net`` (an ``EDMPrecond``).

    Location concepts: one conditioner at each cell of a ``grid`` x ``grid`` lattice. With
    ``colors`` (palette indices, for a model that reads attributes) also colour concepts: one
    conditioner at the image centre with each colour (shape, size and material fixed to index 0).
    """
    from ..adapters.features import capture_features, cosine_matrix, mean_difference_vectors

    net = denoiser.net
    block = block or default_block(net)
    b = images.shape[0]
    x = images + sigma * torch.randn(images.shape, generator=generator, dtype=images.dtype)
    s = torch.full((b,), float(sigma))
    present = torch.ones(b, 1, dtype=torch.bool)

    def features(cond: Conditioning) -> Tensor:
        with capture_features(net, block) as store:
            denoiser(x, s, cond)
        if block not in store:
            raise ValueError(f"block {block!r} did not run in the forward pass; choose one that is called")
        return store[block].float()

    def summary(concepts: list[Tensor]) -> dict:
        cos = cosine_matrix(mean_difference_vectors(concepts, background))
        off = cos[~torch.eye(cos.shape[0], dtype=torch.bool)]
        return {"cosine": cos.tolist(), "offdiag_abs_mean": float(off.abs().nanmean())}

    background = features(Conditioning.empty(b))
    locations = grid_locations(grid)
    out = {"block": block, "sigma": float(sigma), "grid": grid, "locations": locations.tolist(),
           **summary([features(Conditioning(loc.expand(b, 1, 2).clone(), present)) for loc in locations])}
    if colors:
        centre = torch.full((b, 1, 2), 0.5)
        concepts = []
        for c in colors:
            attrs = torch.tensor([c, 0, 0, 0]).expand(b, 1, 4).clone()  # (color, shape, size, material)
            concepts.append(features(Conditioning(centre, present, attrs)))
        out["colors"] = {"palette": list(colors), **summary(concepts)}
    return out


def feature_run(folder: Path, denoiser: nn.Module, images: Tensor, sigma: float, grid: int, seed: int,
                colors: Sequence[int] = ()) -> Path | None:
    """Write ``features.json`` into a probe folder (skipped for denoisers without a ``net``)."""
    path = Path(folder) / FEATURES_FILE
    if path.is_file() or not hasattr(denoiser, "net"):
        return path if path.is_file() else None
    result = concept_cosines(denoiser, images, sigma, grid=grid, generator=torch.Generator().manual_seed(seed),
                             colors=colors)
    write_json_atomic(path, result)
    return path


def load_features(folder: Path) -> dict | None:
    path = Path(folder) / FEATURES_FILE
    return json.loads(path.read_text()) if path.is_file() else None
