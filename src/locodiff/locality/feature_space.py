"""The feature-space experiments on a trained model (built on the engine ``feature_capture``):
do different conditioners move a block's features in orthogonal directions?

For each concept i (here: one conditioner at position i of a regular grid) the mean feature of a
block under that conditioning, minus the mean under the null conditioning, is the concept's
direction ``d_i = mu_i - mu_b``. Projective composition in feature space needs these directions
to be (near) orthogonal — each concept changes its own features and leaves the others' alone —
so the cosine matrix of the ``d_i`` should be close to the identity. The same noisy inputs are
used for every concept, so the differences come from the conditioner alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..conditioning import Conditioning, pixel_centers
from ..io import write_json_atomic
from ..layout import FEATURES
from .feature_capture import (
    Sensitivity,
    block_pixel_sensitivity,
    capture_features,
    cosine_matrix,
    feature_fn,
    input_sensitivity,
    mean_difference_vectors,
    replaced_block_fn,
    resolve_blocks,
)

FEATURES_FILE = FEATURES


def default_block(net: nn.Module) -> str:
    """The last block of a UNet's bottleneck (``middle.N``), else the middle block of a plain
    stack (``blocks.N``): a module that is itself called, so that its hook fires."""
    names = dict(net.named_modules())
    for container, pick in (("middle", lambda n: n - 1), ("blocks", lambda n: n // 2)):
        blocks = names.get(container)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
            return f"{container}.{pick(len(blocks))}"
    raise ValueError("no default feature block for this network; name one (see locality.feature_capture.block_names)")


STAGES = ("encoder", "middle", "decoder", "blocks")  # containers of a network's blocks (UNet; plain stack)
RESAMPLERS = ("conv_in", "downsample", "upsample")  # what else feeds a block


def feature_blocks(net: nn.Module, containers: Sequence[str] = STAGES) -> list[str]:
    """The modules a network's stages call, by name: members of ``containers`` reached through
    module lists only (``encoder.1.0``, ``middle.1``, ``blocks.3``), not their insides."""
    modules = dict(net.named_modules())
    lists = (nn.Sequential, nn.ModuleList)

    def called(name: str) -> bool:
        parts = name.split(".")
        return (parts[0] in containers and len(parts) > 1 and not isinstance(modules[name], lists)
                and all(isinstance(modules[".".join(parts[:i])], lists) for i in range(1, len(parts))))

    return [name for name in modules if name and called(name)]


def called_order(denoiser: nn.Module, x: Tensor, s: Tensor, cond: Conditioning, names: Sequence[str]) -> list[str]:
    """``names`` in the order a forward pass first calls them (uncalled ones left out)."""
    with torch.no_grad(), capture_features(denoiser.net, list(names)) as store:
        denoiser(x, s, cond)
    return list(store)  # the store fills as the blocks run


def grid_locations(n: int) -> Tensor:
    """[n*n, 2] cell centres of an n x n grid over the image, row by row."""
    c = pixel_centers(n)
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

    net = denoiser.net
    block = block or default_block(net)
    b = images.shape[0]
    x, s = _noisy(images, sigma, generator)
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


def _noisy(images: Tensor, sigma: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    x = images + sigma * torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return x, torch.full((images.shape[0],), float(sigma))


@torch.no_grad()
def attribute_concepts(denoiser: nn.Module, images: Tensor, sigma: float, colors: Sequence[int],
                       shapes: Sequence[int], block: str | None = None,
                       generator: torch.Generator | None = None,
                       heldout: Sequence[tuple[int, int]] = ()) -> dict:
    """Is a block's response to an object's colour and shape *additive* (a two-way decomposition)?

    ``mu[c, s]`` is the block's mean feature with one conditioner at the image centre with colour
    ``c`` and shape ``s`` (size and material index 0). Writing ``mu[c, s] = m + a_c + b_s + r_cs``
    (grand mean, colour effect, shape effect, interaction), a model whose features compose colour
    and shape has small interactions — a held-out pair's features are then predicted by the
    pairs it was trained on — and colour directions ``a_c`` orthogonal to shape directions
    ``b_s``. Returns the additive share of the variance ``1 - |r|^2 / |mu - m|^2``, the cosine
    matrices of ``a`` and of ``b``, the mean |cos| between the two families, and (with
    ``heldout`` (shape, colour) pairs) each pair's relative interaction, seen vs held out.
    """

    block = block or default_block(denoiser.net)
    mu = _attribute_means(denoiser, images, sigma, colors, shapes, block, generator)
    grand = mu.mean((0, 1))
    a, bs = mu.mean(1) - grand, mu.mean(0) - grand
    resid = mu - grand - a[:, None] - bs[None]
    total = (mu - grand).pow(2).sum()
    cross = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(bs, dim=1).T
    rel = resid.norm(dim=-1) / (mu - grand).norm(dim=-1).clamp_min(1e-30)  # [colors, shapes]
    held = {(int(sh), int(c)) for sh, c in heldout}
    is_held = torch.tensor([[(sh, c) in held for sh in shapes] for c in colors])

    def mean_or_none(values: Tensor) -> float | None:
        return float(values.mean()) if values.numel() else None

    def offdiag(cos: Tensor) -> float:
        return float(cos[~torch.eye(cos.shape[0], dtype=torch.bool)].abs().nanmean()) if len(cos) > 1 else 0.0

    cos_a, cos_b = cosine_matrix(a), cosine_matrix(bs)
    return {
        "block": block, "sigma": float(sigma), "colors": list(colors), "shapes": list(shapes),
        "additive_share": float(1 - resid.pow(2).sum() / total) if total > 0 else None,
        "color_cosine": cos_a.tolist(), "color_offdiag_abs_mean": offdiag(cos_a),
        "shape_cosine": cos_b.tolist(), "shape_offdiag_abs_mean": offdiag(cos_b),
        "color_shape_abs_cos_mean": float(cross.abs().mean()),
        "interaction": rel.tolist(),
        "interaction_seen_mean": mean_or_none(rel[~is_held]),
        "interaction_heldout_mean": mean_or_none(rel[is_held]),
    }


def _attribute_means(denoiser: nn.Module, images: Tensor, sigma: float, colors: Sequence[int],
                     shapes: Sequence[int], block: str, generator: torch.Generator | None) -> Tensor:
    """[colors, shapes, features]: the block's mean feature with one centred object of each pair."""
    x, s = _noisy(images, sigma, generator)
    b = images.shape[0]
    centre, present = torch.full((b, 1, 2), 0.5), torch.ones(b, 1, dtype=torch.bool)
    mu = []
    for c in colors:
        for sh in shapes:
            attrs = torch.tensor([c, sh, 0, 0]).expand(b, 1, 4).clone()  # (color, shape, size, material)
            with capture_features(denoiser.net, block) as store:
                denoiser(x, s, Conditioning(centre, present, attrs))
            mu.append(store[block].double().reshape(b, -1).mean(0))
    return torch.stack(mu).reshape(len(colors), len(shapes), -1)


