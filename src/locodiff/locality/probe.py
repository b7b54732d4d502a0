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

What is measured is a ``ProbeSpec``; the ``LocalityResult`` it gives (saving, loading, summaries,
merging) is ``locality.result``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..denoiser import Denoiser
from ..progress import progress_bar
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
from .result import MAP_KEYS, LocalityResult, summarize
from .stats import CIMethod

DEFAULT_QUANTILES = (0.5, 0.9, 0.99)
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


# ----- the probe -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSpec:
    """What a locality probe measures, and how.

    ``n_pixels`` output pixels per scene are probed; ``radius`` is the headline radius (pixels) of
    the conditional-locality index, ``radii`` the radii of the mass curves (``radius`` is added;
    default: ``default_radii``). With ``add_noise=False`` the images are used as ``x_t`` as they
    are. ``move_jacobians=False`` skips the location Jacobians (the move index is then undefined)
    for a denoiser that reads locations only through words, whose Jacobian is zero anyway; the
    presence index is measured either way. ``keep_maps=False`` drops the raw maps from the result.
    """

    sigmas: tuple[float, ...]
    n_pixels: int
    radius: float = 4.0
    radii: tuple[float, ...] | None = None
    target: Target = "score"
    channels: Channels = "each"
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    add_noise: bool = True
    batch_size: int = 8
    chunk_size: int = 64
    conditioner_mode: Mode = "forward"
    move_jacobians: bool = True
    inert_tol: float = 0.0
    ci: CIMethod = "bootstrap"
    n_boot: int = 1000
    level: float = 0.95
    keep_maps: bool = True

    def __post_init__(self) -> None:
        if len(self.sigmas) == 0 or min(self.sigmas) <= 0:
            raise InputError(f"sigmas={list(self.sigmas)}: expected a non-empty list of positive values")
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))


def probe_locality(denoiser: Denoiser, images: Tensor, conds: Conditioning, spec: ProbeSpec,
                   generator: torch.Generator, pixels: Tensor | None = None, progress: bool = True,
                   meta: dict[str, Any] | None = None) -> LocalityResult:
    """Measure pixel and conditional locality of ``denoiser`` (in ``eval()`` mode) on ``images``
    [B,C,H,W] (clean scenes in [-1, 1]) conditioned on ``conds`` (batch B), at each of
    ``spec.sigmas``. Probe pixels are drawn with ``generator`` unless given ([B,M,2]). Progress
    is shown over sigmas x scene batches."""
    images = as_image_batch(images)
    b, _, h, w = images.shape
    if conds.batch_size != b:
        raise InputError(f"{conds.batch_size} conditionings for {b} images; expected equal")
    radii = sorted(set(float(r) for r in (spec.radii or default_radii(h, w))) | {float(spec.radius)})
    if pixels is None:
        pixels = sample_pixels(h, w, spec.n_pixels, generator, batch=b)
    pixels = torch.as_tensor(pixels).long().to(images.device)
    noise = _draw_noise(images, generator) if spec.add_noise else torch.zeros_like(images)
    per_sigma = _measure(denoiser, images, noise, conds, pixels, radii, spec, progress)
    arrays = _stack_arrays(per_sigma, images, conds, pixels, radii)
    if not spec.keep_maps:
        for k in MAP_KEYS:
            arrays.pop(k)
    result = LocalityResult(
        sigmas=list(spec.sigmas), radii=radii, radius=float(spec.radius), quantiles=list(spec.quantiles),
        target=spec.target, channels=spec.channels, summaries=[], arrays=arrays,
        meta={"n_scenes": b, "n_pixels": int(pixels.shape[1]), "height": h, "width": w,
              "add_noise": spec.add_noise, "conditioner_mode": spec.conditioner_mode, **(meta or {})},
    )
    result.summaries = summarize(result, generator, ci=spec.ci, n_boot=spec.n_boot, level=spec.level)
    return result


def _measure(denoiser, images, noise, conds, pixels, radii, spec: ProbeSpec, progress: bool) -> list[dict[str, Tensor]]:
    """Per sigma, the per-unit arrays of every scene batch, concatenated over batches."""
    b = images.shape[0]
    per_sigma: list[dict[str, Tensor]] = []
    bar = progress_bar(len(spec.sigmas) * math.ceil(b / spec.batch_size), "locality", "batch", enabled=progress)
    for sigma in spec.sigmas:
        parts = []
        for start in range(0, b, spec.batch_size):
            sl = slice(start, min(start + spec.batch_size, b))
            parts.append(_probe_batch(denoiser, images[sl] + sigma * noise[sl], sigma, conds[sl], pixels[sl],
                                      radii, spec))
            bar.update(1)
        per_sigma.append({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    bar.close()
    return per_sigma


def _draw_noise(images: Tensor, generator: torch.Generator) -> Tensor:
    noise = torch.randn(images.shape, generator=generator, device=generator.device)
    return noise.to(images)


def _probe_batch(denoiser, x_t, sigma, cond, pixels, radii, spec: ProbeSpec) -> dict[str, Tensor]:
    """Jacobians and per-unit statistics for one batch of scenes at one sigma."""
    h, w = x_t.shape[-2:]
    target, chunk_size, inert_tol = spec.target, spec.chunk_size, spec.inert_tol
    quantiles = [float(q) for q in spec.quantiles]
    conditioner_mode = spec.conditioner_mode if spec.move_jacobians else None
    out: dict[str, Tensor] = {}
    if pixels.shape[1] > 0:
        rows = pixel_jacobian(
            denoiser, x_t, sigma, cond, pixels, target=target, channels=spec.channels,
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


@dataclass(frozen=True)
class SamplingErrorOptions:
    """What ``sampling_error`` compares: the statistics at these radii and quantiles, of this
    target, in batches of these sizes (the full Jacobian's may differ)."""

    radii: Sequence[float] = (1.0, 2.0, 4.0)
    quantiles: Sequence[float] = DEFAULT_QUANTILES
    target: Target = "score"
    channels: Channels = "each"
    chunk_size: int = 64
    full_chunk_size: int | None = 64


def sampling_error(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Conditioning,
    n_pixels: int,
    generator: torch.Generator,
    options: SamplingErrorOptions = SamplingErrorOptions(),
) -> SamplingError:
    """How far the sampled-probe statistics are from the exact ones on the same input ``x``.

    Computes the full pixel Jacobian (expensive: H*W*C backward passes) — a validation tool for
    choosing ``n_pixels``, not part of a normal probe.
    """
    radii, quantiles, target, channels = options.radii, options.quantiles, options.target, options.channels
    chunk_size, full_chunk_size = options.chunk_size, options.full_chunk_size
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
