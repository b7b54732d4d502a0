"""Training options. Units are images, not epochs or steps (as in EDM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    total_images: int = 200_000  # training length, in images seen
    batch_size: int = 64  # images per optimizer step (all processes together)
    lr: float = 1e-3  # AdamW peak learning rate
    warmup_images: int = 5_000  # linear learning-rate warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    ema_halflife_images: int = 10_000  # EMA half-life in images (EDM-style)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"  # autocast dtype; fp16 needs a GPU
    p_mean: float = -1.2  # mean of ln(sigma) over training images (EDM: -1.2; higher = more layout-level noise)
    p_std: float = 1.2  # std of ln(sigma) over training images
    label_dropout: float = 0.1  # share of images trained with the null conditioning (for CFG)
    log_every_images: int = 2_000  # metrics.jsonl tick
    checkpoint_every_images: int = 10_000  # checkpoint (resume point) interval
    sample_every_images: int = 0  # sample grid interval; 0 = only at the end
    sample_steps: int = 18  # Heun steps for the training-time sample grids
    keep_checkpoints: int = 2  # how many checkpoints to keep on disk
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    time_budget_s: float = 0.0  # stop early (checkpointing) after this wall time; 0 = none
    locality_penalty: float = 0.0  # weight of the off-window conditioner-sensitivity penalty (intervene.training)
    locality_window_px: float = 3.0  # window radius of that penalty, in pixels
    locality_fraction: float = 1.0  # share of each batch the penalty is computed on (cost ~ 1 + fraction)

    def __post_init__(self) -> None:
        positive = ["total_images", "batch_size", "log_every_images", "checkpoint_every_images"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}={getattr(self, name)}: expected > 0")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"train.label_dropout={self.label_dropout}: expected in [0, 1)")
        if not self.p_std > 0:
            raise ConfigError(f"train.p_std={self.p_std}: expected > 0")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr}: expected > 0")
        if self.locality_penalty < 0 or self.locality_window_px <= 0 or not 0 < self.locality_fraction <= 1:
            raise ConfigError(
                f"train.locality_penalty={self.locality_penalty} / locality_window_px={self.locality_window_px} / "
                f"locality_fraction={self.locality_fraction}: "
                "expected a weight >= 0, a window radius > 0 and a fraction in (0, 1]"
            )
        if self.keep_checkpoints < 1:
            raise ConfigError(f"train.keep_checkpoints={self.keep_checkpoints}: expected >= 1")
