r"""Locality statistics computed from Jacobians, and their aggregation with confidence intervals.

Notation: ``s_i`` is the differentiated target (score or x0-prediction) at output pixel ``i``
(all its channels), ``x_j`` input pixel ``j`` (all its channels), ``c_k`` the location of
conditioner ``k``. Distances are Euclidean, in pixels, between pixel centres; a conditioner at
``(x, y)`` in [0, 1] sits at ``(row, col) = (y H - 1/2, x W - 1/2)`` in pixel-index coordinates.

**Mass.** We measure how much of a Jacobian sits where by its *energy*, the squared entries
summed over channels: ``m_i(j) = sum_{a,b} (d s_{i,a} / d x_{j,b})^2``. Squares (not absolute
values) because the total ``sum_j m_i(j)`` is the squared gradient norm ``|grad s_i|^2``
— invariant to rotations of the input, additive over channels, and exactly what the randomized
(Hutchinson) estimator measures, so sampled, exact and randomized numbers are comparable.

**Pixel locality** of output pixel ``i`` at radius ``r``::

    F_i(r) = sum_{j : |j - i| <= r} m_i(j) / sum_j m_i(j)

and its *effective radius* at level ``q`` (0.5, 0.9, 0.99): the smallest pixel distance ``r``
with ``F_i(r) >= q``. A 3x3 convolution has ``F_i(sqrt 2) = 1``; a model that mixes the whole
image spreads mass like the area, ``F_i(r) ~ pi r^2 / (H W)``.

**Conditioner sensitivity** of pixel ``i`` to conditioner ``k``:
``S_k(i) = |d s_i / d c_k|`` (Frobenius norm over the 2 location coordinates and the channels,
per pixel of displacement). Its energy is ``S_k(i)^2``.

**Own share** of conditioner ``k`` at radius ``r`` — how much of its influence lands near it::

    rho_k(r) = sum_{i : |i - c_k| <= r} S_k(i)^2 / sum_i S_k(i)^2

**Chance level** ``a_k(r) = #{i : |i - c_k| <= r} / (H W)``: the own share of a conditioner whose
influence is spread evenly over the image (the area fraction of the disc, clipped by the image).

**Conditional-locality index** at radius ``r`` and noise level ``sigma``::

    CLI(r, sigma) = mean over scenes b and real conditioners k of rho_{b,k}(r)

1 means every conditioner acts only within ``r`` of its location (local conditional score); a
non-local model scores about the chance level ``mean a_k(r)`` (and below it if a conditioner acts
mostly *away* from its location). We also report the *normalised* index
``mean (rho_k - a_k) / (1 - a_k)``: 1 = local, 0 = no better than uniform. Conditioners with zero
total sensitivity (ignored by the model) have no own share; they are left out and counted as
*inert* — a model that ignores its conditioners is not "local", it is unconditional.

**Nearest share** of pixel ``i`` (scenes with >= 2 conditioners): the part of the conditioner
energy at ``i`` that comes from the nearest conditioner, ``S_{n(i)}(i)^2 / sum_k S_k(i)^2``,
pooled over pixels with their energies as weights. Near 1 when each region listens to its own
conditioner; ``1 / K`` when all ``K`` conditioners act everywhere alike.

**Aggregation.** Values from probed pixels or conditioners are grouped by scene (units within a
scene are correlated). The mean is the pooled mean over all units; confidence intervals come
from a *cluster bootstrap* over scenes (resample scenes with replacement, recompute the pooled
mean; percentile interval) or from the cluster-robust normal approximation of the same ratio
estimator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

from .jacobian import InputError

CIMethod = Literal["bootstrap", "normal"]


# ----- geometry ------------------------------------------------------------------------------


def locations_to_pixels(locations: Tensor, height: int, width: int) -> Tensor:
    """``[..., 2]`` (x, y) in [0, 1] -> ``[..., 2]`` (row, col) in pixel-index coordinates."""
    row = locations[..., 1] * height - 0.5
    col = locations[..., 0] * width - 0.5
    return torch.stack([row, col], dim=-1)


def flat_to_rows_cols(flat: Tensor, width: int) -> Tensor:
    """Flat pixel indices ``[...]`` -> ``[..., 2]`` (row, col)."""
    return torch.stack([flat // width, flat % width], dim=-1)


def distance_maps(centres: Tensor, height: int, width: int) -> Tensor:
    """``[..., 2]`` (row, col) centres -> ``[..., H, W]`` Euclidean pixel distance to each pixel."""
    c = centres if centres.dtype.is_floating_point else centres.to(torch.get_default_dtype())
    rows = torch.arange(height, dtype=c.dtype, device=c.device)
    cols = torch.arange(width, dtype=c.dtype, device=c.device)
    dr = rows[:, None] - c[..., 0, None, None]
    dc = cols[None, :] - c[..., 1, None, None]
    return torch.sqrt(dr**2 + dc**2)


# ----- mass profiles -------------------------------------------------------------------------


def row_energy(rows: Tensor) -> Tensor:
    """Jacobian rows ``[B, P, (C_out,) C_in, H, W]`` -> energy maps ``[B, P, H, W]``."""
    if rows.ndim not in (5, 6):
        raise InputError(
            f"rows of shape {tuple(rows.shape)}: expected [B, P, C_in, H, W] or "
            "[B, P, C_out, C_in, H, W]"
        )
    return rows.pow(2).flatten(2, -3).sum(2)


def _eps(dtype: torch.dtype) -> float:
    return 1e-6 if dtype == torch.float32 else 1e-9


def mass_within(energy: Tensor, dist: Tensor, radii: Sequence[float] | Tensor) -> Tensor:
    """Fraction of ``energy`` [..., H, W] within each radius of the centre whose distance map is
    ``dist`` [..., H, W]; returns ``[..., R]`` (NaN where the total energy is zero)."""
    r = torch.as_tensor(radii, dtype=energy.dtype, device=energy.device)
    inside = dist[..., None, :, :] <= r[:, None, None] + _eps(energy.dtype)  # [..., R, H, W]
    within = (energy[..., None, :, :] * inside).sum((-2, -1))
    total = energy.sum((-2, -1))[..., None]
    tiny = torch.finfo(energy.dtype).tiny
    return torch.where(total > 0, within / total.clamp_min(tiny), math.nan)


def effective_radius(energy: Tensor, dist: Tensor, quantiles: Sequence[float]) -> Tensor:
    """Smallest pixel distance holding at least fraction ``q`` of the energy; ``[..., Q]``.

    Exact on the pixel grid: the answer is one of the distances that occur (0, 1, sqrt 2, 2, ...).
    NaN where the total energy is zero.
    """
    flat_e = energy.flatten(-2)
    flat_d = dist.flatten(-2).expand_as(flat_e)
    order = flat_d.argsort(dim=-1, stable=True)
    d_sorted = flat_d.gather(-1, order)
    cum = flat_e.gather(-1, order).cumsum(-1)
    total = cum[..., -1:]
    frac = cum / total.clamp_min(torch.finfo(energy.dtype).tiny)
    q = torch.as_tensor(quantiles, dtype=energy.dtype, device=energy.device)
    q = (q - _eps(energy.dtype)).expand(*frac.shape[:-1], -1).contiguous()
    pos = torch.searchsorted(frac.contiguous(), q).clamp_max(frac.shape[-1] - 1)
    radius = d_sorted.gather(-1, pos)
    return torch.where(total > 0, radius, math.nan)


def disc_area_fraction(dist: Tensor, radii: Sequence[float] | Tensor) -> Tensor:
    """Share of the image's pixels within each radius: the chance level ``a(r)``, ``[..., R]``."""
    r = torch.as_tensor(radii, dtype=dist.dtype, device=dist.device)
    inside = dist[..., None, :, :] <= r[:, None, None] + _eps(dist.dtype)
    return inside.to(dist.dtype).mean((-2, -1))


