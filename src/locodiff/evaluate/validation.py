"""The detector's ceiling: how well it counts and locates objects on ground-truth renders.

A model can never score above its evaluator, so the study reports this table beside model
scores. Test scenes are drawn with the scene sampler (the same rules as the test split,
optionally with a different ``min_separation``), rendered at each resolution, optionally
damaged like a sampler's output (Gaussian blur, pixel noise), detected and scored with the same
metrics as models. The same scenes are used at every resolution and perturbation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from ..progress import track
from ..scenes import SceneSampler
from ..scenes.renderers import renderer_for
from .detector import Detector
from .heatmap import gaussian_blur
from .metrics import count_metrics, default_tolerance_px, match_locations, score_attributes

# name -> (blur sigma in pixels of the image, noise std in [0, 1] units)
PERTURBATIONS: dict[str, tuple[float, float]] = {
    "clean": (0.0, 0.0),
    "blur0.5": (0.5, 0.0),
    "noise0.03": (0.0, 0.03),
    "blur0.5+noise0.03": (0.5, 0.03),
}


def perturb(images: torch.Tensor, blur_px: float, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    """Blur then add Gaussian noise, clamped to [0, 1]."""
    x = gaussian_blur(images, blur_px) if blur_px > 0 else images
    if noise_std > 0:
        x = x + noise_std * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


@dataclass(frozen=True)
class ValidationSpec:
    """Which renders a detector is checked on: ``per_count`` scenes for each k of ``counts``, at
    each resolution, under each named (blur px, noise std) perturbation."""

    resolutions: tuple[int, ...] = (32, 64)
    counts: tuple[int, ...] = tuple(range(11))
    per_count: int = 100
    perturbations: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(PERTURBATIONS))
    min_separation: float | None = None  # None: the data's own
    seed: int = 12345

    @classmethod
    def ceiling(cls, evaluate, resolution: int) -> "ValidationSpec":
        """The evaluation's own scenes, clean, at the study's resolution: the detector's ceiling."""
        return cls((resolution,), tuple(evaluate.counts), evaluate.per_count, {"clean": (0.0, 0.0)},
                   evaluate.min_separation, evaluate.seed)


def validate_detector(detector: Detector | Callable[[int], Detector], data_cfg, spec: ValidationSpec = ValidationSpec(),
                      progress: bool = False) -> dict:
    """Per (resolution, perturbation, k): count / placed / success accuracy, recall, precision,
    location error (px), colour and shape accuracy of the detector on renders of ``data_cfg``'s scenes.

    ``detector`` is one detector for every resolution or a function ``resolution -> detector``
    (the colour detector is calibrated per resolution). Returns a JSON-able dict; format it with
    ``validation_markdown``.
    """
    scene_cfg = data_cfg.scene if spec.min_separation is None else replace(data_cfg.scene,
                                                                             min_separation=spec.min_separation)
    sampler = SceneSampler(scene_cfg, data_cfg.camera)
    renderers = {r: renderer_for(data_cfg, r) for r in spec.resolutions}
    detectors = {r: detector(r) if not hasattr(detector, "min_separation") else detector for r in spec.resolutions}
    rows = []
    for k in track(spec.counts, "validate detector", "count", enabled=progress):
        scenes = sampler.sample(k, torch.Generator().manual_seed(spec.seed * 1000 + k), batch_size=spec.per_count,
                                slots=max(k, 1))
        for res in spec.resolutions:
            out = renderers[res](scenes, with_masks=False)
            for name, (blur, noise) in spec.perturbations.items():
                images = perturb(out.images.cpu(), blur * 1.0, noise, torch.Generator().manual_seed(spec.seed + k))
                rows.append({"resolution": res, "perturbation": name, "k": k,
                             **_scores(k, scenes, out.centers, detectors[res](images), res)})
    return {"detector": detectors[spec.resolutions[0]].name, "min_separation": scene_cfg.min_separation,
            "per_count": spec.per_count, "seed": spec.seed, "rows": rows, "overall": _overall(rows)}


def _scores(k: int, scenes, centers, detections, res: int) -> dict:
    """One row's accuracies: each render's detections matched to its true objects."""
    matches = []
    for b, d in enumerate(detections):
        present = scenes.mask[b]
        m = match_locations(centers[b][present].cpu().numpy(), d.centers, (res, res), default_tolerance_px(res))
        matches.append(score_attributes(m, scenes.color[b][present].tolist(), scenes.shape[b][present].tolist(),
                                        d.color_index, d.shape_index))
    cm = count_metrics(k, matches)
    return {"n": cm.n_images, "count": cm.count, "placed": cm.placed, "success": cm.success,
            "precision": cm.precision, "recall": cm.recall, "loc_error_px": cm.loc_error_px,
            "color_accuracy": cm.color_accuracy, "shape_accuracy": cm.shape_accuracy,
            "count_error_hist": {str(e): n for e, n in cm.count_error_hist.items()}}


def _overall(rows: list[dict]) -> dict:
    """Mean over k of each accuracy, per resolution and perturbation (k weighted equally)."""
    out: dict = {}
    for r in rows:
        out.setdefault(str(r["resolution"]), {}).setdefault(r["perturbation"], []).append(r)
    summary: dict = {}
    for res, by_p in out.items():
        for p, rs in by_p.items():
            def mean_of(key: str) -> float | None:
                values = [x.get(key) for x in rs if x.get(key) is not None]
                return float(np.mean(values)) if values else None

            summary.setdefault(res, {})[p] = {
                "count": float(np.mean([x["count"] for x in rs])),
                "success": float(np.mean([x["success"] for x in rs])),
                "min_success": float(min(x["success"] for x in rs)),
                "loc_error_px": mean_of("loc_error_px"),
                "color_accuracy": mean_of("color_accuracy"),
                "shape_accuracy": mean_of("shape_accuracy"),
            }
    return summary


def validation_markdown(table: dict) -> str:
    """One Markdown table per resolution: rows = k, cells = count / success accuracy and error."""
    lines = [
        f"Detector `{table['detector']}` on ground-truth renders (min_separation "
        f"{table['min_separation']}, {table['per_count']} scenes per k). Cells: exact-count "
        "accuracy / success (exact count and every object matched) / mean location error in px.",
        "",
    ]
    by_res: dict[int, dict[str, dict[int, dict]]] = {}
    for r in table["rows"]:
        by_res.setdefault(r["resolution"], {}).setdefault(r["perturbation"], {})[r["k"]] = r
    for res, by_p in by_res.items():
        names = list(by_p)
        lines += [f"**{res}x{res}**", "", "| k | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for k in sorted(next(iter(by_p.values()))):
            cells = []
            for p in names:
                r = by_p[p][k]
                err = "–" if r["loc_error_px"] is None else f"{r['loc_error_px']:.2f}"
                cells.append(f"{r['count']:.2f} / {r['success']:.2f} / {err}")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
