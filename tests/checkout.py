"""Where this checkout and the shared datasets lie, and how to run its `cli.py` in a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"


def run_cli(*args, check=False, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run `python cli.py ARGS` in a real subprocess."""
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"cli.py {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def kill_cli_once_written(path: Path, *args, timeout=300):
    """Start `python cli.py ARGS`, SIGKILL it as soon as `path` exists (or let it end if it
    finishes first): a crash at a moment the test chooses by the file it waits for."""
    process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + timeout
    while not path.exists() and process.poll() is None:
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


# A full disk, as the process sees it: writes past the limit fail with EFBIG.
FILL_DISK = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from longdoc import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def run_with_file_size_limit(limit, *args) -> subprocess.CompletedProcess:
    """Run `cli.py ARGS` in a process that may write no file past `limit` bytes (RLIMIT_FSIZE):
    a full disk at the moment the output grows past it."""
    code = FILL_DISK.format(limit=limit)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
