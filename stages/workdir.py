"""A resumable work folder `<out>.partial/` owned by one process at a time.

Stage one keeps finished blocks of vectors there, fine-tuning its checkpoints. The
folder holds `settings.json` (what the interrupted run was doing: a rerun with other
settings is refused, naming the difference) and `lock`, flock-ed by the one process
working in it, so a second writer is refused instead of corrupting the first.
Files inside are written under a temporary name and renamed, so a kill at any moment
leaves each of them either old or new, never half-written.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from stages.errors import UserError


class WorkDir:
    """`<out>.partial/` as a context manager: entering takes the lock and checks settings."""

    def __init__(self, out: Path, settings: dict, fresh: bool = False):
        self.out = Path(out)
        self.dir = Path(f"{out}.partial")
        self.settings = settings
        self.fresh = fresh  # drop an earlier run's work (--overwrite) once the lock is ours
        self._lock_file = None

    def __enter__(self):
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.dir / "lock", "a+")
        except OSError as error:
            raise UserError(f"cannot write next to {self.out}: {error.strerror}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            raise UserError(f"{self.out} is being written by {holder}; wait for it or stop it") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()}")
        self._lock_file.flush()
        if self.fresh:
            for path in self.dir.iterdir():
                if path.name != "lock":
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        self._check_settings()
        return self

    def __exit__(self, *exc):
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock

    def _check_settings(self):
        path = self.dir / "settings.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                saved = None
            if saved is not None and saved != self.settings:
                diff = differences(saved, self.settings, sorted(set(saved) | set(self.settings)),
                                   names=("this run", "the interrupted run"))
                raise UserError(
                    f"{self.dir} holds an interrupted run with other settings ({'; '.join(diff)}); "
                    f"rerun with those settings, or pass --overwrite to start again")
            if saved is not None:
                return
        atomic_write_bytes(path, json.dumps(self.settings, indent=1, sort_keys=True).encode())

    def discard(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def differences(theirs: dict, ours: dict, keys, names=("this run", "the file")) -> list[str]:
    """'key: A (this run) vs B (the file)' for each key on which the two differ."""
    return [f"{k}: {ours.get(k)!r} ({names[0]}) vs {theirs.get(k)!r} ({names[1]})" for k in keys
            if str(ours.get(k)) != str(theirs.get(k))]


def atomic_write_bytes(path: Path, data: bytes):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def check_output_path(out: Path):
    """Refuse an --out that is a folder or cannot be written, before any work is done."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as {out / 'train.h5'}")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create {parent}: {error.strerror}") from None
    probe = parent / f".{out.name}.write-test-{os.getpid()}"  # one per process: torchrun ranks probe at once
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"--out {out}: cannot write in {parent}: {error.strerror}") from None
