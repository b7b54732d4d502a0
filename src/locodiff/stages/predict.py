"""What a study will cost on this machine, said before it runs and checked after.

``locodiff study`` prints the prediction first and, at the end, the prediction beside the measured
wall time of each stage (``--dry-run`` prints it and stops). The model is simple and stated:

- a training image costs what one training step per image of its network takes on one core,
  measured now (``study.training_costs``: a second or so per network), with the locality
  penalty's extra passes from where it starts; the detector likewise; jobs run ``cfg.jobs`` at a time, longest first
  (as the train stage runs them), on ``cores / jobs`` threads each (threads assumed to scale
  perfectly). Two jobs side by side each run ~15% slower than one alone (shared caches and
  memory), which this does not count;
- an evaluation sample costs ``2 steps - 1`` forward passes (Heun; a masked composition k + 1 times
  that) of the network's counted FLOPs at ``EFFICIENCY`` of this machine's fp32 matmul rate on
  one core (measured now, 0.2 s), every core busy;
- data are rendered at the rate measured now on a small batch (torch renderer; Blender is not
  predicted);
- a locality probe costs what a miniature of it takes on one core now, run on a network built
  afresh from the subject's config (``stages.probe_cost``: a few seconds per network; the feature-space
  part is not counted), its jobs placed like training's;
- an emergence checkpoint costs its evaluation (as above, at the emergence counts) and its probe;
  a run not trained yet will keep ``min(keep_checkpoints, total / checkpoint_every)`` checkpoints,
  a trained one those it kept;
- the report is not predicted (seconds); work already done (cached data, trained runs, a trained
  detector, finished evaluations and probes) costs nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from .. import layout
from ..hardware import cores, matmul_gflops
from ..intervene.masked import masked_composition
from .subjects import subject_checkpoint, subject_checkpoints
from .jobs import longest_first_makespan
from .probe_cost import probe_seconds
from .probe import probe_complete
from ..models import build_network
from ..models.registry import as_denoiser, forward_flops
from ..scenes.dataset import SceneSource
from .study import images_trained, sampling_costs, study_device, training_costs
from .config import StudyConfig

# Share of the one-core matmul rate a sampler pass reaches: quick's evaluation predicted 107 s and
# took 117 s on an AVX2 Zen 3 (a training step reaches 49-51% there: benchmarks/train.py).
EFFICIENCY = 0.4


@dataclass
class Prediction:
    seconds: dict[str, float] = field(default_factory=dict)  # predicted wall time per stage
    notes: dict[str, str] = field(default_factory=dict)  # how, or why not predicted

    def lines(self, measured: dict[str, float] | None = None) -> list[str]:
        out = []
        for stage, note in self.notes.items():
            guess = duration(self.seconds[stage]) if stage in self.seconds else "-"
            real = "" if measured is None or stage not in measured else f"  measured {duration(measured[stage]):>8}"
            out.append(f"  {stage:<9} predicted {guess:>8}{real}  ({note})")
        return out


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def render_rate(cfg: StudyConfig, images: int = 64) -> float:
    source = SceneSource(cfg.data)
    counts = torch.tensor(cfg.data.train_counts).repeat(images)[:images]
    start = time.perf_counter()
    source.render(counts, torch.Generator().manual_seed(0), cfg.data.slots("train"))
    return images / (time.perf_counter() - start)


def data_stage(cfg: StudyConfig, p: Prediction) -> None:
    root = layout.dataset_root(cfg.data, cfg.out_dir)
    if (root / "manifest.json").is_file():
        p.seconds["data"], p.notes["data"] = 0.0, "cached (shards are checked when the stage runs)"
    elif cfg.data.renderer != "torch" or cfg.data.source != "render":
        p.notes["data"] = "not predicted for Blender renders or an imported folder"
    else:
        images = cfg.data.split_size("train") + cfg.data.split_size("test")
        rate = render_rate(cfg)
        p.seconds["data"], p.notes["data"] = images / rate, f"{images} images at {rate:.0f} img/s measured now"


def train_stage(cfg: StudyConfig, p: Prediction) -> None:
    """Core-seconds per job (models not yet trained, and the detector), then longest first."""
    if study_device(cfg) != "cpu":
        p.notes["train"] = "not predicted on a GPU (step times are measured on this CPU)"
        return
    costs = training_costs(cfg)
    p.seconds["train"] = placed(cfg, list(costs.values()))
    p.notes["train"] = (f"{len(costs)} jobs, {sum(costs.values()) / 60:.0f} core-min at training step times measured "
                        f"now on one core, {cfg.jobs} at a time")


def evaluate_stage(cfg: StudyConfig, p: Prediction, rate: float) -> None:
    """Sampling of every subject not yet evaluated (a masked composition: k + 1 passes of its base
    model at k objects), every core busy."""
    ev = cfg.evaluate
    passes = len(ev.counts) * ev.per_count * (2 * ev.steps - 1)
    costs = sampling_costs(cfg, ev.counts)
    flops = sum(costs[key] for key, (_, folder) in cfg.seeded_subjects().items() if not evaluated(folder, ev))
    p.seconds["evaluate"] = passes * flops / (rate * cores())
    p.notes["evaluate"] = (f"{passes} forward passes per model ({len(ev.counts)} counts x {ev.per_count} x "
                           f"{2 * ev.steps - 1}) at {rate / 1e9:.0f} GFLOP/s ({EFFICIENCY:.0%} of one core's matmul); "
                           "finished evaluations and the detector's scoring not counted")


def evaluated(folder, ev) -> bool:
    """Whether ``folder``'s latest checkpoint has a finished evaluation with ``ev``."""
    ckpt = subject_checkpoint(folder)
    return ckpt is not None and (layout.eval_dir(folder, ev, ckpt.name) / layout.EVAL_SUMMARY).is_file()


