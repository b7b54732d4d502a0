"""One plan for a study: every job of every stage, with its folder, whether it is done and its
cost on this machine. ``run_study`` plans each stage as it starts (so it sees what the stages
before it made) and runs the unfinished jobs, longest first; ``predict`` plans every stage up front
and sums the costs. Nothing else computes costs. The cost model, stated:

- a training image costs what one training step per image of its network takes on one core,
  measured now (a second or so per network), with the locality penalty's extra passes from where
  it starts; the detector likewise; jobs run ``cfg.jobs`` at a time, longest first, on
  ``cores / jobs`` threads each (threads assumed to scale perfectly; two jobs side by side each
  run ~15% slower than one alone, which this does not count);
- an evaluation sample costs ``2 steps - 1`` forward passes (Heun; a masked composition k + 1
  times that) of the network's counted FLOPs at ``EFFICIENCY`` of this machine's fp32 matmul rate
  on one core (measured now, 0.2 s);
- data are rendered at the rate measured now on a small batch (torch renderer; Blender is not
  predicted);
- a locality probe costs what a miniature of it takes on one core now, run on a network built
  afresh from the subject's config (``probe_cost``: a few seconds per network, timed once per
  process; the feature-space part is not counted);
- an emergence checkpoint costs its evaluation (at the emergence counts) and its probe; a run not
  trained yet will keep ``min(keep_checkpoints, total / checkpoint_every)`` checkpoints;
- the report is not predicted (seconds); work already done costs nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from .. import layout
from ..checkpoints import latest_checkpoint, read_state
from ..evaluate.heatmap import detector_key, training_seconds_per_image as detector_seconds_per_image
from ..hardware import cores, matmul_gflops
from ..intervene.masked import masked_composition
from ..io import read_jsonl
from ..models import build_network
from ..models.registry import as_denoiser, forward_flops, training_seconds_per_image
from ..scenes.dataset import SceneSource
from .config import StudyConfig
from .jobs import Job, last_record, longest_first_makespan
from .probe import probe_complete
from .probe_cost import probe_seconds
from .subjects import subject_checkpoint, subject_checkpoints
from .workers import CheckpointWork, detector_worker, emergence_worker, eval_worker, locality_worker, train_worker

STAGES = ("data", "train", "evaluate", "locality", "emergence", "report")
# Share of the one-core matmul rate a sampler pass reaches: quick's evaluation predicted 107 s and
# took 117 s on an AVX2 Zen 3 (a training step reaches 49-51% there: benchmarks/train.py).
EFFICIENCY = 0.4
# Timing a network for the schedule: at most this many images per step, and at most this many
# FLOPs (a GPU preset's batch would take minutes on a laptop, and may not fit its memory).
TIMED_BATCH, TIMED_FLOPS = 32, 20e9
# A miniature probe does about a thousand one-image forward passes' worth of work (~2 s for quick's
# exp1 on an AVX2 Zen 3 core); where one of a study's networks would take longer than the budget
# to time that way (the paper preset's), the probes are not predicted.
MINIATURE_PASSES, TIMING_BUDGET_S = 1000, 30.0


@dataclass
class PlannedJob:
    key: str  # "exp1", "exp2@s1" under several seeds, "detector", "exp1@32768" (a checkpoint)
    folder: Path  # where its result goes (for a subject: its run or intervention folder)
    done: bool = False
    cost: float = 0.0  # seconds of one core of this machine (0 where the plan was not timed)
    job: Job | None = None  # what runs it; None when done, or not runnable yet (its model untrained)
    note: str = ""  # said of it when done ("trained already (exp1-…)")


@dataclass
class StagePlan:
    stage: str
    jobs: list[PlannedJob] = field(default_factory=list)
    note: str = ""  # how its cost is found, or why it is not predicted
    wall: float | None = None  # predicted wall seconds (None: not predicted)

    def todo(self) -> list[PlannedJob]:
        return [j for j in self.jobs if not j.done]

    def runnable(self) -> dict[str, Job]:
        return {j.key: j.job for j in self.todo() if j.job is not None}


# ----- what a unit of work costs here ------------------------------------------------------------

def study_device(cfg: StudyConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def worker_threads(cfg: StudyConfig) -> int:
    return torch.get_num_threads() if cfg.jobs == 1 else 1


def placed(cfg: StudyConfig, core_seconds: list[float]) -> float:
    """Wall time of jobs of these one-core costs, ``cfg.jobs`` at a time on ``cores / jobs`` threads each."""
    per_job = max(1, cores() // cfg.jobs)
    return longest_first_makespan([c / per_job for c in core_seconds], min(cfg.jobs, cores()))


@lru_cache(maxsize=1)
def sampler_rate() -> float:
    """FLOP/s a sampler pass reaches on one core: ``EFFICIENCY`` of the measured matmul rate."""
    return matmul_gflops(512, 6, threads=1) * 1e9 * EFFICIENCY


def render_rate(cfg: StudyConfig, images: int = 64) -> float:
    source = SceneSource(cfg.data)
    counts = torch.tensor(cfg.data.train_counts).repeat(images)[:images]
    start = time.perf_counter()
    source.render(counts, torch.Generator().manual_seed(0), cfg.data.slots("train"))
    return images / (time.perf_counter() - start)


def training_cost(cfg: StudyConfig, name: str, done: int) -> float:
    """One-core seconds to train model ``name`` of ``cfg`` from ``done`` images to its total."""
    spec = cfg.models[name]
    batch = max(1, min(spec.train.batch_size, TIMED_BATCH, int(TIMED_FLOPS // (3 * forward_flops(spec.model)))))
    return training_seconds_per_image(spec.model, batch) * spec.train.locality.images_cost(done, spec.train.total_images)


def sampling_flops(cfg: StudyConfig, name: str, counts) -> float:
    """FLOPs of one sampler pass of subject ``name`` at the object ``counts`` (a masked composition
    runs its base model k + 1 times at k objects)."""
    if name in cfg.models:
        return forward_flops(cfg.models[name].model)
    per_k = sum(k + 1 for k in counts) / max(1, len(counts))
    return per_k * forward_flops(cfg.models[cfg.interventions[name].base].model)


@lru_cache(maxsize=None)
def probe_cost(model_cfg, data_cfg, options, masked=None) -> float:
    """One-core seconds to probe a subject of this network (a masked composition of it, with
    ``masked`` its intervention spec): timed once per distinct network and options."""
    denoiser = as_denoiser(build_network(model_cfg)).eval().requires_grad_(False)
    if masked is not None:
        denoiser = masked_composition(denoiser, masked.radius_px, "null", masked.softness_px)
    return probe_seconds(denoiser, data_cfg, options)


def too_large_to_time(cfg: StudyConfig, rate: float) -> str | None:
    """The first of ``cfg``'s networks whose miniature probe would exceed the timing budget, if any."""
    for sub in cfg.per_seed().values():
        for name in sub.enabled_models():
            seconds = MINIATURE_PASSES * forward_flops(sub.models[name].model) / rate
            if seconds > TIMING_BUDGET_S:
                return f"{name} (~{seconds:.0f} s)"
    return None


