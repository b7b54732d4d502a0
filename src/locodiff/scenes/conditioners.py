"""From rendered scenes to a ``Conditioning``: which objects a model is told about.

Two label policies reproduce the paper's CLEVR experiments:
- ``all``: every object's image-plane centre is a conditioner (Exp 1 — the model that
  length-generalizes);
- ``one``: a single object, chosen at random per image, is labelled; the others are unlabelled
  clutter (Exp 2, and Exp 3's data).
Locations are the projections of the objects' 3-D centres, which the renderer guarantees to fall
on the object's own pixels for scenes from ``SceneSampler``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..errors import ConfigError
from .scene import SceneBatch

LabelPolicy = Literal["all", "one"]
LABEL_POLICIES: tuple[str, ...] = ("all", "one")


def object_attributes(scenes: SceneBatch) -> Tensor:
    """[B, N, 4] (color, shape, size, material) indices, -1 in padded slots."""
    attrs = torch.stack([scenes.color, scenes.shape, scenes.size, scenes.material], -1)
    return torch.where(scenes.mask[..., None], attrs, torch.full_like(attrs, -1))


def make_conditioning(
    scenes: SceneBatch,
    centers: Tensor,
    policy: LabelPolicy = "all",
    generator: torch.Generator | None = None,
) -> Conditioning:
    """The conditioning for rendered ``scenes`` with image-plane ``centers`` [B, N, 2].

    ``all`` keeps the scene's slots; ``one`` returns a single slot per image holding one
    uniformly chosen object (empty for images without objects), drawn from ``generator``.
    """
    if policy not in LABEL_POLICIES:
        raise ConfigError(f"label policy {policy!r}: expected one of {list(LABEL_POLICIES)}")
    centers = centers.to(scenes.device)
    attrs = object_attributes(scenes)
    if policy == "all":
        return Conditioning(centers * scenes.mask[..., None], scenes.mask, attrs).validate()
    return _one_per_image(scenes, centers, attrs, generator)


def _one_per_image(scenes: SceneBatch, centers: Tensor, attrs: Tensor, generator) -> Conditioning:
    counts = scenes.counts()
    u = torch.rand(scenes.batch_size, generator=generator).to(scenes.device)
    rank = (u * counts).long().clamp_max((counts - 1).clamp_min(0))  # which present object
    # slot of the rank-th present object: first slot whose running count exceeds rank
    running = scenes.mask.long().cumsum(1)
    slot = (running <= rank[:, None]).sum(1).clamp_max(scenes.slots - 1)
    pick = torch.arange(scenes.batch_size, device=scenes.device)
    has = counts > 0
    loc = (centers[pick, slot] * has[:, None])[:, None]
    att = torch.where(has[:, None], attrs[pick, slot], torch.full_like(attrs[:, 0], -1))[:, None]
    return Conditioning(loc, has[:, None], att).validate()


def batch_conditioning(
    batch: dict[str, Tensor], policy: LabelPolicy = "all", generator: torch.Generator | None = None
) -> Conditioning:
    """Conditioning for a batch from ``SceneDataset``/``SceneStream`` (a dict of tensors)."""
    return make_conditioning(SceneBatch.from_tensors(batch), batch["centers"], policy, generator)
