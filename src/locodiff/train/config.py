"""Training options (units are images, not epochs or steps, as in EDM) and the run config.

Options marked ``NOT_IDENTITY`` only change how long or how verbosely a run goes: they may change
between resumes and do not change the weights a given number of images produces, so they are not
part of the run folder's identity (``layout.run_identity``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..config import IDENTITY_UNLESS_DEFAULT, NOT_IDENTITY, SIGNED
from ..errors import ConfigError, LocodiffError
from ..models.config import ModelConfig
from ..scenes import vocab
from ..scenes.config import DataConfig

@dataclass(frozen=True)
class LocalityPenalty:
    """Locality trained in (``train.penalty``): a penalty added to the EDM loss on what each label
    does beyond a window around it. Off while ``weight`` is 0; ``train.penalty.training_loss``
    builds the loss from it."""

    weight: float = 0.0  # weight of the penalty; 0 = ordinary training
    window_px: float = 3.0  # window radius around each label, in pixels
    fraction: float = 1.0  # share of each batch the penalty is computed on (cost ~ 1 + fraction)
    # what is penalised: "shift" (a conditioner moved a little), "presence" (removed), or
    # "composition" (distance to the masked composition of the network's single-label predictions
    # on the labels plus up to extra_tokens phantom labels)
    form: Literal["shift", "presence", "composition"] = "shift"
    extra_tokens: int = 4  # composition: phantom labels at random free places
    relative: bool = False  # shift / presence: penalise the off-window share of the effect (scale-free)
    start_images: int = 0  # images trained without the penalty first (the label is learned before it is confined)

    def __post_init__(self) -> None:
        if self.weight < 0 or not self.window_px > 0 or not 0 < self.fraction <= 1 or self.extra_tokens < 1:
            raise ConfigError(f"train.locality: weight={self.weight}, window_px={self.window_px}, fraction="
                              f"{self.fraction}, extra_tokens={self.extra_tokens}: expected a weight >= 0, a radius "
                              "> 0, a fraction in (0, 1] and >= 1 token")
        if self.form == "composition" and self.relative:
            raise ConfigError("train.locality.relative applies to the shift and presence forms, not composition")

    def cost_factor(self) -> float:
        """Training cost relative to plain training: the extra forward passes on ``fraction`` of
        each batch (one for shift / presence; the labels plus phantoms plus the null for
        composition, counting three labels)."""
        if self.weight == 0:
            return 1.0
        passes = 1 if self.form != "composition" else 3 + self.extra_tokens + 1
        return 1.0 + self.fraction * passes

    def images_cost(self, first: int, last: int) -> float:
        """What training images ``first`` to ``last`` cost, in plain training images: the extra
        passes only from ``start_images`` on."""
        plain = max(0, min(last, self.start_images) - first)
        return plain + (last - first - plain) * self.cost_factor()

    def flat_identity(self) -> dict:
        """The penalty as run folders were named when its options were ``train.locality_*``
        (unchanged folders): the weight always, the rest only while it is on, and the options
        added later only where they differ from their defaults."""
        out: dict = {"locality_penalty": self.weight}
        if self.weight == 0:
            return out
        out.update(locality_window_px=self.window_px, locality_fraction=self.fraction)
        for name, default in (("form", "shift"), ("extra_tokens", 4), ("relative", False), ("start_images", 0)):
            if getattr(self, name) != default:
                out[f"locality_{name}"] = getattr(self, name)
        return out


# where the penalty's options were before they became a section (old configs and runs still read)
_MOVED_PENALTY = {f"locality_{name}": f"locality.{name}"
                  for name in ("window_px", "fraction", "form", "extra_tokens", "relative", "start_images")}


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
    # trackers that also get the run's numbers (see locodiff.tracking): auto = TensorBoard when installed
    report_to: Literal["auto", "tensorboard", "mlflow", "wandb", "none"] = field(default="auto", metadata=NOT_IDENTITY)
    locality: LocalityPenalty = field(default_factory=LocalityPenalty)  # locality trained in (off by default)

    MOVED: ClassVar[dict[str, str]] = {"locality_penalty": "locality.weight", **_MOVED_PENALTY}

    def legacy_identity(self, identity: dict) -> dict:
        """The run identity with the penalty under its old flat names (see ``LocalityPenalty``)."""
        identity.pop("locality", None)
        return {**identity, **self.locality.flat_identity()}

    def __post_init__(self) -> None:
        positive = ["total_images", "batch_size", "log_every_images", "checkpoint_every_images"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}={getattr(self, name)}: expected > 0")
        for name in ("label_dropout", "object_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"train.{name}={getattr(self, name)}: expected in [0, 1)")
        if not self.p_std > 0:
            raise ConfigError(f"train.p_std={self.p_std}: expected > 0")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr}: expected > 0")
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
