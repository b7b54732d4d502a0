"""The CLEVR vocabulary (Johnson et al. 2017): shapes, colours, materials, sizes.

Indices into these tuples are what ``Conditioning.attributes`` and ``SceneBatch`` tensors hold.
Colour values are CLEVR's own sRGB triples; sizes are object half-extents in floor units.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError

SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder")
COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
MATERIALS: tuple[str, ...] = ("rubber", "metal")
SIZES: dict[str, float] = {"large": 0.7, "small": 0.35}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)


def index_of(kind: str, name: str, options: tuple[str, ...]) -> int:
    """Vocabulary index of ``name``, or a clear error listing the valid names."""
    try:
        return options.index(name)
    except ValueError:
        raise InputError(f"unknown {kind} {name!r}; expected one of {list(options)}") from None


def shape_index(name: str) -> int:
    return index_of("shape", name, SHAPES)


def color_index(name: str) -> int:
    return index_of("color", name, COLOR_NAMES)


def material_index(name: str) -> int:
    return index_of("material", name, MATERIALS)


def size_index(name: str) -> int:
    return index_of("size", name, SIZE_NAMES)


def check_subset(kind: str, names: tuple[str, ...], options: tuple[str, ...]) -> tuple[str, ...]:
    """Validate a non-empty, duplicate-free subset of a vocabulary (e.g. allowed colours)."""
    if not names:
        raise InputError(f"the allowed {kind}s are empty; pick some of {list(options)}")
    for name in names:
        index_of(kind, name, options)
    if len(set(names)) != len(names):
        raise InputError(f"the allowed {kind}s {list(names)} contain duplicates")
    return tuple(names)


def combo_indices(pairs) -> tuple[tuple[int, int], ...]:
    """``(shape, colour)`` name pairs -> vocabulary index pairs, checking every name."""
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise InputError(f"combination {list(pair)!r}: expected a [shape, colour] pair, e.g. [\"cube\", \"red\"]")
        out.append((shape_index(pair[0]), color_index(pair[1])))
    if len(set(out)) != len(out):
        raise InputError(f"the combinations {[list(p) for p in pairs]} contain duplicates")
    return tuple(out)


def has_combo(shape: Tensor, color: Tensor, mask: Tensor, pairs: tuple[tuple[int, int], ...]) -> Tensor:
    """[B] bool: whether a scene (``[B, N]`` index tensors) holds an object with a listed
    ``(shape, colour)`` index pair."""
    hit = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    for s, c in pairs:
        hit |= (shape == s) & (color == c)
    return (hit & mask).any(-1)


def size_values() -> tuple[float, ...]:
    """Half-extents in floor units, indexed like ``SIZE_NAMES``; every one must be positive."""
    values = tuple(SIZES[n] for n in SIZE_NAMES)
    for name, v in zip(SIZE_NAMES, values):
        if not v > 0:
            raise InputError(f"size {name!r} has half-extent {v}; sizes must be positive")
    return values
