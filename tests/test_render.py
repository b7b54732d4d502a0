"""The ray caster: analytic intersections, centres on masks, culling, shadows, bad inputs."""

import math

import pytest
import torch

from locodiff.errors import ConfigError
from locodiff.scenes import Camera, Renderer, Scene, SceneBatch, SceneObject, SceneSampler
from locodiff.scenes import geometry as g

INF = math.inf


def t3(*v):
    return torch.tensor(v, dtype=torch.float32)


# ----- ray-primitive intersections vs. hand-computed answers --------------------------------------
def test_plane():
    assert g.intersect_plane(t3(0, 0, 5), t3(0, 0, -1)).item() == pytest.approx(5.0)
    assert g.intersect_plane(t3(0, 0, 5), t3(0.6, 0, -0.8)).item() == pytest.approx(6.25)
    assert g.intersect_plane(t3(0, 0, 5), t3(0, 0, 1)).item() == INF  # pointing away
    assert g.intersect_plane(t3(0, 0, 5), t3(1, 0, 0)).item() == INF  # parallel


def test_sphere():
    c, r = t3(0, 0, 1), torch.tensor(0.5)
    assert g.intersect_sphere(t3(-5, 0, 1), t3(1, 0, 0), c, r).item() == pytest.approx(4.5)
    assert g.intersect_sphere(t3(0, 0, 1), t3(1, 0, 0), c, r).item() == pytest.approx(0.5)  # inside: exit
    assert g.intersect_sphere(t3(-5, 0, 1.6), t3(1, 0, 0), c, r).item() == INF  # passes above
    assert g.intersect_sphere(t3(5, 0, 1), t3(1, 0, 0), c, r).item() == INF  # behind the origin
    # grazing at height 0.3 above the centre: x = -sqrt(0.25 - 0.09) = -0.4
    assert g.intersect_sphere(t3(-5, 0, 1.3), t3(2, 0, 0), c, r).item() == pytest.approx(4.6 / 2)


def test_box_axis_aligned_and_rotated():
    c, h = t3(0, 0, 1), torch.tensor(0.5)
    assert g.intersect_box(t3(-5, 0, 1), t3(1, 0, 0), c, h, torch.tensor(0.0)).item() == pytest.approx(4.5)
    # turned 45 degrees: the ray along x meets a vertical edge at distance half * sqrt(2)
    t = g.intersect_box(t3(-5, 0, 1), t3(1, 0, 0), c, h, torch.tensor(math.pi / 4)).item()
    assert t == pytest.approx(5 - 0.5 * math.sqrt(2), abs=1e-5)
    assert g.intersect_box(t3(0, 0, 5), t3(0, 0, -1), c, h, torch.tensor(0.3)).item() == pytest.approx(3.5)
    # a corner region: (0.6, 0.6) is outside the axis-aligned cube, inside none when turned 45
    assert g.intersect_box(t3(0.6, 0.6, 5), t3(0, 0, -1), c, h, torch.tensor(0.0)).item() == INF
    assert g.intersect_box(t3(0.3, 0.3, 5), t3(0, 0, -1), c, h, torch.tensor(math.pi / 4)).item() == pytest.approx(3.5)
    assert g.intersect_box(t3(0, 0, 1), t3(0, 1, 0), c, h, torch.tensor(0.0)).item() == pytest.approx(0.5)  # inside


def test_cylinder_side_caps_and_misses():
    c, r, h = t3(0, 0, 1), torch.tensor(0.5), torch.tensor(1.0)
    assert g.intersect_cylinder(t3(-5, 0, 1), t3(1, 0, 0), c, r, h).item() == pytest.approx(4.5)  # side
    assert g.intersect_cylinder(t3(0.2, 0, 5), t3(0, 0, -1), c, r, h).item() == pytest.approx(3.0)  # top cap
    assert g.intersect_cylinder(t3(0.6, 0, 5), t3(0, 0, -1), c, r, h).item() == INF  # beside it
    assert g.intersect_cylinder(t3(-5, 0, 2.2), t3(1, 0, 0), c, r, h).item() == INF  # above it
    # diagonal: enters the top cap at z = 2 from (-1, 0, 3) going (1, 0, -1): t = 1, x = 0
    assert g.intersect_cylinder(t3(-1, 0, 3), t3(1, 0, -1), c, r, h).item() == pytest.approx(1.0)


def test_intersections_broadcast_over_batches():
    o = torch.zeros(4, 5, 3) + t3(-5, 0, 1)
    d = torch.zeros(4, 5, 3) + t3(1, 0, 0)
    radius = torch.linspace(0.1, 0.4, 4)[:, None]
    t = g.intersect_sphere(o, d, t3(0, 0, 1), radius)
    assert t.shape == (4, 5)
    assert torch.allclose(t[:, 0], 5 - torch.linspace(0.1, 0.4, 4))


def test_normals():
    n = g.cube_normal(t3(0.1, -0.5, 0.2), torch.tensor(0.0))
    assert torch.allclose(n, t3(0, -1, 0))
    n = g.cube_normal(t3(0.0, 0.5, 0.0), torch.tensor(math.pi / 2))  # +x face turned to +y
    assert torch.allclose(n, t3(0, 1, 0), atol=1e-6)
    n = g.cube_normal(t3(0.3, 0.3, 0.1), torch.tensor(math.pi / 4))  # +x face turned to the diagonal
    assert torch.allclose(n, t3(math.sqrt(0.5), math.sqrt(0.5), 0), atol=1e-6)
    n = g.cylinder_normal(t3(0.1, 0.0, 1.0), torch.tensor(0.5), torch.tensor(1.0))
    assert torch.allclose(n, t3(0, 0, 1))


