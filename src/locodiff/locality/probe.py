"""The locality probe: noisy inputs -> Jacobians -> statistics -> one ``LocalityResult``.

``probe_locality`` is what ``locodiff locality RUN`` calls. For every noise level and batch of
scenes it builds ``x_t = x0 + sigma * noise``, takes Jacobian rows at a random sample of output
pixels (pixel locality) and the Jacobian w.r.t. every conditioner's location (conditional
locality), and keeps per-pixel / per-conditioner statistics. Summaries with confidence intervals
(clustered by scene) are computed at the end and can be recomputed from the saved arrays.

Common random numbers: one noise image per scene and one set of probe pixels per scene are drawn
once and reused at every sigma, so differences between noise levels are not sampling noise.

Why the score is the default target: at low noise a good denoiser is close to the identity,
``D(x) ~ x``, so the x0-prediction's Jacobian is dominated by a trivial diagonal at every pixel;
the score ``(D(x) - x) / sigma^2`` subtracts it and keeps what the model actually computes.
(For an *untrained* or toy network that is not near the identity, it is the score that gains
the diagonal ``-I / sigma^2``; use ``target="x0"`` there.) Conditioner sensitivities differ
between the two targets only by the factor ``1 / sigma^2``, so shares and the index agree.

The headline radius (``radius``, 4 px by default, sized for 32x32 scenes) should be about an
object's radius in pixels; the mass curves at all ``radii`` are kept either way.

A result saves as ``summary.json`` (everything but the arrays) and ``maps.safetensors`` (raw
maps and per-unit statistics), both written atomically; ``LocalityResult.load`` reads them back
and the figures in ``locality.figures`` draw from either.
"""

from __future__ import annotations

import json
import os
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from ..conditioning import Conditioning
from ..denoiser import Denoiser
from ..io import atomic_path, notice, sha256_file, write_json_atomic
from ..layout import PROBE_SUMMARY
from . import stats
from .jacobian import (
    Channels,
    InputError,
    Mode,
    Target,
    as_image_batch,
    conditioner_sensitivity,
    full_pixel_jacobian,
    pixel_jacobian,
    presence_effect,
)
from .stats import CIMethod, Estimate, IndexSummary

DEFAULT_QUANTILES = (0.5, 0.9, 0.99)
SUMMARY_FILE = PROBE_SUMMARY
MAPS_FILE = "maps.safetensors"
# Arrays with a conditioner-slot axis, and where that axis is (for merging results).
_SLOT_AXIS = {
    "locations": 1, "mask": 1, "chance": 1, "cond_sensitivity": 2, "own_share": 2,
    "cond_valid": 2, "cond_inert": 2, "presence_share": 2, "presence_valid": 2, "presence_inert": 2,
}
_MAP_KEYS = ("pixel_energy", "cond_sensitivity")


