"""Crowding: how many other objects sit near each object, in training scenes and in the test
scenes of every requested count k.

Why: a local conditional score is assembled from windows (a pixel patch and the conditioners
near it), so it extrapolates to k objects only while every window of a k-object scene looks
like some window of training (``docs/science.md``). Counting each object's neighbours within the
window radius measures exactly that: once test objects have more neighbours than training
objects ever had, even a perfectly local model sees windows it never learned, and the theory
predicts its recall to fall from that k on. The diagnostic is a property of the scenes alone,
so it is computed once per (data, test scenes, radius), before any model exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..conditioning import Conditioning
from .runner import k_generator, scene_conditionings

RARE = 0.01  # a neighbour count held by fewer training objects than this share is "not in training"
OUTSIDE = 0.10  # the predicted limit: the first k with more test objects than this outside training


def neighbour_counts(locations: Tensor, mask: Tensor, resolution: int, radius_px: float) -> Tensor:
    """For every present object, how many other present objects of its image lie within
    ``radius_px`` pixels (image-plane centres; locations in [0, 1]). Returns a flat int tensor."""
    pixels = locations * resolution
    close = torch.cdist(pixels, pixels) <= radius_px
    pair = mask[:, :, None] & mask[:, None, :]
    eye = torch.eye(mask.shape[1], dtype=torch.bool)[None]
    counts = (close & pair & ~eye).sum(-1)
    return counts[mask]


def histogram(counts: Tensor, bins: int) -> list[float]:
    """Share of objects with 0, 1, ..., bins-1 neighbours (the last bin holds bins-1 and more)."""
    if counts.numel() == 0:
        return [0.0] * bins
    h = torch.bincount(counts.clamp(max=bins - 1), minlength=bins).double()
    return (h / h.sum()).tolist()


@dataclass(frozen=True)
class CrowdingRow:
    k: int
    objects: int  # test objects counted
    mean_neighbours: float
    histogram: list[float]  # share of objects with n = 0, 1, ... neighbours
    outside: float  # share of objects with more neighbours than training's range


@dataclass(frozen=True)
class Crowding:
    """The diagnostic at one radius: training's neighbour distribution and each test k's."""

    radius_px: float
    train_objects: int
    train_mean: float
    train_histogram: list[float]
    train_range: int  # largest neighbour count held by >= RARE of training objects
    rows: list[CrowdingRow]
    predicted_limit_k: int | None  # first k whose `outside` share exceeds OUTSIDE; None if none

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Crowding":
        return cls(**{**d, "rows": [CrowdingRow(**r) for r in d["rows"]]})


def crowding(train: Conditioning, tests: dict[int, Conditioning], resolution: int, radius_px: float,
             bins: int = 11) -> Crowding:
    """Compare training scenes' neighbour counts with each test k's, at ``radius_px``."""
    train_counts = neighbour_counts(train.locations, train.mask, resolution, radius_px)
    shares = histogram(train_counts, bins)
    train_range = max((n for n, share in enumerate(shares) if share >= RARE), default=0)
    rows = []
    for k, cond in sorted(tests.items()):
        counts = neighbour_counts(cond.locations, cond.mask, resolution, radius_px)
        n = counts.numel()
        rows.append(CrowdingRow(
            k=k, objects=n, mean_neighbours=float(counts.double().mean()) if n else 0.0,
            histogram=histogram(counts, bins),
            outside=float((counts > train_range).double().mean()) if n else 0.0,
        ))
    limit = next((r.k for r in rows if r.outside > OUTSIDE), None)
    return Crowding(radius_px, train_counts.numel(), float(train_counts.double().mean()), shares,
                    train_range, rows, limit)


def study_crowding(data_cfg, train_scenes: Conditioning, eval_cfg, radii: tuple[float, ...]) -> list[Crowding]:
    """The diagnostic for a study: its training split against the very test conditionings the
    evaluation samples (same factory, same per-k seeds), at every radius of ``radii``."""
    make = scene_conditionings(data_cfg, eval_cfg.min_separation)
    tests = {k: make(k, eval_cfg.per_count, k_generator(eval_cfg.seed, k)) for k in eval_cfg.counts if k > 0}
    return [crowding(train_scenes, tests, data_cfg.resolution, r) for r in radii]
