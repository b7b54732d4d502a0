"""The Blender backend (``data.renderer = "blender"``): the torch renderer's scenes, physically based.

``BlenderRenderer`` takes the same ``SceneBatch`` and gives the same ``RenderOutput`` as
``render.Renderer``: images from Cycles on the CPU (``data.blender_samples`` per pixel, no
denoising), masks and visible pixels from an index render (each object a flat colour, one sample at
each pixel centre), centres by projecting the 3-D centres with the same ``Camera``, so every stage
runs unchanged. The scene is built from primitives by ``blender_worker.py``, run by a Python that
has ``bpy`` (``pip install bpy``; it pins numpy < 2, so it may live in its own environment):
``$LOCODIFF_BLENDER_PYTHON``, else this Python when it can import bpy. The scenes are split over
``workers`` processes, one render thread each, started at the first batch and kept (the stage —
camera, lights, floor, materials — is built once per worker); the same scenes give the same images
on one machine, however they are split.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from . import vocab
from .camera import Camera, CameraConfig
from .render import Lighting, RenderOutput, Renderer
from .scene import SceneBatch

WORKER = Path(__file__).with_name("blender_worker.py")
PYTHON_VARIABLE = "LOCODIFF_BLENDER_PYTHON"


def blender_python() -> str | None:
    """A Python that can import bpy: ``$LOCODIFF_BLENDER_PYTHON``, else this one if it can, else
    ``.venv-blender`` in the working folder (``make blender`` makes it in a checkout)."""
    chosen = os.environ.get(PYTHON_VARIABLE)
    if chosen:
        return chosen
    if importlib.util.find_spec("bpy") is not None:
        return sys.executable
    local = Path.cwd() / ".venv-blender" / "bin" / "python"
    return str(local) if local.is_file() else None


def linear(srgb: tuple[int, int, int]) -> list[float]:
    """CLEVR's sRGB colour as the linear RGB a renderer multiplies light by."""
    c = np.asarray(srgb, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).tolist()


