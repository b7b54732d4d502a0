"""``locodiff export-scenes``: a split of a study's data set as a CLEVR generator folder."""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..config import to_dict
from .camera import Camera
from .clevr_format import clevr_scenes, write_clevr_folder
from .config import DataConfig
from .dataset import SceneDataset, build_dataset
from .scene import SceneBatch


def export_split(cfg: DataConfig, out_dir: str | Path, split: str, out: str | Path,
                 counts: tuple[int, ...] | None = None) -> Path:
    """Write ``split`` (only the images with ``counts`` objects, when given) of the data set as
    ``out/images/CLEVR_<split>_<index>.png`` and ``out/scenes.json`` (rendering it first if needed)."""
    root = build_dataset(cfg, out_dir, (split,))
    data = SceneDataset(root, split, counts)
    tensors = {k: v[data.index] for k, v in data.tensors.items()}
    names = [f"CLEVR_{split}_{i:06d}.png" for i in range(len(data))]
    scenes = clevr_scenes(SceneBatch.from_tensors(tensors), tensors["centers"], Camera(cfg.camera), cfg.resolution,
                          names, split)
    info = {"split": split, "version": f"locodiff {__version__}", "resolution": cfg.resolution,
            "counts": sorted({len(s["objects"]) for s in scenes}), "data": to_dict(cfg)}
    return write_clevr_folder(Path(out), tensors["images"], scenes, info)
