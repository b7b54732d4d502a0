"""Benchmark of the locality probe's Jacobian engines, every ratio measured in one run.

    python benchmarks/jacobian.py                      # built-in ~1.5M-param UNet at 32x32
    python benchmarks/jacobian.py --model pkg.mod:make  # make() -> a Denoiser (eval mode)

Rows of the table (time, peak resident memory of that step, and the check that makes the
comparison fair):
1. full pixel Jacobian: batched (``jacrev``, chunked) vs a naive Python loop of ``autograd.grad``
   per row (the loop is timed on ``--naive-rows`` rows and extrapolated linearly, to stay in time);
2. pixel-locality statistics from ``--probe-pixels`` sampled rows vs from the full Jacobian
   (target >= 50x faster, statistics within 5%);
3. conditioner Jacobian w.r.t. ``--conditioners`` locations: forward vs reverse mode (>= 20x);
4. exact full Jacobian of a bounded-window model: colouring vs ``jacrev`` (>= 10x, equal 1e-5);
5. randomized (Hutchinson) row mass vs exact, for the record.

Memory is the step's peak resident memory above what the process held when the step began
(the high-water mark is reset through /proc/self/clear_refs on Linux; elsewhere it is the process
peak so far, an upper bound).
"""

from __future__ import annotations

import argparse
import importlib
import math
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from locodiff.conditioning import Conditioning  # noqa: E402
from locodiff.locality.jacobian import (  # noqa: E402
    colored_pixel_jacobian,
    conditioner_jacobian,
    full_pixel_jacobian,
    hutchinson_mass,
    naive_pixel_jacobian,
    pixel_jacobian,
)
from locodiff.locality.probe import row_statistics, sample_pixels  # noqa: E402
from locodiff.locality.stats import row_energy  # noqa: E402


# ----- models --------------------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.emb = nn.Linear(32, ch)

    def forward(self, h, emb):
        y = self.c1(F.silu(self.n1(h))) + self.emb(emb)[:, :, None, None]
        return h + self.c2(F.silu(self.n2(y)))


class BenchUNet(nn.Module):
    """A small UNet in the style of the project's: 32 -> 16 -> 8 pixels, channels (48, 96, 192),
    cross-attention from the 8x8 features to Fourier tokens of the conditioner locations."""

    def __init__(self, c: int = 3, chs=(48, 96, 192)):
        super().__init__()
        a, b, d = chs
        self.sigma_emb = nn.Linear(1, 32)
        self.inp = nn.Conv2d(c, a, 3, padding=1)
        self.r1, self.down1 = ResBlock(a), nn.Conv2d(a, b, 3, stride=2, padding=1)
        self.r2, self.down2 = ResBlock(b), nn.Conv2d(b, d, 3, stride=2, padding=1)
        self.r3 = ResBlock(d)
        self.tok = nn.Linear(4 * 6, 2 * d)
        self.q = nn.Linear(d, d)
        self.up2, self.m2 = nn.Conv2d(d, b, 3, padding=1), nn.Conv2d(2 * b, b, 3, padding=1)
        self.r4 = ResBlock(b)
        self.up1, self.m1 = nn.Conv2d(b, a, 3, padding=1), nn.Conv2d(2 * a, a, 3, padding=1)
        self.r5 = ResBlock(a)
        self.out = nn.Conv2d(a, c, 3, padding=1)

    def tokens(self, cond: Conditioning):
        freqs = math.pi * 2.0 ** torch.arange(6, dtype=cond.locations.dtype)
        ang = (cond.locations[..., None] * freqs).flatten(-2)
        return torch.cat([ang.sin(), ang.cos()], -1)

    def forward(self, x, sigma, cond):
        emb = F.silu(self.sigma_emb(sigma.log().reshape(-1, 1) / 4))
        h1 = self.r1(self.inp(x), emb)
        h2 = self.r2(self.down1(h1), emb)
        h3 = self.r3(self.down2(h2), emb)
        b, d, hh, ww = h3.shape
        k, v = self.tok(self.tokens(cond)).chunk(2, -1)
        q = self.q(h3.flatten(2).transpose(1, 2))
        mask = cond.mask[:, None, None, :]
        att = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=mask)
        h3 = h3 + att[:, 0].transpose(1, 2).reshape(b, d, hh, ww)
        u2 = self.up2(F.interpolate(h3, scale_factor=2.0))
        u2 = self.r4(self.m2(torch.cat([u2, h2], 1)), emb)
        u1 = self.up1(F.interpolate(u2, scale_factor=2.0))
        u1 = self.r5(self.m1(torch.cat([u1, h1], 1)), emb)
        return self.out(u1)


