"""The study's folders: every path of a study, built from ``layout``'s primitives (which take run
configs and paths). ``StudyConfig`` inherits these methods, so that code above the libraries asks
the study for a folder (``cfg.run_dir("exp1")``) and the libraries never see a study config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config import config_hash, to_dict
from ..layout import data_dict, intervention_folder, models_dir, run_folder

if TYPE_CHECKING:
    from .config import StudyConfig


class StudyFolders:
    """Folder methods of ``StudyConfig`` (see the module doc)."""

    def run_dir(self: StudyConfig, name: str) -> Path:
        return run_folder(models_dir(self.out_dir), self.run_config(name))

    def intervention_dir(self: StudyConfig, name: str) -> Path:
        spec = self.interventions[name]
        return intervention_folder(models_dir(self.out_dir), name, spec, self.run_config(spec.base))

    def subject_dirs(self: StudyConfig) -> dict[str, Path]:
        """Folders of everything the study evaluates: enabled models, then interventions."""
        dirs = {name: self.run_dir(name) for name in self.enabled_models()}
        dirs.update({name: self.intervention_dir(name) for name in self.enabled_interventions()})
        return dirs

    def seeded_name(self: StudyConfig, name: str, seed: int) -> str:
        """A subject's name in a study of several seeds (``exp2@s1``); the plain name with one seed."""
        return name if len(self.seed_list()) == 1 else f"{name}@s{seed}"

    def seeded_subjects(self: StudyConfig) -> dict[str, tuple[int, Path]]:
        """``subject_dirs`` under every seed of the study: ``seeded_name`` -> (seed, folder)."""
        return {self.seeded_name(name, seed): (seed, folder) for seed, sub in self.per_seed().items()
                for name, folder in sub.subject_dirs().items()}

    def seeded_subject_dirs(self: StudyConfig) -> dict[str, Path]:
        return {key: folder for key, (_, folder) in self.seeded_subjects().items()}

    def emergence_runs(self: StudyConfig) -> dict[str, tuple[int, Path]]:
        """The runs whose checkpoints the emergence stage follows (its enabled models):
        ``seeded_name`` -> (seed, folder)."""
        return {self.seeded_name(name, seed): (seed, sub.run_dir(name)) for seed, sub in self.per_seed().items()
                for name in self.emergence.models if sub.models[name].enabled}

    def detector_cache(self: StudyConfig) -> Path:
        return Path(self.out_dir) / "detectors"

    def ceiling_path(self: StudyConfig) -> Path:
        ev = self.evaluate
        key = config_hash({"data": data_dict(self.data), "detector": ev.detector, "heatmap": to_dict(ev.heatmap),
                           "counts": ev.counts, "per_count": ev.per_count, "min_separation": ev.min_separation,
                           "tolerance_px": ev.tolerance_px, "seed": ev.seed})
        return self.detector_cache() / f"ceiling-{key}.json"

    def crowding_path(self: StudyConfig) -> Path:
        ev = self.evaluate
        key = config_hash({"data": self.data.cache_key(), "counts": ev.counts, "per_count": ev.per_count,
                           "min_separation": ev.min_separation, "seed": ev.seed, "radii": self.crowding_radii()})
        return Path(self.out_dir) / "crowding" / f"crowding-{key}.json"

    def report_dir(self: StudyConfig) -> Path:
        return Path(self.out_dir) / "report"
