"""Locality where generalization is asked: each conditioner's window in scenes with k = 1..10.

The Jacobian probe (``probe``) differentiates at 1-3-object scenes. A model that composes badly
fails at large k, where many conditioners act in one forward pass, and a move derivative is blind
to whatever depends only on *how many* conditioners there are. This probe runs the denoiser on
scenes with k conditioners (the evaluation's own, with their renders, noised with one noise image
per scene at every sigma), with subsets of the conditioners removed. For conditioner i, with
``W_i`` its window (pixels within ``window_px`` of its location), ``N_i`` its near context (the
conditioners within ``far_px`` of it, i included), ``J`` the whole set and ``D_S`` the
x0-prediction given the subset ``S``:

- **efficacy** ``<E_i, A_i> / ||A_i||^2`` with ``E_i = D_J - D_{J-i}`` (i's effect in the full
  set) and ``A_i = D_{i} - D_{}`` (its effect alone, a quantity of the training distribution for
  every model, Exp 2's included): exactly 1 under a conditional projective composition whose other
  regions do not reach ``W_i``, below 1 when the others weaken i. The headline.
- **far residual** ``||D_J - D_{N_i}||_{W_i} / ||A_i||_{W_i}``: how much the far conditioners
  change i's window, relative to i's own effect. Exactly 0 for a local conditional score whose
  conditioners reach less than ``far_px - window_px``.
- **efficacy gap** ``<E_i - E^N_i, A_i> / ||A_i||^2`` with ``E^N_i = D_{N_i} - D_{N_i-i}`` (i's
  effect in its near context): the part of the efficacy that far conditioners add (> 0) or take
  away (< 0). Exactly 0 under the same condition.
- the efficacy and the far residual again with GroupNorm statistics held fixed
  (``locality.coupling``), at ``held_norm_counts``.

For the report's explorer the probe also keeps, for the first ``MAP_SCENES`` scenes of each k at
the band's middle noise level, each conditioner's effect alone ``|A_i|`` and in the full set
``|E_i|`` per pixel (norm over channels); under a local conditional score the two agree in i's
window, whatever k is.

Units are pooled per k as ratios of sums (a unit with a tiny own effect cannot dominate), the far
statistics over the conditioners that have a far context. Intervals resample scenes. The headline
is the mean over the noise levels in ``band`` (where the layout is decided).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..conditioning import Conditioning, location_windows
from ..config import to_dict
from ..denoiser import Denoiser
from ..io import atomic_path, save_tensors, write_json_atomic
from ..layout import EXTRAPOLATION, EXTRAPOLATION_MAPS
from .config import ExtrapolationOptions
from .coupling import NormStatistics, group_norms
from .jacobian import InputError
from .stats import Estimate

EXTRAPOLATION_FILE = EXTRAPOLATION
MAP_SCENES = 1  # scenes per k whose effect maps are kept
# Per scene and noise level, the sums pooled into the statistics (in this order).
SUMS = ("far_residual2", "far_own2", "far_gap", "own2", "effect_on_own", "far_units", "units",
        "held_residual2", "held_own2", "held_effect_on_own", "held_all_own2")
STATISTICS = ("far_residual", "efficacy_gap", "efficacy", "far_residual_held_norms", "efficacy_held_norms")
EXACT = {"far_residual": 0.0, "efficacy_gap": 0.0, "efficacy": 1.0,  # their values under exact locality
         "far_residual_held_norms": 0.0, "efficacy_held_norms": 1.0}
# Which units each statistic pools (conditioners with a far context, or all of them).
UNITS_OF = {"far_residual": "far_units", "efficacy_gap": "far_units", "efficacy": "units",
            "far_residual_held_norms": "far_units", "efficacy_held_norms": "units"}
# Passes with GroupNorm statistics borrowed from another (``locality.coupling``), per conditioner:
# name -> (the subset whose statistics are used, the subset that is run with them).
HELD_PASSES = {"full_near_norms": ("near", "full"), "full_own_norms": ("alone", "full"),
               "without_empty_norms": ("empty", "without")}


# ----- which conditioner subsets a scene needs ---------------------------------------------------

@dataclass
class ScenePlan:
    """The subsets of one scene's conditioners to run, and for each conditioner which they are."""

    subsets: list[tuple[int, ...]] = field(default_factory=list)  # slots kept, per forward pass
    units: list[dict[str, int]] = field(default_factory=list)  # per conditioner: role -> subset index
    has_far: list[bool] = field(default_factory=list)

    def index(self, subset: Sequence[int]) -> int:
        key = tuple(sorted(subset))
        if key not in self.subsets:
            self.subsets.append(key)
        return self.subsets.index(key)