# ----- the renderer -----------------------------------------------------------------------------
def one_object(shape, size="large", x=0.0, y=0.0, rot=0.4, color="red", material="rubber"):
    return SceneBatch.from_scenes([Scene([SceneObject(shape, color, material, size, x, y, rot)])])


def test_camera_projection_inverts_ray_generation():
    cam = Camera()
    res = 8
    dirs = cam.ray_directions(res)
    uv, depth = cam.project(cam.eye + 3.0 * dirs)
    grid = (torch.arange(res) + 0.5) / res
    assert torch.allclose(uv[..., 0], grid.expand(res, res), atol=1e-5)  # x = column / W
    assert torch.allclose(uv[..., 1], grid[:, None].expand(res, res), atol=1e-5)  # y = row / H
    assert (depth > 0).all()


@pytest.mark.parametrize("shape", ["cube", "sphere", "cylinder"])
@pytest.mark.parametrize("size", ["large", "small"])
def test_centre_lies_on_the_object_mask(shape, size):
    res = 64
    renderer = Renderer(res, supersample=2)
    for x, y in [(0.0, 0.0), (-2.0, 1.5), (1.8, -1.2), (0.5, 2.5)]:
        out = renderer(one_object(shape, size, x, y))
        u, v = out.centers[0, 0].tolist()
        assert out.masks[0, 0, int(v * res), int(u * res)], (shape, size, x, y)
        # the mask's own centroid is near the projected centre (within a few pixels)
        rows, cols = out.masks[0, 0].nonzero(as_tuple=True)
        centroid = torch.stack([(cols.float() + 0.5) / res, (rows.float() + 0.5) / res]).mean(1)
        assert (centroid - out.centers[0, 0]).abs().max() < 0.05


def test_output_shapes_ranges_and_mask_consistency():
    scenes = SceneSampler().sample([0, 2, 5], 0)
    out = Renderer(32, supersample=2)(scenes)
    assert out.images.shape == (3, 3, 32, 32) and out.images.dtype == torch.float32
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert out.masks.shape == (3, 5, 32, 32) and out.masks.dtype == torch.bool
    assert (out.masks.sum(1) <= 1).all(), "a pixel belongs to at most one object"
    assert torch.equal(out.visible_pixels, out.masks.sum((2, 3)))
    assert (out.visible_pixels[~scenes.mask] == 0).all()
    assert (out.centers[~scenes.mask] == 0).all()


def test_culling_changes_nothing_but_speed():
    scenes = SceneSampler().sample([1, 4, 10], 3)
    fast = Renderer(32, supersample=2, cull=True)(scenes)
    slow = Renderer(32, supersample=2, cull=False)(scenes)
    assert torch.allclose(fast.images, slow.images, atol=1e-6)
    assert torch.equal(fast.masks, slow.masks)


def test_rendering_is_deterministic_and_chunking_invariant():
    scenes = SceneSampler().sample([1, 2, 3, 4, 5], 0)
    a = Renderer(32, chunk_size=2)(scenes)
    again = Renderer(32, chunk_size=2)(scenes)
    b = Renderer(32, chunk_size=64)(scenes)
    assert torch.equal(a.images, again.images) and torch.equal(a.masks, again.masks)
    # Another chunk size runs the same math through other vector-kernel paths: equal up to float
    # rounding on some CPUs (measured: 6e-8 on an AMD EPYC Zen 3), bit-equal on others.
    torch.testing.assert_close(a.images, b.images, atol=1e-6, rtol=0)
    assert torch.equal(a.masks, b.masks)


def test_empty_scene_is_the_bare_floor_and_objects_cast_shadows():
    renderer = Renderer(64)
    empty = renderer(SceneBatch.empty(1, 1)).images[0]
    assert empty.std(0).max() < 0.02, "the floor is grey"
    scene = one_object("cube", x=0.0, y=0.0)
    out = renderer(scene)
    floor = ~out.masks[0, 0]
    darker = (out.images[0].mean(0) < empty.mean(0) - 0.05) & floor
    assert darker.sum() > 20, "the cube darkens some floor pixels (its shadow)"
    # the shadow falls away from the key light: opposite to its horizontal direction
    rows, cols = darker.nonzero(as_tuple=True)
    u, _ = out.centers[0, 0].tolist()
    assert ((cols.float() + 0.5) / 64).mean() < u  # key light comes from +x (image right)


def test_colours_and_materials_differ():
    renderer = Renderer(64)
    red = renderer(one_object("sphere", color="red")).images[0]
    blue = renderer(one_object("sphere", color="blue")).images[0]
    m = renderer(one_object("sphere")).masks[0, 0]
    assert red[0][m].mean() > red[2][m].mean() and blue[2][m].mean() > blue[0][m].mean()
    metal = renderer(one_object("sphere", material="metal")).images[0]
    assert metal.amax((1, 2)).min() > red.amax((1, 2)).min(), "metal has a bright highlight"


def test_supersampling_smooths_edges():
    scene = one_object("cube")
    hard = Renderer(32, supersample=1)(scene).images
    soft = Renderer(32, supersample=4)(scene).images
    levels = lambda img: len(torch.unique((img * 255).round()))  # noqa: E731
    assert levels(soft) > levels(hard)
    assert (soft - hard).abs().mean() < 0.03


@pytest.mark.parametrize("resolution", [8, 15, 257, 300])
def test_bad_resolution_is_rejected(resolution):
    with pytest.raises(ConfigError, match=f"resolution {resolution}: expected an integer from 16 to 256"):
        Renderer(resolution)


def test_bad_supersample_is_rejected():
    with pytest.raises(ConfigError, match="supersample 0"):
        Renderer(32, supersample=0)
