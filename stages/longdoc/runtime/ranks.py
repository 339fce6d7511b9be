"""One process of a torchrun job: where it sits, its device and threads, and how the
ranks agree on each step, report to rank 0 and fail together with one line.

Reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE,
OMP_NUM_THREADS, TORCHELASTIC_RESTART_COUNT) and joins its rendezvous. Writes keys in
the run's key-value store (each rank's report, its count of finished blocks, whether
rank 0 has printed the error) and, on rank 0, the one `error: ...` line naming every
failing rank, and `visible-RRR` in a work folder (`shared_folder`: is it the same
folder for every rank?). Knows nothing of the work it coordinates: `longdoc.distributed`
runs stage one with it, `longdoc.predict` and `longdoc.finetune` their corpus-sized work.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from longdoc.runtime.devices import resolve_device
from longdoc.runtime.errors import ReportedElsewhere, UserError
from longdoc.runtime.process import usable_cores
from longdoc.runtime.workdir import atomic_write_bytes, differences, first_line

# Setup collectives wait at most this long for the slowest rank. Every rank does the
# same work before them (load the corpus and the encoder, tokenize an N-th), so the
# wait is short; the limit only ends a run whose peer never arrives.
SETUP_TIMEOUT = timedelta(minutes=30)
# Rank 0 gives up on a rank that has neither reported nor finished a block for this
# long. A block (2048 windows by default) takes about a minute on 2 CPU cores and a
# few minutes for bert-base at 512 tokens; torchrun usually notices a dead rank first.
STALL_TIMEOUT_S = 30 * 60
POLL_S = 1.0  # how often rank 0 looks at the other ranks' reports
# Rank 0 learning of another rank's failure lingers this long before it exits, so that
# torchrun sees the failing rank end first and names it as the root cause (torchrun
# stops rank 0 as soon as that happens; without torchrun, this is the only delay).
LINGER_S = 10.0


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in a torchrun job (from torchrun's environment)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @classmethod
    def from_env(cls, environ=os.environ) -> Ranks | None:
        """The job torchrun started this process in; None outside torchrun or with one rank."""
        if int(environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        world = int(environ["WORLD_SIZE"])
        return cls(int(environ["RANK"]), world, int(environ.get("LOCAL_RANK", 0)),
                   int(environ.get("LOCAL_WORLD_SIZE", world)))


def thread_count(requested: int, local_world_size: int, environ=os.environ, cores: int | None = None) -> int:
    """Torch threads for one rank: `--threads` when given, else OMP_NUM_THREADS when the
    user set it, else this machine's cores shared out among its ranks.

    torchrun itself sets OMP_NUM_THREADS=1 for every worker when the user has not set
    it, which would leave all but one core per rank idle on a large CPU; so a value of
    1 is taken for torchrun's and ignored (`--threads 1` asks for one thread)."""
    if requested > 0:
        return requested
    omp = environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 1:
        return int(omp)
    cores = cores or usable_cores()
    return max(1, cores // local_world_size)


def rank_device(device: str, ranks: Ranks) -> tuple[torch.device, str | None]:
    """This rank's device, or the CPU and the reason when the device option is unusable
    (to be reported in setup, so the line is printed once rather than by every rank)."""
    try:
        resolved = resolve_device(device)
        if resolved.type == "cuda" and ranks.local_world_size > torch.cuda.device_count():
            raise UserError(f"{ranks.local_world_size} ranks on this machine but {torch.cuda.device_count()} "
                            f"GPUs; give --nproc_per_node {torch.cuda.device_count()} (one rank per GPU)")
    except UserError as error:
        return torch.device("cpu"), str(error)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    return resolved, None


def start(ranks: Ranks, threads: int, device: str) -> tuple[Group, int, torch.device, str | None]:
    """What every rank does first: its threads (`thread_count`, torch's and the
    tokenizer's), its device (`rank_device`) and the process group (nccl on GPUs, gloo
    on CPUs). Returns the group, the threads, the device and the device error, if any,
    to be reported in the first `Group.agree` (so it is printed once)."""
    threads = thread_count(threads, ranks.local_world_size)
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))  # the tokenizer's thread pool too
    resolved, device_error = rank_device(device, ranks)
    return Group(ranks, "nccl" if resolved.type == "cuda" else "gloo"), threads, resolved, device_error


