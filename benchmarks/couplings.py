"""Training throughput of the count-coupling variants of quick's Exp 1 network, every ratio from one run.

    python benchmarks/couplings.py                  # ~1 min on a 2-core CPU
    python benchmarks/couplings.py --profile        # and where each variant's step spends its time

The variants are full's ablation (``src/locodiff/presets/full.toml``): quick's pair (PixelNorm +
sigmoid attention weights), the other corners of {GroupNorm, PixelNorm} x {softmax, sigmoid}, and
the earlier quick pair (GroupNorm, softmax, a learned 3 px distance bias). Each is built as the
study builds it (channels-last), at quick's batch size on one thread (the study trains one model
per core), and timed in alternating rounds so that load from other processes hits all alike. The
ratio to the earlier pair says whether quick's training got slower per image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from train import OP_GROUPS, images_per_second, make_step, op_group  # noqa: E402

from locodiff.hardware import matmul_gflops  # noqa: E402
from locodiff.models import build_network  # noqa: E402
from locodiff.stages.config import load_study_config  # noqa: E402

VARIANTS = ("exp1", "exp1_pixel_softmax", "exp1_group_sigmoid", "exp1_group_softmax", "exp1_prior")
BASELINE = "exp1_prior"  # quick's Exp 1 before the count couplings were removed


def steps(cfg, seed: int) -> dict:
    size, batch = cfg.data.resolution, cfg.train.batch_size
    out = {}
    for name in VARIANTS:
        torch.manual_seed(seed)
        net = build_network(cfg.models[name].model).to(memory_format=torch.channels_last)
        out[name] = make_step(net, size, batch, False, seed)
    return out


def profile_row(step) -> dict[str, float]:
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(4):
            step()
    totals = dict.fromkeys([*OP_GROUPS, "other"], 0.0)
    for event in prof.key_averages():
        totals[op_group(event.key)] += event.self_cpu_time_total
    return totals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    cfg = load_study_config("full")
    torch.set_num_threads(1)
    print(f"benchmarks/couplings.py: torch {torch.__version__}, 1 thread, batch {cfg.train.batch_size}, "
          f"{cfg.data.resolution}x{cfg.data.resolution}; this core's fp32 matmul {matmul_gflops():.1f} GFLOP/s")
    timed = steps(cfg, 0)
    rates = images_per_second(timed, cfg.train.batch_size, 2, args.steps, args.rounds)
    print(f"    {'model':<22}{'network':<46}{'img/s':>7}{'vs ' + BASELINE:>18}")
    for name in VARIANTS:
        spec = cfg.models[name].model
        ca = spec.cross_attention
        network = f"{spec.norm} norm, {ca.weights}" + (f", {ca.position_bias_px:g} px bias" if ca.position_bias_px else "")
        print(f"    {name:<22}{network:<46}{rates[name]:7.0f}{rates[name] / rates[BASELINE]:17.2f}x")
    if args.profile:
        print("    where a step's time goes (torch.profiler self CPU time, 4 steps):")
        print(f"    {'model':<22}" + "".join(f"{g:>11}" for g in [*OP_GROUPS, "other"]))
        for name, step in timed.items():
            totals = profile_row(step)
            whole = sum(totals.values())
            print(f"    {name:<22}" + "".join(f"{v / whole:11.0%}" for v in totals.values()), flush=True)


if __name__ == "__main__":
    main()
