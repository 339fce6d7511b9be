"""What a command needs from the process it runs in: peak memory, a progress bar.

Reads nothing from disk but /proc-style resource counters; writes only to stderr.
"""

from __future__ import annotations

import os
import resource
import sys

import torch


def peak_memory_bytes(device: torch.device | None = None) -> int:
    """Peak resident memory of this process (plus peak CUDA memory on a GPU)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if device is not None and device.type == "cuda":
        peak += torch.cuda.max_memory_allocated(device)
    return peak


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one (Linux), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def progress_bar(total: int, enabled: bool | None, desc: str | None = None, unit: str = "batch",
                 initial: int = 0, leave: bool = True):
    """A tqdm bar on stderr. `enabled` None: shown only on a terminal, quiet in logs."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                disable=None if enabled is None else not enabled, smoothing=0.1, dynamic_ncols=True,
                file=sys.stderr)
