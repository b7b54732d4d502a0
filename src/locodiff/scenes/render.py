"""A batched ray caster for CLEVR-like scenes, in plain torch (the same code on CPU and GPU).

One primary ray per (sub)pixel from a pinhole camera; analytic intersections with the floor and
with every object (``geometry``); Lambert shading under a key, a fill and a back light, a
specular lobe and a mirror-like environment reflection for metal; hard shadows from the key
light; supersampling (``supersample`` x ``supersample`` rays per pixel, averaged) against
jagged edges.

Why it is fast enough to render training data on the fly:
- The floor, seen by a fixed camera, is the same in every image: its hit points and its lit and
  shadowed colours are computed once per renderer.
- Objects are culled in screen space: each object is tested only against the rays inside its
  projected bounding box (and, for shadow rays, the box of its shadow volume), listed as one
  ragged array per shape (no padding), so the work grows with the objects' screen area rather
  than with (pixels x objects). ``cull=False`` turns this off; it is the benchmark's baseline
  and the tests check that both give identical images.
- Depth testing uses one ``scatter_reduce(amin)`` on an int64 key that packs the hit distance
  (float bits, monotone for positive floats) above the object's slot number, so the nearest
  surface and its identity come out of a single pass with no Python loop over pixels.
- Shading touches object pixels only (the floor is a table look-up), normals are computed shape
  by shape, and dot products are written per component (a sum over a trailing axis of 3 is a
  slow reduction on CPU).
- Batches are processed in chunks that stay in cache, with one CPU thread by default (see
  ``limit_threads``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from ..errors import ConfigError, InputError
from . import geometry, vocab
from .camera import Camera, CameraConfig
from .scene import SceneBatch

MIN_RESOLUTION, MAX_RESOLUTION = 16, 256
MAX_SUPERSAMPLE = 4
FLOOR_ID, BACKGROUND_ID = 0xFFFE, 0xFFFF  # ids of non-object pixels; objects use their slot
_ID_BITS = 16
_NO_HIT = torch.iinfo(torch.int64).max
_SHAPE_CUBE, _SHAPE_SPHERE, _SHAPE_CYLINDER = (vocab.SHAPES.index(s) for s in ("cube", "sphere", "cylinder"))


def _unit(*v: float) -> tuple[float, float, float]:
    n = math.sqrt(sum(x * x for x in v))
    return tuple(x / n for x in v)  # type: ignore[return-value]


@dataclass(frozen=True)
class Lighting:
    """Light directions (towards the light) and strengths, and the floor and sky, in linear RGB."""

    key_dir: tuple[float, float, float] = _unit(0.65, -0.35, 0.7)  # casts the shadows
    key: float = 1.45
    fill_dir: tuple[float, float, float] = _unit(-0.7, -0.6, 0.5)
    fill: float = 0.3
    back_dir: tuple[float, float, float] = _unit(-0.1, 1.0, 0.6)
    back: float = 0.35
    ambient: float = 0.32
    floor_albedo: float = 0.3
    floor_falloff: float = 0.01  # key light fades as exp(-falloff * squared distance from its spot)
    key_spot: tuple[float, float] = (1.0, -0.5)  # floor point the key light is brightest on
    sky_low: float = 0.15  # environment seen in metal: dim near the horizon ...
    sky_high: float = 1.2  # ... bright overhead
    background: float = 0.25  # rays that miss the floor (not visible with the default camera)


# Per material: diffuse weight, specular strength, specular exponent, reflection strength.
MATERIAL_LOOK = {
    "rubber": (1.0, 0.06, 12.0, 0.0),
    "metal": (0.15, 1.5, 60.0, 1.0),
}


@dataclass
class RenderOutput:
    images: Tensor  # [B, 3, H, W] float in [0, 1] (sRGB)
    masks: Tensor | None  # [B, N, H, W] bool, pixels where slot n is the visible surface
    centers: Tensor  # [B, N, 2] projected 3-D centres (x = column / W, y = row / H); 0 for padding
    visible_pixels: Tensor  # [B, N] long, mask sizes (0 for padding or fully hidden objects)


def check_resolution(resolution: int, supersample: int = 1) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not (
        MIN_RESOLUTION <= resolution <= MAX_RESOLUTION
    ):
        raise ConfigError(
            f"resolution {resolution!r}: expected an integer from {MIN_RESOLUTION} to {MAX_RESOLUTION}"
        )
    if isinstance(supersample, bool) or not isinstance(supersample, int) or not 1 <= supersample <= MAX_SUPERSAMPLE:
        raise ConfigError(f"supersample {supersample!r}: expected an integer from 1 to {MAX_SUPERSAMPLE}")


@dataclass
class _Objects:
    """The real (unmasked) objects of a chunk, flattened to M rows."""

    batch: Tensor  # [M] image index
    slot: Tensor  # [M]
    shape: Tensor  # [M]
    center: Tensor  # [M, 3]
    size: Tensor  # [M] half-extent
    half_height: Tensor  # [M]
    angle: Tensor  # [M]

    @classmethod
    def of(cls, scenes: SceneBatch) -> "_Objects":
        m = scenes.mask
        b, n = m.nonzero(as_tuple=True)
        return cls(
            batch=b, slot=n, shape=scenes.shape[m],
            center=scenes.centers_3d()[m], size=scenes.size_values()[m],
            half_height=scenes.half_heights()[m], angle=scenes.rotations[m],
        )

    def groups(self) -> list[Tensor]:
        """Row indices of the objects of each shape present (one intersection routine each)."""
        return [(self.shape == k).nonzero(as_tuple=True)[0] for k in self.shape.unique().tolist()]

    def bound_points(self, rows: Tensor, light: Tensor | None) -> Tensor:
        """Corners of each object's bounding box [G, 8, 3]; with ``light`` also their shadows on
        the floor along it [G, 16, 3] (the shadow volume lies inside the hull of these points)."""
        s, hh = self.size[rows], self.half_height[rows]
        signs = torch.tensor(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
            dtype=s.dtype, device=s.device,
        )
        ext = torch.stack([s, s, hh], -1)  # a cube turned any way fits in a box of half-side s
        corners = self.center[rows, None, :] + signs * ext[:, None, :]
        if light is None:
            return corners
        on_floor = corners - corners[..., 2:3] / light[2] * light
        return torch.cat([corners, on_floor], 1)

    def intersect(self, m: Tensor, o: Tensor, d: Tensor, t_min: float) -> Tensor:
        """Ray parameters [T] of rays (o, d) against objects ``m`` [T] (all of one shape)."""
        kind = int(self.shape[m[0]]) if len(m) else _SHAPE_SPHERE
        center = self.center[m]
        if kind == _SHAPE_SPHERE:
            return geometry.intersect_sphere(o, d, center, self.size[m], t_min)
        if kind == _SHAPE_CUBE:
            return geometry.intersect_box(o, d, center, self.half_height[m], self.angle[m], t_min)
        return geometry.intersect_cylinder(o, d, center, self.size[m], self.half_height[m], t_min)


class Renderer:
    """Renders ``SceneBatch``es at one resolution; reuse it, it caches the floor and the rays."""

    def __init__(
        self,
        resolution: int = 64,
        supersample: int = 1,
        camera: CameraConfig | None = None,
        lighting: Lighting | None = None,
        cull: bool = True,  # screen-space culling; False tests every ray against every object
        chunk_size: int = 64,  # images per inner step; small chunks stay in cache
        device: torch.device | str = "cpu",
        threads: int | None = 1,  # CPU threads while rendering (None: torch's setting); see below
    ) -> None:
        check_resolution(resolution, supersample)
        if chunk_size < 1:
            raise ConfigError(f"chunk_size {chunk_size}: expected a positive integer")
        self.resolution, self.supersample = resolution, supersample
        self.hi = resolution * supersample  # side of the supersampled ray grid
        self.camera = Camera(camera, device)
        self.lighting = lighting or Lighting()
        self.cull, self.chunk_size, self.threads = cull, chunk_size, threads
        self.device = self.camera.device
        lt = self.lighting
        self.key_dir = torch.tensor(lt.key_dir, device=self.device)
        self.fill_dir = torch.tensor(lt.fill_dir, device=self.device)
        self.back_dir = torch.tensor(lt.back_dir, device=self.device)
        self.dirs = self.camera.ray_directions(self.hi).reshape(-1, 3)  # [P, 3]
        self._prepare_floor()
        self._palette = (torch.tensor([vocab.COLORS[c] for c in vocab.COLOR_NAMES], device=self.device) / 255.0) ** 2.2
        looks = torch.tensor([MATERIAL_LOOK[m] for m in vocab.MATERIALS], device=self.device)
        self._looks = looks  # [n_materials, 4]

    # ----- the constant floor ---------------------------------------------------------------
    def _prepare_floor(self) -> None:
        eye = self.camera.eye.expand_as(self.dirs)
        t = geometry.intersect_plane(eye, self.dirs, 0.0)
        hit = torch.isfinite(t)
        ids = torch.where(hit, FLOOR_ID, BACKGROUND_ID)
        t_safe = torch.where(hit, t, torch.full_like(t, 1e6))
        self.floor_key = (_float_bits(t_safe) << _ID_BITS) | ids  # [P]
        points = self.camera.eye + t_safe[:, None] * self.dirs
        lt = self.lighting
        spot = torch.tensor(lt.key_spot, device=self.device)
        falloff = torch.exp(-lt.floor_falloff * ((points[:, :2] - spot) ** 2).sum(-1))
        base = lt.ambient + lt.fill * self.fill_dir[2] + lt.back * self.back_dir[2]
        lit = lt.floor_albedo * (base + lt.key * self.key_dir[2] * falloff)
        dark = lt.floor_albedo * (base + 0.15 * lt.key * self.key_dir[2] * falloff)  # light leaking around the occluder
        bg = torch.full_like(lit, lt.background)
        self.floor_lit = torch.where(hit, lit, bg)  # [P] grey levels, linear
        self.floor_dark = torch.where(hit, dark, bg)

    # ----- entry points ---------------------------------------------------------------------
    def __call__(self, scenes: SceneBatch, with_masks: bool = True) -> RenderOutput:
        """Images, per-object masks, projected centres and visible pixel counts of a batch."""
        scenes = self._checked(scenes)
        images, masks = [], []
        with self._thread_limit():
            for start in range(0, scenes.batch_size, self.chunk_size):
                chunk = scenes[start : start + self.chunk_size]
                ids, img = self._render_chunk(chunk, shade=True)
                images.append(img)
                masks.append(self._masks(ids, chunk.slots))
        all_masks = torch.cat(masks) if masks else torch.zeros(
            0, scenes.slots, self.resolution, self.resolution, dtype=torch.bool, device=self.device
        )
        images_t = torch.cat(images) if images else torch.zeros(0, 3, self.resolution, self.resolution, device=self.device)
        return RenderOutput(
            images=images_t,
            masks=all_masks if with_masks else None,
            centers=self.centers(scenes),
            visible_pixels=all_masks.sum((2, 3)),
        )

    def masks(self, scenes: SceneBatch) -> Tensor:
        """Only the per-object visible masks [B, N, H, W] (no shading): for occlusion checks."""
        scenes = self._checked(scenes)
        with self._thread_limit():
            out = [
                self._masks(self._render_chunk(scenes[s : s + self.chunk_size], shade=False)[0], scenes.slots)
                for s in range(0, scenes.batch_size, self.chunk_size)
            ]
        if not out:
            return torch.zeros(0, scenes.slots, self.resolution, self.resolution, dtype=torch.bool, device=self.device)
        return torch.cat(out)

    def centers(self, scenes: SceneBatch) -> Tensor:
        """Image-plane projections of the objects' 3-D centres, [B, N, 2]; 0 in padded slots."""
        uv, _ = self.camera.project(scenes.to(self.device).centers_3d())
        return uv * scenes.mask.to(self.device)[..., None]

    def _thread_limit(self):
        return limit_threads(self.threads, self.device)

    def _checked(self, scenes: SceneBatch) -> SceneBatch:
        if scenes.slots >= FLOOR_ID:
            raise InputError(f"{scenes.slots} object slots: the renderer handles at most {FLOOR_ID - 1}")
        return scenes.to(self.device)

    # ----- one chunk ------------------------------------------------------------------------
    def _render_chunk(self, scenes: SceneBatch, shade: bool) -> tuple[Tensor, Tensor | None]:
        """Id buffer [B, P] (slot, FLOOR_ID or BACKGROUND_ID per ray) and, if ``shade``, images."""
        b, n_pix = scenes.batch_size, self.dirs.shape[0]
        objs = _Objects.of(scenes)
        groups = objs.groups()
        key = self._depth_test(objs, groups, b)
        ids = (key & ((1 << _ID_BITS) - 1)).int()  # [B * P]
        if not shade:
            return ids.view(b, n_pix), None
        shadow = self._shadows(objs, groups, key, ids)
        color = self._shade(scenes, key, ids, shadow)
        return ids.view(b, n_pix), self._resolve(color)

    def _depth_test(self, objs: _Objects, groups: list[Tensor], b: int) -> Tensor:
        """Nearest surface per ray as packed keys [B * P]: (distance bits << 16) | id."""
        n_pix = self.dirs.shape[0]
        key = self.floor_key.repeat(b)
        for rows in groups:
            m, pix = self._rays_in_boxes(rows, objs.bound_points(rows, None))
            t = objs.intersect(m, self.camera.eye, self.dirs[pix], t_min=1e-4)
            k = (_float_bits(t.clamp_max(1e6)) << _ID_BITS) | objs.slot[m]
            k = torch.where(torch.isfinite(t), k, _NO_HIT)
            key.scatter_reduce_(0, objs.batch[m] * n_pix + pix, k, reduce="amin")
        return key

    def _shadows(self, objs: _Objects, groups: list[Tensor], key: Tensor, ids: Tensor) -> Tensor:
        """Whether the key light is blocked at each ray's hit point [B * P], testing each object
        only against the rays in the screen box of its shadow volume."""
        n_pix = self.dirs.shape[0]
        shadow = torch.zeros(key.shape[0], dtype=torch.bool, device=self.device)
        for rows in groups:
            m, pix = self._rays_in_boxes(rows, objs.bound_points(rows, self.key_dir))
            flat = objs.batch[m] * n_pix + pix
            receiver = ids[flat]
            keep = (receiver != objs.slot[m]) & (receiver != BACKGROUND_ID)  # no self-shadow rays
            m, pix, flat = m[keep], pix[keep], flat[keep]
            t = _bits_float(key[flat] >> _ID_BITS)
            points = self.camera.eye + t[:, None] * self.dirs[pix]
            hit = objs.intersect(m, points, self.key_dir, t_min=1e-4)
            shadow[flat[torch.isfinite(hit)]] = True
        return shadow

    def _rays_in_boxes(self, rows: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """List the pixels inside each object's screen box: (object [T], pixel [T]).

        ``points`` [G, K, 3] bound object ``rows``; each object gets exactly the pixels of the
        box around their projections (a ragged list, no padding), or every pixel when culling is
        off or the object reaches behind the camera.
        """
        hi = self.hi
        uv, depth = self.camera.project(points)
        lo = torch.floor(uv.amin(1) * hi - 0.5).clamp(0, hi - 1).long()  # [G, 2] (col, row)
        up = torch.ceil(uv.amax(1) * hi - 0.5).clamp(0, hi - 1).long()
        if not self.cull:
            lo, up = torch.zeros_like(lo), torch.full_like(up, hi - 1)
        behind = (depth <= 1e-3).any(1)
        lo, up = torch.where(behind[:, None], 0, lo), torch.where(behind[:, None], hi - 1, up)
        w, h = (up - lo + 1).clamp_min(0).unbind(1)
        area = w * h
        owner = torch.repeat_interleave(area)
        offset = torch.arange(len(owner), device=self.device) - (area.cumsum(0) - area)[owner]
        width = w[owner]
        row = lo[owner, 1] + torch.div(offset, width, rounding_mode="floor")
        col = lo[owner, 0] + offset % width
        return rows[owner], row * hi + col

    # ----- shading --------------------------------------------------------------------------
    def _shade(self, scenes: SceneBatch, key: Tensor, ids: Tensor, shadow: Tensor) -> Tensor:
        """Linear RGB per ray [B, P, 3]: the (grey) floor from its tables, objects shaded here."""
        b, n_pix = scenes.batch_size, self.dirs.shape[0]
        grey = torch.where(shadow.view(b, n_pix), self.floor_dark, self.floor_lit)
        color = grey[..., None].repeat(1, 1, 3).view(-1, 3)
        on_obj = (ids < FLOOR_ID).nonzero(as_tuple=True)[0]
        if on_obj.numel():
            obj = (on_obj // n_pix) * scenes.slots + ids[on_obj]  # flat (image, slot) index
            d = self.dirs[on_obj % n_pix]
            p = self.camera.eye + _bits_float(key[on_obj] >> _ID_BITS)[:, None] * d
            normal = self._normals(scenes, obj, p)
            albedo = self._palette[scenes.color.view(-1)[obj]]
            look = self._looks[scenes.material.view(-1)[obj]]
            color[on_obj] = self._surface(normal, d, albedo, look, shadow[on_obj])
        return color.view(b, n_pix, 3)

    def _normals(self, scenes: SceneBatch, obj: Tensor, p: Tensor) -> Tensor:
        """Outward unit normals at hit points ``p`` [M, 3] of flat (image, slot) objects ``obj``,
        computed shape by shape so each pixel pays for its own shape only."""
        shape = scenes.shape.view(-1)[obj]
        rel = p - scenes.centers_3d().view(-1, 3)[obj]
        normal = torch.empty_like(p)
        for kind in shape.unique().tolist():
            sel = (shape == kind).nonzero(as_tuple=True)[0]
            o, r = obj[sel], rel[sel]
            if kind == _SHAPE_SPHERE:
                n = r / scenes.size_values().view(-1)[o, None]
            elif kind == _SHAPE_CYLINDER:
                n = geometry.cylinder_normal(r, scenes.size_values().view(-1)[o], scenes.half_heights().view(-1)[o])
            else:
                n = geometry.cube_normal(r, scenes.rotations.reshape(-1)[o])
            normal[sel] = n
        return normal * torch.rsqrt(_dot(normal, normal).clamp_min(1e-12))[:, None]

    def _surface(self, n: Tensor, d: Tensor, albedo: Tensor, look: Tensor, shadow: Tensor) -> Tensor:
        """Lambert + Blinn-Phong + (for metal) an environment reflection, under three lights."""
        lt = self.lighting
        diffuse_w, spec_w, shininess, refl_w = look.unbind(-1)
        lit = (~shadow).float()
        n_key = (n @ self.key_dir).clamp_min(0) * lit
        light = (
            lt.ambient * (0.75 + 0.25 * n[:, 2])  # a sky dome: more ambient on top faces
            + lt.key * n_key
            + lt.fill * (n @ self.fill_dir).clamp_min(0)
            + lt.back * (n @ self.back_dir).clamp_min(0)
        )
        out = albedo * (diffuse_w * light)[:, None]
        half = self.key_dir - d
        n_half = _dot(n, half) * torch.rsqrt(_dot(half, half))
        spec = spec_w * n_half.clamp_min(0) ** shininess * lit * lt.key
        reflected = d - (2 * _dot(d, n))[:, None] * n
        peak = albedo.amax(-1, keepdim=True)
        tint = albedo / peak.clamp_min(1e-6) * (0.4 + 0.6 * peak.sqrt())  # hue kept, brightened
        out = out + (refl_w * self._environment(reflected))[:, None] * tint
        return out + spec[:, None] * (0.5 + 0.5 * albedo)

    def _environment(self, r: Tensor) -> Tensor:
        """Radiance a mirror sees along unit directions ``r``: the grey floor below the horizon,
        above it a sky that brightens towards the key light (like a large soft window)."""
        lt = self.lighting
        toward_key = (r @ self.key_dir).clamp_min(0) ** 2
        sky = lt.sky_low + (lt.sky_high - lt.sky_low) * toward_key
        floor = float(lt.floor_albedo * (lt.ambient + lt.key * self.key_dir[2]) * 0.6)
        return torch.where(r[:, 2] > 0, sky, floor)

    def _resolve(self, color: Tensor) -> Tensor:
        """[B, P, 3] linear -> [B, 3, R, R] sRGB in [0, 1], averaging each pixel's supersamples.

        The average adds the s*s strided sub-grids; a mean over the small sub-pixel axes of a
        6-d view is several times slower on CPU."""
        b, s, hi = color.shape[0], self.supersample, self.hi
        grid = color.view(b, hi, hi, 3)
        img = grid[:, ::s, ::s].clone()
        for i in range(s):
            for j in range(s):
                if i or j:
                    img += grid[:, i::s, j::s]
        if s > 1:
            img *= 1.0 / (s * s)
        return img.clamp_(0, 1).pow_(1 / 2.2).permute(0, 3, 1, 2).contiguous()

    def _masks(self, ids: Tensor, slots: int) -> Tensor:
        """Per-slot masks [B, N, R, R]: each output pixel belongs to its most-covered surface."""
        b, s, r = ids.shape[0], self.supersample, self.resolution
        label = ids.clamp_max(slots).long().view(b, r, s, r, s)  # floor and background -> slots
        if s > 1:
            label = label.permute(0, 1, 3, 2, 4).reshape(b, r * r, s * s)
            counts = torch.zeros(b, r * r, slots + 1, dtype=torch.int32, device=ids.device)
            counts.scatter_add_(2, label, torch.ones_like(label, dtype=torch.int32))
            label = counts.argmax(-1)
        label = label.reshape(b, 1, r, r)
        return label == torch.arange(slots, device=ids.device).view(1, -1, 1, 1)


@contextmanager
def limit_threads(threads: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block with ``threads`` CPU threads, restoring torch's setting afterwards.

    Rendering and scene sampling issue many small tensor ops; on a 2-core machine shared with
    other work, intra-op threading made them 3-4x slower than one thread (the threads wait for
    each other), so they default to one thread. No effect on GPU or with ``threads=None``."""
    before = torch.get_num_threads()
    change = threads is not None and torch.device(device).type == "cpu" and threads != before
    if change:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product of [M, 3] tensors (faster than a sum over a trailing axis of 3)."""
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _float_bits(t: Tensor) -> Tensor:
    """Non-negative float32 -> int64 with the same order."""
    return t.float().contiguous().view(torch.int32).long()


def _bits_float(bits: Tensor) -> Tensor:
    return bits.int().contiguous().view(torch.float32)


def render_scenes(
    scenes: SceneBatch, resolution: int = 64, supersample: int = 1, camera: CameraConfig | None = None, **kwargs
) -> RenderOutput:
    """Render once; build a ``Renderer`` yourself to render many batches at one resolution."""
    return Renderer(resolution, supersample, camera, **kwargs)(scenes)
