"""Options of the evaluation stage (light: no torch, so that loading a study config stays cheap).

Every class validates itself on construction. In a study, ``trained_range`` follows
``data.train_counts`` (``study_config`` fills it in and refuses a contradiction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError

DETECTORS = ("heatmap", "color")


@dataclass(frozen=True)
class HeatmapConfig:
    work_resolution: int = 32  # images are resized to this side before the network
    width: int = 32  # channels of the full-resolution stage (x1.5, x2 below)
    heat_sigma_px: float = 0.8  # width of the target bump at the working resolution
    threshold: float = 0.4  # peak score above which a peak is an object
    # ----- training -----
    train_images: int = 64000  # rendered scenes seen in training (~20 min on one CPU core)
    batch_size: int = 32  # scenes per step
    lr: float = 2e-3  # Adam, cosine-annealed to 0
    max_objects: int = 10  # training scenes hold 0..max_objects objects, uniformly
    min_separation: float = 0.08  # image-plane separation of training scenes (below the test split's)
    render_resolutions: tuple[int, ...] = (16, 32, 64)  # drawn uniformly per batch
    blur_max_px: float = 1.0  # Gaussian blur sigma ~ U(0, this) px at 32x32 (scaled), on 70% of images
    noise_max: float = 0.06  # pixel noise std ~ U(0, this), on 70% of images
    jitter: float = 0.06  # per-channel offsets ~ U(-j/2, j/2) and gain ~ 1 + U(-j, j)
    checkpoint_every: int = 4000  # images between resumable checkpoints
    seed: int = 0  # scenes, augmentations and initial weights

    def __post_init__(self) -> None:
        checks = [
            ("work_resolution", 16 <= self.work_resolution <= 128 and self.work_resolution % 4 == 0,
             "a multiple of 4 from 16 to 128"),
            ("width", self.width >= 4, "an integer >= 4"),
            ("heat_sigma_px", self.heat_sigma_px > 0, "a positive number"),
            ("threshold", 0 < self.threshold < 1, "a number in (0, 1)"),
            ("train_images", self.train_images >= 0, "an integer >= 0"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("max_objects", self.max_objects >= 1, "an integer >= 1"),
            ("render_resolutions", len(self.render_resolutions) > 0, "a non-empty list"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f"heatmap.{name}={getattr(self, name)!r}: expected {expected}")


@dataclass(frozen=True)
class SummaryOptions:
    trained_range: tuple[int, int] = (1, 3)  # counts seen in training
    extrapolation_range: tuple[int, int] = (4, 10)  # counts never seen
    threshold: float = 0.5  # for "largest k with accuracy >= threshold"

    def __post_init__(self) -> None:
        for name in ("trained_range", "extrapolation_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise InputError(f"{name}={(lo, hi)}: expected 0 <= low <= high")
        if not 0 < self.threshold <= 1:
            raise InputError(f"threshold={self.threshold}: expected a value in (0, 1]")


@dataclass(frozen=True)
class EvalConfig:
    counts: tuple[int, ...] = tuple(range(11))  # requested object counts k
    per_count: int = 64  # samples per k
    batch_size: int = 32  # samples per sampler call
    sampler: str = "heun"  # heun | euler | stochastic (diffusion.get_sampler)
    steps: int = 18  # sampler steps
    tolerance_px: float | None = None  # match radius; None = 3 px at 32x32, scaled with resolution
    trained_range: tuple[int, int] = (1, 3)  # counts seen in training (a study: data.train_counts)
    extrapolation_range: tuple[int, int] = (4, 10)  # counts never seen (for the summary)
    threshold: float = 0.5  # "largest k with accuracy >= threshold"
    grid_per_count: int = 8  # samples per k shown in samples.png
    max_count: int = 10  # largest k accepted (the test scenes and detector support 0..10)
    seed: int = 0  # conditionings and noise of k come from (seed, k)
    min_separation: float | None = 0.15  # test scenes' image-plane separation (None = the data config's 0.12)
    detector: str = "heatmap"  # heatmap (learned, cached) | color (training-free, separated scenes only)
    heatmap: HeatmapConfig = field(default_factory=HeatmapConfig)  # options of the learned detector

    def __post_init__(self) -> None:
        if not self.counts:
            raise InputError("evaluate.counts is empty: give at least one object count")
        bad = [k for k in self.counts if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= self.max_count]
        if bad:
            raise InputError(
                f"evaluate.counts contains {bad[0]!r}: expected integers from 0 to max_count={self.max_count}"
            )
        if len(set(self.counts)) != len(self.counts):
            raise InputError(f"evaluate.counts {list(self.counts)} contains duplicates")
        for name in ("per_count", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise InputError(f"evaluate.{name}={getattr(self, name)}: expected an integer >= 1")
        if self.grid_per_count < 0:
            raise InputError(f"evaluate.grid_per_count={self.grid_per_count}: expected an integer >= 0")
        if self.detector not in DETECTORS:
            raise InputError(f"evaluate.detector={self.detector!r}: expected one of {list(DETECTORS)}")
        if self.min_separation is not None and not 0 <= self.min_separation < 1:
            raise InputError(f"evaluate.min_separation={self.min_separation}: expected a number in [0, 1)")
        if self.tolerance_px is not None and not self.tolerance_px > 0:
            raise InputError(f"evaluate.tolerance_px={self.tolerance_px}: expected a positive radius in pixels")
        self.summary_options()

    def summary_options(self) -> SummaryOptions:
        return SummaryOptions(self.trained_range, self.extrapolation_range, self.threshold)
