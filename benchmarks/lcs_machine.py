"""Speed of the local conditional score machine: chunked engine vs a naive per-pixel loop.

    python benchmarks/lcs_machine.py                    # batch 8, 16x16, 2000 training images
    python benchmarks/lcs_machine.py --sizes 3 5 9 --train 4000

For each variant (ELS = patches from every position; LS r=0 = same position only) and patch size:
the time of one machine call on a batch (the chunked engine: matmul distances, grouped by
nearby-conditioner count, running log-sum-exp) and the time per output pixel of a naive loop that
treats one output pixel at a time against every candidate (direct squared differences, the same
compatibility rule, no chunking). The naive loop runs on ``--naive-pixels`` pixels only and is
extrapolated linearly to the whole batch; both are measured in the same run, and the largest
difference between the two on those pixels is printed as the check that they compute the same
(in float32 it is the round-off of the engine's matmul expansion of squared distances, ~1e-3 for
ELS; with ``--dtype float64`` the two agree to ~1e-12).
Training data: coloured squares (``analytic.toys.squares_dataset``), 1-3 per image.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from locodiff.conditioning import Conditioning  # noqa: E402
from locodiff.analytic import LCSMachine, squares_dataset  # noqa: E402


def naive_setup(machine: LCSMachine, size: int) -> dict:
    """Every training patch with its centre pixel, position and nearby conditioners (once)."""
    n, c, h, w = machine.images.shape
    patches = F.unfold(machine.images, size, padding=size // 2).transpose(1, 2)  # [N, HW, D]
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    centres = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [HW, 2]
    locs = machine.locations * torch.tensor([w, h])
    offsets = locs[:, None] - centres[None, :, None]  # [N, HW, M, 2]
    near = machine.mask[:, None] & (offsets.abs().amax(-1) <= size / 2 + machine.margin_px)
    return dict(
        patches=patches, values=machine.images.flatten(2).transpose(1, 2), offsets=offsets,
        near=near, counts=near.sum(-1), size=size, centres=centres,
    )


def naive_pixel(machine: LCSMachine, table: dict, x: torch.Tensor, sigma: float,
                cond: Conditioning, b: int, pos: int) -> torch.Tensor:
    """Output pixel ``pos`` of image ``b``: one query against all its candidates, no chunks."""
    size, (_, _, h, w) = table["size"], x.shape
    query = F.unfold(x[b : b + 1], size, padding=size // 2)[0, :, pos]  # [D]
    sel = slice(None) if machine.locality_radius is None else slice(pos, pos + 1)  # LS r = 0
    cand, values = table["patches"][:, sel].to(x.dtype), table["values"][:, sel].to(x.dtype)
    logw = -(cand - query).square().sum(-1) / (2 * sigma**2)  # [N, P]
    q_off = cond.locations[b] * torch.tensor([w, h]) - table["centres"][pos]
    q_near = cond.mask[b] & (q_off.abs().amax(-1) <= size / 2 + machine.margin_px)
    q_off = q_off[q_near]  # [k, 2]
    t_off, t_near = table["offsets"][:, sel], table["near"][:, sel]  # [N, P, M, 2], [N, P, M]
    ok = table["counts"][:, sel] == len(q_off)
    tol2 = machine.tolerance_px**2
    for k in range(len(q_off)):  # each query conditioner needs a candidate one within tolerance
        d2 = (t_off - q_off[k]).square().sum(-1).masked_fill(~t_near, math.inf)
        ok &= d2.amin(-1) <= tol2
    for m in range(t_off.shape[2]):  # and each candidate conditioner a query one
        if len(q_off):
            d2 = (t_off[:, :, m, None] - q_off).square().sum(-1).amin(-1)
            ok &= ~t_near[..., m] | (d2 <= tol2)
    chosen = logw.masked_fill(~ok, -math.inf) if ok.any() else logw  # fallback: unconditional
    weights = chosen.reshape(-1).softmax(0)
    return weights @ values.reshape(-1, values.shape[-1])


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=2000, help="training images")
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--naive-pixels", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many machine calls")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = args.resolution
    print(f"benchmarks/lcs_machine.py: torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {args.batch}, {res}x{res}, {args.train} training images, sigma {args.sigma}, "
          f"{args.dtype}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        print(f"warning: load average {load:.1f} on {cores} cores; timings are inflated")

    gen = torch.Generator().manual_seed(0)
    images, conds = squares_dataset(args.train, res, (1, 2, 3), side=3, generator=gen)
    clean, qconds = squares_dataset(args.batch, res, (1, 2, 3), side=3, generator=gen)
    dtype = getattr(torch, args.dtype)
    x = (clean + args.sigma * torch.randn(clean.shape, generator=gen)).to(dtype)
    sigma = torch.full((args.batch,), args.sigma, dtype=dtype)
    pixels = torch.randperm(args.batch * res * res, generator=gen)[: args.naive_pixels].tolist()

    header = (f"{'variant':<9}{'P':>3}{'chunked s/call':>16}{'naive ms/px':>13}"
              f"{'naive s/call*':>15}{'ratio':>8}{'max |diff|':>12}{'fallback':>10}")
    print(header)
    for radius, name in ((None, "ELS"), (0, "LS r=0")):
        for size in args.sizes:
            machine = LCSMachine(images, conds, size, locality_radius=radius)
            t_call, out = timed(lambda: machine(x, sigma, qconds), args.repeats)
            table = naive_setup(machine, size)  # precomputed once, not timed
            start = time.perf_counter()
            naive = [naive_pixel(machine, table, x, args.sigma, qconds, p // (res * res), p % (res * res))
                     for p in pixels]
            t_pixel = (time.perf_counter() - start) / len(pixels)
            flat = out.flatten(2).transpose(1, 2).reshape(-1, out.shape[1])
            diff = max((flat[p] - v).abs().max().item() for p, v in zip(pixels, naive))
            t_naive = t_pixel * args.batch * res * res
            print(f"{name:<9}{size:>3}{t_call:>16.3f}{t_pixel * 1e3:>13.2f}{t_naive:>15.1f}"
                  f"{t_naive / t_call:>7.1f}x{diff:>12.1e}{machine.fallback_rate:>10.4f}", flush=True)
    print("* naive s/call is its per-pixel time times the batch's pixel count (it would take that long)")


if __name__ == "__main__":
    main()
