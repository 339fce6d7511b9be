"""Fault injection for the torchrun tests: `cli.py` as one rank, with one rank misbehaving.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/rank_fault.py ARGS...

ARGS are `cli.py`'s. The rank named by LONGDOC_FAULT_RANK (no other) then
* adds the options of LONGDOC_FAULT_ARGS (a JSON list), e.g. another --top-k;
* runs in the folder LONGDOC_FAULT_CWD, so a relative --out names another file there;
* with LONGDOC_FAULT_KILL="PATTERN:N", SIGKILLs itself right after the N-th file whose name
  matches the glob PATTERN is published (renamed into place by `os.replace`, as
  `longdoc.runtime.workdir.atomic_path` publishes every file): a crash at a chosen moment;
* with LONGDOC_FAULT_KILL_WHEN=PATH, SIGKILLs itself as soon as PATH exists (a file another
  rank writes, e.g. rank 0's first checkpoint);
* with LONGDOC_FAULT_FILE_SIZE=N, may write no file past N bytes (RLIMIT_FSIZE, as
  tests/checkout.py's run_with_file_size_limit): a full disk when a file grows past it.
Reads only its environment; writes nothing itself.
"""

import fnmatch
import json
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _kill_after(pattern: str, count: int):
    replace, seen = os.replace, [0]

    def replace_then_maybe_die(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        if fnmatch.fnmatch(Path(dst).name, pattern):
            seen[0] += 1
            if seen[0] >= count:
                os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_then_maybe_die


def _kill_when(path: Path):
    def watch():
        while not path.exists():
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    args = sys.argv[1:]
    if os.environ.get("RANK") == os.environ.get("LONGDOC_FAULT_RANK"):
        args += json.loads(os.environ.get("LONGDOC_FAULT_ARGS", "[]"))
        if os.environ.get("LONGDOC_FAULT_CWD"):
            os.chdir(os.environ["LONGDOC_FAULT_CWD"])
        if os.environ.get("LONGDOC_FAULT_KILL"):
            pattern, count = os.environ["LONGDOC_FAULT_KILL"].rsplit(":", 1)
            _kill_after(pattern, int(count))
        if os.environ.get("LONGDOC_FAULT_KILL_WHEN"):
            _kill_when(Path(os.environ["LONGDOC_FAULT_KILL_WHEN"]))
        if os.environ.get("LONGDOC_FAULT_FILE_SIZE"):
            limit = int(os.environ["LONGDOC_FAULT_FILE_SIZE"])
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.path.insert(0, str(ROOT / "stages"))
    from longdoc.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