def feature_conditional_locality(denoiser: nn.Module, images: Tensor, cond: Conditioning, sigma: float,
                                 radius_px: float, block: str | None = None,
                                 generator: torch.Generator | None = None) -> dict:
    """Conditional locality *inside* the network: how much of each conditioner's effect on a
    block's feature map (|d features / d location|, forward mode, all feature pixels) falls
    within ``radius_px`` image pixels of the conditioner's own location.

    The share is 1 for a conditioner that only touches the features near where it points and
    about the area fraction of the disc for one that reaches everywhere. Returns the mean over
    conditioners (and test scenes), the chance level for the same discs, and the map size.
    """

    net = denoiser.net
    block = block or default_block(net)
    x, s = _noisy(images, sigma, generator)
    loc = cond.locations.detach()
    f = feature_fn(net, block, lambda theta: denoiser(x, s, cond.with_locations(theta)))
    sens = input_sensitivity(f, loc, how=Sensitivity(mode="forward"))  # [B, K, h, w]
    share, area = share_within(sens.double().pow(2), loc, images.shape[-1], radius_px)
    h, w = sens.shape[-2:]
    valid = cond.mask & (sens.pow(2).sum((2, 3)) > 0)
    return {"block": block, "sigma": float(sigma), "radius_px": float(radius_px), "feature_map": [h, w],
            "mass_within": float(share[valid].mean()) if valid.any() else None,
            "chance": float(area[valid].mean()) if valid.any() else None,
            "conditioners": int(valid.sum())}


