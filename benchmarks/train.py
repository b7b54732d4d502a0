"""Training throughput of the denoiser family, in images per second, every ratio from one run.

    python benchmarks/train.py                          # defaults: batch 64, 2 threads, < 2 min
    python benchmarks/train.py --sizes 32 --dtypes bf16 --steps 4
    python benchmarks/train.py --only-preset --profile   # the quick networks: rates and profiles

One training step = EDM loss (log-normal sigma, preconditioned target) + backward + AdamW step,
on random images with random conditionings of 1-3 locations.

1. locodiff's ``cross_attention`` UNet versus a diffusers ``UNet2DConditionModel`` of matched
   parameter count (within 15 %; widths searched automatically), built from a config dict (no
   download) and fed the same conditioning tokens (the same token encoder, null token included)
   as ``encoder_hidden_states`` with the set mask as ``encoder_attention_mask``. The two are
   timed in alternating rounds so that load from other processes hits both alike; the ratio of
   the medians is printed (target: locodiff >= 1.0x).
2. Each locodiff architecture at each image size, fp32 and bf16 autocast.
3. The networks of a preset (``--preset quick`` by default), exactly as the study builds them
   (channels-last, as training runs them), at
   the preset's batch size on one thread (the study trains one model per core): images/s,
   FLOPs per image (forward + backward, ``torch.utils.flop_counter``), GFLOP/s, and that as a
   fraction of this core's fp32 matrix-multiply rate measured in the same run (a practical
   peak; the AVX2 FMA peak of a ~3 GHz Zen 3 core is ~96 GFLOP/s). Last, the preset's
   training time predicted from these rates, so a user can size their own run.

4. With ``--profile``: where each of those networks' training step spends its time (torch.profiler
   self time grouped: convolutions, matrix multiplies, GroupNorm/LayerNorm, softmax, activations,
   optimizer, layout copies, other). ``--only-preset`` skips parts 1 and 2.

On a shared machine absolute numbers are noisy; the ratios measured in the same run are what to
compare. When the machine is oversubscribed (load above the core count), OpenMP threads that
spin-wait for each other make multi-thread timings erratic (several-fold swings): use
``--threads 1`` or ``OMP_WAIT_POLICY=PASSIVE``; the script warns when it sees such a load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from locodiff.conditioning import Conditioning  # noqa: E402
from locodiff.hardware import matmul_gflops  # noqa: E402
from locodiff.models import (  # noqa: E402
    ModelConfig,
    TokenEncoder,
    available_architectures,
    build_network,
    param_count,
)
from locodiff.stages.config import load_study_config  # noqa: E402

SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal training noise distribution


# ----- data and loss -----------------------------------------------------------------------------
def random_conditioning(batch: int, gen: torch.Generator, max_objects: int = 3) -> Conditioning:
    counts = torch.randint(1, max_objects + 1, (batch,), generator=gen)
    mask = torch.arange(max_objects)[None, :] < counts[:, None]
    return Conditioning(torch.rand(batch, max_objects, 2, generator=gen), mask)


def edm_loss(net: nn.Module, x0: Tensor, cond: Conditioning, gen: torch.Generator) -> Tensor:
    """EDM loss with the preconditioning written out (eq. 7 and Table 1 of Karras et al. 2022)."""
    sigma = (P_MEAN + P_STD * torch.randn(x0.shape[0], generator=gen)).exp().reshape(-1, 1, 1, 1)
    x = x0 + sigma * torch.randn(x0.shape, generator=gen)
    total = sigma**2 + SIGMA_DATA**2
    c_skip, c_out, c_in = SIGMA_DATA**2 / total, sigma * SIGMA_DATA / total.sqrt(), total.rsqrt()
    out = net(c_in * x, (sigma.log() / 4).flatten(), cond)
    return ((out.float() - (x0 - c_skip * x) / c_out) ** 2).mean()


def make_step(net: nn.Module, size: int, batch: int, bf16: bool, seed: int) -> Callable[[], None]:
    """A closure running one full training step on fresh random data."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    net.train()

    def step() -> None:
        x0 = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
        cond = random_conditioning(batch, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = edm_loss(net, x0, cond, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def images_per_second(steps: dict[str, Callable[[], None]], batch: int, warmup: int,
                      timed: int, rounds: int) -> dict[str, float]:
    """Median over ``rounds`` of images/s; within a round every model runs ``timed`` steps."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(timed):
                step()
            samples[name].append(batch * timed / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in samples.items()}


# ----- the diffusers baseline ---------------------------------------------------------------------
class DiffusersBaseline(nn.Module):
    """locodiff's token encoder (and null token) feeding a diffusers ``UNet2DConditionModel``,
    behind the same raw-network interface ``(x_in, c_noise, cond)``."""

    def __init__(self, unet: nn.Module, token_dim: int, n_freqs: int) -> None:
        super().__init__()
        self.tokens = TokenEncoder(token_dim, n_freqs, use_attributes=False)
        self.null = nn.Parameter(torch.randn(token_dim))
        self.unet = unet

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Conditioning) -> Tensor:
        tokens = self.tokens(cond)
        null = self.null.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        mask = torch.cat([torch.ones_like(cond.mask[:, :1]), cond.mask], dim=1)
        return self.unet(
            x_in, c_noise, encoder_hidden_states=torch.cat([null, tokens], 1),
            encoder_attention_mask=mask,
        ).sample


def diffusers_unet(widths: tuple[int, ...], size: int, cfg: ModelConfig) -> nn.Module:
    """An SD-style UNet2DConditionModel: cross-attention transformer blocks at the same levels
    as locodiff's cross-attention (every level <= 16 px), plain ResNet blocks above."""
    from diffusers import UNet2DConditionModel

    resolutions = [size // 2**i for i in range(len(widths))]
    cross = [r <= 16 for r in resolutions]
    down = tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in cross)
    up = tuple("CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(cross))
    heads = tuple(max(1, w // cfg.head_dim) for w in widths)  # diffusers takes head *counts* here
    return UNet2DConditionModel(
        sample_size=size, in_channels=cfg.image_channels, out_channels=cfg.image_channels,
        block_out_channels=widths, down_block_types=down, up_block_types=up,
        layers_per_block=cfg.res_blocks, cross_attention_dim=cfg.token_dim,
        attention_head_dim=heads, norm_num_groups=cfg.norm_groups,
    )


def matched_diffusers(target: int, size: int, cfg: ModelConfig) -> tuple[nn.Module, tuple[int, ...]]:
    """The baseline whose parameter count is closest to ``target``, over widths that keep
    locodiff's ratios between levels (multiples of norm_groups and of the head count)."""
    best = None
    base = cfg.channels
    for step in range(cfg.norm_groups, 2 * max(base) + 1, cfg.norm_groups):
        scale = step / max(base)
        g = cfg.norm_groups
        widths = tuple(max(g, round(w * scale / g) * g) for w in base)
        if any(w % max(1, w // cfg.head_dim) for w in widths):
            continue
        model = DiffusersBaseline(diffusers_unet(widths, size, cfg), cfg.token_dim, cfg.n_freqs)
        gap = abs(param_count(model) - target)
        if best is None or gap < best[0]:
            best = (gap, model, widths)
        if param_count(model) > 2 * target:  # the count only grows with the widths
            break
    assert best is not None
    return best[1], best[2]


# ----- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64], help="UNet widths per level")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="image sizes for part 2")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--archs", nargs="+", default=list(available_architectures()),
                   choices=list(available_architectures()))
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model")
    p.add_argument("--steps", type=int, default=2, help="timed steps per model and round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds in the comparison")
    p.add_argument("--compare-size", type=int, default=32)
    p.add_argument("--compare-dtype", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--skip-diffusers", action="store_true")
    p.add_argument("--preset", default="quick", help="preset whose networks part 3 times ('' to skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="part 4: where each preset network's step spends its time")
    p.add_argument("--only-preset", action="store_true", help="skip parts 1 and 2")
    return p.parse_args(argv)


def compare_with_diffusers(args: argparse.Namespace) -> None:
    size, bf16 = args.compare_size, args.compare_dtype == "bf16"
    cfg = ModelConfig(arch="cross_attention", image_size=size, channels=tuple(args.channels))
    torch.manual_seed(args.seed)
    ours = build_network(cfg)
    try:
        theirs, widths = matched_diffusers(param_count(ours), size, cfg.resolved())
    except ImportError:
        print("[1] skipped: diffusers is not installed (pip install 'locodiff[dev]')")
        return
    n_ours, n_theirs = param_count(ours), param_count(theirs)
    steps = {
        "ours": make_step(ours, size, args.batch, bf16, args.seed),
        "theirs": make_step(theirs, size, args.batch, bf16, args.seed),
    }
    ips = images_per_second(steps, args.batch, args.warmup, args.steps, args.rounds)
    print(f"[1] cross-attention UNet vs diffusers UNet2DConditionModel, {size}x{size} {args.compare_dtype}, "
          f"median of {args.rounds} alternating rounds x {args.steps} steps")
    print(f"    locodiff cross_attention  {n_ours / 1e6:5.2f}M params  {ips['ours']:7.1f} img/s"
          f"  channels={tuple(args.channels)}")
    print(f"    diffusers UNet2DCondition {n_theirs / 1e6:5.2f}M params  {ips['theirs']:7.1f} img/s"
          f"  block_out_channels={widths}  (params {100 * (n_theirs / n_ours - 1):+.0f}%)")
    print(f"    ratio locodiff / diffusers: {ips['ours'] / ips['theirs']:.2f}x  (target >= 1.0x)")


def model_config(arch: str, size: int, args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(arch=arch, image_size=size, channels=tuple(args.channels))


def throughput_table(args: argparse.Namespace) -> None:
    columns = [(s, d) for s in args.sizes for d in args.dtypes]
    header = "".join(f"{f'{s}px {d}':>12}" for s, d in columns)
    print(f"[2] images/s per architecture (forward + backward + AdamW, batch {args.batch}; "
          f"{args.steps} timed steps after {args.warmup} warm-up)")
    print(f"    {'arch':<16}{'params@' + str(max(args.sizes)):>12}{header}")
    for arch in args.archs:
        params = param_count(build_network(model_config(arch, max(args.sizes), args)))
        row = []
        for size, dtype in columns:
            torch.manual_seed(args.seed)
            net = build_network(model_config(arch, size, args))
            step = make_step(net, size, args.batch, dtype == "bf16", args.seed)
            row.append(images_per_second({arch: step}, args.batch, args.warmup, args.steps, 1)[arch])
        print(f"    {arch:<16}{params / 1e6:>11.2f}M" + "".join(f"{v:12.1f}" for v in row), flush=True)


def flops_per_image(net: nn.Module, size: int, batch: int, seed: int) -> float:
    """Forward + backward FLOPs of one training step, per image."""
    gen = torch.Generator().manual_seed(seed)
    x0, cond = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1, random_conditioning(batch, gen)
    with FlopCounterMode(display=False) as counter:
        edm_loss(net, x0, cond, gen).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def preset_table(args: argparse.Namespace) -> None:
    cfg = load_study_config(args.preset)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    peak = matmul_gflops()
    size, batch = cfg.data.resolution, cfg.train.batch_size
    print(f"[3] preset {args.preset!r}: its networks at {size}x{size}, batch {batch}, fp32, 1 thread; "
          f"this core's fp32 matmul: {peak:.1f} GFLOP/s")
    print(f"    {'model':<14}{'arch':<16}{'params':>8}{'img/s':>9}{'MFLOP/img':>11}{'GFLOP/s':>9}"
          f"{'of matmul':>10}{'images':>9}{'minutes':>9}")
    core_minutes = 0.0
    for name, spec in cfg.enabled_models().items():
        torch.manual_seed(args.seed)
        net = build_network(spec.model).to(memory_format=torch.channels_last)  # as training runs it
        flops = flops_per_image(net, size, batch, args.seed)
        ips = images_per_second({name: make_step(net, size, batch, False, args.seed)}, batch,
                                args.warmup, max(args.steps, 4), 1)[name]
        minutes = spec.train.total_images / ips / 60
        core_minutes += minutes
        print(f"    {name:<14}{spec.model.arch:<16}{param_count(net) / 1e6:>7.2f}M{ips:9.0f}{flops / 1e6:11.0f}"
              f"{ips * flops / 1e9:9.1f}{ips * flops / 1e9 / peak:10.0%}{spec.train.total_images:9d}{minutes:9.1f}",
              flush=True)
    print(f"    predicted training: {core_minutes:.1f} core-minutes, ~{core_minutes / cfg.jobs:.1f} min wall "
          f"with {cfg.jobs} jobs (plus the detector; no other load)")
    torch.set_num_threads(previous)


# Where a training step's time goes: torch.profiler's self time per operator, in these groups
# (first match wins; the rest is "other": element-wise arithmetic, reductions, dispatch).
OP_GROUPS = {
    "conv": ("convolution",),
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"),
    "norm": ("group_norm", "layer_norm"),
    "softmax": ("softmax",),
    "activation": ("silu", "gelu"),
    "optimizer": ("_foreach", "Optimizer."),
    "layout": ("copy", "contiguous", "clone", "permute", "pixel_shuffle", "pixel_unshuffle", "aten::cat",
               "aten::index", "as_strided"),
}


def op_group(name: str) -> str:
    return next((group for group, keys in OP_GROUPS.items() if any(k in name for k in keys)), "other")


def profile_table(args: argparse.Namespace) -> None:
    """Part 4: each preset network's training step under torch.profiler, self time per group."""
    cfg = load_study_config(args.preset)
    size, batch = cfg.data.resolution, cfg.train.batch_size
    print(f"[4] preset {args.preset!r}: where a training step's time goes (torch.profiler self CPU time, "
          f"{max(args.steps, 4)} steps, batch {batch}, 1 thread)")
    print(f"    {'model':<14}" + "".join(f"{g:>11}" for g in [*OP_GROUPS, "other"]))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    for name, spec in cfg.enabled_models().items():
        torch.manual_seed(args.seed)
        step = make_step(build_network(spec.model).to(memory_format=torch.channels_last), size, batch, False, args.seed)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(max(args.steps, 4)):
                step()
        totals = {g: 0.0 for g in [*OP_GROUPS, "other"]}
        for event in prof.key_averages():
            totals[op_group(event.key)] += event.self_cpu_time_total
        whole = sum(totals.values())
        print(f"    {name:<14}" + "".join(f"{v / whole:11.0%}" for v in totals.values()), flush=True)
    torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"benchmarks/train.py: torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if args.threads > 1 and load > cores:
        print(f"warning: load average {load:.1f} on {cores} cores: other processes compete for the "
              f"cores, so {args.threads}-thread timings will be erratic (try --threads 1)")
    if not args.only_preset:
        if not args.skip_diffusers:
            compare_with_diffusers(args)
        throughput_table(args)
    if args.preset:
        preset_table(args)
    if args.preset and args.profile:
        profile_table(args)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
