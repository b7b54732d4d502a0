"""Analytic ray-primitive intersections, batched by broadcasting.

Every function takes ray origins ``o`` and directions ``d`` ([..., 3], need not be unit) and
primitive parameters that broadcast against the leading dimensions, and returns the ray
parameter ``t`` of the nearest hit with ``t > t_min`` ([...]), or ``inf`` where the ray misses.
The hit point is ``o + t d``. Objects stand upright (z is up); only cubes use their rotation.

The arithmetic works on x, y, z components separately: dot products over a trailing axis of
size 3 are slow reductions in torch, while component-wise products are plain vector ops.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

INF = math.inf


def _xyz(v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return v[..., 0], v[..., 1], v[..., 2]


def _first_positive(t_near: Tensor, t_far: Tensor, hit: Tensor, t_min: float) -> Tensor:
    """Nearest of an entry/exit pair beyond ``t_min`` (the exit when the origin is inside)."""
    t = torch.where(t_near > t_min, t_near, t_far)
    return torch.where(hit & (t > t_min), t, INF)


def intersect_plane(o: Tensor, d: Tensor, height: float = 0.0, t_min: float = 1e-6) -> Tensor:
    """Horizontal plane ``z = height`` (the floor), seen from either side."""
    dz = d[..., 2]
    parallel = dz.abs() <= 1e-12
    t = (height - o[..., 2]) / torch.where(parallel, 1.0, dz)
    return torch.where(~parallel & (t > t_min), t, INF)


def intersect_sphere(o: Tensor, d: Tensor, center: Tensor, radius: Tensor, t_min: float = 1e-6) -> Tensor:
    """Sphere of ``radius`` [...] around ``center`` [..., 3]."""
    ox, oy, oz = _xyz(o - center)
    dx, dy, dz = _xyz(d)
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - radius * radius
    disc = b * b - a * c
    root = disc.clamp_min(0).sqrt()
    return _first_positive((-b - root) / a, (-b + root) / a, disc >= 0, t_min)


def to_local_xy(x: Tensor, y: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate vectors (x, y) by ``-angle``: world -> the frame of an object turned by ``angle``."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    return cos * x + sin * y, cos * y - sin * x


def to_world_xy(x: Tensor, y: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate vectors (x, y) by ``angle``: object frame -> world."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    return cos * x - sin * y, sin * x + cos * y


def intersect_box(
    o: Tensor, d: Tensor, center: Tensor, half: Tensor, angle: Tensor, t_min: float = 1e-6
) -> Tensor:
    """Cube of half-side ``half`` around ``center``, turned by ``angle`` about the vertical axis.

    Slab method in the cube's own frame: the ray is inside the cube where it is between all
    three pairs of parallel face planes at once.
    """
    rx, ry, rz = _xyz(o - center)
    ox, oy = to_local_xy(rx, ry, angle)
    dx, dy = to_local_xy(d[..., 0], d[..., 1], angle)
    t_near = t_far = None
    for oo, dd in ((ox, dx), (oy, dy), (rz, d[..., 2])):
        inv = 1.0 / dd  # +-inf for a ray parallel to a slab: the slab then keeps all or nothing
        t1, t2 = (-half - oo) * inv, (half - oo) * inv
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        t_near = lo if t_near is None else torch.maximum(t_near, lo)
        t_far = hi if t_far is None else torch.minimum(t_far, hi)
    return _first_positive(t_near, t_far, t_near <= t_far, t_min)


def intersect_cylinder(
    o: Tensor, d: Tensor, center: Tensor, radius: Tensor, half_height: Tensor, t_min: float = 1e-6
) -> Tensor:
    """Capped vertical cylinder: the side ``x^2 + y^2 = r^2`` for ``|z| <= h``, plus two discs."""
    ox, oy, oz = _xyz(o - center)
    dx, dy, dz = _xyz(d)
    r2 = radius * radius
    # side: solve |(o + t d)_xy| = r, keep hits between the caps
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - r2
    disc = b * b - a * c
    vertical = a <= 1e-12
    root = disc.clamp_min(0).sqrt()
    a_safe = torch.where(vertical, 1.0, a)
    side_ok = (disc >= 0) & ~vertical
    best = None
    for t in ((-b - root) / a_safe, (-b + root) / a_safe):
        ok = side_ok & (t > t_min) & ((oz + t * dz).abs() <= half_height)
        cand = torch.where(ok, t, INF)
        best = cand if best is None else torch.minimum(best, cand)
    # caps: z = +-h, inside the disc
    flat = dz.abs() <= 1e-12
    dz_safe = torch.where(flat, 1.0, dz)
    for sign in (1.0, -1.0):
        t = (sign * half_height - oz) / dz_safe
        px, py = ox + t * dx, oy + t * dy
        ok = ~flat & (t > t_min) & (px * px + py * py <= r2)
        best = torch.minimum(best, torch.where(ok, t, INF))
    return best


def cube_normal(rel: Tensor, angle: Tensor) -> Tensor:
    """Outward normal of a cube turned by ``angle`` at surface points ``rel`` [..., 3] relative to
    its centre: the face whose axis dominates in the cube's frame."""
    lx, ly = to_local_xy(rel[..., 0], rel[..., 1], angle)
    lz = rel[..., 2]
    ax, ay, az = lx.abs(), ly.abs(), lz.abs()
    use_x = (ax >= ay) & (ax >= az)
    use_y = ~use_x & (ay >= az)
    use_z = ~use_x & ~use_y
    nx, ny = torch.sign(lx) * use_x, torch.sign(ly) * use_y
    wx, wy = to_world_xy(nx, ny, angle)
    return torch.stack([wx, wy, torch.sign(lz) * use_z], -1)


def cylinder_normal(p_local: Tensor, radius: Tensor, half_height: Tensor) -> Tensor:
    """Outward normal of a vertical cylinder at local surface points: a cap's or the side's."""
    x, y, z = _xyz(p_local)
    rho = (x * x + y * y).sqrt()
    on_cap = (half_height - z.abs()) < (radius - rho)
    inv = 1.0 / rho.clamp_min(1e-9)
    zero = torch.zeros_like(z)
    side = torch.stack([x * inv, y * inv, zero], -1)
    cap = torch.stack([zero, zero, torch.sign(z)], -1)
    return torch.where(on_cap[..., None], cap, side)