# ----- pixel locality ------------------------------------------------------------------------


@dataclass
class PixelLocality:
    """Per probed output pixel: mass fractions ``[B, P, R]``, effective radii ``[B, P, Q]``,
    total energy ``|grad s_i|^2`` ``[B, P]``."""

    fractions: Tensor
    radii_q: Tensor
    total: Tensor


def pixel_locality(
    energy: Tensor, pixels: Tensor, radii: Sequence[float], quantiles: Sequence[float]
) -> PixelLocality:
    """Locality of Jacobian rows: ``energy`` [B, P, H, W] (from ``row_energy``) of the output
    pixels ``pixels`` ([B, P, 2] (row, col), or [B, P] flat)."""
    h, w = energy.shape[-2:]
    pixels = torch.as_tensor(pixels)
    if pixels.ndim == energy.ndim - 2:
        pixels = flat_to_rows_cols(pixels, w)
    dist = distance_maps(pixels.to(energy.dtype), h, w)
    return PixelLocality(
        fractions=mass_within(energy, dist, radii),
        radii_q=effective_radius(energy, dist, quantiles),
        total=energy.sum((-2, -1)),
    )


# ----- conditional locality ------------------------------------------------------------------


@dataclass
class ConditionalLocality:
    """Per conditioner: own shares ``rho`` [B, N, R], chance levels ``a`` [B, N, R], total energy
    [B, N], ``valid`` [B, N] (real and not inert), ``inert`` [B, N]; per pixel: nearest-share map
    [B, H, W] (NaN where undefined); per scene: energy-weighted nearest share [B] (NaN for scenes
    with fewer than two active conditioners)."""

    own_share: Tensor
    chance: Tensor
    total: Tensor
    valid: Tensor
    inert: Tensor
    nearest_share_map: Tensor
    nearest_share: Tensor