def probes_untimed(cfg: StudyConfig) -> str | None:
    """Why the probes' costs cannot be timed here, if they cannot."""
    if study_device(cfg) != "cpu":
        return "on a GPU (timed on this CPU)"
    large = too_large_to_time(cfg, sampler_rate())
    return None if large is None else f"timing a probe of {large} here takes too long"


# ----- the stages' jobs --------------------------------------------------------------------------

def images_trained(folder: Path) -> int:
    ckpt = latest_checkpoint(folder)
    return read_state(ckpt)["images_seen"] if ckpt is not None else 0


def seeded_models(cfg: StudyConfig) -> dict[str, tuple[StudyConfig, str]]:
    """Every model the study trains, under every seed: ``seeded_name`` -> (that seed's config, name)."""
    return {cfg.seeded_name(name, seed): (sub, name)
            for seed, sub in cfg.per_seed().items() for name in sub.enabled_models()}


def _loss_detail(metrics: Path) -> str:
    records = read_jsonl(metrics, quiet=True) if metrics.exists() else []
    return f"loss {records[-1]['loss']:.4f}" if records else ""


def _lines(path: Path) -> int:
    return sum(1 for _ in open(path)) if path.exists() else 0


def plan_data(cfg: StudyConfig, timed: bool = True) -> StagePlan:
    """One job, run in the study's own process with every core (rendering is batched)."""
    root = layout.dataset_root(cfg.data, cfg.out_dir)
    plan = StagePlan("data", [PlannedJob("data", root, done=(root / "manifest.json").is_file())])
    if plan.jobs[0].done:
        plan.wall, plan.note = 0.0, "cached (shards are checked when the stage runs)"
    elif cfg.data.renderer != "torch" or cfg.data.source != "render":
        plan.note = "not predicted for Blender renders or an imported folder"
    elif timed:
        images = cfg.data.split_size("train") + cfg.data.split_size("test")
        rate = render_rate(cfg)
        plan.wall, plan.note = images / rate, f"{images} images at {rate:.0f} img/s measured now"
    return plan


