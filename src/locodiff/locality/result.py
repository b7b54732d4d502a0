"""A locality probe's result: its types, how it is saved and read back, summarised, merged and
checked. ``probe.probe_locality`` makes one; the figures, the report and the CLI read them here.

A result saves as ``summary.json`` (everything but the arrays) and ``maps.safetensors`` (raw maps
and per-unit statistics), both written atomically; ``LocalityResult.load`` reads them back.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from ..errors import InputError
from ..io import atomic_path, notice, save_tensors, sha256_file, write_json_atomic
from ..layout import PROBE_SUMMARY
from . import stats
from .stats import CIMethod, Estimate, IndexSummary

SUMMARY_FILE = PROBE_SUMMARY
MAPS_FILE = "maps.safetensors"
# Arrays with a conditioner-slot axis, and where that axis is (for merging results).
_SLOT_AXIS = {
    "locations": 1, "mask": 1, "chance": 1, "cond_sensitivity": 2, "own_share": 2,
    "cond_valid": 2, "cond_inert": 2, "presence_share": 2, "presence_valid": 2, "presence_inert": 2,
}
MAP_KEYS = ("pixel_energy", "cond_sensitivity")


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
            save_tensors({k: v.detach().cpu().contiguous() for k, v in self.arrays.items()}, str(tmp))
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
                    result.radius, group, est,
                ),
                nearest_share=est(a["nearest_share"][s], group),
                presence_index=None if "presence_share" not in a else stats.conditional_locality_index(
                    a["presence_share"][s][..., r_head], a["chance"][..., r_head], a["presence_valid"][s],
                    a["presence_inert"][s], result.radius, group, est,
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
