"""Benchmark of locality probes on an SDXL-shaped diffusers UNet, every ratio measured in one run.

    python benchmarks/sdxl_probe.py           # tiny SDXL-shaped UNet (~1M params), fp32, 16x16
    python benchmarks/sdxl_probe.py --full    # SDXL-base architecture (2.6B params, random
                                              # weights, no download), 32x32 latent, 4 probed
                                              # pixels; bf16 where the device has native bf16
                                              # (~6 GB), else fp32 (~11 GB)

Each row is printed as soon as it is measured (a slow machine shows progress).

Rows of the table (time, peak memory of that step, and the check that makes the comparison fair):
1. per-token conditional locality at ``--pixels`` probed latent pixels: batched reverse mode
   (vmapped VJPs, one per pixel and output channel) vs a naive Python loop of ``autograd.grad``;
2. pixel-Jacobian rows at the same pixels: ``locality.jacobian.pixel_jacobian`` vs its naive loop;
3. (tiny model only) the token map at *every* latent pixel: forward mode (one JVP per embedding
   scalar, T x D) vs reverse mode (one VJP per pixel and channel, H x W x C), both batched.

Memory is the step's peak resident memory above what the process held when it began (Linux
high-water mark reset, as in ``benchmarks/jacobian.py``), or the CUDA allocator's peak on a GPU.
The SDXL config values are those published with stable-diffusion-xl-base-1.0 (unet/config.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from locodiff.adapters import DiffusersDenoiser, Prompt  # noqa: E402
from locodiff.conditioning import Conditioning  # noqa: E402
from locodiff.locality.diffusers_probe import token_fn, token_sensitivity  # noqa: E402
from locodiff.locality.feature_capture import Sensitivity  # noqa: E402
from locodiff.hardware import fastest_dtype, native_bf16  # noqa: E402
from locodiff.locality.jacobian import naive_pixel_jacobian, pixel_jacobian  # noqa: E402


def _sibling(name: str):
    """Import a sibling benchmark script as a module (to share its memory meter)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


_rss = _sibling("jacobian.py")

# stable-diffusion-xl-base-1.0, unet/config.json (the fields that shape the network)
SDXL_BASE = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), norm_num_groups=32,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 pooled + 6 time ids x 256
)
SDXL_POOLED = 1280
# The same shape of network, tiny: two levels, 32/64 channels, 32-dim tokens.
TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64), norm_num_groups=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32, transformer_layers_per_block=1, attention_head_dim=8,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=16 + 6 * 8,
)
TINY_POOLED = 16
# SDXL's training schedule (EulerDiscreteScheduler in the published pipeline)
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                num_train_timesteps=1000, prediction_type="epsilon")


# ----- model ---------------------------------------------------------------------------------


def build(full: bool, dtype: torch.dtype, device: str, tokens: int, seed: int):
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    config, pooled = (SDXL_BASE, SDXL_POOLED) if full else (TINY, TINY_POOLED)
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise straight in bf16: half the memory of fp32 + cast
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**config).eval()
    finally:
        torch.set_default_dtype(old)
    g = torch.Generator().manual_seed(seed)
    prompt = Prompt(
        torch.randn(1, tokens, config["cross_attention_dim"], generator=g),
        torch.randn(1, pooled, generator=g),
        torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]]),
    ).to(device=device)  # fp32: the adapter casts to the UNet's dtype at its boundary
    return DiffusersDenoiser(unet, EulerDiscreteScheduler(**SCHEDULE), prompt).eval()


# ----- reference loops -----------------------------------------------------------------------


def naive_token_sensitivity(adapter, x, sigma, pixels) -> torch.Tensor:
    """One ``autograd.grad`` per probed pixel and output channel: ``[B, T, P]``."""
    prompt = adapter.prompt.expand(x.shape[0])
    e = prompt.encoder_hidden_states.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = token_fn(adapter, x, sigma, prompt, "score")(e)
        sq = []
        for r, c in pixels.tolist():
            acc = 0.0
            for ch in range(out.shape[1]):
                (g,) = torch.autograd.grad(out[:, ch, r, c].sum(), e, retain_graph=True)
                acc = acc + g.float().pow(2).sum(-1)
            sq.append(acc.sqrt())
    return torch.stack(sq, -1)