def plan_scene(locations_px: Tensor, far_px: float) -> ScenePlan:
    """``locations_px`` [k, 2] of the present conditioners (pixels) -> the passes to run."""
    k = locations_px.shape[0]
    dist = torch.cdist(locations_px.double(), locations_px.double())
    plan, everyone = ScenePlan(), tuple(range(k))
    for i in range(k):
        near = tuple(j for j in range(k) if dist[i, j] <= far_px)
        plan.units.append({
            "full": plan.index(everyone), "empty": plan.index(()), "alone": plan.index((i,)),
            "without": plan.index([j for j in everyone if j != i]), "near": plan.index(near),
            "near_without": plan.index([j for j in near if j != i]),
        })
        plan.has_far.append(len(near) < k)
    return plan


# ----- running the passes ---------------------------------------------------------------------------

def _subset_conditioning(cond: Conditioning, slots: list[int], subsets: list[tuple[int, ...]]) -> Conditioning:
    """Row r: the conditioning of scene ``cond`` keeping the ``subsets[r]`` of its present ``slots``."""
    keep = torch.zeros(len(subsets), cond.slots, dtype=torch.bool, device=cond.device)
    for r, subset in enumerate(subsets):
        keep[r, [slots[j] for j in subset]] = True
    return cond.repeat(len(subsets)).keep_slots(keep)


@torch.no_grad()
def run_passes(denoiser: Denoiser, x: Tensor, sigma: float, conds: list[Conditioning], batch_size: int) -> Tensor:
    """``D(x[s]; sigma, conds[s][r])`` for every scene s and row r, in batches: [sum rows, C, H, W]."""
    scene_of = torch.cat([torch.full((c.batch_size,), s, dtype=torch.long) for s, c in enumerate(conds)])
    every = Conditioning.cat(conds)
    out = []
    for start in range(0, len(scene_of), batch_size):
        rows = scene_of[start:start + batch_size].to(x.device)
        xs = x[rows]
        sig = torch.full((len(rows),), float(sigma), dtype=x.dtype, device=x.device)
        out.append(denoiser(xs, sig, every[start:start + batch_size]).float())
    return torch.cat(out)


# ----- the statistics of one scene --------------------------------------------------------------------

def scene_sums(preds: Tensor, plan: ScenePlan, windows: Tensor,
               held: dict[int, dict[str, Tensor]] | None = None) -> Tensor:
    """The ``SUMS`` of one scene at one noise level from its passes ``preds`` [R, C, H, W], the
    conditioners' windows [k, H, W] (bool) and, where measured, conditioner i's ``HELD_PASSES``
    (``held[i][name]``)."""
    acc = dict.fromkeys(SUMS, 0.0)
    for i, (unit, far, win) in enumerate(zip(plan.units, plan.has_far, windows)):
        w = win.to(preds.dtype)[None]
        d = {role: preds[r] for role, r in unit.items()}
        own = (d["alone"] - d["empty"]) * w
        own2 = float(own.square().sum())
        effect = (d["full"] - d["without"]) * w
        acc["own2"] += own2
        acc["effect_on_own"] += float((effect * own).sum())
        acc["units"] += 1
        if far:
            near_effect = (d["near"] - d["near_without"]) * w
            acc["far_residual2"] += float(((d["full"] - d["near"]) * w).square().sum())
            acc["far_own2"] += own2
            acc["far_gap"] += float(((effect - near_effect) * own).sum())
            acc["far_units"] += 1
        if held and i in held:
            h = held[i]
            if far:
                acc["held_residual2"] += float(((h["full_near_norms"] - d["near"]) * w).square().sum())
                acc["held_own2"] += own2
            acc["held_effect_on_own"] += float(((h["full_own_norms"] - h["without_empty_norms"]) * w * own).sum())
            acc["held_all_own2"] += own2
    return torch.tensor([acc[name] for name in SUMS], dtype=torch.float64)


