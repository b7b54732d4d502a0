"""Finding objects in generated CLEVR-like images: the shared types and a training-free detector.

Every detector takes a batch of images ``[B, 3, H, W]`` and returns one ``Detections`` per image:
object centres in the ``Conditioning`` convention (x = column / W, y = row / H, in [0, 1]),
scores, areas in pixels, mean colours and the nearest palette colour (an index into
``scenes.vocab.COLOR_NAMES``, for attribute evaluation). Images are expected in [0, 1] (the
renderer's range); pass ``value_range=(-1, 1)`` for model outputs.

Two detectors exist (see ``heatmap.py`` for the learned one, which is the default for scoring):

``ColorDetector`` (this file) needs no training. It compares each pixel with a render of the
empty floor from the same camera: a pixel is foreground when it is coloured (chroma that the grey
floor does not have), darker than any shadow, or brighter than the lit floor. Shadows are grey and
only darker — they keep the floor's hue and fall in a brightness band measured on renders — so
they stay background. Foreground pixels are grouped per palette hue (touching objects of
different colours come apart), and small grey fragments that touch a coloured group are merged
into it (metal highlights, dark rims). It is exact on well-separated scenes but merges touching
objects of one colour, and gray objects whose shading falls inside the shadow band lose pixels —
which is why the learned detector is preferred; the numbers are in the validation table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import Tensor

from ..conditioning import pixel_centers
from ..errors import InputError
from ..scenes import SceneBatch, vocab


@dataclass
class Detections:
    """The objects found in one image (M of them; arrays of length M)."""

    centers: np.ndarray  # [M, 2] (x, y) in [0, 1], Conditioning convention
    scores: np.ndarray  # [M] confidence in [0, 1] (1 for the colour detector)
    areas: np.ndarray  # [M] pixels of the input image assigned to the object
    colors: np.ndarray  # [M, 3] mean RGB in [0, 1]
    color_index: np.ndarray  # [M] index into vocab.COLOR_NAMES
    shape_index: np.ndarray | None = None  # [M] index into vocab.SHAPES; None: not classified

    def __len__(self) -> int:
        return len(self.centers)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros((0, 3)), np.zeros(0, dtype=np.int64))

    def to_dict(self) -> dict:
        """JSON-able form, rounded so that eval.jsonl stays readable."""
        return {
            "centers": np.round(self.centers, 5).tolist(),
            "scores": np.round(self.scores, 4).tolist(),
            "areas": np.round(self.areas, 2).tolist(),
            "colors": np.round(self.colors, 4).tolist(),
            "color_index": [int(c) for c in self.color_index],
            **({} if self.shape_index is None else {"shape_index": [int(c) for c in self.shape_index]}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Detections":
        return cls(
            np.asarray(d["centers"], dtype=np.float64).reshape(-1, 2),
            np.asarray(d["scores"], dtype=np.float64),
            np.asarray(d["areas"], dtype=np.float64),
            np.asarray(d["colors"], dtype=np.float64).reshape(-1, 3),
            np.asarray(d["color_index"], dtype=np.int64),
            None if d.get("shape_index") is None else np.asarray(d["shape_index"], dtype=np.int64),
        )


@runtime_checkable
class Detector(Protocol):
    """Anything that finds objects in a batch of images."""

    name: str  # short identifier written into eval.json
    min_separation: float  # closest centres it can tell apart, as a fraction of the image side

    def __call__(self, images: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> list[Detections]: ...


# ----- shared helpers ------------------------------------------------------------------------------

def to_unit_images(images: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """Check a batch of RGB images and map it to float [0, 1] on the CPU."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"expected RGB images of shape [B, 3, H, W], got {shape}")
    if images.shape[2] != images.shape[3]:
        raise InputError(f"expected square images, got {images.shape[2]}x{images.shape[3]}")
    lo, hi = value_range
    if not hi > lo:
        raise InputError(f"value_range {value_range}: expected (low, high) with high > low")
    x = images.detach().float().cpu()
    if not torch.isfinite(x).all():
        raise InputError("images contain NaN or infinite values")
    return ((x - lo) / (hi - lo)).clamp(0, 1)


_PALETTE = torch.tensor([vocab.COLORS[c] for c in vocab.COLOR_NAMES], dtype=torch.float32) / 255.0
# Opponent-colour axes: both orthogonal to grey, so grey (R = G = B) maps to the origin.
_OPPONENT = torch.tensor([[1 / math.sqrt(2), -1 / math.sqrt(2), 0.0], [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)]])
_GRAY = vocab.COLOR_NAMES.index("gray")
_CHROMATIC = torch.tensor([i for i, c in enumerate(vocab.COLOR_NAMES) if c != "gray"])


