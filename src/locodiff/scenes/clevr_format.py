"""The CLEVR dataset generator's scene format (Johnson et al. 2017), both ways.

A CLEVR folder holds ``images/*.png`` and one scenes JSON (``{"scenes": [...]}``, as the
generator's ``collect_scenes.py`` writes it; or a ``scenes/`` folder with one JSON per image).
Each scene names its ``image_filename`` and lists objects with ``shape``, ``color``,
``material``, ``size`` (CLEVR's vocabulary, which locodiff shares), ``3d_coords`` (floor x, y and
the centre's height), ``rotation`` (degrees) and ``pixel_coords`` (x, y in the image's pixels,
then depth).

``write_clevr_folder`` writes any locodiff split so; ``read_clevr_folder`` reads such a folder
(made by the CLEVR generator, at any resolution and aspect) into the tensors of a locodiff data set:
each image is centre-cropped to a square and resized to the study's resolution, and an object's
conditioning location is its ``pixel_coords`` mapped the same way. What locodiff's renderer
knows and a CLEVR folder does not (visible pixels per object) is stored as -1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import DataError
from ..io import atomic_path, notice, sha256_file, write_json_atomic
from . import vocab
from .camera import Camera
from .scene import Scene, SceneBatch, SceneObject

SCENES_FILE = "scenes.json"
IMAGES_DIR = "images"


def clevr_scenes(batch: SceneBatch, centers: Tensor, camera: Camera, resolution: int, names: list[str],
                 split: str) -> list[dict]:
    """CLEVR scene dicts of a batch; ``centers`` [B, N, 2] are the image-plane (x, y) in [0, 1]."""
    points = batch.centers_3d()
    _, depth = camera.project(points.to(camera.device))
    scenes = []
    for b, name in enumerate(names):
        objects = []
        for j in batch.mask[b].nonzero(as_tuple=True)[0].tolist():
            x, y = (centers[b, j] * resolution).tolist()
            objects.append({
                "shape": vocab.SHAPES[batch.shape[b, j]], "color": vocab.COLOR_NAMES[batch.color[b, j]],
                "material": vocab.MATERIALS[batch.material[b, j]], "size": vocab.SIZE_NAMES[batch.size[b, j]],
                "3d_coords": points[b, j].tolist(),  # unrounded: the round trip is exact
                "rotation": math.degrees(float(batch.rotations[b, j])),
                "pixel_coords": [x, y, float(depth[b, j])],
            })
        scenes.append({"split": split, "image_index": b, "image_filename": name, "objects": objects})
    return scenes


def write_clevr_folder(out: Path, images: Tensor, scenes: list[dict], info: dict) -> Path:
    """``out/images/<image_filename>`` (uint8 [B, 3, H, W]) and ``out/scenes.json``; the scenes
    file is written last, so a folder with it is complete."""
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for image, scene in zip(images, scenes):
        with atomic_path(out / IMAGES_DIR / scene["image_filename"]) as tmp:
            Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(tmp, format="PNG")
    write_json_atomic(out / SCENES_FILE, {"info": info, "scenes": scenes}, sort_keys=False)
    return out


# ----- reading ---------------------------------------------------------------------------------------


def scenes_of_folder(folder: Path) -> list[dict]:
    """The scene dicts of a CLEVR folder, or one error naming what is missing or malformed."""
    if not (folder / IMAGES_DIR).is_dir():
        raise DataError(f"{folder} is not a CLEVR folder: {folder / IMAGES_DIR} is missing")
    files = sorted(folder.glob("*scenes*.json"))
    if len(files) == 1:
        return _scene_list(files[0], _read_json(files[0]).get("scenes"))
    if not files and (folder / "scenes").is_dir():
        return [_read_json(p) for p in sorted((folder / "scenes").glob("*.json"))]
    raise DataError(f"{folder}: expected one *scenes*.json file (or a scenes/ folder), found "
                    f"{[p.name for p in files] or 'none'}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _scene_list(path: Path, scenes) -> list[dict]:
    if not isinstance(scenes, list):
        raise DataError(f"{path}: expected a \"scenes\" list")
    return scenes


def square_crop(width: int, height: int) -> tuple[int, int, int]:
    """The centred square of an image: (left, top, side)."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def read_scene(folder: Path, scene: dict, resolution: int) -> tuple[np.ndarray, list[dict], list[tuple[float, float]]]:
    """One scene's image (uint8 [3, R, R]), objects and conditioning locations (x, y) in [0, 1]."""
    try:
        name, objects = scene["image_filename"], scene["objects"]
        path = folder / IMAGES_DIR / name
        with Image.open(path) as img:
            left, top, side = square_crop(*img.size)
            square = img.convert("RGB").crop((left, top, left + side, top + side))
            pixels = np.asarray(square.resize((resolution, resolution), Image.BOX)).transpose(2, 0, 1)
        locations = [((o["pixel_coords"][0] - left) / side, (o["pixel_coords"][1] - top) / side) for o in objects]
    except (KeyError, TypeError, IndexError) as e:
        raise DataError(f"{folder}: scene {scene.get('image_index', '?')} lacks a field the CLEVR format has "
                        f"({e!r})") from None
    except OSError as e:
        raise DataError(f"{folder}: cannot read the image of scene {scene.get('image_filename', '?')}: {e}") from None
    return pixels, objects, locations