def statistics(sums: Tensor) -> dict[str, Tensor]:
    """The statistics from sums pooled over scenes: ``sums`` [..., len(SUMS)] -> each [...]."""
    s = {name: sums[..., i].double() for i, name in enumerate(SUMS)}

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return torch.where(den > 0, num / den.clamp_min(1e-300), torch.tensor(math.nan, dtype=torch.float64))

    return {
        "far_residual": ratio(s["far_residual2"], s["far_own2"]).sqrt(),
        "efficacy_gap": ratio(s["far_gap"], s["far_own2"]),
        "efficacy": ratio(s["effect_on_own"], s["own2"]),
        "far_residual_held_norms": ratio(s["held_residual2"], s["held_own2"]).sqrt(),
        "efficacy_held_norms": ratio(s["held_effect_on_own"], s["held_all_own2"]),
    }


# ----- the probe -------------------------------------------------------------------------------------

def effect_maps(preds: Tensor, plan: ScenePlan) -> Tensor:
    """[2, k, H, W]: each conditioner's effect alone and in the full set, per pixel."""
    alone = [preds[u["alone"]] - preds[u["empty"]] for u in plan.units]
    among = [preds[u["full"]] - preds[u["without"]] for u in plan.units]
    return torch.stack([torch.stack(alone), torch.stack(among)]).norm(dim=2)


def map_sigma(options: ExtrapolationOptions) -> int:
    """The index of the noise level whose effect maps are kept: the band's middle (geometric)."""
    middle = math.sqrt(options.band[0] * options.band[1])
    return min((j for j, s in enumerate(options.sigmas) if options.band[0] <= s <= options.band[1]),
               key=lambda j: abs(math.log(options.sigmas[j] / middle)))


def probe_count(denoiser: Denoiser, images: Tensor, cond: Conditioning, options: ExtrapolationOptions,
                noise: Tensor, maps: list[Tensor] | None = None) -> Tensor:
    """Sums [scenes, sigmas, len(SUMS)] for scenes ``images`` [S, C, H, W] under ``cond`` (every
    present conditioner is probed); ``noise`` [S, C, H, W] is reused at every sigma. The first
    ``MAP_SCENES`` scenes' ``effect_maps`` at ``map_sigma`` are appended to ``maps`` if given."""
    h, w = images.shape[-2:]
    scale = torch.tensor([w, h], dtype=cond.locations.dtype, device=cond.device)
    windows = location_windows(cond, h, w, options.window_px, softness_px=0.0) > 0.5
    plans, subset_conds, slots = [], [], []
    for s in range(cond.batch_size):
        present = cond.mask[s].nonzero(as_tuple=True)[0].tolist()
        plans.append(plan_scene(cond.locations[s, present] * scale, options.far_px))
        subset_conds.append(_subset_conditioning(cond[s], present, plans[-1].subsets))
        slots.append(present)
    norms = group_norms(denoiser) if int(cond.counts().max()) in options.held_norm_counts else []
    sums = torch.zeros(cond.batch_size, len(options.sigmas), len(SUMS), dtype=torch.float64)
    kept_sigma = map_sigma(options)
    for j, sigma in enumerate(options.sigmas):
        x_t = images + sigma * noise
        preds = run_passes(denoiser, x_t, sigma, subset_conds, options.batch_size)
        held = held_norm_passes(denoiser, norms, x_t, sigma, subset_conds, plans, options.batch_size) if norms else {}
        start = 0
        for s, plan in enumerate(plans):
            stop = start + len(plan.subsets)
            sums[s, j] = scene_sums(preds[start:stop], plan, windows[s, slots[s]], held.get(s))
            if maps is not None and s < MAP_SCENES and j == kept_sigma:
                maps.append(effect_maps(preds[start:stop], plan))
            start = stop
    return sums