class BlenderRenderer:
    """Renders ``SceneBatch``es with Blender at one resolution (see the module doc)."""

    def __init__(self, resolution: int, camera: CameraConfig | None = None, samples: int = 16,
                 workers: int | None = None, lighting: Lighting | None = None) -> None:
        self.python = blender_python()
        if self.python is None:
            raise DataError(f"data.renderer = \"blender\" needs a Python with bpy: `make blender` (a .venv-blender "
                            f"here), or pip install bpy (it pins numpy < 2) and point {PYTHON_VARIABLE} at that python")
        if not (Path(self.python).is_file() or shutil.which(self.python)):
            raise DataError(f"{PYTHON_VARIABLE}={self.python!r} is not a program; point it at a python with bpy")
        self.resolution, self.samples = resolution, samples
        self.camera = Camera(camera)
        self.lighting = lighting or Lighting()
        self.workers = workers or max(1, min(os.cpu_count() or 1, 8))
        self._projector = Renderer(resolution, 1, camera)  # centres only: the same camera model
        self.device = torch.device("cpu")

    def job(self, scenes: SceneBatch, out: Path) -> dict:
        """What a worker renders: camera, lights, and each scene's objects by slot."""
        c, lt = self.camera, self.lighting
        target = [c.config.target_x, c.config.target_y, 0.0]
        lights = {k: v for k, v in dataclasses.asdict(lt).items() if k in ("key", "fill", "back", "ambient",
                                                                             "floor_albedo")}
        lights.update(key_dir=list(lt.key_dir), fill_dir=list(lt.fill_dir), back_dir=list(lt.back_dir))
        sizes = scenes.size_values()
        rows = []
        for b in range(scenes.batch_size):
            rows.append([{"slot": j, "shape": vocab.SHAPES[scenes.shape[b, j]], "material": vocab.MATERIALS[scenes.material[b, j]],
                          "color": linear(vocab.COLORS[vocab.COLOR_NAMES[scenes.color[b, j]]]),
                          "size": float(sizes[b, j]), "x": float(scenes.positions[b, j, 0]),
                          "y": float(scenes.positions[b, j, 1]), "rotation": float(scenes.rotations[b, j])}
                         for j in scenes.mask[b].nonzero(as_tuple=True)[0].tolist()])
        return {"out": str(out), "resolution": self.resolution, "samples": self.samples, "lights": lights,
                "camera": {"eye": c.eye.double().tolist(), "target": target, "fov_deg": c.config.fov_deg},
                "scenes": rows}

    def __call__(self, scenes: SceneBatch, with_masks: bool = True) -> RenderOutput:
        """Images, per-object masks, projected centres and visible pixel counts of a batch."""
        scenes = scenes.to("cpu")
        parts = [p for p in (list(range(scenes.batch_size))[w::self.workers] for w in range(self.workers)) if p]
        images = torch.zeros(scenes.batch_size, 3, self.resolution, self.resolution)
        ids = torch.zeros(scenes.batch_size, self.resolution, self.resolution, dtype=torch.long)
        with tempfile.TemporaryDirectory(prefix="locodiff-blender-") as tmp:
            folders = [Path(tmp) / f"part-{w}" for w in range(len(parts))]
            for w, (part, folder) in enumerate(zip(parts, folders)):
                folder.mkdir()
                (folder / "job.json").write_text(json.dumps(self.job(scenes[torch.tensor(part)], folder)))
                self._send(w, folder / "job.json")
            for w, (part, folder) in enumerate(zip(parts, folders)):
                self._receive(w, folder)
                for i, b in enumerate(part):
                    images[b], ids[b] = self._read(folder, i)
        masks = ids[:, None] == (torch.arange(scenes.slots) + 1)[None, :, None, None]
        masks &= scenes.mask[..., None, None]
        return RenderOutput(images=images, masks=masks if with_masks else None,
                            centers=self._projector.centers(scenes), visible_pixels=masks.sum((2, 3)))

    def masks(self, scenes: SceneBatch) -> torch.Tensor:
        return self(scenes).masks

    # ----- the worker processes: started at the first batch, kept until the renderer goes ------------

    def _send(self, w: int, job: Path) -> None:
        if not hasattr(self, "_procs"):
            self._logs = tempfile.TemporaryDirectory(prefix="locodiff-blender-logs-")
            self._procs: list[subprocess.Popen] = []
        while len(self._procs) <= w:
            with open(Path(self._logs.name) / f"worker-{len(self._procs)}.txt", "w") as log:
                self._procs.append(subprocess.Popen([self.python, str(WORKER), "--serve"], stdin=subprocess.PIPE,
                                                    stdout=subprocess.PIPE, stderr=log, text=True))
        self._procs[w].stdin.write(f"{job}\n")
        self._procs[w].stdin.flush()

    def _receive(self, w: int, folder: Path) -> None:
        answer = self._procs[w].stdout.readline().strip()
        if answer != "ok" or not (folder / "done.json").is_file():
            tail = (Path(self._logs.name) / f"worker-{w}.txt").read_text()[-1500:]
            self.close()
            raise DataError(f"the Blender worker failed ({answer or 'it exited'}); its last output:\n{tail}")

    def close(self) -> None:
        """Stop the worker processes (they stop by themselves when this process ends)."""
        for proc in getattr(self, "_procs", []):
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=30)
        self._procs = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to tidy
            pass

    def _read(self, folder: Path, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(folder / f"rgb-{i}.png") as rgb, Image.open(folder / f"index-{i}.png") as index:
            image = torch.from_numpy(np.asarray(rgb.convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0
            slot = torch.from_numpy(np.asarray(index.convert("RGB"))[..., 0].astype(np.int64))
        return image, slot


def agreement(masks_a: torch.Tensor, masks_b: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per present object: the IoU of two renderers' masks and the distance (px) between the
    masks' centroids, [M] each (objects hidden in either render are left out)."""
    a, b = masks_a[present], masks_b[present]
    seen = (a.flatten(1).any(1)) & (b.flatten(1).any(1))
    a, b = a[seen].float(), b[seen].float()
    iou = (a * b).flatten(1).sum(1) / ((a + b) > 0).float().flatten(1).sum(1)
    grid = torch.stack(torch.meshgrid(torch.arange(a.shape[-2]), torch.arange(a.shape[-1]), indexing="ij")).float()
    centroid = lambda m: (m[:, None] * grid[None]).flatten(2).sum(2) / m.flatten(1).sum(1)[:, None]  # noqa: E731
    return iou, (centroid(a) - centroid(b)).norm(dim=1)