def same_as_rank_zero(key: str, keys=None, hint: str = "give them explicitly"):
    """A `Group.agree` check: mark failed every rank whose `outcome[key]` (a dict of
    settings) differs from rank 0's on `keys` (all of both dicts' keys when None),
    naming each differing setting (e.g. precision "auto" resolved otherwise elsewhere)."""
    def check(everyone: list[dict]):
        first = everyone[0]
        for r, outcome in enumerate(everyone[1:], start=1):
            if "error" in outcome or "error" in first:
                continue
            names = sorted(set(first[key]) | set(outcome[key])) if keys is None else keys
            diff = differences(first[key], outcome[key], names, names=(f"rank {r}", "rank 0"))
            if diff:
                outcome["error"] = f"settings differ from rank 0's ({'; '.join(diff)}); {hint}"
    return check


class PeerLost(UserError):
    """A collective failed because another rank is gone (killed, or failed itself)."""


@contextmanager
def collective(what: str):
    """Around a collective of the work (an all-reduce of a step): a peer that died turns
    torch's RuntimeError (gloo: "Connection reset by peer", nccl: a watchdog error) into one
    line that says what happened; torchrun's report below it names the rank."""
    try:
        yield
    except RuntimeError as error:
        cause = re.sub(r"^\[[^\]]*\]\s*", "", first_line(error))[:100]  # gloo's source location first
        raise PeerLost(f"another rank stopped during {what} ({cause}); torchrun's report names it; "
                       f"rerun the same command to resume") from None


def failure_line(group: Group, error: BaseException):
    """Report `error`, met by this rank in its own work, to rank 0 and return the one-line
    UserError to raise (`raise failure_line(group, e) from None`): bad input or the
    machine (UserError, OSError) as it is, a bug with its traceback printed first. A lost
    peer (`PeerLost`: this rank did not fail) is said once for the run: not at all when the
    rank that failed has said why itself, else by rank 0 alone (a rank was killed)."""
    if isinstance(error, PeerLost):
        return ReportedElsewhere(str(error)) if group.rank != 0 or group.failure_reported() else error
    if isinstance(error, (UserError, OSError)):
        return group.report_failure(str(error))
    traceback.print_exc()
    return group.report_failure(f"{type(error).__name__}: {error}")


def shared_folder(group: Group, folder, what: str) -> None:
    """Check that `folder` (a work folder rank 0 holds) is the same folder for every rank,
    as a run across machines needs: rank 0 writes a random token into it, each rank
    must read it back. A rank that cannot fails the run in one line naming `what`."""
    token = secrets.token_hex(8)
    mine: dict = {}
    if group.rank == 0:
        try:
            atomic_write_bytes(folder / "visible", token.encode())
        except OSError as error:
            mine = {"error": f"cannot write {folder / 'visible'}: {error.strerror}"}
    token = group.agree(f"{what}/token", {**mine, "token": token})[0]["token"]
    try:
        seen = (folder / "visible").read_text()
    except OSError:
        seen = None
    group.agree(f"{what}/seen", {} if seen == token else {
        "error": f"{what} {folder} is not the folder rank 0 writes (not on a filesystem every rank sees); "
                 f"give a path on a shared filesystem"})