def scene_object(o: dict, where: str) -> SceneObject:
    """A CLEVR object as a ``SceneObject`` (which checks the words), or one error naming ``where``."""
    try:
        x, y = (float(v) for v in o["3d_coords"][:2])
        return SceneObject(o["shape"], o["color"], o["material"], o["size"], x, y,
                           math.radians(float(o.get("rotation", 0.0))))
    except (KeyError, TypeError, ValueError) as e:  # InputError is a ValueError
        raise DataError(f"{where}: {e}") from None


def scene_tensors(objects: list[list[dict]], locations: list[list[tuple[float, float]]], slots: int,
                  names: list[str]) -> dict[str, Tensor]:
    """The SceneBatch fields and centres of imported scenes (padded to ``slots``)."""
    scenes = [Scene([scene_object(o, f"object {j} of the scene of {name}") for j, o in enumerate(objs)])
              for objs, name in zip(objects, names)]
    batch = SceneBatch.from_scenes(scenes, slots)
    centers = torch.zeros(len(objects), slots, 2)
    for b, locs in enumerate(locations):
        if locs:
            centers[b, : len(locs)] = torch.tensor(locs)
    return {**batch.tensors(), "centers": centers, "visible_pixels": torch.full((len(objects), slots), -1),
            "counts": batch.mask.sum(1)}


def select_splits(scenes: list[dict], train_counts: tuple[int, ...], train_images: int,
                  test_counts: tuple[int, ...], per_count: int) -> dict[str, list[dict]]:
    """The folder's scenes split as the study asks: train = the first ``train_images`` scenes with a
    count in ``train_counts``; test = of the rest, the first ``per_count`` with each test count."""
    counts = [len(s.get("objects", [])) for s in scenes]
    train = [s for s, n in zip(scenes, counts) if n in train_counts][:train_images]
    used = {id(s) for s in train}
    test = []
    for k in test_counts:
        test += [s for s, n in zip(scenes, counts) if n == k and id(s) not in used][:per_count]
    return {"train": train, "test": test}


def read_split(folder: Path, scenes: list[dict], resolution: int, slots: int) -> dict[str, Tensor]:
    """Every scene of a split read and checked (images, objects, locations) before anything is
    cached: the tensors of a locodiff shard, images uint8 [B, 3, R, R]."""
    images, objects, locations, names, outside = [], [], [], [], 0
    for scene in scenes:
        pixels, objs, locs = read_scene(folder, scene, resolution)
        if any(not (0 <= v <= 1) for loc in locs for v in loc):
            outside += 1  # an object centred outside the square crop cannot be asked for
            continue
        images.append(torch.from_numpy(pixels.copy()))
        names.append(str(folder / IMAGES_DIR / scene["image_filename"]))
        objects.append(objs)
        locations.append(locs)
    if outside:
        notice(f"{folder}: left out {outside} of {len(scenes)} scenes with an object centred outside the square crop")
    tensors = scene_tensors(objects, locations, slots, names)
    tensors["images"] = torch.stack(images) if images else torch.zeros(0, 3, resolution, resolution, dtype=torch.uint8)
    return tensors


def fingerprint(folder: Path) -> str:
    """What an imported data set was read from: the checksum of the folder's scenes JSON (the images
    are not hashed; replace a folder's images and give it new scenes, or delete the cache)."""
    files = sorted(folder.glob("*scenes*.json")) or sorted((folder / "scenes").glob("*.json"))
    return ",".join(sha256_file(p)[:16] for p in files)
