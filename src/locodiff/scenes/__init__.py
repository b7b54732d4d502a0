"""Scenes stage: CLEVR-like scene descriptions, a sampler, a batched renderer, data sets.

``SceneSampler`` draws a ``SceneBatch`` with exactly k objects per image; ``Renderer`` turns it into
images, per-object masks and image-plane centres; ``make_conditioning`` turns centres into a
``Conditioning`` under a label policy (``all`` / ``one``); ``build_dataset`` caches rendered shards
on disk and ``SceneDataset`` / ``SceneStream`` feed training from the cache or on the fly.
"""

from .camera import Camera, CameraConfig
from .conditioners import LABEL_POLICIES, batch_conditioning, make_conditioning, object_attributes
from .config import DataConfig
from .dataset import (
    SceneDataset,
    SceneSource,
    SceneStream,
    build_dataset,
)
from .figures import contact_sheet, data_contact_sheet
from .render import Lighting, Renderer, RenderOutput, render_scenes
from .sampler import SceneConfig, SceneSampler
from .scene import Scene, SceneBatch, SceneObject

__all__ = [
    "Camera", "CameraConfig", "DataConfig", "LABEL_POLICIES", "Lighting", "Renderer",
    "RenderOutput", "Scene", "SceneBatch", "SceneConfig", "SceneDataset", "SceneObject",
    "SceneSampler", "SceneSource", "SceneStream", "batch_conditioning", "build_dataset",
    "contact_sheet", "data_contact_sheet", "make_conditioning",
    "object_attributes", "render_scenes",
]
