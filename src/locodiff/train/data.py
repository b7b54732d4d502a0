"""Training batches as a pure function of the step, from the cache or rendered on the fly."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..scenes import vocab
from ..scenes.conditioners import LabelPolicy, batch_conditioning
from ..scenes.config import DataConfig
from ..scenes.dataset import SceneDataset, SceneSource, to_model_batch
from ..rng import epoch_generator, step_generator
from ..errors import ConfigError


def _epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=epoch_generator(seed, epoch))


class CachedBatches:
    """Batches drawn from a cached split: a fresh permutation every epoch, seeded by the epoch.

    ``holdout`` lists (shape, colour) index pairs held out of training: every scene holding an
    object with such a pair (labelled or not) is skipped, so the model never sees the pair.
    """

    def __init__(self, dataset: SceneDataset, policy: LabelPolicy, seed: int,
                 holdout: tuple[tuple[int, int], ...] = ()) -> None:
        tensors = dataset.tensors
        keep = dataset.index
        if holdout:
            held = vocab.has_combo(tensors["shape"][keep], tensors["color"][keep], tensors["mask"][keep], holdout)
            keep = keep[~held]
        self.tensors = {k: v[keep] for k, v in tensors.items()}
        self.n = len(keep)
        if self.n == 0:
            raise ConfigError("the training split is empty" + (" once the held-out combinations are removed"
                                                              if holdout else ""))
        self.policy, self.seed = policy, seed

    def indices(self, step: int, size: int) -> Tensor:
        start = step * size
        first, last = start // self.n, (start + size - 1) // self.n
        perm = torch.cat([_epoch_permutation(self.n, self.seed, e) for e in range(first, last + 1)])
        offset = start - first * self.n
        return perm[offset: offset + size]

    def batch(self, step: int, size: int) -> tuple[Tensor, Conditioning]:
        idx = self.indices(step, size)
        raw = to_model_batch({k: v[idx] for k, v in self.tensors.items()})
        cond = batch_conditioning(raw, self.policy, step_generator(self.seed, step, "labels"))
        return raw["images"], cond


class StreamBatches:
    """Batches rendered on the fly; the scenes of step ``s`` depend only on ``(seed, s)``."""

    def __init__(self, cfg: DataConfig, policy: LabelPolicy, seed: int,
                 holdout: tuple[tuple[int, int], ...] = ()) -> None:
        if holdout:  # the sampler never draws a held-out pair
            names = tuple((vocab.SHAPES[s], vocab.COLOR_NAMES[c]) for s, c in holdout)
            cfg = replace(cfg, scene=replace(cfg.scene, exclude_combos=cfg.scene.exclude_combos + names))
        self.source = SceneSource(cfg)
        self.cfg, self.policy, self.seed = cfg, policy, seed

    def batch(self, step: int, size: int) -> tuple[Tensor, Conditioning]:
        gen = step_generator(self.seed, step, "scenes")
        counts = self.source.draw_counts("train", size, gen)
        raw = to_model_batch(self.source.render(counts, gen, self.cfg.slots("train")))
        cond = batch_conditioning(raw, self.policy, step_generator(self.seed, step, "labels"))
        return raw["images"], cond
