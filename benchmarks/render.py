"""Renderer throughput (images/second) on CPU at 32, 64 and 128 px, with and without
supersampling, against a baseline measured in the same run: the same ray caster with
screen-space culling turned off (every ray tested against every object), which is how a plain
batched ray caster without acceleration works. Then the Blender backend (Cycles on the CPU, two
worker processes) on the same 1-3-object scenes, when a Python with bpy is found (make blender),
as a ratio to the torch renderer's rate at the same resolution.

Scenes follow the training distribution (1-3 objects) and the hardest test count (10 objects).
Run:  python benchmarks/render.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from locodiff.scenes import Renderer, SceneSampler
from locodiff.scenes.blender import BlenderRenderer, blender_python


def images_per_second(renderer: Renderer, scenes, budget_s: float) -> tuple[float, float]:
    """Best rates over repeated renders within ``budget_s`` seconds (after one warm-up):
    images per wall-clock second and images per CPU second of this process. On a shared
    machine the second is the steadier one (for one thread, it estimates a dedicated core)."""
    renderer(scenes[:2])
    best_wall, best_cpu, spent = 0.0, 0.0, 0.0
    while spent < budget_s:
        wall, cpu = time.perf_counter(), time.process_time()
        renderer(scenes)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best_wall = max(best_wall, scenes.batch_size / wall)
        best_cpu = max(best_cpu, scenes.batch_size / max(cpu, 1e-9))
        spent += wall
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter measurements")
    args = parser.parse_args()
    torch.set_num_threads(2)
    budget = 0.3 if args.quick else 1.0
    sampler = SceneSampler()
    gen = torch.Generator().manual_seed(0)
    scene_sets = {"1-3": sampler.sample(torch.randint(1, 4, (256,), generator=gen), gen),
                  "10": sampler.sample(10, gen, batch_size=128)}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}")
    print("img/s = images per wall-clock second; img/cpu-s = per CPU second of this process;")
    print("baseline = the same renderer with culling off; ratio = culled / baseline (CPU seconds)")
    print(f"{'res':>4} {'ss':>3} {'objects':>8} {'threads':>8} {'img/s':>7} {'img/cpu-s':>10} "
          f"{'base img/s':>11} {'base img/cpu-s':>15} {'ratio':>6}")
    for res in (32, 64, 128):
        for ss in (1, 2):
            for name, scenes in scene_sets.items():
                for threads in ((1, 2) if (res, ss) == (64, 1) else (1,)):
                    n_base = 16 if res * ss >= 128 else 64
                    fast = Renderer(res, ss, threads=threads)
                    slow = Renderer(res, ss, cull=False, threads=threads)
                    wall, cpu = images_per_second(fast, scenes, budget)
                    base_wall, base_cpu = images_per_second(slow, scenes[:n_base], budget)
                    print(f"{res:>4} {ss:>3} {name:>8} {threads:>8} {wall:>7.0f} {cpu:>10.0f} "
                          f"{base_wall:>11.0f} {base_cpu:>15.0f} {cpu / base_cpu:>5.1f}x", flush=True)
    blender_rates(scene_sets["1-3"], args.quick)


def blender_rates(scenes, quick: bool) -> None:
    """Blender's images per wall-clock second (2 processes, worker start-up included) against the
    torch renderer's (supersampling 2, 2 threads) on the same scenes."""
    if blender_python() is None:
        print("blender: no Python with bpy here (make blender); skipped")
        return
    print("blender: Cycles on the CPU, 2 worker processes; samples per pixel as given; ratio = blender / torch (wall)")
    print(f"{'res':>4} {'spp':>4} {'images':>7} {'img/s':>7} {'torch img/s':>12} {'ratio':>8}")
    for res, spp in ((32, 16), (64, 32), (128, 64)):
        n = 16 if quick else (64 if res < 128 else 16)
        wall = time.perf_counter()
        BlenderRenderer(res, samples=spp, workers=2)(scenes[:n])
        rate = n / (time.perf_counter() - wall)
        torch_rate, _ = images_per_second(Renderer(res, 2, threads=2), scenes, 0.3)
        print(f"{res:>4} {spp:>4} {n:>7} {rate:>7.1f} {torch_rate:>12.0f} {rate / torch_rate:>8.4f}", flush=True)


if __name__ == "__main__":
    main()
