"""What a study will cost on this machine, said before it runs and checked after.

``locodiff study`` prints the prediction first and, at the end, the prediction beside the measured
wall time of each stage (``--dry-run`` prints it and stops). The model is simple and stated:

- a training image costs 3 forward passes (forward and backward) of the network's counted FLOPs,
  times the locality penalty's extra passes, at ``EFFICIENCY`` of this machine's own fp32 matmul
  rate on one core (measured now, 0.2 s; ``benchmarks/train.py`` measured 35-48% for the quick
  networks); the detector likewise; jobs run ``cfg.jobs`` at a time, longest first, on
  ``cores / jobs`` threads each (threads assumed to scale perfectly);
- an evaluation sample costs ``2 steps - 1`` forward passes (Heun; a masked composition k + 1 times
  that), every core busy;
- data are rendered at the rate measured now on a small batch (torch renderer; Blender is not
  predicted);
- locality, emergence and report are not predicted; work already done (cached data, trained
  runs, a trained detector) costs nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import layout
from .evaluate.heatmap import HeatmapNet
from .hardware import cores, matmul_gflops
from .intervene.subject import subject_checkpoint
from .models.registry import forward_flops
from .scenes.dataset import SceneSource
from .study import images_trained, needs_detector_training, seeded_models
from .study_config import StudyConfig

EFFICIENCY = 0.4  # share of the one-core matmul rate a training step reaches (see the module doc)


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


def longest_first_makespan(costs: list[float], workers: int) -> float:
    """Wall time of jobs of the given costs run ``workers`` at a time, longest first."""
    loads = [0.0] * max(1, workers)
    for cost in sorted(costs, reverse=True):
        loads[loads.index(min(loads))] += cost
    return max(loads)


def detector_flops(width: int, side: int = 32) -> int:
    with torch.random.fork_rng(devices=[]), torch.no_grad(), FlopCounterMode(display=False) as counter:
        HeatmapNet(width)(torch.zeros(1, 3, side, side))
    return int(counter.get_total_flops())


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


def train_stage(cfg: StudyConfig, p: Prediction, rate: float) -> None:
    """Core-seconds per job (models not yet trained, and the detector), then longest first."""
    costs = {}
    for key, (sub, name) in seeded_models(cfg).items():
        spec = sub.models[name]
        left = spec.train.total_images - images_trained(layout.run_dir(sub, name))
        if left > 0:
            costs[key] = left * 3 * forward_flops(spec.model) * spec.train.locality.cost_factor() / rate
    if cfg.evaluate.detector == "heatmap" and needs_detector_training(cfg):
        heat = cfg.evaluate.heatmap
        costs["detector"] = heat.train_images * 3 * detector_flops(heat.width) / rate
    per_job = max(1, cores() // cfg.jobs)
    p.seconds["train"] = longest_first_makespan([c / per_job for c in costs.values()], min(cfg.jobs, cores()))
    p.notes["train"] = (f"{len(costs)} jobs, {sum(costs.values()) / 60:.0f} core-min at {rate / 1e9:.0f} GFLOP/s "
                        f"({EFFICIENCY:.0%} of one core's matmul), {cfg.jobs} at a time")


def evaluate_stage(cfg: StudyConfig, p: Prediction, rate: float) -> None:
    """Sampling of every model, and of every masked composition: one pass of its base model per
    conditioner and one without (k + 1 passes at k objects)."""
    ev = cfg.evaluate
    passes = len(ev.counts) * ev.per_count * (2 * ev.steps - 1)
    per_k = sum(k + 1 for k in ev.counts) / len(ev.counts)
    flops = 0.0
    for sub in cfg.per_seed().values():
        flops += sum(forward_flops(sub.models[name].model) for name in sub.enabled_models()
                     if not evaluated(layout.run_dir(sub, name), ev))
        flops += sum(per_k * forward_flops(sub.models[spec.base].model) for name, spec in sub.enabled_interventions().items()
                     if not evaluated(layout.intervention_dir(sub, name), ev))
    p.seconds["evaluate"] = passes * flops / (rate * cores())
    p.notes["evaluate"] = (f"{passes} forward passes per model ({len(ev.counts)} counts x {ev.per_count} x "
                           f"{2 * ev.steps - 1}), masked compositions {per_k:.0f}x; finished evaluations and the detector's "
                           "scoring not counted")


def evaluated(folder, ev) -> bool:
    """Whether ``folder``'s latest checkpoint has a finished evaluation with ``ev``."""
    ckpt = subject_checkpoint(folder)
    return ckpt is not None and (layout.eval_dir(folder, ev, ckpt.name) / layout.EVAL_SUMMARY).is_file()


def predict(cfg: StudyConfig) -> Prediction:
    """The predicted wall time per stage of ``cfg`` on this machine (takes a second or two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rate = matmul_gflops(512, 6) * 1e9 * EFFICIENCY
    finally:
        torch.set_num_threads(threads)
    p = Prediction()
    data_stage(cfg, p)
    train_stage(cfg, p, rate)
    evaluate_stage(cfg, p, rate)
    for stage in ("locality", "emergence", "report"):
        p.notes[stage] = "not predicted"
    return p
