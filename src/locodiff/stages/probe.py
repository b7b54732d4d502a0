"""Probe a trained run on its own test scenes: the study's (and ``locodiff locality``'s) entry point.

The probed scenes are the first test images with the requested object counts (taken in turn
from each count, so 1-, 2- and 3-object scenes are equally represented), conditioned on every
object's location, whatever labels the model was trained with: the question is how the model
uses each conditioner it is given at test time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch

from ..adapters.diffusers_unet import load_diffusers_unet
from ..conditioning import Conditioning
from ..denoiser import conditioned_on
from ..errors import LocodiffError
from .subjects import load_subject, subject_checkpoint
from ..io import notice, write_json_atomic
from ..layout import EXTRAPOLATION, PROBE_SUMMARY, probe_dir
from ..locks import folder_lock
from ..models import TextUNet, build_network, save_text_model
from ..progress import progress_bar
from ..rng import generator
from ..scenes import SceneDataset, batch_conditioning, vocab
from ..scenes.dataset import to_model_batch
from ..scenes.draw import TestDraw
from ..tracking import Tracker
from ..checkpoints import no_checkpoint, read_state
from ..locality.config import ExtrapolationOptions, SceneDraw
from ..locality.extrapolation import ExtrapolationResult, Scenes, probe_extrapolation
from ..locality.feature_space import FEATURES_FILE, FeatureSpec, feature_run
from ..locality.jacobian import InputError
from ..locality.probe import ProbeSpec, probe_locality
from ..locality.result import has_presence, maps_intact, mean_normalised_index, mean_presence_index
from ..locality.text_probe import TEXT_PROBE_PROBES, TextProbeSpec, probe_text_model, write_text_probe


def probe_scenes(data_root: str | Path, counts: Sequence[int], n: int):
    """``n`` test images (and their all-object conditionings) with object counts in ``counts``."""

    data = SceneDataset(data_root, "test", tuple(counts))
    by_count = {k: (data.tensors["counts"][data.index] == k).nonzero(as_tuple=True)[0] for k in counts}
    order: list[int] = []
    for i in range(max((len(v) for v in by_count.values()), default=0)):
        order.extend(int(v[i]) for v in by_count.values() if i < len(v))
    if len(order) < n:
        raise InputError(
            f"the test split holds {len(order)} scenes with {list(counts)} objects but the probe asks "
            f"for {n}; raise data.test_images_per_count or lower locality.scenes"
        )
    rows = data.index[torch.tensor(order[:n])]
    batch = to_model_batch({k: v[rows] for k, v in data.tensors.items()})
    cond = batch_conditioning(batch, "all")
    slots = max(int(cond.counts().max()), 1)
    cond = Conditioning(cond.locations[:, :slots], cond.mask[:, :slots],
                          None if cond.attributes is None else cond.attributes[:, :slots])
    return batch["images"], cond


def probe_run(run_dir: str | Path, data_root: str | Path, options, seed: int = 0, progress: bool = False,
              checkpoint: Path | None = None) -> Path:
    """Probe the EMA weights of ``run_dir``'s latest checkpoint, or of ``checkpoint``; cached in
    ``run_dir/locality-<hash>/`` (keyed by the checkpoint).

    ``options`` is a ``locality.config.LocalityOptions``. Returns the result folder.
    """
    run_dir = Path(run_dir)
    ckpt = Path(checkpoint) if checkpoint is not None else subject_checkpoint(run_dir)
    if ckpt is None:
        raise LocodiffError(no_checkpoint(run_dir, "train it before probing locality"))
    folder = probe_dir(run_dir, options, ckpt.name)
    if not probe_complete(folder):
        with folder_lock(folder, f"the probe {folder.name} of {run_dir.name} is being measured"):
            if not probe_complete(folder):  # another process may have finished it meanwhile
                _measure(folder, run_dir, ckpt, data_root, options, seed, progress)
    return folder


def _measure(folder: Path, run_dir: Path, ckpt: Path, data_root, options, seed: int, progress: bool) -> None:
    """Every part of the probe not yet saved in ``folder``, then the tracker's numbers."""
    denoiser, run_cfg = load_subject(run_dir, ckpt)
    images, cond = probe_scenes(data_root, options.counts, options.scenes)
    if not (maps_intact(folder) and has_presence(folder)):
        meta = {"run": run_dir.name, "model": run_dir.name.rsplit("-", 1)[0], "checkpoint": ckpt.name,
                "arch": run_cfg.model.arch, "label_policy": run_cfg.label_policy}
        _probe(folder, denoiser, images, cond, options, seed, progress, meta)
    if ExtrapolationResult.load(folder) is None:
        if (folder / EXTRAPOLATION).exists():
            notice(f"{folder / 'extrapolation.json'} is unreadable; measuring it again")
        extrapolation_run(folder, denoiser, run_cfg, options.extrapolation, seed, progress)
    if conditioned_on(denoiser) == "captions":
        text_probe_run(folder, denoiser, run_cfg, images, cond, options, seed)
    else:
        spec = FeatureSpec(options.feature_sigma, options.feature_grid, seed, tuple(colour_concepts(run_cfg)),
                           tuple(shape_concepts(run_cfg)), tuple(run_cfg.holdout_indices()), options.radius_px)
        feature_run(folder, denoiser, images, spec, cond=cond)
    track_locality(folder, Tracker(run_cfg.train.report_to, run_dir), read_state(ckpt)["images_seen"])


