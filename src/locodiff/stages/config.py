"""The study configuration: one typed config with a section per pipeline stage.

A preset (``quick`` for a 2-core CPU, ``full`` = quick plus the attribute, held-out-pair and
training-time models, ``gpu`` = quick at 64x64 for one large GPU, ``paper`` the long faithful
GPU preset, ``micro`` for tests) is a TOML file in
``locodiff/presets/`` (``extends = "quick"`` builds one preset on another); a user file and
``--set key=value`` overrides are merged on top, then the result is validated into
``StudyConfig``. Every CLI verb loads this and uses its own section(s).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ..config import from_dict, load_config_file, merge, parse_set_option
from ..errors import ConfigError
from ..evaluate.config import EvalConfig
from ..intervene.config import InterventionSpec
from ..locality.config import LocalityOptions
from ..models.config import ModelConfig
from ..report.config import ReportConfig
from ..scenes.config import DataConfig
from ..train.config import RunConfig, TrainConfig
from .folders import StudyFolders

PRESETS = ("micro", "quick", "full", "gpu", "paper")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: an architecture trained on data labelled by one policy."""

    # which experiment it stands for; "ablation": a variant of Exp 1 or Exp 2 (by its labels) that
    # explains a result, judged by no claim of the paper but counted in the locality separation
    role: Literal["exp1", "exp2", "exp3", "baseline", "ablation"] = "exp1"
    label_policy: Literal["all", "one"] = "all"  # which objects' locations are conditioners
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture (image_size = data's)
    train: TrainConfig = field(default_factory=TrainConfig)  # the study's [train] + overrides
    enabled: bool = True  # skip this model without deleting its section
    description: str = ""  # one line for the report
    holdout_combos: tuple[tuple[str, str], ...] = ()  # (shape, colour) pairs never shown in training
    # train it under these of the study's seeds only (empty: every seed); a preset spends its seeds
    # on the models whose claims are judged over seeds
    seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class EmergenceOptions:
    """How locality and extrapolation grow over training: every kept checkpoint of ``models`` is
    evaluated at ``counts`` (``per_count`` samples each) and probed with the [locality] options.
    Keep enough checkpoints (``train.keep_checkpoints``) for a curve."""

    models: tuple[str, ...] = ()  # trained models to follow (none: the stage does nothing)
    counts: tuple[int, ...] = (1, 4, 8)  # object counts evaluated at each checkpoint
    per_count: int = 16  # samples per count and checkpoint

    def eval_config(self, evaluate: EvalConfig) -> EvalConfig:
        """The study's evaluation with these counts and samples (run at every checkpoint)."""
        return replace(evaluate, counts=self.counts, per_count=self.per_count)

    def locality_options(self, locality: LocalityOptions) -> LocalityOptions:
        """The study's probe, its extrapolation part at these counts on this evaluation's scenes
        (a quarter of the full probe's cost at the default counts), without the GroupNorm diagnostic."""
        ex = locality.extrapolation
        ex = replace(ex, counts=tuple(k for k in self.counts if k >= 1), held_norm_counts=(),
                     draw=replace(ex.draw, per_count=self.per_count))
        return replace(locality, extrapolation=ex)

    def __post_init__(self) -> None:
        if self.per_count < 1 or not self.counts or min(self.counts) < 0:
            raise ConfigError(f"emergence.counts={list(self.counts)} / per_count={self.per_count}: "
                              "expected counts >= 0 and per_count >= 1")


@dataclass(frozen=True)
class StudyConfig(StudyFolders):
    seed: int = 0  # master seed; every stage derives its generators from it
    # train (and evaluate, probe) every model under each of these seeds; empty: just ``seed``.
    # Sections that show one model show the first seed; the seeds section, means with CIs.
    seeds: tuple[int, ...] = ()
    out_dir: str = "runs"  # where run folders and caches are written
    data: DataConfig = field(default_factory=DataConfig)  # scenes, rendering and data-set sizes
    train: TrainConfig = field(default_factory=TrainConfig)  # defaults for every model
    models: dict[str, ModelSpec] = field(default_factory=dict)  # the study's models by name
    interventions: dict[str, InterventionSpec] = field(default_factory=dict)  # post hoc, on trained models
    evaluate: EvalConfig = field(default_factory=EvalConfig)  # length generalization per k
    locality: LocalityOptions = field(default_factory=LocalityOptions)
    device: str = "auto"  # evaluation and locality device: auto (cuda if available) | cpu | cuda[:N]
    jobs: int = 1  # models trained at once (processes); on a 2-core CPU 2 jobs x 1 thread is fastest
    emergence: EmergenceOptions = field(default_factory=EmergenceOptions)  # locality over training
    report: ReportConfig = field(default_factory=ReportConfig)  # the criteria behind every verdict

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"jobs={self.jobs}: expected >= 1")
        if "detector" in self.models:
            raise ConfigError("models.detector: the name is reserved for the evaluation's detector; choose another")
        for name, spec in self.models.items():
            if spec.model.image_size != self.data.resolution:
                raise ConfigError(
                    f"models.{name}.model.image_size={spec.model.image_size} differs from "
                    f"data.resolution={self.data.resolution}; leave it unset to follow the data"
                )
        for name in self.models:  # held-out pairs name real, drawable combinations
            self.run_config(name)

        for name, spec in self.interventions.items():
            if name in self.models:
                raise ConfigError(f"interventions.{name}: the name is taken by a model; choose another")
            if spec.enabled and (spec.base not in self.models or not self.models[spec.base].enabled):
                raise ConfigError(
                    f"interventions.{name}.base={spec.base!r} is not an enabled model of the study; "
                    f"models: {sorted(self.enabled_models())}"
                )
        trained = (min(self.data.train_counts), max(self.data.train_counts))
        if tuple(self.evaluate.trained_range) != trained:
            raise ConfigError(
                f"evaluate.trained_range={list(self.evaluate.trained_range)} contradicts data.train_counts="
                f"{list(self.data.train_counts)}; leave it unset to follow the data"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={list(self.seeds)}: expected distinct seeds")
        for name, spec in self.models.items():
            if not set(spec.seeds) <= set(self.seed_list()):
                raise ConfigError(f"models.{name}.seeds={list(spec.seeds)}: expected some of the study's seeds "
                                  f"{list(self.seed_list())}")
        unknown = [m for m in self.emergence.models if m not in self.models]
        if unknown:  # a disabled model is fine: it is not followed
            raise ConfigError(f"emergence.models {unknown} are not models of the study; models: {sorted(self.models)}")
        missing = [k for k in self.locality.counts if k not in self.data.test_counts]
        if missing:
            raise ConfigError(
                f"locality.counts {missing} are not in data.test_counts={list(self.data.test_counts)}"
            )

    def enabled_models(self) -> dict[str, ModelSpec]:
        return {k: v for k, v in self.models.items() if v.enabled}

    def enabled_interventions(self) -> dict[str, InterventionSpec]:
        return {k: v for k, v in self.interventions.items() if v.enabled}

    def seed_list(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)

    def per_seed(self) -> dict[int, "StudyConfig"]:
        """The study under each of its seeds (one config each, ``seeds`` emptied); a model limited to
        other seeds (``models.NAME.seeds``) is disabled in it, with the interventions on it."""
        return {s: self._under_seed(s) for s in self.seed_list()}

    def _under_seed(self, seed: int) -> "StudyConfig":
        models = {name: replace(spec, seeds=(), enabled=spec.enabled and (not spec.seeds or seed in spec.seeds))
                  for name, spec in self.models.items()}
        interventions = {name: spec if spec.base in models and models[spec.base].enabled else replace(spec, enabled=False)
                         for name, spec in self.interventions.items()}
        return replace(self, seed=seed, seeds=(), models=models, interventions=interventions)

    def run_config(self, name: str) -> RunConfig:
        """Everything that determines model ``name``'s weights."""
        spec = self.models[name]
        return RunConfig(name=name, seed=self.seed, label_policy=spec.label_policy,
                         holdout_combos=spec.holdout_combos, data=self.data, model=spec.model, train=spec.train)

    def crowding_radii(self) -> tuple[float, ...]:
        """Radii of the crowding diagnostic: the locality index's radius and the receptive field
        of every model that is local by construction."""
        radii = {float(self.locality.radius_px)}
        for spec in self.enabled_models().values():
            if spec.model.arch == "local":
                radii.add(float(spec.model.resolved().local.radius))
        return tuple(sorted(radii))


def _fill_derived(data: dict[str, Any]) -> dict[str, Any]:
    """Values that follow others unless given: each model's train table overlays the study's,
    image_size follows data.resolution, evaluate.trained_range follows data.train_counts, and the
    extrapolation probe's scenes (locality.extrapolation.draw) follow the evaluation's."""
    data = dict(data)
    resolution = data.get("data", {}).get("resolution", DataConfig().resolution)
    train_counts = data.get("data", {}).get("train_counts", DataConfig().train_counts)
    counts_ok = isinstance(train_counts, (list, tuple)) and train_counts and all(isinstance(k, int) for k in train_counts)
    if counts_ok and isinstance(data.get("evaluate", {}), dict):
        data["evaluate"] = merge({"trained_range": [min(train_counts), max(train_counts)]},
                                 data.get("evaluate", {}))
    evaluate, locality = data.get("evaluate", {}), data.get("locality", {})
    if isinstance(evaluate, dict) and isinstance(locality, dict):  # the probe takes the evaluation's scenes
        fallback = EvalConfig()
        draw = {"seed": evaluate.get("seed", fallback.seed), "per_count": evaluate.get("per_count", fallback.per_count),
                "min_separation": evaluate.get("min_separation", fallback.min_separation)}
        data["locality"] = merge({"extrapolation": {"draw": draw}}, locality)
    models = {}
    for name, spec in (data.get("models") or {}).items():
        if not isinstance(spec, dict):
            raise ConfigError(f"models.{name}: expected a table, got {spec!r}")
        spec = dict(spec)
        spec["train"] = merge(data.get("train", {}), spec.get("train", {}))
        spec["model"] = merge({"image_size": resolution}, spec.get("model", {}))
        models[name] = spec
    data["models"] = models
    return data


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {list(PRESETS)}")
    text = resources.files("locodiff.presets").joinpath(f"{name}.toml").read_text()
    data = tomllib.loads(text)
    base = data.pop("extends", None)  # a preset may build on another: its tables merge over the base's
    return merge(preset_dict(base), data) if base else data


def load_study_config(
    preset: str | None = "quick", path: str | Path | None = None, sets: list[str] | None = None
) -> StudyConfig:
    """Preset, then file, then ``--set`` overrides, validated into a ``StudyConfig``.

    A JSON file is a complete config (the ``study_config.json`` a study saves): it loads alone,
    with no preset under it, so that a saved study reruns exactly as it ran. A TOML file holds
    changes to the preset.
    """
    complete = path is not None and Path(path).suffix.lower() == ".json"
    data: dict[str, Any] = preset_dict(preset) if preset and not complete else {}
    if path is not None:
        data = merge(data, load_config_file(path))
    command_line = [parse_set_option(s) for s in sets or []]
    for change in command_line:
        data = merge(data, change)
    return from_dict(StudyConfig, _command_line_wins(_fill_derived(data), command_line))


def _command_line_wins(data: dict[str, Any], command_line: list[dict[str, Any]]) -> dict[str, Any]:
    """The precedence rule: preset < config file < a model's own table in them < command line.
    A ``--set train.KEY`` reaches every model, over what its table says, unless a more specific
    ``--set models.NAME.train.KEY`` is given (applied after it)."""
    models = data.get("models", {})
    for change in command_line:
        if isinstance(change.get("train"), dict):
            models = {name: {**spec, "train": merge(spec["train"], change["train"])} for name, spec in models.items()}
    for change in command_line:
        if isinstance(change.get("models"), dict):
            models = merge(models, {n: v for n, v in change["models"].items() if n in models})
    return {**data, "models": models}
