"""Evaluate any ``Denoiser`` on length generalization: ask for k objects, count what it draws.

For every requested count k the runner takes ``per_count`` test conditionings with k locations,
samples one image per conditioning, detects the objects, and matches them to the requested
locations (``metrics.py``). Files in ``out_dir``:

    eval_config.json     what was asked (checked on resume: a different config is an error)
    eval.jsonl           one line per sample: k, requested locations, detections, matches
    samples/k03.png      the first ``grid_per_count`` samples of each k, side by side
    eval.json            summary + per-k table (derived from eval.jsonl)
    samples.png          grid with detections drawn over the samples (one row per k)
    accuracy.png         accuracy against k

Resuming: the lines of each k are appended only once the whole k is done, so an interrupted run
keeps every finished k and redoes only the one in progress (a partial k is dropped). Each k has
its own random stream (conditionings and noise), so results do not depend on which k's were
already done.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..conditioning import ATTRIBUTE_NAMES, Conditioning
from ..config import from_dict
from ..denoiser import Denoiser
from ..diffusion import get_sampler
from ..diffusion.samplers import sample_in_batches
from ..errors import InputError
from ..imaging import to_uint8
from ..io import append_jsonl, atomic_path, notice, read_jsonl, write_json_atomic, write_text_atomic
from ..locks import folder_lock
from ..layout import EVAL_EXTENSIBLE, EVAL_RECORDS, EVAL_SUMMARY, eval_dir, legacy_eval_dir
from ..progress import progress_bar
from ..rng import generator
from ..scenes import SceneSampler, batch_conditioning
from ..scenes.renderers import renderer_for
from ..scenes.draw import TestDraw
from ..tracking import Tracker
from .config import EvalConfig
from .detector import ColorDetector, Detections, Detector
from .figures import accuracy_plot, detection_grid
from .heatmap import load_or_train_detector
from .metrics import (
    CountMetrics,
    EvalSummary,
    ImageMatch,
    count_metrics,
    default_tolerance_px,
    match_locations,
    score_attributes,
    summarize,
)

# (k, n, generator) -> n conditionings with exactly k locations each
ConditioningFactory = Callable[[int, int, torch.Generator], Conditioning]


@dataclass(frozen=True)
class TestScenes:
    """What an evaluation asks for: ``conditionings(k, n, generator)`` gives n conditionings with k
    objects, at this image ``resolution``; ``holdout`` names (shape, colour) index pairs the model
    never saw in training, so that combination accuracy splits into seen and held-out pairs."""

    __test__ = False  # not a pytest test class, whatever its name

    conditionings: ConditioningFactory
    resolution: int
    holdout: tuple[tuple[int, int], ...] = ()


@dataclass
class EvalResult:
    """An evaluation: per-k metrics and their summary, as saved in ``eval.json``; ``load`` is the
    one reader of that file."""

    per_k: dict[int, CountMetrics]
    summary: EvalSummary
    out_dir: Path
    resolution: int
    detector: str
    config: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return {
            "summary": self.summary.to_dict(),
            "per_k": [self.per_k[k].to_dict() for k in sorted(self.per_k)],
            "resolution": self.resolution,
            "detector": self.detector,
            "config": asdict(self.config),
        }

    @classmethod
    def load(cls, folder: str | Path) -> "EvalResult | None":
        """The evaluation saved in ``folder``, or None where there is none yet."""
        path = Path(folder) / EVAL_SUMMARY
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        per_k = {m.k: m for m in (CountMetrics.from_dict(r) for r in d["per_k"])}
        return cls(per_k, EvalSummary.from_dict(d["summary"]), Path(folder), d["resolution"], d["detector"],
                   from_dict(EvalConfig, d["config"]))

    def at(self, k: int, kind: str) -> float | None:
        """Accuracy ``kind`` (an attribute of ``CountMetrics``: recall, placed, ...) at count k."""
        return getattr(self.per_k[k], kind) if k in self.per_k else None

    def markdown(self) -> str:
        """The per-k table as Markdown, for reports and the terminal."""
        return per_k_markdown(self.per_k)


# ----- where test conditionings come from ----------------------------------------------------------

def scene_conditionings(data_cfg, min_separation: float | None = None) -> ConditioningFactory:
    """Conditionings from freshly sampled test scenes of ``data_cfg`` (a ``scenes.DataConfig``).

    The locations are projected 3-D centres of physically plausible scenes (objects on the floor,
    apart, visible), and the attributes of the sampled objects come along for attribute scoring.
    ``min_separation`` overrides the scene config's image-plane separation.
    """

    draw = TestDraw(data_cfg, min_separation)

    def make(k: int, n: int, generator: torch.Generator) -> Conditioning:
        return draw.scenes(k, n, generator)[1]

    return make


def dataset_conditionings(dataset) -> ConditioningFactory:
    """Conditionings from a built test split (a ``scenes.SceneDataset``), in stored order.

    The generator is unused: the test split is already a fixed random draw.
    """

    counts = dataset.tensors["counts"][dataset.index]

    def make(k: int, n: int, generator: torch.Generator) -> Conditioning:
        rows = dataset.index[(counts == k).nonzero(as_tuple=True)[0]]
        if len(rows) < n:
            raise InputError(f"the test split has {len(rows)} images with {k} objects but {n} were asked for")
        rows = rows[:n]
        batch = {name: t[rows] for name, t in dataset.tensors.items()}
        cond = batch_conditioning(batch, "all")
        return Conditioning(cond.locations[:, : max(k, 1)], cond.mask[:, : max(k, 1)],
                            None if cond.attributes is None else cond.attributes[:, : max(k, 1)])

    return make


# ----- checks ---------------------------------------------------------------------------------------

def check_conditioning(cond: Conditioning, k: int, n: int, min_separation: float) -> None:
    """Test conditionings must hold k in-image locations, far enough apart for the detector."""
    if not isinstance(cond, Conditioning):
        raise InputError(f"make_test_conditionings returned {type(cond).__name__}, expected a Conditioning")
    if cond.batch_size != n:
        raise InputError(f"make_test_conditionings returned {cond.batch_size} conditionings for k={k}, expected {n}")
    counts = cond.counts()
    if (counts != k).any():
        bad = int(counts[counts != k][0])
        raise InputError(f"a conditioning for k={k} holds {bad} locations")
    cond.validate()
    if k < 2:
        return
    loc = cond.locations.detach().cpu().double()
    dist = torch.cdist(loc, loc) + torch.eye(loc.shape[1], dtype=loc.dtype) * 10
    pair = cond.mask[:, :, None].cpu() & cond.mask[:, None, :].cpu()
    dist = torch.where(pair, dist, torch.full_like(dist, 10.0))
    closest = dist.amin((1, 2))
    if (closest < min_separation).any():
        b = int(closest.argmin())
        i, j = divmod(int(dist[b].argmin()), dist.shape[-1])
        raise InputError(
            f"requested locations {loc[b, i].tolist()} and {loc[b, j].tolist()} (image {b}, k={k}) are "
            f"{float(closest[b]):.3f} of the image side apart; the detector separates objects only "
            f">= {min_separation:.3f} apart. Sample test scenes with min_separation >= {min_separation:.3f}"
        )


class _ShapeChecked:
    """Wraps a denoiser so that a wrong output shape is named here, not deep inside a sampler."""

    def __init__(self, denoiser: Denoiser, k: int) -> None:
        self.denoiser, self.k = denoiser, k

    def __call__(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        out = self.denoiser(x, sigma, cond)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise InputError(
                f"the denoiser returned shape {shape} for input of shape {tuple(x.shape)} (k={self.k}); "
                "it must return an x0 estimate shaped like its input"
            )
        return out


def _check_images(x: Tensor, n: int, resolution: int, k: int) -> None:
    if x.shape != (n, 3, resolution, resolution):
        raise InputError(
            f"the sampler returned images of shape {tuple(x.shape)} for k={k}, expected "
            f"{(n, 3, resolution, resolution)}: does the denoiser work at {resolution}x{resolution}?"
        )
    if not torch.isfinite(x).all():
        raise InputError(f"the denoiser produced NaN or infinite pixels at k={k}")


def k_generator(seed: int, k: int) -> torch.Generator:
    """The generator of k's test conditionings and sampling noise (the crowding diagnostic
    draws the same conditionings from it)."""
    return generator(seed, "eval", k)


# ----- the runner -------------------------------------------------------------------------------------

def evaluate_denoiser(
    denoiser: Denoiser,
    detector: Detector,
    scenes: TestScenes,
    out_dir: str | Path,
    config: EvalConfig | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> EvalResult:
    """Sample ``per_count`` images for every k, detect and score them; resumable (see module doc).

    ``denoiser`` is any ``Denoiser`` producing [B, 3, resolution, resolution] images in [-1, 1];
    ``detector`` e.g. ``load_or_train_detector(data_cfg, cache)``; ``scenes`` e.g.
    ``TestScenes(scene_conditionings(data_cfg), data_cfg.resolution)``. When the conditionings
    carry attributes, matched objects are also scored for colour and shape.
    """
    make_test_conditionings, resolution, holdout = scenes.conditionings, scenes.resolution, scenes.holdout

    cfg = config or EvalConfig()
    _check_detector(detector, resolution, cfg)
    out = Path(out_dir)
    with folder_lock(out, f"the evaluation {out.name} is being sampled"):  # resumes what another finished
        records = _start_or_resume(out, cfg, resolution, detector.name)
        todo = [k for k in cfg.counts if k not in records]
        bar = progress_bar(len(todo) * cfg.per_count, "evaluate", "img", enabled=progress)
        for k in todo:
            bar.set_postfix(k=k)
            gen = k_generator(cfg.seed, k)
            cond = make_test_conditionings(k, cfg.per_count, gen)
            check_conditioning(cond, k, cfg.per_count, detector.min_separation)
            lines, strip = [], []
            batches = sample_in_batches(_ShapeChecked(denoiser, k), cond, resolution, cfg.steps, gen, cfg.batch_size,
                                        get_sampler(cfg.sampler), device)
            for start, part, x in batches:
                _check_images(x, part.batch_size, resolution, k)
                images = x.detach().float().cpu().clamp(-1, 1)
                tolerance = cfg.tolerance_px or default_tolerance_px(resolution)
                lines += [_record(k, start + i, part[i], d, resolution, tolerance, holdout)
                          for i, d in enumerate(detector(images, value_range=(-1.0, 1.0)))]
                strip += list(to_uint8(images[: max(0, cfg.grid_per_count - len(strip))]))
                bar.update(part.batch_size)
            records[k] = _keep_count(out, k, lines, strip)
        bar.close()
        return finalize(out, cfg, resolution, detector.name, records)


def _check_detector(detector: Detector, resolution: int, cfg: EvalConfig) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 8 <= resolution <= 1024:
        raise InputError(f"resolution {resolution!r}: expected an integer image side from 8 to 1024")
    fixed = getattr(detector, "resolution", None)
    if fixed is not None and fixed != resolution:
        raise InputError(f"the detector works at {fixed}x{fixed} but the images are {resolution}x{resolution}")
    det_max = getattr(detector, "max_objects", None) or getattr(getattr(detector, "config", None), "max_objects", None)
    if det_max is not None and max(cfg.counts) > det_max:
        raise InputError(f"k={max(cfg.counts)} is above the {det_max} objects the detector was trained on")


def _keep_count(out: Path, k: int, lines: list[dict], strip: list) -> list[dict]:
    """Save a finished count: its sample strip, then its records (only complete k's reach the log)."""
    if strip:
        _save_strip(out / "samples" / f"k{k:02d}.png", np.stack(strip))
    for line in lines:
        append_jsonl(out / EVAL_RECORDS, line)
    return lines


def build_detector(data_cfg, config: EvalConfig, resolution: int, cache_dir: str | Path, progress: bool = False,
                   device: str | torch.device = "cpu") -> Detector:
    """The detector ``config.detector`` names, for images that look like ``data_cfg``'s renders.

    ``heatmap`` is loaded from ``cache_dir`` or trained there first (minutes on a CPU, once per
    look of the data; ``device`` renders and trains it); ``color`` is calibrated on the spot for ``resolution``.
    """

    if config.detector == "heatmap":
        return load_or_train_detector(data_cfg, cache_dir, config.heatmap, progress=progress, device=device)
    renderer = renderer_for(data_cfg, resolution)
    return ColorDetector.calibrate(renderer, SceneSampler(data_cfg.scene, data_cfg.camera), generator=config.seed)


def evaluate_model(
    denoiser: Denoiser,
    data_cfg,
    out_dir: str | Path,
    config: EvalConfig | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    holdout: tuple[tuple[int, int], ...] = (),
) -> EvalResult:
    """``evaluate_denoiser`` with everything derived from the data config: the study's entry point.

    Test conditionings come from freshly sampled scenes of ``data_cfg`` (``config.min_separation``
    overrides their separation); the detector is built by ``build_detector`` and cached in
    ``cache_dir`` (default: ``<out_dir>/../detectors``).
    """
    cfg = config or EvalConfig()
    cache = Path(cache_dir) if cache_dir is not None else Path(out_dir).parent / "detectors"
    detector = build_detector(data_cfg, cfg, data_cfg.resolution, cache, progress, device)
    factory = scene_conditionings(data_cfg, cfg.min_separation)
    return evaluate_denoiser(denoiser, detector, TestScenes(factory, data_cfg.resolution, holdout), out_dir, cfg,
                             device, progress)


def evaluated_counts(out: Path) -> set[int]:
    try:
        return {int(row["k"]) for row in json.loads((out / EVAL_SUMMARY).read_text())["per_k"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def track_evaluation(result: EvalResult, tracker: Tracker, images_seen: int) -> None:
    """Recall, precision and count accuracy per k, at the checkpoint's images seen."""
    with tracker:
        for k, m in sorted(result.per_k.items()):
            tracker.log({f"eval/recall k={k:02d}": m.recall, f"eval/precision k={k:02d}": m.precision,
                         f"eval/count k={k:02d}": m.count}, images_seen)


def evaluation_dir(subject: str | Path, config: EvalConfig, checkpoint: str) -> Path:
    """``layout.eval_dir``, after renaming a folder an older locodiff named by the counts too."""
    out, legacy = eval_dir(subject, config, checkpoint), legacy_eval_dir(subject, config, checkpoint)
    if not out.exists() and legacy.is_dir():
        os.replace(legacy, out)
        notice(f"{legacy} renamed {out.name}: an evaluation's folder no longer depends on the counts asked")
    return out


def _record(k: int, index: int, cond: Conditioning, det: Detections, resolution: int, tolerance: float,
            holdout: tuple[tuple[int, int], ...] = ()) -> dict:
    requested = cond.locations[0][cond.mask[0]].detach().cpu().double().numpy()
    colors = shapes = None
    if cond.attributes is not None:
        attrs = cond.attributes[0][cond.mask[0]]
        colors = [int(c) for c in attrs[:, ATTRIBUTE_NAMES.index("color")].tolist()]
        shapes = [int(c) for c in attrs[:, ATTRIBUTE_NAMES.index("shape")].tolist()]
    m = match_locations(requested, det.centers, (resolution, resolution), tolerance)
    score_attributes(m, colors, shapes, det.color_index, det.shape_index, holdout)
    held_out = set(holdout)
    held = None if shapes is None else [int((s, c) in held_out) for s, c in zip(shapes, colors)]
    return {
        "k": k, "index": index,
        "requested": np.round(requested, 5).tolist(), "requested_colors": colors,
        "requested_shapes": shapes, "requested_heldout": held,
        "detections": det.to_dict(), **m.to_dict(),
        "count_correct": m.count_correct, "placed": m.all_placed, "success": m.success,
    }


def _save_strip(path: Path, images: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(list(images), axis=1)).save(tmp, format="PNG")


def _load_strip(path: Path, side: int) -> np.ndarray:
    if not path.is_file():
        return np.zeros((0, side, side, 3), np.uint8)
    arr = np.asarray(Image.open(path).convert("RGB"))
    return np.stack(np.split(arr, arr.shape[1] // side, axis=1)) if arr.shape[1] >= side else arr[None]


def _start_or_resume(out: Path, cfg: EvalConfig, resolution: int, detector: str) -> dict[int, list[dict]]:
    """Check that an existing run asked the same; return its complete k's, dropping partial ones."""
    settings = {"config": json.loads(json.dumps(asdict(cfg))), "resolution": resolution, "detector": detector}
    path = out / "eval_config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        ignore = set(EVAL_EXTENSIBLE)  # adding counts later is a legitimate resume
        def strip(s: dict) -> dict:
            return {**s, "config": {k: v for k, v in s["config"].items() if k not in ignore}}
        if strip(old) != strip(settings):
            raise InputError(
                f"{str(out)!r} holds an evaluation with different settings ({path.name}); "
                "choose another output folder or delete it to start over"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, settings)
    by_k: dict[int, list[dict]] = {}
    for rec in read_jsonl(out / EVAL_RECORDS):
        by_k.setdefault(int(rec["k"]), []).append(rec)
    complete = {k: sorted(v, key=lambda r: r["index"]) for k, v in by_k.items()
                if sorted(r["index"] for r in v) == list(range(cfg.per_count))}
    if len(complete) != len(by_k):  # rewrite the log without partial k's
        lines = [json.dumps(r) for k in sorted(complete) for r in complete[k]]
        write_text_atomic(out / EVAL_RECORDS, "".join(line + "\n" for line in lines))
    return complete


def finalize(out: Path, cfg: EvalConfig, resolution: int, detector: str, records: dict[int, list[dict]]) -> EvalResult:
    """Per-k metrics, summary, eval.json and the figures from the records of every complete count:
    those asked now and any an earlier run of the folder asked."""
    per_k = {k: count_metrics(k, [ImageMatch.from_dict(r) for r in records[k]]) for k in sorted(records)}
    cfg = replace(cfg, counts=tuple(sorted(records)))  # what the file holds, whoever asked last
    result = EvalResult(per_k, summarize(per_k, cfg.summary_options()), out, resolution, detector, cfg)
    write_json_atomic(out / EVAL_SUMMARY, result.to_dict())
    write_text_atomic(out / "eval.md", result.markdown())
    rows = [(k, _load_strip(out / "samples" / f"k{k:02d}.png", resolution), records[k][: cfg.grid_per_count]) for k in sorted(records)]
    if cfg.grid_per_count:
        detection_grid(rows, out / "samples.png")
    accuracy_plot(per_k, out / "accuracy.png", cfg.trained_range, title=f"{detector} detector, {resolution}x{resolution}")
    return result


def per_k_markdown(per_k: dict[int, CountMetrics]) -> str:
    def fmt(v, digits=2):
        return "–" if v is None else f"{v:.{digits}f}"

    lines = [
        "| k | n | count | placed | success | precision | recall | loc. err (px) | mean detected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in sorted(per_k):
        m = per_k[k]
        lines.append(
            f"| {k} | {m.n_images} | {fmt(m.count)} | {fmt(m.placed)} | {fmt(m.success)} | {fmt(m.precision)} "
            f"| {fmt(m.recall)} | {fmt(m.loc_error_px)} | {fmt(m.mean_detected, 1)} |"
        )
    return "\n".join(lines) + "\n"