def conditional_locality(
    sensitivity: Tensor,
    locations: Tensor,
    mask: Tensor,
    radii: Sequence[float],
    inert_tol: float = 0.0,
) -> ConditionalLocality:
    """Statistics of sensitivity maps ``[B, N, H, W]`` (``S_k(i)``) for conditioners at
    ``locations`` [B, N, 2] ((x, y) in [0, 1]) with ``mask`` [B, N]. A real conditioner whose
    total energy is ``<= inert_tol`` counts as inert."""
    b, n, h, w = sensitivity.shape
    if tuple(locations.shape) != (b, n, 2) or tuple(mask.shape) != (b, n):
        raise InputError(
            f"sensitivity {tuple(sensitivity.shape)} needs locations [B={b}, N={n}, 2] and mask "
            f"[{b}, {n}], got {tuple(locations.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    energy = sensitivity.pow(2)
    dist = distance_maps(locations_to_pixels(locations.to(energy.dtype), h, w), h, w)
    total = energy.sum((-2, -1))
    inert = mask & (total <= inert_tol)
    valid = mask & ~inert
    own = mass_within(energy, dist, radii)
    own = torch.where(valid[..., None], own, math.nan)
    chance = disc_area_fraction(dist, radii)
    share_map, share = _nearest_share(energy, dist, valid)
    return ConditionalLocality(own, chance, total, valid, inert, share_map, share)


def _nearest_share(energy: Tensor, dist: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per pixel, the nearest active conditioner's part of the conditioner energy."""
    big = torch.finfo(dist.dtype).max
    d = torch.where(valid[..., None, None], dist, big)
    nearest = d.argmin(1, keepdim=True)  # [B, 1, H, W]
    e = energy * valid[..., None, None]
    own = e.gather(1, nearest)[:, 0]
    total = e.sum(1)
    share_map = torch.where(total > 0, own / total.clamp_min(torch.finfo(e.dtype).tiny), math.nan)
    enough = valid.sum(1) >= 2
    scene_total = total.sum((-2, -1))
    share = torch.where(
        enough & (scene_total > 0),
        own.sum((-2, -1)) / scene_total.clamp_min(torch.finfo(e.dtype).tiny),
        math.nan,
    )
    share_map = torch.where(enough[:, None, None], share_map, math.nan)
    return share_map, share


def normalised_share(own_share: Tensor, chance: Tensor) -> Tensor:
    """``(rho - a) / (1 - a)``: 1 = local, 0 = as spread as a uniform map (NaN where a = 1)."""
    denom = 1 - chance
    return torch.where(denom > 0, (own_share - chance) / denom.clamp_min(1e-12), math.nan)


# ----- aggregation ---------------------------------------------------------------------------


@dataclass
class Estimate:
    """A pooled mean with a confidence interval; ``n`` units in ``groups`` clusters (scenes)."""

    mean: float
    lo: float
    hi: float
    n: int
    groups: int
    method: str = "bootstrap"
    level: float = 0.95

    def to_dict(self) -> dict:
        """JSON-safe dict (NaN becomes None)."""
        items = asdict(self).items()
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in items}

    @classmethod
    def from_dict(cls, d: dict) -> "Estimate":
        fix = {k: (math.nan if v is None else v) for k, v in d.items()}
        return cls(**fix)


def _group_sums(values: Tensor, groups: Tensor | None) -> tuple[Tensor, Tensor]:
    """Drop NaNs; return per-group sums and counts (groups with no units are dropped)."""
    values = values.reshape(-1).double()
    if groups is None:
        groups = torch.arange(values.numel())
    groups = torch.as_tensor(groups).reshape(-1).long()
    if groups.numel() != values.numel():
        raise InputError(f"{values.numel()} values but {groups.numel()} group labels")
    keep = ~torch.isnan(values)
    values, groups = values[keep], groups[keep]
    _, groups = torch.unique(groups, return_inverse=True)
    n_groups = int(groups.max()) + 1 if groups.numel() else 0
    sums = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, groups, values)
    counts = torch.zeros(n_groups, dtype=torch.float64)
    counts.index_add_(0, groups, torch.ones_like(values))
    return sums, counts


