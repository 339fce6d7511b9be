"""What a benchmark ran on, for the record beside its figures.

Reads /proc/cpuinfo and asks torch for its GPU; writes nothing.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


MATRIX_FEATURES = ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
"""The CPU flags that decide stage one's speed: int8 dot products (VNNI), native bf16, and the
AMX tile units (where bf16 matrix products ran 8x fp32's here, BENCHMARKS S1c)."""


def cpu_features() -> list[str]:
    """Which of MATRIX_FEATURES the CPU has (`longdoc.runtime.devices.cpu_flags`, the flags the
    project's own precision checks read)."""
    from longdoc.runtime.devices import cpu_flags

    flags = cpu_flags()
    return [f for f in MATRIX_FEATURES if f in flags]


def machine_name() -> str:
    """The CPU, its matrix features and its cores, and the GPU where one does the work."""
    features = cpu_features()
    name = f"{cpu_name()}{' (' + ', '.join(features) + ')' if features else ''}, {os.cpu_count()} cores"
    try:
        import torch
        if torch.cuda.is_available():
            name += f"; {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return name
