"""The study configuration: one typed config with a section per pipeline stage.

A preset (``quick`` for a 2-core CPU, ``paper`` for GPUs, ``micro`` for tests) is a TOML file in
``locodiff/presets/``; a user file and ``--set key=value`` overrides are merged on top, then the
result is validated into ``StudyConfig``. Every CLI verb loads this and uses its own section(s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .config import ConfigError, from_dict, load_toml, merge, parse_set_option

PRESETS = ("micro", "quick", "paper")


@dataclass(frozen=True)
class StudyConfig:
    seed: int = 0  # master seed; every stage derives its generators from it
    out_dir: str = "runs"  # where run folders and caches are written
    # Stage sections are added as the stages land (data, model, train, evaluate, locality, ...).


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {list(PRESETS)}")
    text = resources.files("locodiff.presets").joinpath(f"{name}.toml").read_text()
    import tomllib

    return tomllib.loads(text)


def load_study_config(
    preset: str | None = "quick", path: str | Path | None = None, sets: list[str] | None = None
) -> StudyConfig:
    """Preset, then file, then ``--set`` overrides, validated into a ``StudyConfig``."""
    data: dict[str, Any] = preset_dict(preset) if preset else {}
    if path is not None:
        data = merge(data, load_toml(path))
    for s in sets or []:
        data = merge(data, parse_set_option(s))
    return from_dict(StudyConfig, data)