def previous_block(block: str) -> str | None:
    """The block before ``block`` in its container (``middle.1`` -> ``middle.0``), if any."""
    container, _, index = block.rpartition(".")
    if not index.isdigit() or int(index) == 0:
        return None
    return f"{container}.{int(index) - 1}" if container else str(int(index) - 1)


def share_within(energy: Tensor, centres: Tensor, side: int, radius_px: float) -> tuple[Tensor, Tensor]:
    """Share of each map's energy ``[..., h, w]`` within ``radius_px`` image pixels of its centre
    ``[..., 2]`` (x, y in [0, 1]), and the area share of that disc (chance)."""
    h, w = energy.shape[-2:]
    ys, xs = pixel_centers(h), pixel_centers(w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    dist = ((gx - centres[..., 0, None, None]).pow(2) + (gy - centres[..., 1, None, None]).pow(2)).sqrt() * side
    inside = (dist <= radius_px).double()
    total = energy.sum((-2, -1))
    return (energy * inside).sum((-2, -1)) / total.clamp_min(1e-300), inside.mean((-2, -1))


BLOCK_PIXELS, BLOCK_PROBES = 8, 4  # feature pixels per image, random output projections per pixel


def block_locality(denoiser: nn.Module, images: Tensor, cond: Conditioning, spec: FeatureSpec,
                   block: str | None = None, source: str | None = None, update: bool | None = None) -> dict | None:
    """Spatial locality *between blocks*: for sampled feature pixels of ``block``, the share of
    their dependence on the previous block's feature map (``source``) that lies within
    ``spec.radius_px`` image pixels at ``spec.sigma`` (Jacobian through the block, output channels
    folded by random projections). For a residual block (``update=True``; by default when the block's module says
    ``residual = True`` and keeps its input's shape) its *update* (output minus input) is
    measured, so the skip path's identity does not make every block look local. Convolutions
    give 1 at a radius covering their kernel; attention over the whole map spreads it. None when
    ``block`` has no previous block."""

    net = denoiser.net
    block = block or default_block(net)
    source = source or previous_block(block)
    if source is None:
        return None
    generator, radius_px = spec.generator(), spec.radius_px
    x, s = _noisy(images, spec.sigma, generator)
    with torch.no_grad(), capture_features(net, [source, block]) as store:
        denoiser(x, s, cond)
    theta, out = store[source], store[block]
    b, _, h, w = out.shape
    flat = torch.stack([torch.randperm(h * w, generator=generator)[:BLOCK_PIXELS] for _ in range(b)])  # [B, P]
    if update is None:
        module = resolve_blocks(net, [block])[block]
        update = bool(getattr(module, "residual", False)) and theta.shape == out.shape
    fn = replaced_block_fn(net, source, block, lambda: denoiser(x, s, cond), update=update)
    rows_cols = torch.stack([flat // w, flat % w], -1)  # [B, P, 2]
    sens = block_pixel_sensitivity(fn, theta, rows_cols, probes=BLOCK_PROBES, generator=generator)  # [B, P, hs, ws]
    centres = torch.stack([(flat % w + 0.5) / w, (flat // w + 0.5) / h], -1)
    share, chance = share_within(sens.double().pow(2), centres, images.shape[-1], radius_px)
    return {"block": block, "source": source, "measured": "update" if update else "output",
            "radius_px": float(radius_px), "feature_map": [h, w],
            "source_map": list(theta.shape[-2:]), "mass_within": float(share.mean()),
            "chance": float(chance.mean()), "pixels": int(share.numel())}


@dataclass(frozen=True)
class FeatureSpec:
    """What ``feature_run`` measures: location concepts on a ``grid`` x ``grid`` lattice at noise
    level ``sigma``; colour x shape decomposition when ``colors`` and ``shapes`` are given (with
    the ``heldout`` (shape, colour) pairs marked); feature-space locality within ``radius_px``."""

    sigma: float
    grid: int
    seed: int
    colors: tuple[int, ...] = ()
    shapes: tuple[int, ...] = ()
    heldout: tuple[tuple[int, int], ...] = ()
    radius_px: float | None = None

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


def colour_per_block(denoiser: nn.Module, images: Tensor, cond: Conditioning, spec: FeatureSpec) -> list[dict]:
    """What the colour claim reads, at every block (``feature_blocks``): the mean |cos| between
    colour concept directions and between colour effects (the colour x shape decomposition), and
    the locality of the block's dependence on the module called just before it (none for the first)."""
    net, blocks = denoiser.net, feature_blocks(denoiser.net)
    feeders = [name for name in dict(net.named_modules()) if name.split(".")[0] in RESAMPLERS and name.count(".") <= 1]
    order = called_order(denoiser, *_noisy(images, spec.sigma, spec.generator()), cond, [*feeders, *blocks])
    rows = []
    for block in (b for b in order if b in blocks):
        concepts = concept_cosines(denoiser, images, spec.sigma, block, grid=1, generator=spec.generator(),
                                   colors=spec.colors)["colors"]
        effects = attribute_concepts(denoiser, images, spec.sigma, spec.colors, spec.shapes, block=block,
                                     generator=spec.generator(), heldout=spec.heldout)
        source = order[order.index(block) - 1] if order.index(block) else None
        between = (block_locality(denoiser, images, cond, spec, block=block, source=source) if source else None) or {}
        rows.append({"block": block, "source": source, "concept_abs_cos": concepts["offdiag_abs_mean"],
                     "effect_abs_cos": effects.get("color_offdiag_abs_mean"),
                     "mass_within": between.get("mass_within"), "chance": between.get("chance")})
    return rows


def feature_run(folder: Path, denoiser: nn.Module, images: Tensor, spec: FeatureSpec,
                cond: Conditioning | None = None) -> Path:
    """Write ``features.json`` into a probe folder (a note only, for denoisers without a ``net``):
    location concept cosines, colour x shape decomposition and, given ``cond``, feature-space
    conditional locality; for a model that reads colours and shapes, the colour claim's numbers at
    every block as well (``per_block``)."""
    path = Path(folder) / FEATURES_FILE
    if path.is_file():
        return path
    if not hasattr(denoiser, "net"):  # recorded, so that the probe counts as complete
        write_json_atomic(path, {"skipped": f"{type(denoiser).__name__} has no .net whose blocks could be hooked"})
        return path
    result = concept_cosines(denoiser, images, spec.sigma, grid=spec.grid, generator=spec.generator(),
                             colors=spec.colors)
    if spec.colors and spec.shapes:
        result["attributes"] = attribute_concepts(denoiser, images, spec.sigma, spec.colors, spec.shapes,
                                                  generator=spec.generator(), heldout=spec.heldout)
    if cond is not None and spec.radius_px is not None and bool(cond.mask.any()):
        result["conditional_locality"] = feature_conditional_locality(
            denoiser, images, cond, spec.sigma, spec.radius_px, generator=spec.generator())
        between = block_locality(denoiser, images, cond, spec)
        if between is not None:
            result["block_locality"] = between
        if spec.colors and spec.shapes:
            result["per_block"] = colour_per_block(denoiser, images, cond, spec)
    write_json_atomic(path, result)
    return path


def load_features(folder: Path) -> dict | None:
    """The feature-space results of a probe folder; None when absent or skipped."""
    path = Path(folder) / FEATURES_FILE
    result = json.loads(path.read_text()) if path.is_file() else None
    return None if result is None or "skipped" in result else result


def pair_means(matrix: list, colors: list, shapes: list, pairs: set[tuple[int, int]]) -> dict[str, float | None]:
    """Mean of a [colour][shape] matrix over the listed (shape, colour) pairs and over the rest."""
    inside = [matrix[i][j] for i, c in enumerate(colors) for j, s in enumerate(shapes) if (s, c) in pairs]
    outside = [matrix[i][j] for i, c in enumerate(colors) for j, s in enumerate(shapes) if (s, c) not in pairs]
    return {"in": float(np.mean(inside)) if inside else None, "out": float(np.mean(outside)) if outside else None}