@torch.no_grad()
def held_norm_passes(denoiser: Denoiser, norms: list, x: Tensor, sigma: float, conds: list[Conditioning],
                     plans: list[ScenePlan], batch_size: int) -> dict[int, dict[int, dict[str, Tensor]]]:
    """Scene -> conditioner i -> each of ``HELD_PASSES`` (a subset run with the GroupNorm
    statistics recorded in another subset's pass; see ``locality.coupling``)."""
    jobs = [(s, i, name) for s, plan in enumerate(plans) for i, far in enumerate(plan.has_far)
            for name in HELD_PASSES if far or name != "full_near_norms"]
    stats, out = NormStatistics(norms), {}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        donor = Conditioning.cat([conds[s][plans[s].units[i][HELD_PASSES[n][0]]] for s, i, n in chunk])
        receiver = Conditioning.cat([conds[s][plans[s].units[i][HELD_PASSES[n][1]]] for s, i, n in chunk])
        idx = torch.tensor([s for s, _, _ in chunk], device=x.device)
        sig = torch.full((len(chunk),), float(sigma), dtype=x.dtype, device=x.device)
        pred = stats.borrow(denoiser, x[idx], sig, donor, receiver).float()
        for r, (s, i, name) in enumerate(chunk):
            out.setdefault(s, {}).setdefault(i, {})[name] = pred[r]
    return out


Scenes = Callable[[int], tuple[Tensor, Conditioning]]  # k -> (images [S, C, H, W] in [-1, 1], conditioning)


def probe_extrapolation(denoiser: Denoiser, scenes: Scenes, options: ExtrapolationOptions,
                        generator: torch.Generator, progress: Callable[[int], None] | None = None,
                        meta: dict | None = None) -> "ExtrapolationResult":
    """The statistics of ``denoiser`` at every k of ``options.counts`` on the scenes ``scenes(k)``
    gives (put the model in ``eval()`` mode first). ``generator`` draws the noise and the
    bootstrap; ``progress(k)`` is called after each k."""
    sums, maps = {}, {}
    for k in options.counts:
        images, cond = scenes(k)
        if images.shape[0] != cond.batch_size or (cond.counts() != k).any():
            raise InputError(f"the probe's scenes for k={k} must hold exactly {k} conditioners each")
        noise = torch.randn(images.shape, generator=generator).to(images)
        kept: list[Tensor] = []
        sums[k] = probe_count(denoiser, images, cond, options, noise, kept)
        n = len(kept)
        maps[f"k{k:02d}.effects"] = torch.stack(kept).float().cpu()  # [n, 2, k, H, W]
        maps[f"k{k:02d}.images"] = images[:n].float().cpu()
        maps[f"k{k:02d}.locations"] = cond.locations[:n][cond.mask[:n]].reshape(n, k, 2).float().cpu()
        if progress:
            progress(k)
    result = ExtrapolationResult.from_sums(options, sums, generator, meta or {})
    result.maps = {"sigma": torch.tensor([options.sigmas[map_sigma(options)]]), **maps}
    return result


# ----- results ---------------------------------------------------------------------------------------

def band_value(sums: Tensor, band: Tensor) -> dict[str, Tensor]:
    """Each statistic's mean over the noise levels in ``band`` (bool [sigmas]) of the pooled
    ``sums`` [..., scenes, sigmas, len(SUMS)]."""
    per_sigma = statistics(sums.sum(-3))
    return {name: v[..., band].nanmean(-1) for name, v in per_sigma.items()}