def detector_job(cfg: StudyConfig, threads: int, timed: bool = True) -> PlannedJob:
    folder = layout.detector_dir(cfg.detector_cache(), detector_key(cfg.data, cfg.evaluate.heatmap))
    heat = cfg.evaluate.heatmap
    done = cfg.evaluate.detector != "heatmap" or (folder / "detector.safetensors").is_file()
    cost = heat.train_images * detector_seconds_per_image(heat) if timed and not done else 0.0
    job = Job(detector_worker, (cfg.data, cfg.evaluate, str(cfg.detector_cache()), study_device(cfg), threads),
              heat.train_images, lambda: last_record(folder / "training_log.jsonl", "images_seen"), cost=cost)
    return PlannedJob("detector", folder, done, cost, None if done else job, "trained already")


def plan_train(cfg: StudyConfig, timed: bool = True) -> StagePlan:
    """Every enabled model under every seed, and the evaluation's learned detector."""
    timed = timed and study_device(cfg) == "cpu"
    threads = worker_threads(cfg)
    plan = StagePlan("train")
    for key, (sub, name) in seeded_models(cfg).items():
        folder, total = sub.run_dir(name), sub.models[name].train.total_images
        done = images_trained(folder)
        planned = PlannedJob(key, folder, done >= total, note=f"trained already ({folder.name})")
        if not planned.done:
            planned.cost = training_cost(sub, name, done) if timed else 0.0
            planned.job = Job(train_worker, (sub.run_config(name), str(folder),
                                             str(layout.dataset_root(cfg.data, cfg.out_dir)), threads), total,
                              lambda f=folder: last_record(f / layout.TRAIN_METRICS, "images_seen"),
                              lambda f=folder: _loss_detail(f / layout.TRAIN_METRICS), cost=planned.cost)
        plan.jobs.append(planned)
    plan.jobs.append(detector_job(cfg, threads, timed))
    if study_device(cfg) != "cpu":
        plan.note = "not predicted on a GPU (step times are measured on this CPU)"
    elif timed:
        costs = [j.cost for j in plan.todo()]
        plan.wall = placed(cfg, costs)
        plan.note = (f"{len(costs)} jobs, {sum(costs) / 60:.0f} core-min at training step times measured "
                     f"now on one core, {cfg.jobs} at a time")
    return plan


def plan_evaluate(cfg: StudyConfig, timed: bool = True) -> StagePlan:
    """Every subject (model or intervention, every seed) at its latest checkpoint."""
    ev = cfg.evaluate
    passes = len(ev.counts) * ev.per_count * (2 * ev.steps - 1)
    plan = StagePlan("evaluate")
    for seed, sub in cfg.per_seed().items():
        for name, folder in sub.subject_dirs().items():
            ckpt = subject_checkpoint(folder)
            out = layout.eval_dir(folder, ev, ckpt.name) if ckpt is not None else None
            planned = PlannedJob(cfg.seeded_name(name, seed), folder,
                                 out is not None and (out / layout.EVAL_SUMMARY).is_file(),
                                 note=f"evaluated already ({out.name if out else ''})")
            if timed and not planned.done:
                planned.cost = passes * sampling_flops(sub, name, ev.counts) / sampler_rate()
            if out is not None and not planned.done:
                planned.job = Job(eval_worker, (str(folder), ev, str(cfg.detector_cache()), study_device(cfg),
                                                worker_threads(cfg)),
                                  ev.per_count * len(ev.counts), lambda o=out: _lines(o / layout.EVAL_RECORDS),
                                  cost=planned.cost)
            plan.jobs.append(planned)
    if timed:  # sampling keeps every core busy: one-core seconds over the cores
        plan.wall = sum(j.cost for j in plan.todo()) / cores()
        plan.note = (f"{passes} forward passes per model ({len(ev.counts)} counts x {ev.per_count} x "
                     f"{2 * ev.steps - 1}) at {sampler_rate() / 1e9:.0f} GFLOP/s ({EFFICIENCY:.0%} of one core's "
                     "matmul); finished evaluations and the detector's scoring not counted")
    return plan


