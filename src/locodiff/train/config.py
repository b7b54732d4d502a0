"""Training options (units are images, not epochs or steps, as in EDM) and the run config.

Options marked ``NOT_IDENTITY`` only change how long or how verbosely a run goes: they may change
between resumes and do not change the weights a given number of images produces, so they are not
part of the run folder's identity (``layout.run_identity``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import IDENTITY_UNLESS_DEFAULT, NOT_IDENTITY, SIGNED
from ..errors import ConfigError, LocodiffError
from ..models.config import ModelConfig
from ..scenes import vocab
from ..scenes.dataset import DataConfig

# train.penalty's measures of a conditioner's effect (shift, presence) and the composition target
PENALTY_FORMS = ("shift", "presence", "composition")


@dataclass(frozen=True)
class TrainConfig:
    total_images: int = field(default=200_000, metadata=NOT_IDENTITY)  # training length, in images seen
    batch_size: int = 64  # images per optimizer step (all processes together)
    lr: float = 1e-3  # AdamW peak learning rate
    warmup_images: int = 5_000  # linear learning-rate warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    ema_halflife_images: int = 10_000  # EMA half-life in images (EDM-style)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"  # autocast dtype; fp16 needs a GPU
    p_mean: float = field(default=-1.2, metadata=SIGNED)  # mean of ln(sigma) over training images (EDM: -1.2; higher = more layout-level noise)
    p_std: float = 1.2  # std of ln(sigma) over training images
    label_dropout: float = 0.1  # share of images trained with the null conditioning (for CFG)
    # share of the remaining images' conditioners dropped one by one (each label must explain its
    # own region); with one label per scene (label_policy "one") it is just more label dropout
    object_dropout: float = field(default=0.0, metadata=IDENTITY_UNLESS_DEFAULT)
    log_every_images: int = field(default=2_000, metadata=NOT_IDENTITY)  # metrics.jsonl tick
    checkpoint_every_images: int = field(default=10_000, metadata=NOT_IDENTITY)  # checkpoint (resume point) interval
    sample_every_images: int = field(default=0, metadata=NOT_IDENTITY)  # sample grid interval; 0 = only at the end
    sample_steps: int = field(default=18, metadata=NOT_IDENTITY)  # Heun steps for the training-time sample grids
    keep_checkpoints: int = field(default=2, metadata=NOT_IDENTITY)  # how many checkpoints to keep on disk
    threads: int = field(default=0, metadata=NOT_IDENTITY)  # torch CPU threads; 0 = leave torch's default
    time_budget_s: float = field(default=0.0, metadata=NOT_IDENTITY)  # stop early (checkpointing) after this wall time; 0 = none
    locality_penalty: float = 0.0  # weight of the off-window conditioner-sensitivity penalty (train.penalty)
    locality_window_px: float = 3.0  # window radius of that penalty, in pixels
    locality_fraction: float = 1.0  # share of each batch the penalty is computed on (cost ~ 1 + fraction)
    # what the penalty measures: "shift" (a conditioner moved a little), "presence" (removed), or
    # "composition" (distance to the masked composition of the network's single-label predictions
    # on the labels plus up to locality_extra_tokens phantom labels)
    locality_form: str = field(default="shift", metadata=IDENTITY_UNLESS_DEFAULT)
    locality_extra_tokens: int = field(default=4, metadata=IDENTITY_UNLESS_DEFAULT)
    # penalise the off-window share of the effect (scale-free) instead of its size
    locality_relative: bool = field(default=False, metadata=IDENTITY_UNLESS_DEFAULT)
    # images trained without the penalty first (the label is learned before it is confined)
    locality_start_images: int = field(default=0, metadata=IDENTITY_UNLESS_DEFAULT)

    def irrelevant_fields(self) -> tuple[str, ...]:
        """Without a penalty its options change nothing."""
        penalty_options = ("locality_window_px", "locality_fraction", "locality_form", "locality_relative",
                           "locality_start_images", "locality_extra_tokens")
        return penalty_options if self.locality_penalty == 0 else ()

    def __post_init__(self) -> None:
        positive = ["total_images", "batch_size", "log_every_images", "checkpoint_every_images"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}={getattr(self, name)}: expected > 0")
        for name in ("label_dropout", "object_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"train.{name}={getattr(self, name)}: expected in [0, 1)")
        if self.locality_form not in PENALTY_FORMS:
            raise ConfigError(f"train.locality_form={self.locality_form!r}: expected one of {', '.join(PENALTY_FORMS)}")
        if self.locality_form == "composition" and self.locality_relative:
            raise ConfigError("train.locality_relative applies to the shift and presence forms, not composition")
        if self.locality_extra_tokens < 1:
            raise ConfigError(f"train.locality_extra_tokens={self.locality_extra_tokens}: expected >= 1")
        if self.locality_start_images < 0:
            raise ConfigError(f"train.locality_start_images={self.locality_start_images}: expected >= 0")
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


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one trained model."""

    name: str = field(default="model", metadata=NOT_IDENTITY)  # label used in reports
    seed: int = 0  # initialisation and data-order seed
    label_policy: Literal["all", "one"] = "all"  # which objects' locations are conditioners
    # (shape, colour) pairs held out of training: scenes holding any such object are skipped
    holdout_combos: tuple[tuple[str, str], ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.holdout_indices()

    def holdout_indices(self) -> tuple[tuple[int, int], ...]:
        """The held-out pairs as (shape, colour) vocabulary indices. A pair the data never draws
        (e.g. its colour is not among data.scene.colors) is held out trivially; holding out every
        pair the data draws leaves nothing to train on and is an error."""
        try:
            pairs = vocab.combo_indices(self.holdout_combos)
        except LocodiffError as e:
            raise ConfigError(f"{self.name}: holdout_combos: {e}") from None
        if pairs and set(self.data.scene.allowed_combos()) <= set(pairs):
            raise ConfigError(f"{self.name}: holdout_combos holds out every (shape, colour) pair the data "
                              f"draws (shapes {list(self.data.scene.shapes)}, colors {list(self.data.scene.colors)})")
        return pairs