def _hue(rgb_chroma: Tensor) -> tuple[Tensor, Tensor]:
    """Hue angle and saturation of colour offsets from grey, [..., 3] -> ([...], [...])."""
    opp = rgb_chroma @ _OPPONENT.T
    return torch.atan2(opp[..., 1], opp[..., 0]), opp.norm(dim=-1)


_PALETTE_HUE, _ = _hue(_PALETTE - _PALETTE.mean(-1, keepdim=True))


def nearest_palette_hue(chroma: Tensor) -> Tensor:
    """Index (into COLOR_NAMES) of the chromatic palette colour whose hue is closest.

    Hue, not RGB distance: shading scales a diffuse surface's colour but keeps its hue, so a dark
    red face is still red. ``chroma`` is the colour minus its grey part, [..., 3].
    """
    hue, _ = _hue(chroma)
    d = (hue[..., None] - _PALETTE_HUE[_CHROMATIC]).remainder(2 * math.pi)
    d = torch.minimum(d, 2 * math.pi - d)
    return _CHROMATIC[d.argmin(-1)]


def palette_index(mean_rgb: Tensor, gray_saturation: float = 0.06) -> Tensor:
    """Nearest palette colour of mean object colours [M, 3] in [0, 1]: gray when unsaturated."""
    chroma = mean_rgb - mean_rgb.mean(-1, keepdim=True)
    _, sat = _hue(chroma)
    return torch.where(sat < gray_saturation, torch.full_like(sat, _GRAY, dtype=torch.long), nearest_palette_hue(chroma))


# ----- the training-free detector ----------------------------------------------------------------

@dataclass(frozen=True)
class ColorDetectorConfig:
    saturation_abs: float = 0.05  # chroma above this (and above saturation_rel * brightness) = coloured
    saturation_rel: float = 0.25  # relative part: dark pixels need proportionally less chroma
    shadow_margin: float = 0.08  # darker than the shadow band by this (brightness ratio) = object
    highlight_margin: float = 0.06  # brighter than the lit floor by this = object
    min_area_px: float = 3.0  # at 32x32; scales with the image area
    absorb_ratio: float = 0.5  # grey group merges into a touching coloured one at most this large
    smooth_px: float = 0.5  # Gaussian pre-blur (px at 32x32, scaled): without it, noise of std 0.03
    # (as samplers leave) breaks 32x32 images into speckle — measured success at k=3 fell to 0.02


