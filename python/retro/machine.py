"""What a timing was measured on: the CPU, its vector instruction sets, cores and load.

    before = machine_info()
    ... the timed work ...
    summary["machine"] = {**before, "load_after": load_average()}
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The flags (as /proc/cpuinfo spells them) that decide which kernels run: retro's SIMD levels,
# bf16 autocast of the embedder (retro.db.embed) and the core's bf16 attention products.
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve", "bf16")


def cpu_model() -> str:
    """The CPU's name ("model name" in /proc/cpuinfo; the processor type elsewhere)."""
    for line in _cpuinfo().splitlines():
        if line.split(":")[0].strip() in ("model name", "Model", "cpu model"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    """The flags of ISA_FLAGS this CPU has, in that order."""
    present: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            present.update(line.split(":", 1)[1].split())
    return [flag for flag in ISA_FLAGS if flag in present]


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 dot products in hardware


def cpu_has_native_bf16() -> bool:
    """The CPU computes bf16 natively (AVX512-BF16 or AMX): bf16 autocast then runs the matmuls
    faster than float32 (the embedder's default precision, and retro demo's training dtype). False where torch
    is held below AVX-512 (ATEN_CPU_CAPABILITY=avx2 or default, as when an AVX2 machine is
    emulated on an AVX-512 one): its bf16 would be emulated, slower than float32."""
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2"):
        return False
    return any(flag in isa_flags() for flag in CPU_BF16_FLAGS)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (runnable processes), rounded."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict:
    """The CPU's model and flags, the core's SIMD and bfloat16 kernels, the cores this process may
    use and the load now."""
    from retro import _core

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "isa": isa_flags(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "simd": _core.simd_level(),  # the core's kernels (RETRO_SIMD forces a level)
        "bf16_kernel": _core.bf16_kernel(),  # its bfloat16 attention products (RETRO_BF16 forces one)
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),  # set: torch's forced too
        "load_before": load_average(),
    }


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
