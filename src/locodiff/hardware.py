"""What the machine's arithmetic units support, for choosing a dtype: bf16 without native units
(e.g. AMD Zen 3, AVX2 only) is emulated and slower than fp32, on one core at a time."""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of CPUs with bf16 arithmetic


@lru_cache(maxsize=None)
def _cpuinfo(field: str) -> str:
    """The first core's ``field`` in Linux ``/proc/cpuinfo`` ("" where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    line = next((ln for ln in text.splitlines() if ln.split(":")[0].strip() == field), "")
    return line.partition(":")[2].strip()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` does not exist)."""
    return frozenset(_cpuinfo("flags").split())


def machine() -> str:
    """The machine in words, to name beside a timing: cores, CPU model, the vector units that decide
    these kernels' speed (avx2 / avx512f / avx512_bf16 / amx), and the GPU if one is visible."""
    units = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in cpu_flags()]
    words = f"{cores()}-core {_cpuinfo('model name') or 'CPU'} ({', '.join(units) or 'no avx2'})"
    if torch.cuda.is_available():
        words += f", {torch.cuda.get_device_name(0)}"
    return words


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (a CUDA GPU that supports it, or a CPU with
    AVX-512-BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(BF16_CPU_FLAGS & cpu_flags())


def fastest_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 where it is native, else fp32 (which then is both faster and exact)."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def busy_core_seconds() -> float | None:
    """Core-seconds the whole machine has spent busy since boot (Linux ``/proc/stat``: user, nice,
    system, irq, softirq and steal time of all cores), or None where that file does not exist.
    The difference over a stage, divided by its wall time, is how many cores it kept busy."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle
    return busy / os.sysconf("SC_CLK_TCK")


def cores() -> int:
    return os.cpu_count() or 1


def matmul_gflops(size: int = 1024, repeats: int = 8, threads: int | None = None) -> float:
    """fp32 GFLOP/s of a square matrix multiply on ``threads`` (the current ones by default; best of
    ``repeats``): the rate the networks' FLOPs are measured against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / best_seconds(lambda: a @ b, repeats, threads) / 1e9


def best_seconds(fn: Callable[[], object], repeats: int = 3, threads: int | None = None,
                 warm_up: bool = True) -> float:
    """Seconds of the fastest of ``repeats`` timed calls of ``fn`` after one untimed warm-up call
    (unless ``warm_up`` is False: the caller has warmed up what ``fn`` runs), on ``threads`` torch
    threads (the current ones by default). The fastest, because other load only ever adds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        if warm_up:
            fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best
    finally:
        torch.set_num_threads(previous)
