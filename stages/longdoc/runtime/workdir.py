"""A resumable work folder `<out>.partial/` owned by one process at a time.

Stage one keeps finished blocks of vectors there, fine-tuning its checkpoints. The
folder holds `settings.json` (what the interrupted run was doing: a rerun with other
settings is refused, naming the difference) and `lock`, flock-ed by the one process
working in it, so a second writer is refused instead of corrupting the first.
Files inside are written under a temporary name and renamed, so a kill at any moment
leaves each of them either old or new, never half-written.

`atomic_path` is the one way any command publishes a file or folder: a private,
unpredictable temporary name in the same folder (created with O_EXCL, so a planted
symlink is never written through), fsync, rename, fsync of the folder; on any failure
the temporary is removed and an OSError (disk full, file too large, permissions)
becomes a one-line UserError naming the path and the cause.

`load_torch_file` is the one way a torch file (a head, a `state.pt`) is read back: proven
whole, then loaded as tensors and plain containers only; `tensor_problem` checks each
tensor read from one against what the reader expects before it is used.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from longdoc.runtime.errors import UserError


class WorkDir:
    """`<out>.partial/` as a context manager: entering takes the lock and checks settings."""

    def __init__(self, out: Path, settings: dict, fresh: bool = False, replace_other_settings: bool = False):
        self.out = Path(out)
        self.dir = work_folder(out)
        self.settings = settings
        self.fresh = fresh  # drop an earlier run's work (--overwrite) once the lock is ours
        # Drop an earlier run's work only when its settings differ (or its record is damaged);
        # work of the same settings is resumed. For commands whose resumed result equals an
        # uninterrupted one, so keeping it is never wrong (train-head --overwrite).
        self.replace_other_settings = replace_other_settings
        self._lock_file = None

    def __enter__(self):
        if self.dir.is_symlink():
            raise UserError(f"{self.dir} is a symbolic link; remove it (a work folder is never followed elsewhere)")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a symlink planted at `lock` is refused, never written through
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            self._lock_file = os.fdopen(fd, "a+")
        except OSError as error:
            cause = "it is a symbolic link" if error.errno == errno.ELOOP else error.strerror
            raise UserError(f"cannot write next to {self.out}: {self.dir / 'lock'}: {cause}") from None
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
        # A SIGKILL skips atomic_path's cleanup: its temporaries are ours to remove, under our lock.
        remove_temporaries(self.out.parent, self.out.name)
        remove_temporaries(self.dir)
        if self.fresh or (self.replace_other_settings and not self._holds_these_settings()):
            self._clear()
        self._check_settings()
        return self

    def _clear(self):
        for path in self.dir.iterdir():
            if path.name != "lock":
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    def _holds_these_settings(self) -> bool:
        """True when the folder is empty or its recorded settings are exactly this run's."""
        path = self.dir / "settings.json"
        if not path.exists():
            return not any(p.name != "lock" for p in self.dir.iterdir())
        try:
            return json.loads(path.read_text()) == self.settings
        except (OSError, ValueError, RecursionError):
            return False

    def __exit__(self, *exc):
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock

    def _check_settings(self):
        path = self.dir / "settings.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError, RecursionError):  # damaged: its blocks cannot be trusted either
                saved = None
            if not isinstance(saved, dict):  # unreadable, or JSON no run writes (null, a list, a number)
                raise UserError(f"{path} is damaged; pass --overwrite to start again")
            if saved != self.settings:
                diff = differences(saved, self.settings, sorted(set(saved) | set(self.settings)),
                                   names=("this run", "the interrupted run"))
                raise UserError(
                    f"{self.dir} holds an interrupted run with other settings ({'; '.join(diff)}); "
                    f"rerun with those settings, or pass --overwrite to start again")
            return
        atomic_write_bytes(path, json.dumps(self.settings, indent=1, sort_keys=True).encode())

    def discard(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def work_folder(out: str | Path) -> Path:
    """`<out>.partial/`, the work folder of the command writing `out`."""
    return Path(f"{out}.partial")


def differences(theirs: dict, ours: dict, keys, names=("this run", "the file")) -> list[str]:
    """'key: A (this run) vs B (the file)' for each key on which the two differ."""
    return [f"{k}: {ours.get(k)!r} ({names[0]}) vs {theirs.get(k)!r} ({names[1]})" for k in keys
            if str(ours.get(k)) != str(theirs.get(k))]


def atomic_write_bytes(path: Path, data: bytes):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def atomic_path(path: str | Path, folder: bool = False):
    """Yield a private temporary path beside `path` (an empty file, or an empty folder
    with `folder`); when the block ends without error, publish it at `path`.

    Publishing: fsync the file (every file in the folder), rename over `path`, fsync the
    parent folder, so after a crash `path` is either the old or the whole new content.
    An existing folder at `path` is replaced only once the new one is complete. On any
    failure the temporary is removed; an OSError becomes a UserError naming `path`."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
            os.chmod(tmp, 0o777 & ~_umask())  # what mkdir would have given the folder
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)  # O_EXCL, 0600
            os.close(fd)
            tmp = Path(name)
            os.chmod(tmp, 0o666 & ~_umask())  # what open() would have given the file
        yield tmp
        if folder:
            for item in tmp.rglob("*"):
                if item.is_file() and not item.is_symlink():
                    fsync_path(item)
            fsync_path(tmp)
            old = None
            if path.is_dir() and not path.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
                os.replace(path, old / "x")
            try:
                os.replace(tmp, path)
            except OSError:
                if old is not None:
                    os.replace(old / "x", path)  # put the previous folder back
                raise
            tmp = None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            fsync_path(tmp)
            os.replace(tmp, path)
            tmp = None
        fsync_path(parent)
    except OSError as error:
        cause = error.strerror or (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"cannot write {path}: {cause}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def remove_temporaries(folder: Path, name: str | None = None):
    """Delete what `atomic_path` left in `folder` for `name` (any name when None) when a
    kill stopped it: `.NAME.XXXXXXXX.tmp` files and folders, `.NAME.XXXXXXXX.old` folders."""
    pattern = re.compile(rf"^\.{re.escape(name) if name else '.+'}\.[a-z0-9_]{{8}}\.(tmp|old)$")
    try:
        found = [path for path in Path(folder).iterdir() if pattern.match(path.name)]
    except OSError:
        return
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def fsync_path(path: Path):
    """fsync a file or a folder by path (a folder: so a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    try:  # read, not set: setting it would race with threads creating files
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def check_output_path(out: Path):
    """Refuse an --out that is a folder or cannot be written, before any work is done."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as {out / 'train.h5'}")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create {parent}: {error.strerror}") from None
    try:  # a private name (O_EXCL): torchrun ranks probe at once, and a planted symlink is not followed
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".write-test", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"--out {out}: cannot write in {parent}: {error.strerror}") from None


class WriteGuard(io.RawIOBase):
    """A binary file for a library that cannot survive a failed write (h5py: after
    ENOSPC or EFBIG its close fails, and the process later crashes in its cleanup).
    The first OSError is kept in `error` and every later write is dropped, so the
    library finishes and closes normally; the caller then raises `error`."""

    def __init__(self, raw):
        self.raw, self.error = raw, None

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        return self.raw.seek(offset, whence)

    def tell(self):
        return self.raw.tell()

    def readinto(self, buffer):
        return self.raw.readinto(buffer)

    def write(self, data):
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):  # a short write is continued, never lost
            try:
                done += self.raw.write(view[done:])
            except OSError as error:
                self.error = error
        return len(view)

    def truncate(self, size=None):
        if self.error is None:
            try:
                return self.raw.truncate(size)
            except OSError as error:
                self.error = error
        return size

    def flush(self):
        if self.error is None:
            try:
                self.raw.flush()
            except OSError as error:
                self.error = error


def load_torch_file(path: Path):
    """What `torch.save` wrote to `path`, proven whole first: the file must be a zip of
    uncompressed records (what torch writes) each matching its CRC-32, since torch's own
    reader checks none and would read a flipped bit in a tensor as another weight. Then
    `torch.load(weights_only=True)`: tensors and plain containers only, so a planted file
    runs no code. One file object throughout, so the file checked is the file loaded.
    ValueError with the first line of the cause when it is not such a file."""
    import zipfile

    import torch

    try:
        file = open(path, "rb")
    except OSError as error:
        raise ValueError(f"cannot read it: {error.strerror}") from None
    with file:
        try:
            with zipfile.ZipFile(file) as archive:
                records = archive.infolist()
                packed = [r.filename for r in records if r.compress_type != zipfile.ZIP_STORED]
                if packed:  # torch stores; decompressing a planted record could take any time
                    raise ValueError(f"record {packed[0]!r} is compressed, which torch never writes")
                damaged = archive.testzip()
        except ValueError:
            raise
        except Exception as error:  # noqa: BLE001 - zipfile's many ways of meeting a foreign file
            raise ValueError(f"not a torch file: {first_line(error)[:120]}") from None
        if damaged is not None:
            raise ValueError(f"damaged: its record {damaged!r} fails its CRC-32 check")
        file.seek(0)
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - UnpicklingError, RuntimeError, KeyError, ...
            raise ValueError(f"{type(error).__name__}: {first_line(error)[:120]}") from None


def tensor_problem(value, shape: tuple, dtype) -> str | None:
    """None when `value`, read from a file, is a dense CPU tensor of `shape` and `dtype`
    holding its own numbers, all finite (floating point); else what is wrong, in a few
    words. A view is refused (torch loads an expanded [10**10] tensor over one number), so
    a tensor that passes holds no more numbers than the file's bytes."""
    import torch

    if not isinstance(value, torch.Tensor):
        return f"a {type(value).__name__}, not a tensor"
    if value.layout != torch.strided or value.device.type != "cpu":
        return f"a {value.layout} tensor on {value.device.type}, not a dense one"
    if value.dtype != dtype or tuple(value.shape) != tuple(shape):
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)} where " \
               f"{str(dtype).removeprefix('torch.')} {list(shape)} belongs"
    if not value.is_contiguous() or (
            (value.storage_offset() + value.numel()) * value.element_size() > value.untyped_storage().nbytes()):
        return "a view of fewer numbers than its shape holds"
    if value.is_floating_point() and not torch.isfinite(value).all():
        return "NaN or infinite values"
    return None


def brief(value) -> str:
    """A value read from a file, short enough for one line of an error message."""
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."


def first_line(error: BaseException) -> str:
    """An error's message in one line, for a one-line UserError."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_not_an_input(out: str | Path, inputs: dict[str, str | Path | None], what: str = "--out",
                       inside: bool = False):
    """Refuse an output that is (or, for a folder, holds) one of the command's inputs:
    an output never replaces an input, --overwrite or not. `inputs`: option -> path.
    `inside`: also refuse an output inside an input folder, for a command that reads the
    folder again while its output is there (`predict --data` reading a folder corpus on
    resume would classify its own work files)."""
    out = Path(out).resolve()
    for option, given in inputs.items():
        if given is None or not Path(given).exists():
            continue
        source = Path(given).resolve()
        if source == out or out in source.parents or (out.exists() and os.path.samefile(out, source)):
            raise UserError(f"{what} {out} would replace {option} {given}; an output never replaces an input, "
                            f"choose another {what}")
        if inside and source.is_dir() and source in out.parents:
            raise UserError(f"{what} {out} is inside {option} {given}, which would then read it as input; "
                            f"choose another {what} outside it")
