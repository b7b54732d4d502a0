"""The CLEVR vocabulary (Johnson et al. 2017): shapes, colours, materials, sizes.

Indices into these tuples are what ``Conditioning.attributes`` and ``SceneBatch`` tensors hold.
Colour values are CLEVR's own sRGB triples; sizes are object half-extents in floor units.
"""

from __future__ import annotations

from ..errors import SceneError

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
        raise SceneError(f"unknown {kind} {name!r}; expected one of {list(options)}") from None