# A miniature probe (``stages.probe_cost``) does about a thousand one-image forward passes' worth of work
# (~2 s for quick's exp1, 0.09 GFLOP a pass, on an AVX2 Zen 3 core); where one of a study's networks
# would take longer than the budget to time that way (the paper preset's), the probes are not predicted.
MINIATURE_PASSES, TIMING_BUDGET_S = 1000, 30.0


def too_large_to_time(cfg: StudyConfig, rate: float) -> str | None:
    """The first of ``cfg``'s networks whose miniature probe would exceed the timing budget, if any."""
    for sub in cfg.per_seed().values():
        for name in sub.enabled_models():
            seconds = MINIATURE_PASSES * forward_flops(sub.models[name].model) / rate
            if seconds > TIMING_BUDGET_S:
                return f"{name} (~{seconds:.0f} s)"
    return None


@lru_cache(maxsize=None)
def probe_cost(model_cfg, data_cfg, options, masked=None) -> float:
    """Seconds of one core to probe a subject of this network (a masked composition of it, with
    ``masked`` its intervention spec): timed once per distinct network and options."""
    denoiser = as_denoiser(build_network(model_cfg)).eval().requires_grad_(False)
    if masked is not None:
        denoiser = masked_composition(denoiser, masked.radius_px, "null", masked.softness_px)
    return probe_seconds(denoiser, data_cfg, options)


def locality_stage(cfg: StudyConfig, p: Prediction) -> None:
    """Every subject not yet probed at its final checkpoint, its jobs placed like training's."""
    costs = []
    for sub in cfg.per_seed().values():
        for name, folder in sub.subject_dirs().items():
            ckpt = subject_checkpoint(folder)
            if ckpt is not None and probe_complete(layout.probe_dir(folder, cfg.locality, ckpt.name)):
                continue
            spec = sub.interventions.get(name)
            model = sub.models[spec.base if spec else name].model
            costs.append(probe_cost(model, cfg.data, cfg.locality, spec))
    p.seconds["locality"] = placed(cfg, costs)
    p.notes["locality"] = (f"{len(costs)} subjects to probe, a miniature probe of each network timed now on one core "
                           "(the feature-space part not counted)")


def emergence_stage(cfg: StudyConfig, p: Prediction, rate: float) -> None:
    """Every kept checkpoint of the followed runs not yet measured: its evaluation and its probe."""
    ev, options = cfg.emergence.eval_config(cfg.evaluate), cfg.emergence.locality_options(cfg.locality)
    passes = len(ev.counts) * ev.per_count * (2 * ev.steps - 1)
    costs = []
    for sub in cfg.per_seed().values():
        for name in cfg.emergence.models:
            if not sub.models[name].enabled:
                continue
            model, train = sub.models[name].model, sub.models[name].train
            folder = sub.run_dir(name)
            kept = subject_checkpoints(folder)
            done = sum((layout.eval_dir(folder, ev, c.name) / layout.EVAL_SUMMARY).is_file()
                       and probe_complete(layout.probe_dir(folder, options, c.name)) for c in kept)
            if images_trained(folder) < train.total_images:  # what it will keep: see the docstring
                kept = range(min(train.keep_checkpoints, math.ceil(train.total_images / train.checkpoint_every_images)))
            each = passes * forward_flops(model) / rate + probe_cost(model, cfg.data, options)
            costs += [each] * max(0, len(kept) - done)
    p.seconds["emergence"] = placed(cfg, costs)
    p.notes["emergence"] = f"{len(costs)} checkpoints to measure: evaluation at {list(ev.counts)} and the probe"


def placed(cfg: StudyConfig, core_seconds: list[float]) -> float:
    """Wall time of jobs of these one-core costs, ``cfg.jobs`` at a time on ``cores / jobs`` threads each."""
    per_job = max(1, cores() // cfg.jobs)
    return longest_first_makespan([c / per_job for c in core_seconds], min(cfg.jobs, cores()))


def predict(cfg: StudyConfig) -> Prediction:
    """The predicted wall time per stage of ``cfg`` on this machine (a few seconds per network)."""
    rate = matmul_gflops(512, 6, threads=1) * 1e9 * EFFICIENCY
    p = Prediction()
    data_stage(cfg, p)
    train_stage(cfg, p)
    evaluate_stage(cfg, p, rate)
    large = too_large_to_time(cfg, rate) if study_device(cfg) == "cpu" else None
    if study_device(cfg) != "cpu" or large:
        why = "on a GPU (timed on this CPU)" if large is None else f"timing a probe of {large} here takes too long"
        for stage in ("locality", "emergence"):
            p.notes[stage] = f"not predicted: {why}"
    else:
        locality_stage(cfg, p)
        if cfg.emergence.models:
            emergence_stage(cfg, p, rate)
        else:
            p.seconds["emergence"], p.notes["emergence"] = 0.0, "no models followed"
    p.notes["report"] = "not predicted"
    return p