@dataclass
class ColorDetector:
    """Background-difference detector calibrated on renders of the same camera and resolution.

    ``background`` [3, H, W] is the empty floor; ``shadow_ratio`` [H, W] the brightness of fully
    shadowed floor relative to lit floor. Build it with ``ColorDetector.calibrate``.
    """

    background: Tensor
    shadow_ratio: Tensor
    config: ColorDetectorConfig = field(default_factory=ColorDetectorConfig)
    min_separation: float = 0.25  # it merges touching objects: keep requested centres this far apart
    name: str = "color"

    @property
    def resolution(self) -> int:
        return int(self.background.shape[-1])

    @classmethod
    def calibrate(cls, renderer, sampler, generator: int | torch.Generator = 0, n_scenes: int = 256,
                  config: ColorDetectorConfig | None = None) -> "ColorDetector":
        """Measure the empty floor and the shadow band with ``renderer`` (a ``scenes.Renderer``).

        The shadow band is fitted, not assumed: on scenes from ``sampler`` (a ``SceneSampler``),
        floor pixels well inside shadows give the lit-to-shadowed brightness ratio, and a
        quadratic in (x, y) spreads it over the whole image (the key light falls off smoothly).
        """

        gen = generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(int(generator))
        background = renderer(SceneBatch.empty(1, 1), with_masks=False).images[0].cpu()
        scenes = sampler.sample(min(4, sampler.config.max_objects), gen, batch_size=n_scenes)
        out = renderer(scenes)
        ratio = out.images.cpu().mean(1) / background.mean(0).clamp_min(1e-6)
        floor = ~out.masks.cpu().any(1)
        deep = floor & (ratio < 0.9)
        deep = torch.from_numpy(ndi.binary_erosion(deep.numpy(), structure=np.ones((1, 3, 3))))
        shadow = _fit_quadratic(ratio, deep, fallback=float(ratio[floor].min()) if floor.any() else 0.7)
        return cls(background, shadow.clamp(0.3, 0.95), config or ColorDetectorConfig())

    def __call__(self, images: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> list[Detections]:
        x = to_unit_images(images, value_range)
        if x.shape[-1] != self.resolution:
            raise InputError(
                f"images are {x.shape[-1]}x{x.shape[-1]} but this detector was calibrated at "
                f"{self.resolution}x{self.resolution}; calibrate one for this resolution"
            )
        cfg = self.config
        scale = self.resolution / 32
        if cfg.smooth_px > 0:
            x = torch.from_numpy(ndi.gaussian_filter(x.numpy(), (0, 0, cfg.smooth_px * scale, cfg.smooth_px * scale)))
        fg, cls = self._pixel_classes(x)
        min_area = cfg.min_area_px * scale**2
        return [self._objects(x[b], fg[b].numpy(), cls[b].numpy(), min_area) for b in range(len(x))]

    def _pixel_classes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Foreground mask [B, H, W] and colour class per pixel (palette index; gray = neutral)."""
        cfg = self.config
        lum = x.mean(1)
        ratio = lum / self.background.mean(0).clamp_min(1e-6)
        # Colour left after removing the floor's own colour at this pixel's brightness: shadows
        # (floor, only darker) leave nothing; objects leave their hue.
        chroma = (x - ratio[:, None] * self.background[None]).permute(0, 2, 3, 1)
        _, sat = _hue(chroma)
        coloured = sat > torch.clamp(cfg.saturation_rel * lum, min=cfg.saturation_abs)
        dark = ratio < self.shadow_ratio[None] - cfg.shadow_margin
        bright = ratio > 1 + cfg.highlight_margin
        cls = torch.where(coloured, nearest_palette_hue(chroma), torch.full_like(lum, _GRAY, dtype=torch.long))
        return coloured | dark | bright, cls

    def _objects(self, img: Tensor, fg: np.ndarray, cls: np.ndarray, min_area: float) -> Detections:
        """Connected groups per colour class -> detections; grey fragments join coloured groups."""
        eight = np.ones((3, 3), dtype=bool)
        labels = np.zeros(fg.shape, dtype=np.int64)
        group_cls = [0]
        for c in np.unique(cls[fg]):
            lab, n = ndi.label(fg & (cls == c), structure=eight)
            labels[lab > 0] = lab[lab > 0] + len(group_cls) - 1
            group_cls += [int(c)] * n
        areas = np.bincount(labels.ravel(), minlength=len(group_cls)).astype(float)
        areas[0] = 0
        for g in range(1, len(group_cls)):
            if group_cls[g] != _GRAY or areas[g] == 0:
                continue
            part = labels == g
            ring = ndi.binary_dilation(part, structure=eight) & ~part
            nb = labels[ring]
            nb = nb[(nb > 0) & (np.asarray(group_cls)[nb] != _GRAY)]
            if nb.size:
                host = int(np.bincount(nb).argmax())
                if areas[g] < self.config.absorb_ratio * areas[host]:
                    labels[part] = host
                    areas[host] += areas[g]
                    areas[g] = 0
        keep = [g for g in range(1, len(group_cls)) if areas[g] >= min_area]
        if not keep:
            return Detections.empty()
        h, w = fg.shape
        rgb = img.permute(1, 2, 0).numpy()
        centers, cols, idx = [], [], []
        for g in keep:
            rows, colsx = np.nonzero(labels == g)
            centers.append(((colsx.mean() + 0.5) / w, (rows.mean() + 0.5) / h))
            cols.append(rgb[rows, colsx].mean(0))
            idx.append(group_cls[g])
        return Detections(
            centers=np.asarray(centers), scores=np.ones(len(keep)), areas=areas[keep],
            colors=np.asarray(cols), color_index=np.asarray(idx, dtype=np.int64),
        )


def _fit_quadratic(values: Tensor, where: Tensor, fallback: float) -> Tensor:
    """Least-squares quadratic in pixel (x, y) through ``values[where]`` ([B, H, W]), as [H, W]."""
    h, w = values.shape[-2:]
    ys, xs = torch.meshgrid(pixel_centers(h), pixel_centers(w), indexing="ij")
    basis = torch.stack([torch.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], -1).double()  # [H, W, 6]
    b, i, j = where.nonzero(as_tuple=True)
    if len(b) < 30:
        return torch.full((h, w), fallback)
    coef = torch.linalg.lstsq(basis[i, j], values[b, i, j].double()[:, None]).solution
    return (basis @ coef)[..., 0].float()