class Group:
    """This rank in the process group, with a key-value store private to this run
    (torchrun's, or rank 0's outside its agent) for what the collectives do not carry."""

    def __init__(self, ranks: Ranks, backend: str):
        """Join torchrun's rendezvous and start the process group."""
        store, _, _ = next(dist.rendezvous("env://", ranks.rank, ranks.world_size, timeout=SETUP_TIMEOUT))
        store.set_timeout(SETUP_TIMEOUT)
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=ranks.rank,
                                world_size=ranks.world_size, timeout=SETUP_TIMEOUT)
        # torchrun keeps its store across restarts of the workers: keys are per attempt
        self.store = dist.PrefixStore(f"longdoc-embed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        self.rank, self.world_size = ranks.rank, ranks.world_size

    def close(self):
        dist.destroy_process_group()

    def barrier(self):
        dist.barrier()

    def agree(self, step: str, mine: dict, check=None) -> list[dict]:
        """Every rank's outcome of `step`, in rank order: `mine` here, {"error": cause}
        where the step failed. `check(outcomes)` may mark more ranks failed. If any
        failed, every rank raises ReportedElsewhere (exit 2) once rank 0 has printed
        one line naming them all, so torchrun does not stop rank 0 before it prints."""
        outcomes = [None] * self.world_size
        dist.all_gather_object(outcomes, mine)
        if check is not None:
            check(outcomes)
        failures = [(r, outcome["error"]) for r, outcome in enumerate(outcomes) if "error" in outcome]
        if not failures:
            return outcomes
        message = describe_failures(failures, self.world_size)
        if self.rank == 0:
            print(f"error: {message}", file=sys.stderr, flush=True)  # the CLI's one-line format
            self.store.set(f"{step}/printed", "1")
        else:
            self.store.wait([f"{step}/printed"])
        raise ReportedElsewhere(message)

    def block_done(self):
        """Count a finished block: rank 0 takes a rank whose count stalls for gone."""
        self.store.add(f"progress/{self.rank}", 1)

    def report(self, report: dict):
        """This rank's work is done: tell rank 0 (JSON of plain values)."""
        self.store.set(f"report/{self.rank}", json.dumps(report))

    def report_failure(self, cause: str) -> UserError:
        """Tell rank 0 (which may be waiting in `reports`) and return the error to raise here."""
        try:
            self.store.set(f"report/{self.rank}", json.dumps({"error": cause}))
        except Exception:  # the store may be gone with torchrun's agent; the line below still says it
            pass
        return UserError(f"rank {self.rank} failed: {cause}")

    def failure_reported(self) -> bool:
        """Whether some rank has reported a failure of its own (`report_failure`)."""
        try:
            keys = [f"report/{r}" for r in range(self.world_size)]
            return any("error" in json.loads(self.store.get(key)) for key in keys if self.store.check([key]))
        except Exception:  # the store may be gone with torchrun's agent
            return False

    def reports(self) -> list[dict]:
        """Rank 0: every rank's report, once all are in (`wait_for_reports`)."""
        return wait_for_reports(self.store, self.world_size)


def wait_for_reports(store, world_size: int, stall_timeout_s: float = STALL_TIMEOUT_S,
                     poll_s: float = POLL_S, linger_s: float = LINGER_S) -> list[dict]:
    """Every rank's report, in rank order, once all are in. A rank that reported a
    failure has printed it itself: raise ReportedElsewhere. A rank that has neither
    reported nor finished a block for `stall_timeout_s` is taken for gone."""
    keys = [f"report/{r}" for r in range(world_size)]
    seen = {r: (-1, time.monotonic()) for r in range(world_size)}  # last progress count, when it changed
    while True:
        reports = {r: json.loads(store.get(keys[r])) for r in range(world_size) if store.check([keys[r]])}
        failed = sorted(r for r, report in reports.items() if "error" in report)
        if failed:
            time.sleep(linger_s)
            raise ReportedElsewhere(f"rank {failed[0]} failed: {reports[failed[0]]['error']}")
        if len(reports) == world_size:
            return [reports[r] for r in range(world_size)]
        now = time.monotonic()
        for r in range(world_size):
            if r in reports:
                continue
            count = store.add(f"progress/{r}", 0)
            if count != seen[r][0]:
                seen[r] = (count, now)
            elif now - seen[r][1] > stall_timeout_s:
                raise UserError(f"rank {r} failed: no block finished and no report for {stall_timeout_s:.0f} s; "
                                f"its finished blocks are kept, rerun the same command to resume")
        time.sleep(poll_s)


def describe_failures(failures: list[tuple[int, str]], world_size: int) -> str:
    """'rank 1 failed: X', 'ranks 0, 2 failed: X', 'every rank failed: X'; causes joined by '; '."""
    by_cause: dict[str, list[int]] = {}
    for rank, cause in failures:
        by_cause.setdefault(cause, []).append(rank)
    parts = []
    for cause, failed in by_cause.items():
        who = ("every rank" if len(failed) == world_size else
               f"rank {failed[0]}" if len(failed) == 1 else f"ranks {', '.join(map(str, failed))}")
        parts.append(f"{who} failed: {cause}")
    return "; ".join(parts)