def bootstrap_band(sums: Tensor, band: Tensor, generator: torch.Generator, n_boot: int = 1000,
                   level: float = 0.95) -> dict[str, Estimate]:
    """Band values with percentile intervals from resampling scenes with replacement."""
    n = sums.shape[0]
    point = band_value(sums, band)
    draws = torch.randint(0, n, (n_boot, n), generator=generator)
    boot = band_value(sums[draws], band)
    alpha = (1 - level) / 2
    out = {}
    for name, value in point.items():
        b = boot[name][~boot[name].isnan()]
        lo, hi = (torch.quantile(b, torch.tensor([alpha, 1 - alpha], dtype=b.dtype)).tolist()
                  if n > 1 and b.numel() else (math.nan, math.nan))
        units = int(sums[:, 0, SUMS.index(UNITS_OF[name])].sum())
        out[name] = Estimate(float(value), lo, hi, units, n, "bootstrap", level)
    return out


@dataclass
class ExtrapolationResult:
    """Per k: the headline band values with intervals, and every statistic per noise level."""

    options: dict
    per_k: dict[int, dict]
    sums: dict[int, list] = field(default_factory=dict)  # k -> [scenes][sigmas][SUMS], for recomputing
    meta: dict = field(default_factory=dict)
    maps: dict[str, Tensor] = field(default_factory=dict)  # the effect maps, saved beside (not in) the JSON

    @classmethod
    def from_sums(cls, options: ExtrapolationOptions, sums: dict[int, Tensor], generator: torch.Generator,
                  meta: dict) -> "ExtrapolationResult":
        band = torch.tensor([options.band[0] <= s <= options.band[1] for s in options.sigmas])
        per_k = {}
        for k, s in sums.items():
            per_sigma = statistics(s.sum(0))
            per_k[k] = {"band": {n: e.to_dict() for n, e in bootstrap_band(s, band, generator).items()},
                        "per_sigma": {n: [_plain(v) for v in per_sigma[n].tolist()] for n in STATISTICS},
                        "scenes": int(s.shape[0]), "units": int(s[:, 0, SUMS.index("units")].sum()),
                        "far_units": int(s[:, 0, SUMS.index("far_units")].sum())}
        return cls(to_dict(options), per_k, {k: v.tolist() for k, v in sums.items()}, meta)

    def band(self, statistic: str, k: int) -> Estimate | None:
        entry = self.per_k.get(k)
        return None if entry is None else Estimate.from_dict(entry["band"][statistic])

    def departure(self, statistic: str, k: int) -> float | None:
        """How far the band value of ``statistic`` at ``k`` is from its value under exact locality."""
        e = self.band(statistic, k)
        return None if e is None or math.isnan(e.mean) else abs(e.mean - EXACT[statistic])

    def lines(self) -> list[str]:
        """A plain-text table: per k the band value of each statistic with its interval."""
        names = [n for n in STATISTICS if any(not math.isnan(self.band(n, k).mean) for k in self.per_k)]
        out = ["k    " + " ".join(f"{n} ({EXACT[n]:g} local)".ljust(26) for n in names)]
        for k in sorted(self.per_k):
            cells = []
            for name in names:
                e = self.band(name, k)
                cells.append("–".ljust(26) if math.isnan(e.mean) else f"{e.mean:6.3f} [{e.lo:6.3f}, {e.hi:6.3f}]".ljust(26))
            out.append(f"{k:<4d} " + " ".join(cells).rstrip())
        return out

    def to_dict(self) -> dict:
        return {"options": self.options, "per_k": {str(k): v for k, v in self.per_k.items()},
                "sums_order": list(SUMS), "sums": {str(k): v for k, v in self.sums.items()}, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "ExtrapolationResult":
        return cls(d["options"], {int(k): v for k, v in d["per_k"].items()},
                   {int(k): v for k, v in d.get("sums", {}).items()}, d.get("meta", {}))

    def save(self, folder: str | Path) -> Path:
        """The maps first: the JSON's presence says the probe is complete."""
        if self.maps:
            with atomic_path(Path(folder) / EXTRAPOLATION_MAPS) as tmp:
                save_tensors({name: t.contiguous() for name, t in self.maps.items()}, tmp)
        path = Path(folder) / EXTRAPOLATION_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "ExtrapolationResult | None":
        """The saved result, or None when missing or unreadable (then it is measured again)."""
        path = Path(folder) / EXTRAPOLATION_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _plain(v: float) -> float | None:
    return None if math.isnan(v) else v
