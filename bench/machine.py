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


def machine_name() -> str:
    """The CPU and its cores, and the GPU where one does the work."""
    name = f"{cpu_name()}, {os.cpu_count()} cores"
    try:
        import torch
        if torch.cuda.is_available():
            name += f"; {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return name