def track_locality(folder: Path, tracker: Tracker, images_seen: int) -> None:
    """The probe's headline indices (the normalised index per noise level, and the efficacy and far
    residual per k where generalization is asked) at the checkpoint's images seen."""
    summary = json.loads((folder / PROBE_SUMMARY).read_text())
    values = {"locality/normalised index": mean_normalised_index(summary),
              "locality/presence index": mean_presence_index(summary)}
    for sigma, s in zip(summary["sigmas"], summary["summaries"]):
        values[f"locality/normalised index sigma={sigma:.3g}"] = s["index"]["normalised"]["mean"]
    extrapolation = ExtrapolationResult.load(folder)
    for k in sorted(extrapolation.per_k) if extrapolation is not None else ():
        for statistic in ("efficacy", "far_residual"):  # where generalization is asked: the headline
            estimate = extrapolation.band(statistic, k)
            if estimate is not None and not math.isnan(estimate.mean):
                values[f"locality/{statistic} k={k:02d}"] = estimate.mean
    with tracker:
        tracker.log(values, images_seen)


def text_probe_run(folder: Path, net: TextUNet, run_cfg, images, cond, options, seed: int) -> Path:
    """For a caption model: save it as a diffusers folder (``folder/diffusers``), reload it the way
    ``probe-diffusers`` loads SDXL, and measure the paper's three SDXL findings on it and on a
    random-weight control of the same shape (``text_probe.json``); ``features.json`` then marks
    the probe complete."""
    saved = save_text_model(net, folder / "diffusers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        control = build_network(run_cfg.model).eval().requires_grad_(False)
    colors = tuple(vocab.color_index(c) for c in run_cfg.data.scene.colors)
    spec = TextProbeSpec(tuple(options.sigmas), options.radius_px, options.pixels, TEXT_PROBE_PROBES, seed, colors)
    results = {"trained": probe_text_model(net, load_diffusers_unet(saved), images, cond, spec),
               "random": probe_text_model(control, control.adapter, images, cond, spec)}
    path = write_text_probe(folder, results)
    write_json_atomic(folder / FEATURES_FILE, {"skipped": "a caption model: its feature-space results are in text_probe.json"})
    return path


def probe_complete(folder: Path) -> bool:
    """Whether a probe folder holds the score's locality at training scenes and in the
    extrapolation regime, and the feature-space results."""
    return (maps_intact(folder) and (Path(folder) / FEATURES_FILE).is_file()
            and has_presence(folder, quiet=True) and ExtrapolationResult.load(folder) is not None)


def extrapolation_scenes(data_cfg, draw: SceneDraw, n: int) -> Scenes:
    """k -> the first ``n`` of the evaluation's test scenes with k objects (the same generator
    stream and batch, hence the same scenes; all of them if it draws fewer) and their renders."""
    test = TestDraw(data_cfg, draw.min_separation)
    n = min(n, draw.per_count)

    def scenes(k: int) -> tuple[torch.Tensor, Conditioning]:
        batch, cond = test.scenes(k, draw.per_count, generator(draw.seed, "eval", k))
        return test.render(batch)[:n], cond[:n]

    return scenes


def extrapolation_run(folder: Path, denoiser, run_cfg, options: ExtrapolationOptions, seed: int,
                      progress: bool = False) -> Path:
    """The probe in the extrapolation regime on the evaluation's scenes (``extrapolation.json``)."""
    scenes = extrapolation_scenes(run_cfg.data, options.draw, options.scenes)
    # a k costs about k times a 1-object scene (each conditioner is removed in turn): count conditioners
    with progress_bar(sum(options.counts), "extrapolation probe", "cond", enabled=progress) as bar:
        result = probe_extrapolation(denoiser, scenes, options, generator(seed, "extrapolation"), bar.update,
                                     meta={"run": folder.parent.name})
    return result.save(folder)


def colour_concepts(run_cfg) -> list[int]:
    """Palette indices of the data's colours for a model that reads attributes, else none."""
    if not run_cfg.model.use_attributes:
        return []
    return [vocab.color_index(c) for c in run_cfg.data.scene.colors]


def shape_concepts(run_cfg) -> list[int]:
    """Shape indices of the data's shapes for a model that reads attributes, else none."""
    if not run_cfg.model.use_attributes:
        return []
    return [vocab.shape_index(s) for s in run_cfg.data.scene.shapes]


def _probe(folder, denoiser, images, cond, options, seed: int, progress: bool, meta: dict) -> None:
    spec = ProbeSpec(options.sigmas, options.pixels, radius=options.radius_px,
                     move_jacobians=conditioned_on(denoiser) == "locations")
    result = probe_locality(denoiser, images, cond, spec, torch.Generator().manual_seed(seed), progress=progress,
                            meta=meta)
    result.save(folder)
