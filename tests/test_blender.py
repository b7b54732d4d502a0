"""The Blender renderer: the same scenes as the torch renderer's, at the same image positions.

These tests need a Python with bpy (``make blender``; ``.ci/run`` installs it): without one they
are skipped on a developer's machine and fail in CI, so CI always runs them."""

import os
from dataclasses import replace

import pytest
import torch

from locodiff.errors import DataError
from locodiff.evaluate.heatmap import HeatmapConfig, detector_key
from locodiff.scenes.blender import BlenderRenderer, agreement, blender_python
from locodiff.scenes.camera import CameraConfig
from locodiff.scenes.config import DataConfig
from locodiff.scenes.dataset import SceneDataset, build_dataset
from locodiff.scenes.render import Renderer
from locodiff.scenes.renderers import renderer_for
from locodiff.scenes.sampler import SceneConfig, SceneSampler

if blender_python() is None:
    if os.environ.get("CI"):
        pytest.fail("CI must run the Blender tests: no Python with bpy (scripts/bootstrap_blender.sh)", pytrace=False)
    pytest.skip("no Python with bpy here (make blender)", allow_module_level=True)

RESOLUTION = 32


@pytest.fixture(scope="module")
def scenes():
    return SceneSampler(SceneConfig(), CameraConfig()).sample(torch.tensor([1, 2, 3, 4, 5, 6]),
                                                              torch.Generator().manual_seed(0), slots=6)


@pytest.fixture(scope="module")
def rendered(scenes):
    return BlenderRenderer(RESOLUTION, samples=8, workers=2)(scenes)


def test_objects_land_where_the_torch_renderer_puts_them(scenes, rendered):
    reference = Renderer(RESOLUTION, 2)(scenes)
    iou, distance = agreement(rendered.masks, reference.masks, scenes.mask)
    assert len(iou) >= 18  # nearly all 21 objects are seen in both renders
    assert distance.max() < 1.0  # mask centroids agree within 1 px
    assert iou.mean() > 0.8 and iou.min() > 0.5  # measured: mean 0.89, min 0.77 (boundary pixels at 32 px)
    assert torch.equal(rendered.centers, reference.centers)  # the same camera model projects the centres
    assert rendered.images.shape == (6, 3, RESOLUTION, RESOLUTION) and 0 <= rendered.images.min() <= rendered.images.max() <= 1
    assert torch.equal(rendered.visible_pixels, rendered.masks.sum((2, 3)))


def test_the_same_scenes_render_the_same_images(scenes, rendered):
    again = BlenderRenderer(RESOLUTION, samples=8, workers=3)(scenes)  # another split over processes
    assert torch.equal(again.images, rendered.images) and torch.equal(again.masks, rendered.masks)


def test_a_data_set_renders_with_blender_and_keys_its_cache_by_it(tmp_path):
    cfg = DataConfig(resolution=16, supersample=1, train_images=6, test_images_per_count=1, test_counts=(0, 1, 2))
    blender = replace(cfg, renderer="blender", blender_samples=4)
    assert blender.cache_key() != cfg.cache_key() != replace(blender, blender_samples=8).cache_key()
    data = SceneDataset(build_dataset(blender, tmp_path, ("train",)), "train")
    assert len(data) == 6 and data.tensors["images"].dtype == torch.uint8
    assert (data.tensors["visible_pixels"][data.tensors["mask"]] > 0).float().mean() > 0.8


def test_a_python_without_bpy_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("LOCODIFF_BLENDER_PYTHON", "/nonexistent/python")
    with pytest.raises(DataError, match="is not a program"):
        BlenderRenderer(16)


def test_every_render_for_a_blender_data_set_is_a_blender_render():
    """The detector's training images, its ceiling and the probes' scenes use the data's renderer:
    the detector's cache key (which holds a fingerprint of a render) changes with it."""
    cfg = DataConfig(resolution=16, supersample=1)
    blender = replace(cfg, renderer="blender", blender_samples=4)
    assert isinstance(renderer_for(blender, 32), BlenderRenderer) and renderer_for(blender, 32).resolution == 32
    assert isinstance(renderer_for(cfg), Renderer)
    assert detector_key(blender, HeatmapConfig()) != detector_key(cfg, HeatmapConfig())
