"""Scene descriptions: typed objects for people and JSON, padded tensors for the renderer.

A ``Scene`` is a list of ``SceneObject`` named with CLEVR's vocabulary (see ``vocab``); it
round-trips through JSON so a data set's scenes can be read and edited by hand. A ``SceneBatch``
holds many scenes as padded index tensors plus a mask, which is what the sampler produces and the
renderer consumes: 0..N objects per scene all take the same code path.

Geometry (floor units, z up, the floor is z = 0): an object of half-extent ``s`` (its size) is
a sphere of radius ``s``, a cylinder of radius ``s`` and height ``2 s``, or a cube of half-side
``s / sqrt(2)`` (as in CLEVR, so that a cube's footprint diagonal equals a sphere's diameter).
Each rests on the floor; ``rotation`` (radians, about the vertical axis) turns cubes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from . import vocab

CUBE_SCALE = 1.0 / math.sqrt(2.0)  # cube half-side relative to the object's size


@dataclass(frozen=True)
class SceneObject:
    shape: str  # one of vocab.SHAPES
    color: str  # one of vocab.COLOR_NAMES
    material: str  # one of vocab.MATERIALS
    size: str  # one of vocab.SIZE_NAMES
    x: float  # floor position (floor units)
    y: float
    rotation: float = 0.0  # radians about the vertical axis

    def __post_init__(self) -> None:
        for kind, value, options in self._named_fields():
            if not isinstance(value, str):
                raise InputError(
                    f"{kind} {value!r} is not a {kind} name; expected one of {list(options)}"
                )
            vocab.index_of(kind, value, options)
        for name in ("x", "y", "rotation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"object {name}={value!r}: expected a finite number")

    def _named_fields(self):
        return (
            ("shape", self.shape, vocab.SHAPES),
            ("color", self.color, vocab.COLOR_NAMES),
            ("material", self.material, vocab.MATERIALS),
            ("size", self.size, vocab.SIZE_NAMES),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape, "color": self.color, "material": self.material,
            "size": self.size, "x": self.x, "y": self.y, "rotation": self.rotation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SceneObject":
        if not isinstance(data, dict):
            raise InputError(f"a scene object must be a JSON object, got {data!r}")
        known = {"shape", "color", "material", "size", "x", "y", "rotation"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown scene-object key(s) {unknown}; known keys are {sorted(known)}")
        missing = sorted(known - {"rotation"} - set(data))
        if missing:
            raise InputError(f"scene object {data!r} lacks {missing}")
        return cls(**data)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))

    def __len__(self) -> int:
        return len(self.objects)

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scene":
        if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
            raise InputError(f"a scene must be a JSON object with an 'objects' list, got {data!r}")
        return cls(tuple(SceneObject.from_dict(o) for o in data["objects"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "Scene":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"scene JSON is not valid: {e}") from None
        return cls.from_dict(data)


# Names of the index tensors of a SceneBatch, with the vocabulary each indexes.
INDEX_FIELDS: dict[str, tuple[str, ...]] = {
    "shape": vocab.SHAPES,
    "color": vocab.COLOR_NAMES,
    "material": vocab.MATERIALS,
    "size": vocab.SIZE_NAMES,
}


@dataclass
class SceneBatch:
    """B scenes of up to N objects as tensors; slots where ``mask`` is False are padding."""

    shape: Tensor  # [B, N] long, index into vocab.SHAPES
    color: Tensor  # [B, N] long, index into vocab.COLOR_NAMES
    material: Tensor  # [B, N] long, index into vocab.MATERIALS
    size: Tensor  # [B, N] long, index into vocab.SIZE_NAMES
    positions: Tensor  # [B, N, 2] float, floor (x, y)
    rotations: Tensor  # [B, N] float, radians
    mask: Tensor  # [B, N] bool

    def __post_init__(self) -> None:
        b, n = self.mask.shape
        if self.mask.dtype != torch.bool:
            self.mask = self.mask.bool()
        for name, options in INDEX_FIELDS.items():
            t = getattr(self, name)
            if tuple(t.shape) != (b, n):
                raise InputError(f"SceneBatch.{name} has shape {tuple(t.shape)}, expected {(b, n)}")
            t = t.long()
            setattr(self, name, t)
            real = t[self.mask]
            if real.numel() and (real.min() < 0 or real.max() >= len(options)):
                bad = real[(real < 0) | (real >= len(options))][0].item()
                raise InputError(
                    f"{name} index {bad} is out of range; expected 0..{len(options) - 1} "
                    f"for {list(options)}"
                )
        if tuple(self.positions.shape) != (b, n, 2):
            raise InputError(f"SceneBatch.positions has shape {tuple(self.positions.shape)}, expected {(b, n, 2)}")
        if tuple(self.rotations.shape) != (b, n):
            raise InputError(f"SceneBatch.rotations has shape {tuple(self.rotations.shape)}, expected {(b, n)}")
        if not torch.isfinite(self.positions[self.mask]).all():
            raise InputError("SceneBatch.positions contain NaN or infinite values")

    # ----- construction ---------------------------------------------------------------------
    @classmethod
    def empty(cls, batch_size: int, slots: int, device=None) -> "SceneBatch":
        z = torch.zeros(batch_size, slots, dtype=torch.long, device=device)
        return cls(
            z, z.clone(), z.clone(), z.clone(),
            torch.zeros(batch_size, slots, 2, device=device),
            torch.zeros(batch_size, slots, device=device),
            torch.zeros(batch_size, slots, dtype=torch.bool, device=device),
        )

    @classmethod
    def from_scenes(cls, scenes: list[Scene], slots: int | None = None) -> "SceneBatch":
        """Pad a list of scenes to ``slots`` objects (default: the largest scene, at least 1)."""
        longest = max([len(s) for s in scenes] + [1])
        slots = longest if slots is None else slots
        if slots < longest:
            raise InputError(f"a scene has {longest} objects but only {slots} slots were asked for")
        batch = cls.empty(len(scenes), slots)
        for b, scene in enumerate(scenes):
            for j, o in enumerate(scene.objects):
                for name, options in INDEX_FIELDS.items():
                    getattr(batch, name)[b, j] = vocab.index_of(name, getattr(o, name), options)
                batch.positions[b, j] = torch.tensor([o.x, o.y])
                batch.rotations[b, j] = o.rotation
                batch.mask[b, j] = True
        return batch

    def to_scenes(self) -> list[Scene]:
        """Back to typed scenes; objects keep their slot order."""
        cpu = self.to("cpu")
        idx = {name: getattr(cpu, name).tolist() for name in INDEX_FIELDS}
        pos, rot, mask = cpu.positions.tolist(), cpu.rotations.tolist(), cpu.mask.tolist()
        scenes = []
        for b in range(self.batch_size):
            objs = []
            for j in range(self.slots):
                if not mask[b][j]:
                    continue
                names = {name: INDEX_FIELDS[name][idx[name][b][j]] for name in INDEX_FIELDS}
                objs.append(SceneObject(**names, x=pos[b][j][0], y=pos[b][j][1], rotation=rot[b][j]))
            scenes.append(Scene(tuple(objs)))
        return scenes

    @classmethod
    def from_tensors(cls, data: dict[str, Tensor]) -> "SceneBatch":
        """From a dict holding (at least) this class's field names, e.g. a data-set batch."""
        names = ("shape", "color", "material", "size", "positions", "rotations", "mask")
        missing = [n for n in names if n not in data]
        if missing:
            raise InputError(f"scene tensors lack {missing}")
        return cls(**{n: data[n] for n in names})

    def tensors(self) -> dict[str, Tensor]:
        return {
            "shape": self.shape, "color": self.color, "material": self.material,
            "size": self.size, "positions": self.positions, "rotations": self.rotations,
            "mask": self.mask,
        }

    # ----- properties and views -------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def slots(self) -> int:
        return self.mask.shape[1]

    @property
    def device(self) -> torch.device:
        return self.mask.device

    def counts(self) -> Tensor:
        return self.mask.sum(1)

    def to(self, device) -> "SceneBatch":
        return SceneBatch(**{k: v.to(device) for k, v in self.tensors().items()})

    def __getitem__(self, index) -> "SceneBatch":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return SceneBatch(**{k: v[index] for k, v in self.tensors().items()})

    @staticmethod
    def cat(items: list["SceneBatch"]) -> "SceneBatch":
        """Concatenate along the batch, padding to the largest slot count."""
        n = max(b.slots for b in items)
        padded = [b.pad_to(n) for b in items]
        return SceneBatch(**{k: torch.cat([p.tensors()[k] for p in padded]) for k in padded[0].tensors()})

    def pad_to(self, slots: int) -> "SceneBatch":
        extra = slots - self.slots
        if extra < 0:
            raise InputError(f"cannot pad {self.slots} slots down to {slots}")
        if extra == 0:
            return self
        pad = SceneBatch.empty(self.batch_size, extra, self.device)
        return SceneBatch(**{k: torch.cat([v, pad.tensors()[k]], 1) for k, v in self.tensors().items()})

    # ----- geometry -------------------------------------------------------------------------
    def size_values(self) -> Tensor:
        """Half-extent ``s`` of every slot, [B, N] float."""
        table = torch.tensor(vocab.size_values(), device=self.device)
        return table[self.size]

    def half_heights(self) -> Tensor:
        """Half of each object's height = the height of its centre above the floor, [B, N]."""
        s = self.size_values()
        return torch.where(self.shape == vocab.SHAPES.index("cube"), s * CUBE_SCALE, s)

    def centers_3d(self) -> Tensor:
        """World coordinates of each object's centre, [B, N, 3]."""
        return torch.cat([self.positions, self.half_heights()[..., None]], -1)