def bootstrap_mean(
    values: Tensor,
    groups: Tensor | None,
    generator: torch.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
) -> Estimate:
    """Pooled mean of ``values`` (NaNs dropped) with a cluster-bootstrap percentile interval:
    groups (scenes) are resampled with replacement, all their units together."""
    sums, counts = _group_sums(values, groups)
    g = sums.numel()
    n = int(counts.sum())
    if g == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0, "bootstrap", level)
    mean = float(sums.sum() / counts.sum())
    if g == 1:
        return Estimate(mean, math.nan, math.nan, n, 1, "bootstrap", level)
    draws = torch.randint(0, g, (n_boot, g), generator=generator)
    weights = torch.zeros(n_boot, g, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_boot, g, dtype=torch.float64)
    )
    stats = (weights @ sums) / (weights @ counts)
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(stats, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Estimate(mean, lo, hi, n, g, "bootstrap", level)


def normal_mean(values: Tensor, groups: Tensor | None = None, level: float = 0.95) -> Estimate:
    """Pooled mean with a cluster-robust normal interval (linearised ratio estimator)."""
    sums, counts = _group_sums(values, groups)
    g = sums.numel()
    n = int(counts.sum())
    if g == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0, "normal", level)
    mean = float(sums.sum() / counts.sum())
    if g == 1:
        return Estimate(mean, math.nan, math.nan, n, 1, "normal", level)
    resid = sums - mean * counts
    se = math.sqrt(g / (g - 1) * float(resid.pow(2).sum())) / float(counts.sum())
    z = _normal_quantile(0.5 + level / 2)
    return Estimate(mean, mean - z * se, mean + z * se, n, g, "normal", level)


def _normal_quantile(p: float) -> float:
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


def mean_ci(
    values: Tensor,
    groups: Tensor | None,
    generator: torch.Generator,
    method: CIMethod = "bootstrap",
    n_boot: int = 1000,
    level: float = 0.95,
) -> Estimate:
    """Dispatch to ``bootstrap_mean`` or ``normal_mean``."""
    if method == "bootstrap":
        return bootstrap_mean(values, groups, generator, n_boot, level)
    if method == "normal":
        return normal_mean(values, groups, level)
    raise InputError(f"ci method {method!r}: expected 'bootstrap' or 'normal'")


@dataclass
class IndexSummary:
    """The conditional-locality index at one radius, its chance level and normalised form."""

    radius: float
    index: Estimate
    chance: Estimate
    normalised: Estimate
    n_conditioners: int
    n_inert: int

    def to_dict(self) -> dict:
        return {
            "radius": self.radius,
            "index": self.index.to_dict(),
            "chance": self.chance.to_dict(),
            "normalised": self.normalised.to_dict(),
            "n_conditioners": self.n_conditioners,
            "n_inert": self.n_inert,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "IndexSummary":
        return cls(
            d["radius"], Estimate.from_dict(d["index"]), Estimate.from_dict(d["chance"]),
            Estimate.from_dict(d["normalised"]), d["n_conditioners"], d["n_inert"],
        )


def conditional_locality_index(own_share: Tensor, chance: Tensor, valid: Tensor, inert: Tensor, radius: float,
                               groups: Tensor | None, estimate: Callable[[Tensor, Tensor], Estimate]) -> IndexSummary:
    """CLI at one radius from per-conditioner own shares [..., N] and chance levels [..., N]
    (already taken at that radius); ``groups`` [...] labels the scene of each row (defaults to
    one scene per row); ``estimate(values, groups)`` is the mean with its interval (``mean_ci``
    with the caller's generator and method). See the module docstring for the definition."""
    valid = valid.bool()
    rows = own_share.shape[:-1]
    n = own_share.shape[-1]
    if groups is None:
        groups = torch.arange(math.prod(rows)).reshape(rows)
    unit_groups = torch.as_tensor(groups).reshape(*rows, 1).expand(*rows, n)
    v_groups = unit_groups[valid]
    return IndexSummary(
        radius=float(radius),
        index=estimate(own_share[valid], v_groups),
        chance=estimate(chance[valid], v_groups),
        normalised=estimate(normalised_share(own_share, chance)[valid], v_groups),
        n_conditioners=int(valid.sum()),
        n_inert=int(inert.bool().sum()),
    )
