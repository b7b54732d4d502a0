"""Training throughput of a preset's networks on one device, against that device's own peak.

    python benchmarks/gpu_train.py --presets gpu paper              # on a GPU (bf16)
    python benchmarks/gpu_train.py --presets micro --device cpu --dtype fp32 --steps 2   # smoke

For every network of each preset, built exactly as the study builds it: one training step =
locodiff's EDM loss through ``EDMPrecond`` + backward + AdamW, at the preset's batch size (or
``--batch``), under autocast in ``--dtype``. Printed as each is measured: images/s, FLOPs per image
(forward + backward, ``torch.utils.flop_counter``), achieved TFLOP/s, and that as a fraction of two
peaks measured or known in the same run: the device's dense matrix-multiply rate in that dtype
(``--matmul`` sized square matmuls, timed here) and, for known GPUs, the vendor's dense peak.
Last, the training time each preset's models would take at these rates. ``--json`` writes all
numbers to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from locodiff.conditioning import Conditioning  # noqa: E402
from locodiff.diffusion import EDMLoss, EDMPrecond  # noqa: E402
from locodiff.models import build_network, param_count  # noqa: E402
from locodiff.stages.config import load_study_config  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' data sheets, by name fragment.
VENDOR_PEAK_TFLOPS = {"H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
                      "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
                      "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}}


def rate(tflops: float) -> str:
    return f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.1f} GFLOP/s"


def say(line: str) -> None:
    print(line, flush=True)  # each figure as it is measured, also into a log


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def vendor_peak(device: torch.device, dtype: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks[dtype] for key, peaks in VENDOR_PEAK_TFLOPS.items() if key in name), None)


def random_batch(batch: int, size: int, device: torch.device, gen: torch.Generator):
    counts = torch.randint(1, 4, (batch,), generator=gen)
    cond = Conditioning(torch.rand(batch, 3, 2, generator=gen), torch.arange(3)[None] < counts[:, None])
    return (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(device), cond.to(device)


def training_step(model_cfg, batch: int, device: torch.device, dtype: str):
    """A closure running one full training step, and the network's parameter count."""
    torch.manual_seed(0)
    net = build_network(model_cfg).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    denoiser, loss_fn, gen = EDMPrecond(net), EDMLoss(), torch.Generator().manual_seed(0)
    size = model_cfg.image_size

    def step() -> None:
        x0, cond = random_batch(batch, size, device, gen)
        with torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32"):
            loss = loss_fn(denoiser, x0, cond, gen).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, param_count(net)


def flops_per_image(step, batch: int) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch


def images_per_second(step, batch: int, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["gpu", "paper"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=0, help="images per step (0 = each preset's batch size)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--matmul", type=int, default=0, help="side of the peak-rate matmul (0 = 8192 on GPU, 1024 on CPU)")
    p.add_argument("--json", type=Path, default=None, help="also write every number to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    n = args.matmul or (8192 if device.type == "cuda" else 1024)
    peak = matmul_tflops(device, DTYPES[args.dtype], n)
    vendor = vendor_peak(device, args.dtype)
    say(f"device {name} ({args.device}), {args.dtype}: matmul {n}x{n} {rate(peak)}"
        + (f", vendor dense peak {vendor:.0f} TFLOP/s" if vendor else ""))
    out: dict = {"device": name, "dtype": args.dtype, "matmul_tflops": peak, "vendor_peak_tflops": vendor, "presets": {}}
    for preset in args.presets:
        cfg = load_study_config(preset)
        rows, total_s = {}, 0.0
        for model_name, spec in cfg.enabled_models().items():
            batch = args.batch or spec.train.batch_size
            step, params = training_step(spec.model.resolved(), batch, device, args.dtype)
            flops = flops_per_image(step, batch)
            ips = images_per_second(step, batch, device, args.warmup, args.steps)
            tflops = ips * flops / 1e12
            seconds = spec.train.total_images / ips
            total_s += seconds
            rows[model_name] = {"params": params, "batch": batch, "images_per_s": ips, "gflop_per_image": flops / 1e9,
                                "tflops": tflops, "of_matmul": tflops / peak,
                                "of_vendor_peak": tflops / vendor if vendor else None, "train_s": seconds}
            say(f"  {preset}/{model_name}: {params / 1e6:.2f}M params, batch {batch}: {ips:,.0f} img/s, "
                f"{flops / 1e9:.3f} GFLOP/img, {rate(tflops)} = {tflops / peak:.1%} of matmul"
                + (f", {tflops / vendor:.1%} of vendor peak" if vendor else "")
                + f"; {spec.train.total_images:,} images in {seconds:.0f} s")
        say(f"  {preset}: training all models one after another: {total_s:.0f} s")
        out["presets"][preset] = {"models": rows, "train_s": total_s}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
