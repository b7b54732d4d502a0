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
from tqdm.auto import tqdm

from ..conditioning import Conditioning
from ..diffusion.loss import Rows
from ..errors import ConfigError, TrainingDiverged
from ..io import append_jsonl
from ..rng import step_generator
from .checkpoint import CheckpointState, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
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
    make_denoiser: Callable[[torch.nn.Module], Callable],
    loss_fn: Callable,
    source: BatchSource,
    cfg: TrainConfig,
    seed: int,
    config_hash: str,
    on_checkpoint: Callable[[torch.nn.Module, int], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``network`` until ``cfg.total_images``, resuming from the run's latest checkpoint.

    ``make_denoiser`` wraps a network into a Denoiser (EDM preconditioning); ``loss_fn``
    is called as ``loss_fn(denoiser, images, cond, generator, rows=rows) -> per-image loss [B]``, where
    ``rows`` says which rows of the global batch this process holds (``diffusion.loss.Rows``).
    ``on_checkpoint(ema_network, images_seen)`` runs after each checkpoint (sample grids).
    """
    run_dir = Path(run_dir)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision]
    # accelerate keeps one process-wide state: forget the previous run's precision (a study with
    # jobs = 1 trains its models one after another in one process), keep the process group.
    AcceleratorState._reset_state(reset_partial_state=False)
    accel = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed)
    # Channels-last weights make the convolutions run channels-last (measured on one CPU core:
    # +18 % images/s for the quick preset's exp1 network); the same math. Only for training:
    # forward-mode AD through GroupNorm fails on channels-last tensors in torch 2.13, and the
    # analysis tools build their networks afresh (contiguous) from the saved weights.
    network.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(
        network.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay
    )
    ema = EMA(network, cfg.ema_halflife_images)
    images_seen = step = 0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        meta = load_checkpoint(ckpt, network, ema.model, opt)
        images_seen, step = meta["images_seen"], meta["step"]
        accel.print(f"resuming {run_dir.name} from {ckpt.name} ({images_seen} images)")
    net, opt = accel.prepare(network, opt)
    ema.model.to(accel.device)
    denoiser = make_denoiser(net)
    log_path = run_dir / "metrics.jsonl"
    rank, world = accel.process_index, accel.num_processes
    per_process = cfg.batch_size // world
    if per_process * world != cfg.batch_size:
        raise ConfigError(f"train.batch_size={cfg.batch_size} is not divisible by the {world} processes")

    start = time.perf_counter()
    tick_start, tick_images, tick_losses = start, 0, []
    last_loss = float("nan")
    stopped_early = False
    bar = tqdm(total=cfg.total_images, initial=images_seen, unit="img", disable=not progress
               or not accel.is_main_process, desc=run_dir.name, dynamic_ncols=True)

    def checkpoint() -> None:
        if accel.is_main_process:
            save_checkpoint(run_dir, accel.unwrap_model(net), ema.model, opt,
                            CheckpointState(images_seen, step, config_hash), cfg.keep_checkpoints)
            if on_checkpoint is not None:
                on_checkpoint(ema.model, images_seen)
        accel.wait_for_everyone()

    while images_seen < cfg.total_images:
        images, cond = source.batch(step, cfg.batch_size)
        keep = torch.rand(cfg.batch_size, generator=step_generator(seed, step, "dropout")) >= cfg.label_dropout
        cond = cond.drop(keep)
        sl = slice(rank * per_process, (rank + 1) * per_process)
        images, cond = images[sl].to(accel.device), cond[sl].to(accel.device)
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, images_seen)
        rows = Rows(rank * per_process, cfg.batch_size)
        loss = loss_fn(denoiser, images, cond, step_generator(seed, step, "loss"), rows=rows).mean()
        global_loss = accel.reduce(loss.detach(), reduction="mean") if world > 1 else loss.detach()
        if not torch.isfinite(global_loss):  # every process sees the same value and stops together
            msg = (f"loss became {global_loss.item()} at step {step} ({images_seen} images); "
                   f"the last good checkpoint in {run_dir / 'checkpoints'} is kept")
            (run_dir / "log.txt").open("a").write(f"DIVERGED: {msg}\n")
            raise TrainingDiverged(msg)
        opt.zero_grad(set_to_none=True)
        accel.backward(loss)
        if cfg.grad_clip > 0:
            accel.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(accel.unwrap_model(net), cfg.batch_size)
        images_seen += cfg.batch_size
        step += 1
        last_loss = global_loss.item()
        tick_losses.append(last_loss)
        tick_images += cfg.batch_size
        bar.update(cfg.batch_size)

        crossed = lambda every: every > 0 and images_seen // every != (images_seen - cfg.batch_size) // every
        if crossed(cfg.log_every_images) or images_seen >= cfg.total_images:
            now = time.perf_counter()
            rec = {
                "images_seen": images_seen, "step": step,
                "loss": sum(tick_losses) / len(tick_losses),
                "images_per_s": tick_images / max(now - tick_start, 1e-9),
                "lr": opt.param_groups[0]["lr"], "wall_s": now - start,
                "peak_memory_mb": _peak_memory_mb(accel.device),
            }
            if accel.is_main_process:
                append_jsonl(log_path, rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", ips=f"{rec['images_per_s']:.0f}")
            tick_start, tick_images, tick_losses = now, 0, []
        budget_hit = cfg.time_budget_s > 0 and time.perf_counter() - start > cfg.time_budget_s
        if crossed(cfg.checkpoint_every_images) or images_seen >= cfg.total_images or budget_hit:
            checkpoint()
        if budget_hit and images_seen < cfg.total_images:
            stopped_early = True
            break
    bar.close()
    wall = time.perf_counter() - start
    return TrainResult(images_seen, step, last_loss, wall,
                       (images_seen and images_seen / max(wall, 1e-9)), stopped_early)


def training_time(records: list[dict]) -> tuple[float | None, float | None, float | None]:
    """(seconds spent training, mean images/s, last loss) from metrics.jsonl, summed over every
    tick so that a resumed run counts all its sessions (``wall_s`` restarts at each resume)."""
    seconds, images, previous = 0.0, 0, 0
    for r in records:
        done = r["images_seen"] - previous
        if done > 0 and r.get("images_per_s"):
            seconds += done / r["images_per_s"]
            images += done
        previous = r["images_seen"]
    if not images:
        return None, None, None
    return seconds, images / seconds, records[-1].get("loss")
