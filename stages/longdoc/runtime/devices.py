"""Which device a process computes on: `--device` (auto, cpu, cuda) as a torch device, and
which instructions its CPU has.

Imports torch only when a device is resolved, so the command-line settings (`longdoc.configs`)
can name the accepted values without it. Reads the LOCAL_RANK torchrun sets and
/proc/cpuinfo; writes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from longdoc.runtime.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags /proc/cpuinfo lists for the CPU (empty where it cannot be read)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    return next((frozenset(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")),
                frozenset())


def resolve_device(device: str) -> torch.device:
    """The torch device `--device` names (auto: CUDA if visible); under torchrun on CUDA, the
    GPU of this rank's LOCAL_RANK."""
    import torch

    if device not in DEVICES:
        raise UserError(f"--device is one of {', '.join(DEVICES)}; got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch")
    if device == "cuda" and int(os.environ.get("LOCAL_RANK", 0)) < torch.cuda.device_count():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(device)
