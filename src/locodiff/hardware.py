"""What the machine's arithmetic units support, for choosing a dtype: bf16 without native units
(e.g. AMD Zen 3, AVX2 only) is emulated and slower than fp32, on one core at a time."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of CPUs with bf16 arithmetic


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


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
