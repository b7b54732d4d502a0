"""Random scenes with exactly k objects, placed so that every object can be seen and told apart.

Constraints, each in the units where it matters:
- *floor gap* (``min_distance``, floor units): objects are upright and rest on the floor, so two
  objects keep a 3-D gap of at least this much when their bounding cylinders (radius = size) do;
- *image separation* (``min_separation``, fraction of the image side): projected centres stay
  apart so that a detector can count the objects of a test scene;
- *in frame*: each object's screen-space bounding box lies inside the image;
- *visibility* (``min_visible_pixels`` at ``visibility_resolution``): after occlusion each object
  keeps this many pixels, and its projected centre falls on its own mask (so the location given
  as a conditioner points at the object, not at whatever hides it).

Placement is vectorised rejection sampling: objects are placed slot by slot for the whole batch,
each slot trying ``candidates`` positions at once and keeping the first that satisfies the
constraints against the objects already placed. Scenes that fail a slot, or the visibility check
(which renders masks), are redrawn whole, for at most ``max_retries`` rounds; what still fails then
raises ``InputError``. Redrawing whole scenes (as CLEVR's own generator does) slightly favours
configurations that fit easily, e.g. more small objects at k = 10. Everything random comes from
the ``torch.Generator`` passed in, so a seed fixes the scenes; scenes do not depend on the
resolution the data is rendered at (the occlusion check has its own fixed resolution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ..config import IDENTITY_UNLESS_DEFAULT
from ..errors import ConfigError, InputError
from . import vocab
from .camera import Camera, CameraConfig
from .render import MAX_RESOLUTION, MIN_RESOLUTION, Renderer, limit_threads
from .scene import SceneBatch

_PACKING = math.pi / (2 * math.sqrt(3))  # densest packing of equal discs in the plane


@dataclass(frozen=True)
class SceneConfig:
    shapes: tuple[str, ...] = vocab.SHAPES  # allowed shapes
    colors: tuple[str, ...] = vocab.COLOR_NAMES  # allowed colours
    materials: tuple[str, ...] = vocab.MATERIALS  # allowed materials
    sizes: tuple[str, ...] = vocab.SIZE_NAMES  # allowed sizes
    # (shape, colour) pairs never drawn
    exclude_combos: tuple[tuple[str, str], ...] = field(default=(), metadata=IDENTITY_UNLESS_DEFAULT)
    floor_extent: float = 3.0  # object positions are drawn from [-extent, extent]^2
    min_distance: float = 0.25  # min gap between objects' footprints, floor units
    min_separation: float = 0.12  # min image-plane distance between centres, fraction of the side
    min_visible_pixels: int = 4  # per object after occlusion, counted at visibility_resolution
    visibility_resolution: int = 32  # resolution of the occlusion check (independent of the data's)
    max_objects: int = 10  # largest k the sampler accepts
    max_retries: int = 50  # rounds of redrawing failed scenes before giving up
    candidates: int = 64  # positions tried at once per object and round

    def __post_init__(self) -> None:
        vocab.check_subset("shape", self.shapes, vocab.SHAPES)
        vocab.check_subset("color", self.colors, vocab.COLOR_NAMES)
        vocab.check_subset("material", self.materials, vocab.MATERIALS)
        vocab.check_subset("size", self.sizes, vocab.SIZE_NAMES)
        vocab.size_values()
        self.allowed_combos()
        checks = [
            ("floor_extent", self.floor_extent > 0, "a positive number"),
            ("min_distance", self.min_distance >= 0, "a number >= 0"),
            ("min_separation", 0 <= self.min_separation < 1, "a number in [0, 1)"),
            ("min_visible_pixels", self.min_visible_pixels >= 0, "an integer >= 0"),
            ("max_objects", self.max_objects >= 0, "an integer >= 0"),
            ("max_retries", self.max_retries >= 1, "an integer >= 1"),
            ("candidates", self.candidates >= 1, "an integer >= 1"),
            (
                "visibility_resolution",
                MIN_RESOLUTION <= self.visibility_resolution <= MAX_RESOLUTION,
                f"an integer from {MIN_RESOLUTION} to {MAX_RESOLUTION}",
            ),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"scene.{name}={getattr(self, name)!r}: expected {expected}")

    def allowed_combos(self) -> tuple[tuple[int, int], ...]:
        """Every allowed (shape, colour) index pair that is not excluded."""
        excluded = set(vocab.combo_indices(self.exclude_combos))
        pairs = tuple((vocab.shape_index(s), vocab.color_index(c)) for s in self.shapes for c in self.colors)
        allowed = tuple(p for p in pairs if p not in excluded)
        if not allowed:
            raise ConfigError(f"scene.exclude_combos={[list(p) for p in self.exclude_combos]} leaves no "
                              "(shape, colour) combination to draw")
        return allowed


def as_generator(seed_or_generator: int | torch.Generator) -> torch.Generator:
    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    return torch.Generator().manual_seed(int(seed_or_generator))


class SceneSampler:
    """Draws ``SceneBatch``es under a ``SceneConfig``; the camera decides the image-plane checks."""

    def __init__(
        self, config: SceneConfig | None = None, camera: CameraConfig | None = None, threads: int | None = 1
    ) -> None:
        self.config = config or SceneConfig()
        self.threads = threads  # CPU threads while sampling (see render.limit_threads)
        self.camera = Camera(camera)
        c = self.config
        self._shapes = torch.tensor([vocab.shape_index(s) for s in c.shapes])
        self._colors = torch.tensor([vocab.color_index(s) for s in c.colors])
        self._materials = torch.tensor([vocab.material_index(s) for s in c.materials])
        self._sizes = torch.tensor([vocab.size_index(s) for s in c.sizes])
        self._combos = torch.tensor(c.allowed_combos()) if c.exclude_combos else None  # [P, 2]
        self._renderer = Renderer(c.visibility_resolution, 1, camera, threads=threads)

    # ----- public ---------------------------------------------------------------------------
    def sample(
        self,
        counts: int | Sequence[int] | Tensor,
        generator: int | torch.Generator,
        batch_size: int | None = None,
        slots: int | None = None,
    ) -> SceneBatch:
        """Scenes with exactly ``counts[b]`` objects (or ``counts`` objects, ``batch_size`` times).

        ``slots`` pads every scene to that many object slots (default: the largest count, at
        least one), so batches from different calls can be stacked.
        """
        with limit_threads(self.threads):
            return self._sample(counts, generator, batch_size, slots)

    def _sample(self, counts, generator, batch_size, slots) -> SceneBatch:
        counts = self._counts(counts, batch_size)
        gen = as_generator(generator)
        k_max = int(counts.max()) if counts.numel() else 0
        n_slots = max(k_max, 1) if slots is None else slots
        if n_slots < k_max:
            raise InputError(f"slots={n_slots} is fewer than the largest count {k_max}")
        self._check_feasible(k_max)
        out = SceneBatch.empty(len(counts), n_slots)
        pending = torch.arange(len(counts))
        reason = ""
        for _ in range(self.config.max_retries):
            if len(pending) == 0:
                break
            scenes, placed = self._place(counts[pending], n_slots, gen)
            ok = placed.clone()
            if placed.any():
                ok[placed] = self._visible(scenes[placed.nonzero(as_tuple=True)[0]])
            if not placed.all():
                reason = "objects could not be placed apart (floor gap, image separation, in frame)"
            elif not ok.all():
                reason = "objects were too hidden (min_visible_pixels or centre occluded)"
            done = ok.nonzero(as_tuple=True)[0]
            _assign(out, pending[done], scenes[done])
            pending = pending[~ok]
        if len(pending):
            k = int(counts[pending].max())
            raise InputError(
                f"could not sample {len(pending)} scene(s) with {k} objects in "
                f"{self.config.max_retries} rounds: {reason}. Lower the count, min_distance, "
                "min_separation or min_visible_pixels, use smaller sizes or enlarge floor_extent."
            )
        return out

    # ----- checks ---------------------------------------------------------------------------
    def _counts(self, counts, batch_size: int | None) -> Tensor:
        if isinstance(counts, int):
            if batch_size is None:
                raise InputError("give batch_size when counts is a single number")
            counts = [counts] * batch_size
        counts = torch.as_tensor(counts, dtype=torch.long).reshape(-1)
        if counts.numel() and counts.min() < 0:
            raise InputError(f"object count {int(counts.min())} is negative")
        if counts.numel() and counts.max() > self.config.max_objects:
            raise InputError(
                f"object count {int(counts.max())} is above max_objects={self.config.max_objects}; "
                "raise scene.max_objects to sample more"
            )
        return counts

    def _check_feasible(self, k: int) -> None:
        """Fail fast when k objects cannot fit even in the densest packing."""
        if k <= 1:
            return
        c = self.config
        smallest = min(vocab.SIZES[s] for s in c.sizes)  # every shape fits a cylinder of radius size
        rho = smallest + c.min_distance / 2  # radius of the disc each object claims on the floor
        floor_area = (2 * (c.floor_extent + rho)) ** 2
        if k * math.pi * rho**2 > _PACKING * floor_area:
            raise InputError(
                f"{k} objects cannot fit on a floor of extent {c.floor_extent} with sizes "
                f"{list(c.sizes)} and min_distance {c.min_distance}: enlarge floor_extent or "
                "lower the count"
            )
        r = c.min_separation / 2
        if k * math.pi * r**2 > _PACKING * (1 + 2 * r) ** 2:
            raise InputError(
                f"{k} object centres cannot be {c.min_separation} apart in the image: lower "
                "min_separation or the count"
            )

    # ----- placement ------------------------------------------------------------------------
    def _draw(self, table: Tensor, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
        return table[torch.randint(len(table), shape, generator=gen)]

    def _place(self, counts: Tensor, n_slots: int, gen: torch.Generator) -> tuple[SceneBatch, Tensor]:
        """One round of slot-by-slot placement; returns the scenes and which ones succeeded."""
        c, b, r = self.config, len(counts), self.config.candidates
        scenes = SceneBatch.empty(b, n_slots)
        if self._combos is None:  # shape and colour independent
            scenes.shape[:] = self._draw(self._shapes, (b, n_slots), gen)
            scenes.color[:] = self._draw(self._colors, (b, n_slots), gen)
        else:  # uniform over the allowed pairs
            pair = self._draw(self._combos, (b, n_slots), gen)
            scenes.shape[:], scenes.color[:] = pair[..., 0], pair[..., 1]
        scenes.material[:] = self._draw(self._materials, (b, n_slots), gen)
        scenes.size[:] = self._draw(self._sizes, (b, n_slots), gen)
        scenes.rotations[:] = torch.rand(b, n_slots, generator=gen) * (2 * math.pi)
        sizes, heights = scenes.size_values(), scenes.half_heights()
        centers_uv = torch.zeros(b, n_slots, 2)
        ok = torch.ones(b, dtype=torch.bool)
        for j in range(int(counts.max()) if b else 0):
            active = counts > j
            cand = (torch.rand(b, r, 2, generator=gen) * 2 - 1) * c.floor_extent
            s, hh = sizes[:, j, None].expand(b, r), heights[:, j, None].expand(b, r)
            uv = self.camera.project(torch.cat([cand, hh[..., None]], -1))[0]  # [b, r, 2]
            valid = self._in_frame(cand, s, hh)
            if j > 0:
                gap = (cand[:, :, None] - scenes.positions[:, None, :j]).norm(dim=-1)
                gap = gap - s[..., None] - sizes[:, None, :j]
                sep = (uv[:, :, None] - centers_uv[:, None, :j]).norm(dim=-1)
                valid &= ((gap >= c.min_distance) & (sep >= c.min_separation)).all(-1)
            first = valid.float().argmax(1)  # first valid candidate (0 if none)
            pick = torch.arange(b)
            scenes.positions[:, j] = cand[pick, first]
            centers_uv[:, j] = uv[pick, first]
            scenes.mask[:, j] = active
            ok &= ~active | valid.any(1)
        return _clear_padding(scenes), ok

    def _in_frame(self, xy: Tensor, s: Tensor, hh: Tensor) -> Tensor:
        """Whether each object's screen-space bounding box lies inside the image."""
        signs = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (0, 2)], dtype=torch.float32)
        center = torch.cat([xy, torch.zeros_like(s)[..., None]], -1)
        ext = torch.stack([s, s, hh], -1)
        corners = center[..., None, :] + signs * ext[..., None, :]
        uv, depth = self.camera.project(corners)
        return ((uv >= 0) & (uv <= 1)).all(-1).all(-1) & (depth > 0).all(-1)

    def _visible(self, scenes: SceneBatch) -> Tensor:
        """Whether every object keeps ``min_visible_pixels`` and its centre pixel, [B] bool."""
        masks = self._renderer.masks(scenes)  # [B, N, R, R]
        res = self.config.visibility_resolution
        enough = masks.sum((2, 3)) >= max(self.config.min_visible_pixels, 1)
        uv = self._renderer.centers(scenes)
        col = (uv[..., 0] * res).long().clamp(0, res - 1)
        row = (uv[..., 1] * res).long().clamp(0, res - 1)
        bi, ni = torch.meshgrid(torch.arange(scenes.batch_size), torch.arange(scenes.slots), indexing="ij")
        on_center = masks[bi, ni, row, col]
        return ((enough & on_center) | ~scenes.mask).all(1)


def _assign(out: SceneBatch, rows: Tensor, src: SceneBatch) -> None:
    for name, value in src.tensors().items():
        getattr(out, name)[rows] = value


def _clear_padding(scenes: SceneBatch) -> SceneBatch:
    """Zero every field of unused slots, so padding never depends on the random stream."""
    pad = ~scenes.mask
    for name, value in scenes.tensors().items():
        if name != "mask":
            value[pad] = 0
    return scenes