def plan_locality(cfg: StudyConfig, timed: bool = True) -> StagePlan:
    """Every subject probed at its latest checkpoint."""
    untimed = probes_untimed(cfg) if timed else "not timed"
    plan = StagePlan("locality")
    for seed, sub in cfg.per_seed().items():
        for name, folder in sub.subject_dirs().items():
            ckpt = subject_checkpoint(folder)
            out = layout.probe_dir(folder, cfg.locality, ckpt.name) if ckpt is not None else None
            planned = PlannedJob(cfg.seeded_name(name, seed), folder, out is not None and probe_complete(out),
                                 note=f"probed already ({out.name if out else ''})")
            if untimed is None and not planned.done:
                spec = sub.interventions.get(name)
                planned.cost = probe_cost(sub.models[spec.base if spec else name].model, cfg.data, cfg.locality, spec)
            if out is not None and not planned.done:
                planned.job = Job(locality_worker, (str(folder), str(layout.dataset_root(cfg.data, cfg.out_dir)),
                                                    cfg.locality, seed, worker_threads(cfg)), cost=planned.cost)
            plan.jobs.append(planned)
    if untimed is None:
        plan.wall = placed(cfg, [j.cost for j in plan.todo()])
        plan.note = (f"{len(plan.todo())} subjects to probe, a miniature probe of each network timed now on one "
                     "core (the feature-space part not counted)")
    else:
        plan.note = f"not predicted: {untimed}"
    return plan


def _followed_checkpoints(cfg: StudyConfig, sub: StudyConfig, name: str, key: str, seed: int) -> list[PlannedJob]:
    """The emergence jobs of one followed run: each kept checkpoint, and those it will keep."""
    ev, options = cfg.emergence.eval_config(cfg.evaluate), cfg.emergence.locality_options(cfg.locality)
    folder, train = sub.run_dir(name), sub.models[name].train
    jobs = []
    for ckpt in subject_checkpoints(folder):
        done = ((layout.eval_dir(folder, ev, ckpt.name) / layout.EVAL_SUMMARY).is_file()
                and probe_complete(layout.probe_dir(folder, options, ckpt.name)))
        work = CheckpointWork(str(folder), str(ckpt), str(layout.dataset_root(cfg.data, cfg.out_dir)), ev, options,
                              seed, str(cfg.detector_cache()), study_device(cfg))
        jobs.append(PlannedJob(f"{key}@{read_state(ckpt)['images_seen']}", folder, done,
                               job=None if done else Job(emergence_worker, (work, worker_threads(cfg)))))
    if images_trained(folder) < train.total_images:  # what it will keep: see the module doc
        will_keep = min(train.keep_checkpoints, math.ceil(train.total_images / train.checkpoint_every_images))
        jobs += [PlannedJob(f"{key}@future{i}", folder) for i in range(max(0, will_keep - len(jobs)))]
    return jobs


def plan_emergence(cfg: StudyConfig, timed: bool = True) -> StagePlan:
    """Every kept checkpoint of ``emergence.models`` under every seed: evaluation and probe."""
    ev, options = cfg.emergence.eval_config(cfg.evaluate), cfg.emergence.locality_options(cfg.locality)
    passes = len(ev.counts) * ev.per_count * (2 * ev.steps - 1)
    untimed = probes_untimed(cfg) if timed else "not timed"
    plan = StagePlan("emergence")
    for seed, sub in cfg.per_seed().items():
        for name in (n for n in cfg.emergence.models if sub.models[n].enabled):
            jobs = _followed_checkpoints(cfg, sub, name, cfg.seeded_name(name, seed), seed)
            if untimed is None:
                model = sub.models[name].model
                each = passes * forward_flops(model) / sampler_rate() + probe_cost(model, cfg.data, options)
                for j in jobs:
                    j.cost = 0.0 if j.done else each
            plan.jobs += jobs
    if untimed is not None:
        plan.note = f"not predicted: {untimed}"
    elif not cfg.emergence.models:
        plan.wall, plan.note = 0.0, "no models followed"
    else:
        plan.wall = placed(cfg, [j.cost for j in plan.todo()])
        plan.note = f"{len(plan.todo())} checkpoints to measure: evaluation at {list(ev.counts)} and the probe"
    return plan


PLANNERS = {"data": plan_data, "train": plan_train, "evaluate": plan_evaluate, "locality": plan_locality,
            "emergence": plan_emergence}


def plan_stage(cfg: StudyConfig, stage: str, timed: bool = True) -> StagePlan:
    """The jobs of ``stage`` as the study stands now; ``timed``: with their costs on this machine
    (seconds per network to measure, cached in this process), else with none."""
    if stage == "report":
        return StagePlan("report", note="not predicted")
    return PLANNERS[stage](cfg, timed)