class BoundedNet(nn.Module):
    """Three 3x3 convs (plus 1x1 mixing) at full resolution: receptive-field radius exactly 3."""

    def __init__(self, c: int = 3, width: int = 96):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, width, 1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, c, 3, padding=1),
        )

    def forward(self, x, sigma, cond):
        return x + self.body(x)


def load_factory(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "make")


# ----- measuring -----------------------------------------------------------------------------


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mib(field: str) -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_mib() -> float:
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def measure(record: dict, key: str):
    """Time a step and its peak resident memory above what the process held when it began."""
    base = _status_mib("VmRSS") if reset_peak() else peak_mib()
    t0 = time.perf_counter()
    yield
    record[key] = (time.perf_counter() - t0, max(0.0, peak_mib() - (base or 0.0)))


def fmt_t(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", help="module:factory returning a Denoiser (default: built-in UNet)")
    ap.add_argument("--bounded-model",
                    help="module:factory for the colouring row (default: built-in)")
    ap.add_argument("--radius", type=int, default=3,
                    help="receptive-field radius of the bounded model")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--conditioners", type=int, default=10)
    ap.add_argument("--probe-pixels", type=int, default=16, help="sampled output pixels")
    ap.add_argument("--naive-rows", type=int, default=192,
                    help="rows timed in the naive loop (0 = all rows, no extrapolation)")
    ap.add_argument("--chunk", type=int, default=32,
                    help="rows per vmapped chunk (32 is fastest on CPU; bigger ones thrash memory)")
    ap.add_argument("--target", choices=["x0", "score"], default="x0",
                    help="x0: the network's own Jacobian (the score adds -I/sigma^2, which swamps "
                         "an untrained net's statistics)")
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 by default: on 2 cores shared with other jobs, 2 OpenMP "
                         "threads spin against each other (forward 28 ms -> 1.5 s measured)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    c, n = args.channels, args.size
    model = (load_factory(args.model)() if args.model else BenchUNet(c)).eval()
    bounded = (load_factory(args.bounded_model)() if args.bounded_model else BoundedNet(c)).eval()
    x = torch.rand(1, c, n, n, generator=g) * 2 - 1
    sigma, tgt = args.sigma, args.target
    x = x + sigma * torch.randn(x.shape, generator=g)
    locs = torch.rand(1, args.conditioners, 2, generator=g) * 0.8 + 0.1
    cond = Conditioning(locs, torch.ones(1, args.conditioners, dtype=torch.bool))
    params = sum(p.numel() for p in model.parameters())
    rows_total = c * n * n
    print(f"model: {type(model).__name__}, {params / 1e6:.2f}M params, input {c}x{n}x{n}, "
          f"{args.conditioners} conditioners, target {tgt}, sigma {sigma}, chunk {args.chunk}, "
          f"{args.threads} threads, torch {torch.__version__}")
    # warm-up: the first vjp/jvp under vmap pays one-off set-up costs (seconds) on each model
    for net in (model, bounded):
        pixel_jacobian(net, x, sigma, cond, [0, 1], target=tgt, channels="each")
        conditioner_jacobian(net, x, sigma, cond, target=tgt, mode="forward")
    t: dict = {}
    radii, quantiles = (1.0, 2.0, 4.0, 8.0), (0.5, 0.9)

    # 1. full pixel Jacobian, batched vs naive loop (timed on a subset, extrapolated); the loop
    #    runs first so that its memory is measured before big buffers are cached by the allocator
    want = args.naive_rows or rows_total
    naive_pix = torch.arange(0, n * n, max(1, rows_total // want))[: max(1, want // c)]
    with measure(t, "naive"):
        naive = naive_pixel_jacobian(model, x, sigma, cond, naive_pix, target=tgt, channels="each")
    with measure(t, "full"):
        full = full_pixel_jacobian(model, x, sigma, cond, target=tgt, chunk_size=args.chunk)
        full_energy = full.pow(2).sum(1).sum(3).reshape(1, n * n, n, n)
        all_pix = torch.arange(n * n)[None]
        ff, _, fr, _ = row_statistics(full_energy, all_pix, radii, quantiles)
    naive_rows = naive_pix.numel() * c
    naive_full_s = t["naive"][0] / naive_rows * rows_total
    naive_err = (naive[0] - full[0].flatten(1, 2).transpose(0, 1)[naive_pix]).abs().max().item()

    # 2. sampled probes vs full Jacobian (the full time already includes its statistics)
    pix = sample_pixels(n, n, args.probe_pixels, g)
    with measure(t, "sampled"):
        rows = pixel_jacobian(model, x, sigma, cond, pix, target=tgt, channels="each",
                              chunk_size=args.chunk)
        sf, sf_se, sr, sr_se = row_statistics(row_energy(rows), pix, radii, quantiles)
    names = [f"F(r={r:g})" for r in radii] + [f"radius {int(q * 100)}%" for q in quantiles]
    sampled, sampled_se = sf.tolist() + sr.tolist(), sf_se.tolist() + sr_se.tolist()
    exact = ff.tolist() + fr.tolist()
    rel_err = [abs(a - b) / abs(b) if b else math.nan for a, b in zip(sampled, exact)]
    # headline statistics: effective radii and the mass fraction at the default radius (4 px)
    headline = [i for i, nm in enumerate(names) if nm.startswith("radius") or nm == "F(r=4)"]
    head_err = max(rel_err[i] for i in headline)

    # 3. conditioner Jacobian, forward vs reverse
    with measure(t, "cond_fwd"):
        jf = conditioner_jacobian(model, x, sigma, cond, target=tgt, mode="forward")
    with measure(t, "cond_rev"):
        jr = conditioner_jacobian(model, x, sigma, cond, target=tgt, mode="reverse",
                                  chunk_size=args.chunk)
    cond_err = ((jf - jr).abs().max() / jr.abs().max()).item()

    # 4. colouring vs jacrev on the bounded model
    with measure(t, "jacrev_bounded"):
        jb = full_pixel_jacobian(bounded, x, sigma, cond, target=tgt, chunk_size=args.chunk)
    with measure(t, "colour"):
        jc = colored_pixel_jacobian(bounded, x, sigma, cond, args.radius, target=tgt)
    colour_err = (jc - jb).abs().max().item()
    n_colour = (2 * args.radius + 1) ** 2 * c

    # 5. Hutchinson row mass vs exact
    k_probes = 32
    with measure(t, "hutch"):
        est = hutchinson_mass(model, x, sigma, cond, k_probes, g, target=tgt)
    exact_mass = full.pow(2).sum((4, 5, 6))[0]
    hutch_err = ((est.mass[0] - exact_mass).abs() / exact_mass).mean().item()

    def row(name, fast, slow, target, check):
        (tf, mf), (ts, ms) = t[fast], t[slow] if isinstance(slow, str) else slow
        ratio = ts / tf
        ok = "ok" if target is None or ratio >= target else "BELOW"
        tgt = "-" if target is None else f">={target}x {ok}"
        print(f"| {name:<38} | {fmt_t(tf):>9} {mf:7.0f} MiB | {fmt_t(ts):>9} {ms:7.0f} MiB "
              f"| {ratio:7.1f}x | {tgt:<11} | {check}")

    print()
    print(f"| {'comparison (fast vs slow)':<38} | {'fast: time, +peak RSS':>21} | "
          f"{'slow: time, +peak RSS':>21} | {'ratio':>8} | {'target':<11} | check")
    print("|" + "|".join("-" * k for k in (40, 23, 23, 10, 13, 40)))
    how = ("measured" if naive_rows >= rows_total
           else f"extrapolated from {naive_rows}/{rows_total} rows")
    row("full Jacobian: jacrev vs naive loop", "full", (naive_full_s, t["naive"][1]), None,
        f"naive {how}; max diff {naive_err:.1e}")
    row(f"stats: {args.probe_pixels} sampled pixels vs full", "sampled", "full", 50,
        f"headline stats max rel. error {head_err * 100:.1f}% (<= 5%); all "
        f"{max(v for v in rel_err if v == v) * 100:.1f}%")
    row(f"cond. Jacobian ({2 * args.conditioners} dirs): fwd vs rev", "cond_fwd", "cond_rev", 20,
        f"max rel. diff {cond_err:.1e}")
    row(f"bounded R={args.radius}: colouring vs jacrev", "colour", "jacrev_bounded", 10,
        f"{n_colour} vs {rows_total} VJPs; max abs diff {colour_err:.1e} (<= 1e-5)")
    row(f"Hutchinson row mass ({k_probes} JVPs) vs full", "hutch", "full", None,
        f"mean rel. error {hutch_err * 100:.1f}% per pixel")
    print()
    print(f"sampled ({args.probe_pixels} pixels, Latin hypercube) vs full statistics "
          "(* = headline):")
    for i, nm in enumerate(names):
        mark = "*" if i in headline else " "
        print(f" {mark} {nm:<11} sampled {sampled[i]:.4f} +- {sampled_se[i]:.4f}   "
              f"full {exact[i]:.4f}   rel. error {rel_err[i] * 100:.1f}%")
    total = sum(v[0] for v in t.values())
    print(f"\ntotal measured time {total:.1f} s")


if __name__ == "__main__":
    main()
