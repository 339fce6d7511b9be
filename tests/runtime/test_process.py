"""longdoc.runtime.process: handing freed heap memory back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import numpy as np
import pytest

from longdoc.runtime import process


def _resident_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's heap")
def test_released_memory_leaves_the_process():
    """Many small blocks (below glibc's mmap threshold, so they live in the heap) freed
    in a way that leaves the heap's top in use: glibc keeps their pages until trimmed."""
    blocks = [np.ones(16_000, dtype=np.uint8) for _ in range(20_000)]  # ~320 MB in the heap
    keep = blocks[-1]
    del blocks[:-1]
    before = _resident_kib()
    process.release_freed_memory()
    after = _resident_kib()
    assert keep.sum() == 16_000
    assert before - after > 100_000, (before, after)  # over 100 MB of the 320 handed back


def test_without_glibc_it_does_nothing(monkeypatch):
    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    process.release_freed_memory()  # neither raises nor calls anything
