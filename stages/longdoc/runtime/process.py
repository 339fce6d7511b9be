"""What a command needs from the process it runs in: peak memory, running out of it, a progress
bar, work in the background.

Reads nothing from disk but /proc-style resource counters; writes only to stderr.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from contextlib import contextmanager

import torch

from longdoc.runtime.errors import UserError


def peak_memory_bytes(device: torch.device | None = None) -> int:
    """Peak resident memory of this process (plus peak CUDA memory on a GPU)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if device is not None and device.type == "cuda":
        peak += torch.cuda.max_memory_allocated(device)
    return peak


@contextmanager
def memory_step(step: str, hint: str):
    """Running out of memory inside the block (Python's MemoryError, torch's CPU or CUDA
    OutOfMemoryError) is one line naming the step and the setting that bounds it:
    `out of memory while {step}; {hint}`. Wrap each step of a command whose memory a
    setting bounds, so the line names that setting rather than a guess."""
    try:
        yield
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise UserError(f"out of memory while {step}; {hint}") from None


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc's `malloc_trim`), so that memory a
    finished thread freed into its own arena is not held beside the next step's; a no-op
    where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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


class Background:
    """`work()` started at once in a thread beside the caller's; `result()` waits for it and
    returns its value or raises its exception. For work that releases the GIL (liblinear,
    torch), so that it runs on another core than the caller's. A daemon thread, so an
    interrupted command exits without waiting for it."""

    def __init__(self, work, name: str = "background"):
        self._outcome: tuple[bool, object] | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work):
        try:
            self._outcome = (True, work())
        except BaseException as error:  # noqa: BLE001 - handed to the caller of result()
            self._outcome = (False, error)

    def result(self):
        self._thread.join()
        finished, value = self._outcome
        if not finished:
            raise value
        return value
