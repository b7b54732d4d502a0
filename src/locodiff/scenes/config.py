"""What a data set is: ``DataConfig`` (the scenes, the camera, the splits and where the images come
from) and the split names; building, caching and reading the splits is ``scenes.dataset``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..config import IDENTITY_UNLESS_DEFAULT, config_hash, identity_dict
from ..errors import ConfigError, DataError, LocodiffError
from .camera import CameraConfig
from .render import check_resolution
from .sampler import SceneConfig

FORMAT_VERSION = 1  # bump when the renderer's look or the shard layout changes
SPLITS: tuple[str, ...] = ("train", "test")
Split = Literal["train", "test"]


@dataclass(frozen=True)
class DataConfig:
    resolution: int = 32  # image side in pixels (16..256)
    supersample: int = 2  # rays per pixel side (anti-aliasing); 1 = off
    scene: SceneConfig = field(default_factory=SceneConfig)  # vocabulary and placement rules
    camera: CameraConfig = field(default_factory=CameraConfig)  # view shared by all images
    train_counts: tuple[int, ...] = (1, 2, 3)  # objects per training image, drawn uniformly
    test_counts: tuple[int, ...] = tuple(range(11))  # object counts of the test split
    train_images: int = 20000  # size of the training split
    test_images_per_count: int = 100  # test images for each count
    shard_size: int = 2000  # images per shard file
    save_masks: bool = False  # also store per-object masks [N, H, W] in the shards
    seed: int = 0  # every shard's generator derives from (seed, split, shard index)
    # "render": locodiff's renderer draws the splits; "clevr_folder": they are read from the CLEVR
    # generator's output in clevr_folder (images/ + a scenes JSON; scenes.clevr_format)
    source: Literal["render", "clevr_folder"] = field(default="render", metadata=IDENTITY_UNLESS_DEFAULT)
    clevr_folder: str = field(default="", metadata=IDENTITY_UNLESS_DEFAULT)
    # who renders: "torch" (the batched ray caster, ~2,000 img/s) or "blender" (Cycles on the CPU,
    # physically based; scenes.blender), with blender_samples rays per pixel
    renderer: Literal["torch", "blender"] = field(default="torch", metadata=IDENTITY_UNLESS_DEFAULT)
    blender_samples: int = field(default=16, metadata=IDENTITY_UNLESS_DEFAULT)

    def __post_init__(self) -> None:
        try:
            check_resolution(self.resolution, self.supersample)
        except LocodiffError as e:
            raise ConfigError(f"data: {e}") from None
        for name in ("train_counts", "test_counts"):
            counts = getattr(self, name)
            if not counts or min(counts) < 0 or max(counts) > self.scene.max_objects:
                raise ConfigError(
                    f"data.{name}={list(counts)}: expected a non-empty list of counts in "
                    f"0..scene.max_objects={self.scene.max_objects}"
                )
        if self.blender_samples < 1:
            raise ConfigError(f"data.blender_samples={self.blender_samples}: expected >= 1")
        if (self.source == "clevr_folder") != bool(self.clevr_folder):
            raise ConfigError(f"data.source={self.source!r} with data.clevr_folder={self.clevr_folder!r}: a CLEVR "
                              "folder is read exactly when data.source is \"clevr_folder\"")
        for name, lowest in (("train_images", 0), ("test_images_per_count", 0), ("shard_size", 1)):
            if getattr(self, name) < lowest:
                raise ConfigError(f"data.{name}={getattr(self, name)}: expected an integer >= {lowest}")

    # ----- split geometry -------------------------------------------------------------------
    def split_size(self, split: Split) -> int:
        check_split(split)
        return self.train_images if split == "train" else self.test_images_per_count * len(self.test_counts)

    def num_shards(self, split: Split) -> int:
        return math.ceil(self.split_size(split) / self.shard_size)

    def slots(self, split: Split) -> int:
        """Object slots stored per image: the split's largest count (at least one)."""
        counts = self.train_counts if split == "train" else self.test_counts
        return max(max(counts), 1)

    def identity(self) -> dict:
        return identity_dict(self)

    def cache_key(self) -> str:
        return config_hash({"format": FORMAT_VERSION, "data": self.identity()})


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
