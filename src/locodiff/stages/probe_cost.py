"""What the locality probe of one subject costs on this machine, said before it runs.

The probe's passes depend on its options and on the scenes' conditioners, not on the weights, so a
network built afresh from the subject's config stands in for the trained one. Each part of the
probe (``run.probe_run``: the Jacobian probe, the extrapolation probe, a caption model's text probe
on it and on its random-weight control) runs on one scene at one noise level, timed now on one
thread, and is scaled to the scenes and noise levels the options ask for. The feature-space part
(a few passes) and the summaries' bootstrap are not counted. The Jacobian part separates a batch's
overhead from its per-scene work (one scene alone costs 2.3x its share of a batch of 8); the
extrapolation and text parts are timed on one scene and overstate theirs (quick's exp1: about 1.3x,
timed with the cores shared).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..conditioning import Conditioning
from ..denoiser import Denoiser, conditioned_on
from ..hardware import best_seconds
from ..rng import generator
from ..scenes.draw import TestDraw
from ..locality.config import ExtrapolationOptions, LocalityOptions
from ..locality.extrapolation import probe_count
from ..locality.probe import ProbeSpec, probe_locality
from ..locality.text_probe import TEXT_PROBE_PROBES, TextProbeSpec, probe_text_model


def probe_seconds(denoiser: Denoiser, data_cfg, options: LocalityOptions) -> float:
    """Seconds one thread takes to probe ``denoiser`` (eval mode) with ``options`` on scenes of
    ``data_cfg`` (a ``DataConfig``), from a few scenes at one noise level of each part, timed now."""
    draw = TestDraw(data_cfg, options.extrapolation.draw.min_separation)
    k = options.counts[len(options.counts) // 2]
    per_scene = _jacobian_seconds_per_scene(denoiser, draw, data_cfg.resolution, k, options)
    if conditioned_on(denoiser) == "captions":  # the trained model's text probe and its control's
        per_scene += 2 * _text_seconds(denoiser, *_scenes(draw, data_cfg.resolution, k, 1), options)
    seconds = per_scene * options.scenes * len(options.sigmas)
    ex = options.extrapolation
    if ex.counts:
        seconds += _extrapolation_seconds(denoiser, draw, data_cfg.resolution, ex) * ex.scenes * len(ex.sigmas)
    return seconds


def _scenes(draw: TestDraw, resolution: int, k: int, n: int) -> tuple[torch.Tensor, Conditioning]:
    """Blank images and test conditionings with ``k`` objects (the passes do not depend on pixels)."""
    _, cond = draw.scenes(k, n, generator(0, "probe cost", k))
    return torch.zeros(n, 3, resolution, resolution), cond


def _jacobian_seconds_per_scene(denoiser: Denoiser, draw: TestDraw, resolution: int, k: int,
                                options: LocalityOptions) -> float:
    """One scene's share of a batch of the probe's size at one noise level: batches of one and of
    two scenes are timed, separating the per-batch overhead (large at these sizes) from the
    per-scene work."""
    spec = ProbeSpec(options.sigmas[:1], options.pixels, radius=options.radius_px, n_boot=1, keep_maps=False,
                     move_jacobians=conditioned_on(denoiser) == "locations")
    times = []
    for n in (1, 2):
        images, cond = _scenes(draw, resolution, k, n)
        times.append(best_seconds(lambda: probe_locality(denoiser, images, cond, spec, torch.Generator().manual_seed(0),
                                                         progress=False), repeats=1, threads=1, warm_up=n == 1))
    work = max(times[1] - times[0], 0.0)
    batch = min(options.scenes, spec.batch_size)
    return (max(times[0] - work, 0.0) + work * batch) / batch


def _text_seconds(net, image, cond, options: LocalityOptions) -> float:
    """The text probe of one scene at one noise level (timed alone: an upper bound per scene; once,
    after the Jacobian probe has warmed the network up)."""
    spec = TextProbeSpec(options.sigmas[:1], options.radius_px, options.pixels, TEXT_PROBE_PROBES, 0)
    return best_seconds(lambda: probe_text_model(net, net.adapter, image, cond, spec), repeats=1, threads=1,
                        warm_up=False)


def _extrapolation_seconds(denoiser: Denoiser, draw: TestDraw, resolution: int, ex: ExtrapolationOptions) -> float:
    """One scene at every k at one noise level of the band (forward passes only; timed once,
    after the Jacobian probe has warmed the network up)."""
    one = replace(ex, sigmas=ex.band_sigmas()[:1])
    scenes = [_scenes(draw, resolution, k, 1) for k in ex.counts]

    def run() -> None:
        for image, cond in scenes:
            probe_count(denoiser, image, cond, one, torch.zeros_like(image))
    return best_seconds(run, repeats=1, threads=1, warm_up=False)