# ----- measuring -----------------------------------------------------------------------------


@contextmanager
def measure(record: dict, key: str, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        yield
        torch.cuda.synchronize()
        record[key] = (time.perf_counter() - t0,
                       (torch.cuda.max_memory_allocated() - base) / 2**20)
    else:
        with _rss.measure(record, key):
            yield


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--full", action="store_true",
                    help="SDXL-base architecture, random weights (2.6B params, ~11 GB)")
    ap.add_argument("--size", type=int, help="latent height = width (default 16; 32 with --full)")
    ap.add_argument("--tokens", type=int, help="prompt tokens (default 16; 77 with --full)")
    ap.add_argument("--pixels", type=int, help="probed latent pixels (default 16; 4 with --full)")
    ap.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto (default): bf16 for --full where the device has native bf16, else fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--chunk", type=int, help="VJPs/JVPs per vmapped chunk (default 32; 8 with --full)")
    ap.add_argument("--probes", type=int, default=1, help="random tangents per token, sampled map")
    ap.add_argument("--words", type=int, help="prompt tokens mapped one by one, the rest grouped "
                                              "(default 4; 12 with --full)")
    ap.add_argument("--sigma", type=float, default=1.0, help="EDM noise level (SDXL: 0.029-14.6)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: do not fight other jobs on a small machine)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    full = args.full
    size = args.size or (32 if full else 16)
    tokens = args.tokens or (77 if full else 16)
    n_pix = args.pixels or (4 if full else 16)
    dev = args.device
    if args.dtype == "auto":
        dtype = fastest_dtype(dev) if full else torch.float32
    else:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    args.chunk = args.chunk or (8 if full else 32)

    t: dict = {}
    with measure(t, "build", dev):
        ad = build(full, dtype, dev, tokens, args.seed)
    params = sum(p.numel() for p in ad.unet.parameters())
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(1, 4, size, size, generator=g).to(dev)  # fp32 latents, whatever the UNet
    pix = torch.randperm(size * size, generator=g)[:n_pix]
    pix = torch.stack([pix // size, pix % size], -1)
    cond = Conditioning.empty(1, device=dev)
    sigma = args.sigma
    d = ad.unet.config.cross_attention_dim
    kind = "SDXL-base" if full else "tiny SDXL-shaped"
    print(f"model: UNet2DConditionModel ({kind}), {params / 1e6:.1f}M params in "
          f"{str(dtype).removeprefix('torch.')}, fp32 latent 4x{size}x"
          f"{size}, {tokens} tokens x {d}, {n_pix} probed pixels, sigma {sigma}, chunk "
          f"{args.chunk}, {args.threads} threads, device {dev} (native bf16: "
          f"{'yes' if native_bf16(dev) else 'no'}), torch {torch.__version__}", flush=True)

    def fmt(s: float) -> str:
        return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"

    def row(name, fast, slow, check):
        """``fast``/``slow``: a key of the measured times, or a (seconds, MiB) pair."""
        (tf, mf), (ts, ms) = (v if isinstance(v, tuple) else t[v] for v in (fast, slow))
        print(f"| {name:<44} | {fmt(tf):>9} {mf:7.0f} MiB | {fmt(ts):>9} {ms:7.0f} MiB "
              f"| {ts / tf:6.1f}x | {check}", flush=True)

    c = 4

    # warm-up: first vjp/jvp under vmap pays one-off set-up costs
    with measure(t, "forward", dev), torch.no_grad():
        ad(x, sigma, cond)
    token_sensitivity(ad, x, sigma, pixels=pix[:1], how=Sensitivity(mode="reverse", chunk_size=args.chunk))
    pixel_jacobian(ad, x, sigma, cond, pix[:1], channels="each", chunk_size=args.chunk)
    print(f"\nbuild {fmt(t['build'][0])} (+{t['build'][1]:.0f} MiB); one forward "
          f"{fmt(t['forward'][0])}")
    print(f"\n| {'comparison (fast vs slow)':<44} | {'fast: time, +peak mem':>21} | "
          f"{'slow: time, +peak mem':>21} | {'ratio':>7} | check")
    print("|" + "|".join("-" * k for k in (46, 23, 23, 9, 40)), flush=True)

    # 1. per-token sensitivity at the probed pixels
    with measure(t, "tok_naive", dev):
        tok_naive = naive_token_sensitivity(ad, x, sigma, pix)
    with measure(t, "tok", dev):
        tok = token_sensitivity(ad, x, sigma, pixels=pix, how=Sensitivity(mode="reverse", chunk_size=args.chunk))
    row(f"token map, {n_pix} px: batched vs naive loop", "tok", "tok_naive",
        f"{n_pix * c} VJPs each; max rel. diff {rel_err(tok, tok_naive):.1e}")

    # 2. pixel-Jacobian rows at the same pixels
    with measure(t, "pix_naive", dev):
        pj_naive = naive_pixel_jacobian(ad, x, sigma, cond, pix, channels="each")
    with measure(t, "pix", dev):
        pj = pixel_jacobian(ad, x, sigma, cond, pix, channels="each", chunk_size=args.chunk)
    row(f"pixel Jacobian, {n_pix} px: batched vs naive", "pix", "pix_naive",
        f"{n_pix * c} VJPs each; max rel. diff {rel_err(pj, pj_naive):.1e}")

    # 3. the whole token map: forward vs reverse (tiny embeddings only)
    if not full:
        with measure(t, "map_fwd", dev):
            map_f = token_sensitivity(ad, x, sigma, how=Sensitivity(mode="forward", chunk_size=args.chunk))
        with measure(t, "map_rev", dev):
            map_r = token_sensitivity(ad, x, sigma, how=Sensitivity(mode="reverse", chunk_size=args.chunk))
        row(f"token map, all {size * size} px: forward vs reverse", "map_fwd", "map_rev",
            f"{tokens * d} JVPs vs {size * size * c} VJPs; max rel. diff {rel_err(map_f, map_r):.1e}")
    with measure(t, "map_sampled", dev):
        map_s = token_sensitivity(ad, x, sigma, generator=torch.Generator().manual_seed(1),
                                  how=Sensitivity(mode="sampled", probes=args.probes, chunk_size=args.chunk))
    words = min(args.words or (12 if full else 4), tokens - 1)
    groups = [[i] for i in range(words)] + [list(range(words, tokens))]
    with measure(t, "map_words", dev):
        token_sensitivity(ad, x, sigma, generator=torch.Generator().manual_seed(2),
                          how=Sensitivity(mode="sampled", probes=args.probes, chunk_size=args.chunk, groups=groups))
    exact = map_f if not full else None
    if full:  # the exact map is out of reach: compare at the probed pixels (row 1's exact rows)
        exact_cost = (t["tok"][0] / (n_pix * 4) * size * size * 4, float("nan"))  # extrapolated, not run
        s_at, e_at = map_s[0][:, pix[:, 0], pix[:, 1]], tok[0]
    else:
        exact_cost = t["map_fwd"]
        s_at, e_at = map_s[0], exact[0]
    # agreement: per-token energy (relative error) and every (token, pixel) entry (correlation)
    sq_s, sq_e = s_at.float().pow(2).flatten(1), e_at.float().pow(2).flatten(1)
    energy_err = float((sq_s.sum(1) / sq_e.sum(1) - 1).abs().mean())
    entry_corr = float(torch.corrcoef(torch.stack([sq_s.flatten(), sq_e.flatten()]))[0, 1])

    exact_how = ("extrapolated from row 1" if full else "forward mode, run")
    row(f"token map, all px: {words} tokens + padding group vs {tokens} tokens", "map_words",
        "map_sampled", f"{(words + 1) * args.probes} vs {tokens * args.probes} JVPs (both sampled)")
    row(f"token map, all {size * size} px: sampled ({args.probes}/token) vs exact", "map_sampled",
        exact_cost, f"{tokens * args.probes} JVPs vs exact {exact_how}; token energy err "
        f"{energy_err:.2f}, entry corr {entry_corr:.2f}")
    total = sum(v[0] for v in t.values())
    print(f"\ntotal measured time {total:.1f} s")


if __name__ == "__main__":
    main()