def default_radii(height: int, width: int) -> list[float]:
    """Radii (pixels) at which mass curves are tabulated: fine near 0, coarser further out."""
    steps = [0, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    diag = math.hypot(height, width)
    return [float(r) for r in steps if r < diag] + [float(math.ceil(diag))]


def sample_pixels(
    height: int,
    width: int,
    n: int,
    generator: torch.Generator,
    batch: int = 1,
    stratified: bool = True,
) -> Tensor:
    """``[batch, n, 2]`` (row, col): ``n`` distinct random pixels per image (all if n >= H*W).

    ``stratified`` (when ``n <= min(H, W)``) draws a Latin hypercube: the rows fall one into each
    of ``n`` equal horizontal bands, the columns one into each vertical band, paired at random.
    Border and interior pixels then appear in their true proportions in every sample, which cuts
    the spread of sampled means (about 20% smaller errors on a UNet's mass fractions than plain
    sampling without replacement, which is used otherwise).
    """
    n = min(n, height * width)
    dev = generator.device
    if n < 0:
        raise InputError(f"n={n} pixels: expected >= 0")
    if stratified and 0 < n <= min(height, width):
        rows = _one_per_band(height, n, batch, generator)
        cols = _one_per_band(width, n, batch, generator)
        pairing = torch.rand(batch, n, generator=generator, device=dev).argsort(-1)
        return torch.stack([rows, cols.gather(1, pairing)], dim=-1)
    keys = torch.rand(batch, height * width, generator=generator, device=dev)
    flat = keys.argsort(-1)[:, :n].sort(-1).values
    return stats.flat_to_rows_cols(flat, width)


def _one_per_band(size: int, n: int, batch: int, generator: torch.Generator) -> Tensor:
    """[batch, n] indices in 0..size-1, one drawn uniformly from each of n contiguous bands."""
    k = torch.arange(n + 1, device=generator.device)
    edges = (k * size + n - 1) // n  # band k holds indices edges[k] .. edges[k+1]-1
    lo, width = edges[:-1], edges[1:] - edges[:-1]
    u = torch.rand(batch, n, generator=generator, device=generator.device)
    return lo + (u * width).long().clamp_max(width - 1)


# ----- result types --------------------------------------------------------------------------


@dataclass
class SigmaSummary:
    """Summary statistics at one noise level (``Estimate``s are pooled means with CIs)."""

    sigma: float
    mass_fraction: list[Estimate]  # F(r) for each r in radii
    effective_radius: list[Estimate]  # for each quantile
    own_share: list[Estimate]  # rho(r) for each r in radii
    index: IndexSummary  # conditional-locality index at the headline radius
    nearest_share: Estimate
    # the same index of each conditioner's presence effect (removal, not a move); None in results
    # saved before it was measured
    presence_index: IndexSummary | None = None

    def to_dict(self) -> dict:
        return {
            "sigma": self.sigma,
            "mass_fraction": [e.to_dict() for e in self.mass_fraction],
            "effective_radius": [e.to_dict() for e in self.effective_radius],
            "own_share": [e.to_dict() for e in self.own_share],
            "index": self.index.to_dict(),
            "nearest_share": self.nearest_share.to_dict(),
            **({"presence_index": self.presence_index.to_dict()} if self.presence_index else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SigmaSummary":
        return cls(
            sigma=d["sigma"],
            mass_fraction=[Estimate.from_dict(e) for e in d["mass_fraction"]],
            effective_radius=[Estimate.from_dict(e) for e in d["effective_radius"]],
            own_share=[Estimate.from_dict(e) for e in d["own_share"]],
            index=IndexSummary.from_dict(d["index"]),
            nearest_share=Estimate.from_dict(d["nearest_share"]),
            presence_index=IndexSummary.from_dict(d["presence_index"]) if "presence_index" in d else None,
        )


@dataclass
class LocalityResult:
    """Everything a locality probe measured. ``summaries`` has one entry per sigma; ``arrays``
    holds per-unit statistics and (unless dropped) raw maps:

    - ``images`` [B,C,H,W] clean inputs, ``locations`` [B,N,2], ``mask`` [B,N],
      ``scene_group`` [B] (cluster label for confidence intervals), ``pixels`` [B,M,2];
    - ``mass_fraction`` [S,B,M,R], ``effective_radius`` [S,B,M,Q], ``gradient_energy`` [S,B,M];
    - ``own_share`` [S,B,N,R], ``chance`` [B,N,R], ``cond_valid``/``cond_inert`` [S,B,N],
      ``nearest_share`` [S,B];
    - maps: ``pixel_energy`` [S,B,M,H,W] (Jacobian-row energy per input pixel),
      ``cond_sensitivity`` [S,B,N,H,W] (``|d s_i / d c_k|``).
    """

    sigmas: list[float]
    radii: list[float]
    radius: float
    quantiles: list[float]
    target: str
    channels: str
    summaries: list[SigmaSummary]
    arrays: dict[str, Tensor] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able summary (no arrays)."""
        return {
            "sigmas": self.sigmas,
            "radii": self.radii,
            "radius": self.radius,
            "quantiles": self.quantiles,
            "target": self.target,
            "channels": self.channels,
            "summaries": [s.to_dict() for s in self.summaries],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict, arrays: dict[str, Tensor] | None = None) -> "LocalityResult":
        return cls(
            d["sigmas"], d["radii"], d["radius"], d["quantiles"], d["target"], d["channels"],
            [SigmaSummary.from_dict(s) for s in d["summaries"]], arrays or {}, d.get("meta", {}),
        )

    def save(self, directory: str | Path) -> Path:
        """Write ``summary.json`` and ``maps.safetensors`` into ``directory`` (atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / MAPS_FILE) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.arrays.items()}, str(tmp))
        maps = directory / MAPS_FILE
        record = {MAPS_FILE: {"bytes": maps.stat().st_size, "sha256": sha256_file(maps)}}
        write_json_atomic(directory / SUMMARY_FILE, {**self.to_dict(), "files": record})  # written last
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "LocalityResult":
        directory = Path(directory)
        summary = json.loads((directory / SUMMARY_FILE).read_text())
        maps = directory / MAPS_FILE
        arrays = load_file(str(maps)) if maps.exists() else {}
        return cls.from_dict(summary, arrays)

    def index_curve(self) -> dict[str, list[float]]:
        """Conditional-locality index vs sigma: ``sigma, mean, lo, hi, chance`` lists."""
        return {
            "sigma": self.sigmas,
            "mean": [s.index.index.mean for s in self.summaries],
            "lo": [s.index.index.lo for s in self.summaries],
            "hi": [s.index.index.hi for s in self.summaries],
            "chance": [s.index.chance.mean for s in self.summaries],
        }

    def radius_curve(self, quantile: float) -> dict[str, list[float]]:
        """Effective radius at ``quantile`` vs sigma: ``sigma, mean, lo, hi`` lists."""
        q = _index_of(self.quantiles, quantile, "quantile")
        ests = [s.effective_radius[q] for s in self.summaries]
        return {
            "sigma": self.sigmas,
            "mean": [e.mean for e in ests],
            "lo": [e.lo for e in ests],
            "hi": [e.hi for e in ests],
        }


def _index_of(values: Sequence[float], value: float, name: str) -> int:
    for i, v in enumerate(values):
        if abs(v - value) < 1e-9:
            return i
    raise InputError(f"{name} {value} not among {list(values)}")


# ----- the probe -----------------------------------------------------------------------------


def probe_locality(
    denoiser: Denoiser,
    images: Tensor,
    conds: Conditioning,
    sigmas: Sequence[float],
    n_pixels: int,
    generator: torch.Generator,
    *,
    target: Target = "score",
    channels: Channels = "each",
    radius: float = 4.0,
    radii: Sequence[float] | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    add_noise: bool = True,
    pixels: Tensor | None = None,
    batch_size: int = 8,
    chunk_size: int = 64,
    conditioner_mode: Mode = "forward",
    move_jacobians: bool = True,
    inert_tol: float = 0.0,
    ci: CIMethod = "bootstrap",
    n_boot: int = 1000,
    level: float = 0.95,
    keep_maps: bool = True,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> LocalityResult:
    """Measure pixel and conditional locality of ``denoiser`` on ``images`` [B,C,H,W] (clean
    scenes in [-1, 1]; with ``add_noise=False`` they are used as ``x_t`` as they are) conditioned
    on ``conds`` (batch B), at each noise level in ``sigmas``.

    ``n_pixels`` output pixels per scene are probed (drawn with ``generator``; or give ``pixels``
    [B,M,2] yourself); ``radius`` is the headline radius (pixels) of the conditional-locality
    index; ``radii`` the radii of the mass curves (``radius`` is added if missing). Put the model
    in ``eval()`` mode first. Progress is shown over sigmas x scene batches.
    ``move_jacobians=False`` skips the location Jacobians (the move index is then undefined) for a
    denoiser that reads locations only through discrete words, whose Jacobian is zero anyway;
    the presence index is measured either way.
    """
    images = as_image_batch(images)
    b, _, h, w = images.shape
    if conds.batch_size != b:
        raise InputError(f"{conds.batch_size} conditionings for {b} images; expected equal")
    if len(sigmas) == 0 or min(sigmas) <= 0:
        raise InputError(f"sigmas={list(sigmas)}: expected a non-empty list of positive values")
    radii = sorted(set(float(r) for r in (radii or default_radii(h, w))) | {float(radius)})
    quantiles = [float(q) for q in quantiles]
    if pixels is None:
        pixels = sample_pixels(h, w, n_pixels, generator, batch=b)
    pixels = torch.as_tensor(pixels).long().to(images.device)
    noise = _draw_noise(images, generator) if add_noise else torch.zeros_like(images)

    per_sigma: list[dict[str, Tensor]] = []
    bar = tqdm(total=len(sigmas) * math.ceil(b / batch_size), desc="locality", disable=not progress)
    for sigma in sigmas:
        parts = []
        for start in range(0, b, batch_size):
            sl = slice(start, min(start + batch_size, b))
            x_t = images[sl] + float(sigma) * noise[sl]
            parts.append(
                _probe_batch(
                    denoiser, x_t, float(sigma), conds[sl], pixels[sl], radii, quantiles,
                    target, channels, chunk_size, conditioner_mode if move_jacobians else None, inert_tol,
                )
            )
            bar.update(1)
        per_sigma.append({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    bar.close()

    arrays = _stack_arrays(per_sigma, images, conds, pixels, radii)
    if not keep_maps:
        for k in _MAP_KEYS:
            arrays.pop(k)
    result = LocalityResult(
        sigmas=[float(s) for s in sigmas], radii=radii, radius=float(radius), quantiles=quantiles,
        target=target, channels=channels, summaries=[], arrays=arrays,
        meta={"n_scenes": b, "n_pixels": int(pixels.shape[1]), "height": h, "width": w,
              "add_noise": add_noise, "conditioner_mode": conditioner_mode, **(meta or {})},
    )
    result.summaries = summarize(result, generator, ci=ci, n_boot=n_boot, level=level)
    return result


def _draw_noise(images: Tensor, generator: torch.Generator) -> Tensor:
    noise = torch.randn(images.shape, generator=generator, device=generator.device)
    return noise.to(images)


def _probe_batch(
    denoiser, x_t, sigma, cond, pixels, radii, quantiles, target, channels, chunk_size,
    conditioner_mode, inert_tol,
) -> dict[str, Tensor]:
    """Jacobians and per-unit statistics for one batch of scenes at one sigma."""
    h, w = x_t.shape[-2:]
    out: dict[str, Tensor] = {}
    if pixels.shape[1] > 0:
        rows = pixel_jacobian(
            denoiser, x_t, sigma, cond, pixels, target=target, channels=channels,
            chunk_size=chunk_size,
        )
        energy = stats.row_energy(rows)
        pl = stats.pixel_locality(energy, pixels, radii, quantiles)
    else:
        energy = x_t.new_zeros(x_t.shape[0], 0, h, w)
        pl = stats.pixel_locality(energy, pixels, radii, quantiles)
    out.update(pixel_energy=energy, mass_fraction=pl.fractions, effective_radius=pl.radii_q,
               gradient_energy=pl.total)
    if cond.mask.any() and conditioner_mode is not None:
        sens = conditioner_sensitivity(
            denoiser, x_t, sigma, cond, target=target, mode=conditioner_mode, chunk_size=chunk_size
        )
    else:  # nothing to differentiate: no conditioner in this batch, or its moves are not measured
        sens = x_t.new_zeros(x_t.shape[0], cond.slots, h, w)
    cl = stats.conditional_locality(sens, cond.locations, cond.mask, radii, inert_tol)
    out.update(cond_sensitivity=sens, own_share=cl.own_share, chance=cl.chance,
               cond_valid=cl.valid, cond_inert=cl.inert, nearest_share=cl.nearest_share)
    removal = presence_effect(denoiser, x_t, sigma, cond, target=target)
    pl = stats.conditional_locality(removal, cond.locations, cond.mask, radii, inert_tol)
    out.update(presence_share=pl.own_share, presence_valid=pl.valid, presence_inert=pl.inert)
    return out


def _stack_arrays(per_sigma, images, conds, pixels, radii) -> dict[str, Tensor]:
    stacked = {k: torch.stack([d[k] for d in per_sigma]) for k in per_sigma[0]}
    stacked["chance"] = stacked["chance"][0]  # the same at every sigma
    stacked.update(
        images=images, locations=conds.locations, mask=conds.mask,
        scene_group=torch.arange(images.shape[0]), pixels=pixels,
    )
    return {k: v.detach().cpu().contiguous() for k, v in stacked.items()}


# ----- summaries, merging, validation ---------------------------------------------------------


def summarize(
    result: LocalityResult,
    generator: torch.Generator,
    *,
    ci: CIMethod = "bootstrap",
    n_boot: int = 1000,
    level: float = 0.95,
) -> list[SigmaSummary]:
    """Per-sigma summaries from a result's per-unit arrays (clustered by ``scene_group``)."""
    a = result.arrays
    group = a["scene_group"]
    r_head = _index_of(result.radii, result.radius, "radius")

    def est(values: Tensor, groups: Tensor) -> Estimate:
        return stats.mean_ci(values, groups, generator, ci, n_boot, level)

    out = []
    for s, sigma in enumerate(result.sigmas):
        frac, rad = a["mass_fraction"][s], a["effective_radius"][s]  # [B, M, R], [B, M, Q]
        pix_groups = group[:, None].expand(frac.shape[:2])
        own, valid = a["own_share"][s], a["cond_valid"][s]  # [B, N, R], [B, N]
        cond_groups = group[:, None].expand(valid.shape)[valid]
        out.append(
            SigmaSummary(
                sigma=sigma,
                mass_fraction=[est(frac[..., r], pix_groups) for r in range(len(result.radii))],
                effective_radius=[est(rad[..., q], pix_groups) for q in range(rad.shape[-1])],
                own_share=[est(own[..., r][valid], cond_groups) for r in range(len(result.radii))],
                index=stats.conditional_locality_index(
                    own[..., r_head], a["chance"][..., r_head], valid, a["cond_inert"][s],
                    result.radius, group, generator, ci, n_boot, level,
                ),
                nearest_share=est(a["nearest_share"][s], group),
                presence_index=None if "presence_share" not in a else stats.conditional_locality_index(
                    a["presence_share"][s][..., r_head], a["chance"][..., r_head], a["presence_valid"][s],
                    a["presence_inert"][s], result.radius, group, generator, ci, n_boot, level,
                ),
            )
        )
    return out


def merge_results(
    results: Sequence[LocalityResult],
    generator: torch.Generator,
    *,
    cluster: Literal["scene", "run"] = "scene",
    ci: CIMethod = "bootstrap",
    n_boot: int = 1000,
    level: float = 0.95,
) -> LocalityResult:
    """Pool several results (more scenes, other seeds) measured with the same settings.

    ``cluster="scene"`` keeps every scene its own cluster; ``cluster="run"`` makes each input
    result one cluster (e.g. one training seed), so intervals reflect seed-to-seed variation.
    """
    if not results:
        raise InputError("merge_results needs at least one result")
    first = results[0]
    for r in results[1:]:
        same = (r.sigmas, r.radii, r.radius, r.quantiles, r.target, r.channels)
        if same != (first.sigmas, first.radii, first.radius, first.quantiles, first.target,
                    first.channels):
            raise InputError("results differ in sigmas/radii/quantiles/target/channels")
    keys = set.intersection(*(set(r.arrays) for r in results))
    n_slots = max(r.arrays["mask"].shape[1] for r in results)
    arrays: dict[str, Tensor] = {}
    for k in sorted(keys):
        if k == "scene_group":
            continue
        parts = [_pad_slots(r.arrays[k], k, n_slots) for r in results]
        axis = 1 if k in _SIGMA_FIRST else 0
        arrays[k] = torch.cat(parts, dim=axis)
    groups, offset = [], 0
    for i, r in enumerate(results):
        g = r.arrays["scene_group"]
        groups.append(torch.full_like(g, i) if cluster == "run" else g + offset)
        offset += int(g.max()) + 1 if g.numel() else 0
    arrays["scene_group"] = torch.cat(groups)
    merged = LocalityResult(
        first.sigmas, first.radii, first.radius, first.quantiles, first.target, first.channels,
        [], arrays, {"merged_from": len(results), "cluster": cluster},
    )
    merged.summaries = summarize(merged, generator, ci=ci, n_boot=n_boot, level=level)
    return merged


# Arrays whose first axis is sigma (scenes on axis 1).
_SIGMA_FIRST = {
    "pixel_energy", "mass_fraction", "effective_radius", "gradient_energy", "cond_sensitivity",
    "own_share", "cond_valid", "cond_inert", "nearest_share", "presence_share", "presence_valid", "presence_inert",
}


def _pad_slots(t: Tensor, key: str, n_slots: int) -> Tensor:
    axis = _SLOT_AXIS.get(key)
    if axis is None or t.shape[axis] == n_slots:
        return t
    shape = list(t.shape)
    shape[axis] = n_slots - t.shape[axis]
    fill = False if t.dtype == torch.bool else (math.nan if t.dtype.is_floating_point else 0)
    if key in ("locations", "cond_sensitivity", "chance"):
        fill = 0.0
    return torch.cat([t, torch.full(shape, fill, dtype=t.dtype)], dim=axis)


@dataclass
class SamplingError:
    """Pixel-locality statistics from ``n_pixels`` sampled rows vs from the full Jacobian."""

    n_pixels: int
    radii: list[float]
    quantiles: list[float]
    sampled_fraction: list[float]  # mean F(r) over sampled pixels
    sampled_fraction_se: list[float]  # its standard error (from the sample alone)
    full_fraction: list[float]  # mean F(r) over all pixels
    sampled_radius: list[float]  # mean effective radius per quantile
    sampled_radius_se: list[float]
    full_radius: list[float]

    @property
    def max_relative_error(self) -> float:
        """Largest |sampled - full| / |full| over all tabulated statistics with full != 0."""
        pairs = list(zip(self.sampled_fraction, self.full_fraction)) + list(
            zip(self.sampled_radius, self.full_radius)
        )
        errs = [abs(s - f) / abs(f) for s, f in pairs if f != 0 and not math.isnan(f)]
        return max(errs) if errs else math.nan


def row_statistics(energy: Tensor, pixels: Tensor, radii, quantiles) -> tuple[Tensor, ...]:
    """Mean and standard error over rows of F(r) and effective radii; energy [B, P, H, W]."""
    pl = stats.pixel_locality(energy, pixels, radii, quantiles)
    f = pl.fractions.reshape(-1, len(radii))
    q = pl.radii_q.reshape(-1, len(quantiles))
    n = f.shape[0]
    def se(t: Tensor) -> Tensor:
        return t.std(0) / math.sqrt(n) if n > 1 else torch.full_like(t[0], math.nan)

    return f.mean(0), se(f), q.mean(0), se(q)


def sampling_error(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Conditioning,
    n_pixels: int,
    generator: torch.Generator,
    *,
    radii: Sequence[float] = (1.0, 2.0, 4.0),
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    target: Target = "score",
    channels: Channels = "each",
    chunk_size: int = 64,
    full_chunk_size: int | None = 64,
) -> SamplingError:
    """How far the sampled-probe statistics are from the exact ones on the same input ``x``.

    Computes the full pixel Jacobian (expensive: H*W*C backward passes) — a validation tool for
    choosing ``n_pixels``, not part of a normal probe.
    """
    x = as_image_batch(x)
    b, _, h, w = x.shape
    pix = sample_pixels(h, w, n_pixels, generator, batch=b).to(x.device)
    rows = pixel_jacobian(denoiser, x, sigma, cond, pix, target=target, channels=channels,
                          chunk_size=chunk_size)
    sf, sf_se, sr, sr_se = row_statistics(stats.row_energy(rows), pix, radii, quantiles)
    full = full_pixel_jacobian(denoiser, x, sigma, cond, target=target, chunk_size=full_chunk_size)
    per_row = full.sum(1).pow(2) if channels == "sum" else full.pow(2).sum(1)  # [B,H,W,C,H,W]
    full_energy = per_row.sum(3).reshape(b, h * w, h, w)
    all_pix = torch.arange(h * w, device=x.device)[None].expand(b, -1)
    ff, _, fr, _ = row_statistics(full_energy, all_pix, radii, quantiles)
    return SamplingError(
        n_pixels=int(pix.shape[1]), radii=list(map(float, radii)),
        quantiles=list(map(float, quantiles)),
        sampled_fraction=sf.tolist(), sampled_fraction_se=sf_se.tolist(),
        full_fraction=ff.tolist(), sampled_radius=sr.tolist(), sampled_radius_se=sr_se.tolist(),
        full_radius=fr.tolist(),
    )


def mean_normalised_index(summary: dict) -> float | None:
    """The headline locality number of a probe's summary.json: the normalised index averaged over
    noise levels; None where no conditioner moved the output (a caption model reads locations
    only as coarse position words, so moving one changes nothing)."""
    values = [s["index"]["normalised"]["mean"] for s in summary["summaries"]]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def mean_presence_index(summary: dict) -> float | None:
    """The presence index (normalised, averaged over noise levels) of a probe's summary.json;
    None for a probe saved before it was measured."""
    values = [s["presence_index"]["normalised"]["mean"] for s in summary["summaries"] if "presence_index" in s]
    return float(np.mean(values)) if values and len(values) == len(summary["summaries"]) else None


def has_presence(directory: str | Path, quiet: bool = False) -> bool:
    """Whether a saved probe measured the presence index; one made before is redone (and, unless
    ``quiet``, this says so)."""
    try:
        summary = json.loads((Path(directory) / SUMMARY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if mean_presence_index(summary) is None:
        if not quiet:
            notice(f"{directory} predates the presence index; probing it again")
        return False
    return True


def maps_intact(directory: str | Path) -> bool:
    """Whether ``maps.safetensors`` matches the size and checksum its summary.json recorded. A
    damaged one is moved aside (``maps.safetensors.damaged``) and its summary removed, with a
    notice, so that the probe computes that part again; summaries from before checksums pass."""
    directory = Path(directory)
    try:
        record = json.loads((directory / SUMMARY_FILE).read_text()).get("files", {}).get(MAPS_FILE)
    except (OSError, json.JSONDecodeError):
        return False
    maps = directory / MAPS_FILE
    if record is None or (maps.is_file() and maps.stat().st_size == record["bytes"]
                          and sha256_file(maps) == record["sha256"]):
        return True
    if maps.exists():
        os.replace(maps, maps.with_name(MAPS_FILE + ".damaged"))
    (directory / SUMMARY_FILE).unlink()
    notice(f"{maps} is missing or damaged (size or checksum differs from summary.json); probing again")
    return False
