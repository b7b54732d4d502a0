"""The training loop: one function, the same code on a CPU, one GPU or several (accelerate).

Reproducibility and resume: every random draw of step ``s`` (which images, which label,
label dropout, noise level, noise) comes from generators seeded by ``(seed, s)``, so the data
order is a pure function of the step. Resuming from a checkpoint therefore continues exactly
as the uninterrupted run would have — bit-identical weights on the same machine.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from ..conditioning import Conditioning
from ..diffusion.loss import Rows
from ..errors import ConfigError, TrainingDiverged
from ..io import append_jsonl, read_jsonl
from ..layout import TRAIN_METRICS, run_identity
from ..models import as_denoiser
from ..progress import progress_bar
from ..rng import step_generator
from ..tracking import Tracker
from ..run_record import training_time
from ..checkpoints import CheckpointState, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig, TrainConfig
from .ema import EMA


class BatchSource(Protocol):
    """Training data as a pure function of the step: ``batch(step, size) -> (images, cond)``."""

    def batch(self, step: int, size: int) -> tuple[torch.Tensor, Conditioning]: ...


@dataclass
class TrainResult:
    images_seen: int
    steps: int
    final_loss: float
    wall_s: float
    images_per_s: float
    stopped_early: bool
    already_finished: bool = False  # nothing to train: the numbers are the saved record's


def finished_result(run_dir: Path, images_seen: int, step: int) -> TrainResult:
    """A run that was already complete: its training time, rate and last loss from metrics.jsonl
    (over every session), not from this process, which trained nothing."""
    seconds, rate, loss = training_time(read_jsonl(Path(run_dir) / TRAIN_METRICS, quiet=True))
    return TrainResult(images_seen, step, float("nan") if loss is None else loss, seconds or 0.0, rate or 0.0,
                       False, already_finished=True)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _lr_at(cfg: TrainConfig, images_seen: int) -> float:
    if cfg.warmup_images <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (images_seen + cfg.batch_size) / cfg.warmup_images)


def train_loop(
    run_dir: Path,
    network: torch.nn.Module,
    loss_fn: Callable,
    source: BatchSource,
    run: RunConfig,
    on_checkpoint: Callable[[torch.nn.Module, int], None] | None = None,
    progress: bool = True,
    tracker: Tracker | None = None,
) -> TrainResult:
    """Train ``network`` (a ``models.Network``) for ``run`` until ``run.train.total_images``,
    resuming from the run's latest checkpoint.

    ``loss_fn`` is called as ``loss_fn(denoiser, images, cond, generator, rows=rows) -> per-image
    loss [B]``, where ``rows`` says which rows of the global batch this process holds
    (``diffusion.loss.Rows``). ``on_checkpoint(ema_network, images_seen)`` runs after each
    checkpoint (sample grids). Each ``metrics.jsonl`` line also goes to ``tracker``.
    """
    run_dir, cfg = Path(run_dir), run.train
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        state = _Run.start(run_dir, network, cfg)
        return state.train(loss_fn, source, run.seed, run_identity(run), on_checkpoint, progress, tracker)
    finally:
        torch.set_num_threads(threads)  # the caller's process keeps its own setting


@dataclass
class _Run:
    """The state of one training session: accelerator, wrapped network, optimizer, EMA, counters."""

    run_dir: Path
    cfg: TrainConfig
    accel: Accelerator
    net: torch.nn.Module
    denoiser: Callable
    opt: torch.optim.Optimizer
    ema: EMA
    images_seen: int = 0
    step: int = 0

    @classmethod
    def start(cls, run_dir: Path, network: torch.nn.Module, cfg: TrainConfig) -> "_Run":
        # accelerate keeps one process-wide state: forget the previous run's precision (a study with
        # jobs = 1 trains its models one after another in one process), keep the process group.
        AcceleratorState._reset_state(reset_partial_state=False)
        mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision]
        accel = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed)
        if cfg.batch_size % accel.num_processes:
            raise ConfigError(f"train.batch_size={cfg.batch_size} is not divisible by the {accel.num_processes} processes")
        # Channels-last weights make the convolutions run channels-last (measured on one CPU core:
        # +18 % images/s for the quick preset's exp1 network); the same math. Only for training:
        # forward-mode AD through GroupNorm fails on channels-last tensors in torch 2.13, and the
        # analysis tools build their networks afresh (contiguous) from the saved weights.
        network.to(memory_format=torch.channels_last)
        # Not the fused AdamW kernel, though it is faster (one AVX2 Zen 3 core: the quick exp1
        # network's optimizer step 7.8 -> 1.5 ms, +2.6 % images/s): in torch 2.13 on CPU it pairs a
        # channels-last weight with its moments by memory order, and moments loaded from a checkpoint
        # are contiguous, so a resumed run took wrong steps (tests/test_train.py's resume test caught
        # it; one step at lr 0.1 moved a weight by 0.17 from the right value).
        opt = torch.optim.AdamW(network.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        ema = EMA(network, cfg.ema_halflife_images)
        images_seen = step = 0
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None:
            meta = load_checkpoint(ckpt, network, ema.model, opt)
            images_seen, step = meta["images_seen"], meta["step"]
            accel.print(f"resuming {run_dir.name} from {ckpt.name} ({images_seen} images)")
        net, opt = accel.prepare(network, opt)
        ema.model.to(accel.device)
        return cls(run_dir, cfg, accel, net, as_denoiser(net), opt, ema, images_seen, step)

    def train(self, loss_fn: Callable, source: BatchSource, seed: int, config_hash: str,
              on_checkpoint: Callable | None, progress: bool, tracker: Tracker | None) -> TrainResult:
        cfg, accel = self.cfg, self.accel
        if self.images_seen >= cfg.total_images:
            return finished_result(self.run_dir, self.images_seen, self.step)
        ticks = _Ticks(self.run_dir / TRAIN_METRICS, accel, tracker)
        last_loss, stopped_early, start = float("nan"), False, self.images_seen
        bar = progress_bar(cfg.total_images, self.run_dir.name, "img", enabled=progress and accel.is_main_process,
                           initial=self.images_seen)
        while self.images_seen < cfg.total_images:
            last_loss = self.optimizer_step(loss_fn, source, seed, ticks)
            bar.update(cfg.batch_size)
            crossed = lambda every: every > 0 and self.images_seen // every != (self.images_seen - cfg.batch_size) // every
            done = self.images_seen >= cfg.total_images
            if crossed(cfg.log_every_images) or done:
                rec = ticks.record(self.images_seen, self.step, self.opt.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{rec['loss']:.4f}", ips=f"{rec['images_per_s']:.0f}")
            budget_hit = cfg.time_budget_s > 0 and ticks.elapsed() > cfg.time_budget_s
            if crossed(cfg.checkpoint_every_images) or done or budget_hit:
                self.checkpoint(config_hash, on_checkpoint)
            if budget_hit and not done:
                stopped_early = True
                break
        bar.close()
        wall = ticks.elapsed()
        return TrainResult(self.images_seen, self.step, last_loss, wall,
                           (self.images_seen - start) / max(wall, 1e-9), stopped_early)

    def optimizer_step(self, loss_fn: Callable, source: BatchSource, seed: int, ticks: "_Ticks") -> float:
        """One step on this process's rows of the global batch; returns the mean loss over all
        processes (and adds it to ``ticks``, with each image's loss by its noise level)."""
        cfg, accel, step = self.cfg, self.accel, self.step
        per_process = cfg.batch_size // accel.num_processes
        images, cond = source.batch(step, cfg.batch_size)
        keep = torch.rand(cfg.batch_size, generator=step_generator(seed, step, "dropout")) >= cfg.label_dropout
        cond = cond.drop(keep)
        if cfg.object_dropout > 0:
            cond = cond.keep_slots(torch.rand(cond.mask.shape, generator=step_generator(seed, step, "objects"))
                                   >= cfg.object_dropout)
        rows = Rows(accel.process_index * per_process, cfg.batch_size)
        mine = slice(rows.start, rows.start + per_process)
        images, cond = images[mine].to(accel.device), cond[mine].to(accel.device)
        for group in self.opt.param_groups:
            group["lr"] = _lr_at(cfg, self.images_seen)
        tap = _NoiseLevelTap(self.denoiser)
        per_image = loss_fn(tap, images, cond, step_generator(seed, step, "loss"), rows=rows,
                            images_seen=self.images_seen)
        loss = per_image.mean()
        global_loss = accel.reduce(loss.detach(), reduction="mean") if accel.num_processes > 1 else loss.detach()
        if not torch.isfinite(global_loss):  # every process sees the same value and stops together
            msg = (f"loss became {global_loss.item()} at step {step} ({self.images_seen} images); "
                   f"the last good checkpoint in {self.run_dir / 'checkpoints'} is kept")
            (self.run_dir / "log.txt").open("a").write(f"DIVERGED: {msg}\n")
            raise TrainingDiverged(msg)
        self.opt.zero_grad(set_to_none=True)
        accel.backward(loss)
        if cfg.grad_clip > 0:
            accel.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.opt.step()
        self.ema.update(accel.unwrap_model(self.net), cfg.batch_size)
        self.images_seen += cfg.batch_size
        self.step += 1
        value = global_loss.item()
        ticks.add(value, cfg.batch_size, per_image.detach(), tap.sigma)
        return value

    def checkpoint(self, config_hash: str, on_checkpoint: Callable | None) -> None:
        if self.accel.is_main_process:
            save_checkpoint(self.run_dir, self.accel.unwrap_model(self.net), self.ema.model, self.opt,
                            CheckpointState(self.images_seen, self.step, config_hash), self.cfg.keep_checkpoints)
            if on_checkpoint is not None:
                on_checkpoint(self.ema.model, self.images_seen)
        self.accel.wait_for_everyone()


class _NoiseLevelTap:
    """Passes calls on to a Denoiser and keeps the noise levels of the first: the loss's own
    batch (a penalty's further calls come after), so each image's loss can be binned by sigma."""

    def __init__(self, denoiser: Callable) -> None:
        self.denoiser, self.sigma = denoiser, None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if self.sigma is None:
            self.sigma = sigma.detach()
        return self.denoiser(x, sigma, cond)


# Noise-level bins for the loss: fine detail, objects' edges, layout, pure noise.
SIGMA_EDGES = (0.1, 0.5, 2.0)
SIGMA_BINS = ("sigma<0.1", "sigma 0.1-0.5", "sigma 0.5-2", "sigma>=2")


class _Ticks:
    """Losses and timing since the last ``metrics.jsonl`` line, and that line."""

    def __init__(self, path: Path, accel: Accelerator, tracker: Tracker | None = None) -> None:
        self.path, self.accel, self.tracker = path, accel, tracker
        self.start = self.tick_start = time.perf_counter()
        self.images, self.losses = 0, []
        self.by_sigma = torch.zeros(2, len(SIGMA_BINS), dtype=torch.float64)  # sums, counts

    def add(self, loss: float, images: int, per_image: torch.Tensor | None = None,
            sigma: torch.Tensor | None = None) -> None:
        self.losses.append(loss)
        self.images += images
        if per_image is not None and sigma is not None and sigma.shape == per_image.shape:
            bins = torch.bucketize(sigma.float().cpu(), torch.tensor(SIGMA_EDGES))
            self.by_sigma[0].index_add_(0, bins, per_image.double().cpu())
            self.by_sigma[1].index_add_(0, bins, torch.ones_like(bins, dtype=torch.float64))

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def record(self, images_seen: int, step: int, lr: float) -> dict:
        now = time.perf_counter()
        rec = {"images_seen": images_seen, "step": step, "loss": sum(self.losses) / len(self.losses),
               "images_per_s": self.images / max(now - self.tick_start, 1e-9), "lr": lr,
               "wall_s": now - self.start, "peak_memory_mb": _peak_memory_mb(self.accel.device),
               "loss_by_sigma": self._loss_by_sigma()}
        if self.accel.is_main_process:
            append_jsonl(self.path, rec)
            if self.tracker is not None:
                self.tracker.log({"train/loss": rec["loss"], "train/images_per_s": rec["images_per_s"], "train/lr": lr,
                                  **{f"train/loss {k}": v for k, v in rec["loss_by_sigma"].items()}}, images_seen)
        self.tick_start, self.images, self.losses = now, 0, []
        self.by_sigma.zero_()
        return rec

    def _loss_by_sigma(self) -> dict[str, float]:
        """Mean loss per noise-level bin over every process's images since the last line."""
        totals = self.by_sigma
        if self.accel.num_processes > 1:
            totals = self.accel.reduce(totals.to(self.accel.device), reduction="sum").cpu()
        return {name: float(total / n) for name, total, n in zip(SIGMA_BINS, totals[0], totals[1]) if n > 0}
