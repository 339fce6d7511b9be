"""Stage one under torchrun: every rank embeds one contiguous shard of the documents.

    torchrun --standalone --nproc_per_node 2 cli.py embed --split train --out data/cache/train.h5
    make embed NPROC=2                                   # the same through make
    make embed NPROC=4 TORCHRUN_ARGS="--nnodes 2 --node-rank 0 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id embed-1"   # on each of two machines (node-rank 0, 1)

`cli.py embed` comes here when torchrun started it with WORLD_SIZE above 1. It reads
what one-process stage one reads. Rank R of N writes the shard file
`<out>.shard-RRR-of-NNN.h5`, a complete cache of its documents, through its own
resumable work area `<out>.shard-RRR-of-NNN.h5.partial/`; rank 0 then joins the shards
into `<out>` and deletes them. Across machines `--out` must be on a filesystem every
machine sees. The files, and why joining copies: docs/cache-format.md.

The run, as every rank sees it:
1. Setup. Check the options, load the corpus and the encoder, tokenize one N-th of the
   documents (a contiguous slice by count) and gather every rank's token counts. From
   them every rank computes the same plan: contiguous runs of documents with about
   equal encoder tokens (`plan_shards`). The plan depends only on the corpus, the
   settings and N, so a rerun resumes the very same shards.
2. Open this rank's shard: a finished shard file of the same settings is kept as it is;
   otherwise take the shard's lock and find its finished blocks.
3. Embed what is left with `stages.embedding` (same windows, batches and blocks as one
   process), write the shard file (atomic rename), report done or failed in the
   rendezvous store, and exit.
4. Rank 0 alone: wait for every report, check each shard file against the plan, join.

Failures: an error in steps 1-2 is gathered, and rank 0 prints one line naming each
failing rank and its cause (`error: rank 1 failed: ...`); every rank exits 2. An error
in step 3 is printed by the rank that hit it, which exits 2; torchrun then stops the
others (and adds its own report below that line). A killed rank loses at most the block
it was computing. Only renamed files count as finished, so nothing half-written is ever
taken for complete.

Not supported: changing the number of ranks in the middle of a run (refused, naming
the earlier count; --overwrite starts again), and more ranks on a machine than it has
GPUs (one rank per GPU).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from stages.cache import (
    CACHE_IDENTITY,
    PartialCache,
    differences,
    join_caches,
    read_attrs,
    write_cache,
)
from stages.embedding import (
    EmbedConfig,
    EmbedSummary,
    Job,
    complete_already,
    embed_documents,
    prepare,
)
from stages.encoder import resolve_device
from stages.errors import ReportedElsewhere, UserError
from stages.runtime import peak_memory_bytes
from stages.windows import WindowSpec, tokenize

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
SHARD_KEYS = ("shard_index", "shard_count", "shard_doc_start", "shard_doc_end")
_SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)\.h5(\.partial|\.tmp)?$")


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
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, cores // local_world_size)


# --- the shard plan ------------------------------------------------------------------


def encoded_tokens(spec: WindowSpec, doc_tokens: np.ndarray) -> np.ndarray:
    """Tokens the encoder runs for each document: its text, the `stride` tokens every
    window after the first repeats, and each window's special tokens."""
    counts = np.fromiter((spec.count(int(n)) for n in doc_tokens), dtype=np.int64, count=len(doc_tokens))
    return np.asarray(doc_tokens, dtype=np.int64) + (counts - 1) * spec.stride + counts * spec.special.count


def plan_shards(costs: np.ndarray, n_shards: int) -> list[tuple[int, int]]:
    """Cut documents 0..len(costs) into `n_shards` contiguous ranges [start, end) of about
    equal total cost: boundary k is the document boundary nearest to k/n of the total.

    Each shard is within one document's cost of an equal share (a document is never
    split). With more shards than documents some ranges are empty."""
    prefix = np.concatenate([[0], np.cumsum(np.asarray(costs, dtype=np.int64))])
    total = int(prefix[-1])
    bounds = [0]
    for k in range(1, n_shards):
        # exact integer comparison of n * prefix[j] with k * total: no float ties
        j = int(np.searchsorted(prefix * n_shards, k * total, side="left"))
        if j > 0 and (j == len(prefix) or k * total - n_shards * prefix[j - 1] <= n_shards * prefix[j] - k * total):
            j -= 1
        bounds.append(max(bounds[-1], j))
    bounds.append(len(costs))
    return list(zip(bounds[:-1], bounds[1:]))


def even_slice(n_docs: int, rank: int, world_size: int) -> tuple[int, int]:
    """The documents rank `rank` tokenizes in setup: an equal count, contiguous."""
    return n_docs * rank // world_size, n_docs * (rank + 1) // world_size


def shard_path(out: Path, rank: int, world_size: int) -> Path:
    return Path(f"{out}.shard-{rank:03d}-of-{world_size:03d}.h5")


def shards_of_other_runs(out: Path, world_size: int) -> list[tuple[Path, int]]:
    """(path, rank count) of shard files or work areas next to `out` left by a run on
    another number of ranks."""
    out = Path(out)
    found = []
    for path in sorted(out.parent.glob(f"{out.name}.shard-*")):
        match = _SHARD_NAME.search(path.name)
        if match and int(match.group(2)) != world_size:
            found.append((path, int(match.group(2))))
    return found


# --- the run -------------------------------------------------------------------------


def run_embed_sharded(config: EmbedConfig, ranks: Ranks) -> EmbedSummary | None:
    """Stage one as one rank of a torchrun job: rank 0 returns the summary of the
    joined cache, every other rank None. See the module docstring for the steps."""
    started = time.perf_counter()
    threads = thread_count(config.threads, ranks.local_world_size)
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))  # the tokenizer's thread pool too
    config = replace(config, threads=threads, progress=config.progress if ranks.rank == 0 else False)
    device, device_error = _device(config.device, ranks)
    store = _init_group("nccl" if device.type == "cuda" else "gloo", ranks)
    try:
        return _run(config, ranks, store, device_error, started)
    finally:
        dist.destroy_process_group()


def _run(config: EmbedConfig, ranks: Ranks, store, device_error: str | None, started: float):
    out, rank, world = Path(config.out), ranks.rank, ranks.world_size

    # 1. setup: options, corpus, encoder, token counts of an N-th of the documents
    counted, counted_tokens, job = (0, 0), [], None
    try:
        if device_error:
            raise UserError(device_error)
        job = prepare(config)
        finished = complete_already(out, job.attrs, config.overwrite)
        stale = [] if finished else shards_of_other_runs(out, world)
        if stale and not config.overwrite:
            path, count = stale[0]
            raise UserError(f"{path} is left by a run on {count} ranks; rerun on {count} ranks to resume it, "
                            f"or pass --overwrite to start again on {world}")
        if not finished:
            counted = even_slice(len(job.corpus), rank, world)
            counted_tokens = tokenize(job.encoder.tokenizer, job.corpus.texts[counted[0]:counted[1]])
        mine = {"complete": finished, "identity": job.identity,
                "doc_tokens": np.array([len(t) for t in counted_tokens], dtype=np.int64)}
    except (UserError, OSError) as error:
        mine = {"error": str(error)}
    setup = _gather(mine, world)
    for r, result in enumerate(setup[1:], start=1):  # e.g. precision "auto" resolved otherwise elsewhere
        diff = "error" not in result and "error" not in setup[0] and differences(
            setup[0]["identity"], result["identity"], CACHE_IDENTITY, names=(f"rank {r}", "rank 0"))
        if diff:
            result["error"] = f"settings differ from rank 0's ({'; '.join(diff)}); give them explicitly"
    _fail_together(setup, store, rank, "setup")
    if setup[0]["complete"]:
        return EmbedSummary(out, len(job.corpus), 0, 0, 0, 0.0, peak_memory_bytes(),
                            already_complete=True) if rank == 0 else None
    if rank == 0:
        for path, _ in shards_of_other_runs(out, world):  # --overwrite: an earlier run on other ranks
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    doc_tokens = np.concatenate([result["doc_tokens"] for result in setup])
    plan = plan_shards(encoded_tokens(job.spec, doc_tokens), world)
    start, end = plan[rank]
    shard = shard_path(out, rank, world)
    attrs = {**job.attrs, "shard_index": rank, "shard_count": world, "shard_doc_start": start,
             "shard_doc_end": end}

    # 2. open this rank's shard: finished already, or take its lock and its blocks
    stack, partial, state = ExitStack(), None, "empty" if start == end else "todo"
    try:
        if state == "todo" and _finished_shard(shard, attrs, config.overwrite):
            state = "complete"
        if state == "todo":
            partial = stack.enter_context(PartialCache(shard, {k: attrs[k] for k in (*CACHE_IDENTITY, *SHARD_KEYS)},
                                                       fresh=config.overwrite))
        mine = {"state": state}
    except (UserError, OSError) as error:
        mine = {"error": str(error)}
    opened = _gather(mine, world)
    if any("error" in result for result in opened):
        stack.close()
    _fail_together(opened, store, rank, "open")

    # 3. embed the rest of the shard, write it, report
    with stack:
        try:
            report = {"tokens": 0, "resumed": end - start if state == "complete" else 0,
                      "reused": state == "complete"}
            if state == "todo":
                tokens = _shard_tokens(job, (start, end), counted, counted_tokens)
                done = embed_documents(job, partial, tokens, job.corpus.texts[start:end], config.progress,
                                       on_block=lambda: store.add(f"progress/{rank}", 1))
                write_cache(shard, attrs, partial.finished_blocks(), labels=job.corpus.labels[start:end],
                            doc_ids=job.corpus.doc_ids[start:end], doc_tokens=done.doc_tokens,
                            window_counts=done.window_counts, window_starts=done.window_starts,
                            hidden=job.encoder.hidden_size)
                partial.discard()
                report.update(tokens=done.tokens_encoded, resumed=done.resumed_documents)
            report["peak"] = peak_memory_bytes(job.encoder.device)
        except (UserError, OSError) as error:  # bad input, or the machine (disk full, permissions)
            raise _report_failure(store, rank, str(error)) from None
        except Exception as error:  # a bug: keep its traceback, then say which rank
            traceback.print_exc()
            raise _report_failure(store, rank, f"{type(error).__name__}: {error}") from None
    store.set(f"report/{rank}", json.dumps(report))
    if rank != 0:
        return None

    # 4. rank 0: wait for every shard, check it, join
    reports = wait_for_reports(store, world)
    try:
        parts = []
        for k, (lo, hi) in enumerate(plan):
            if hi > lo:
                expected = {**attrs, "shard_index": k, "shard_doc_start": lo, "shard_doc_end": hi}
                parts.append(_check_shard(shard_path(out, k, world), expected))
        join_caches(out, parts, {**job.attrs, "shards": world})
    except (UserError, OSError) as error:
        raise UserError(f"rank 0 failed joining the shards: {error}") from None
    for path in parts:
        path.unlink()
    window_counts = np.fromiter((job.spec.count(int(n)) for n in doc_tokens), dtype=np.int64, count=len(doc_tokens))
    peaks = tuple(r["peak"] for r in reports)
    return EmbedSummary(out, len(job.corpus), int((doc_tokens == 0).sum()), int(window_counts.sum()),
                        sum(r["tokens"] for r in reports), time.perf_counter() - started, max(peaks),
                        resumed_documents=sum(r["resumed"] for r in reports), ranks=world,
                        rank_peak_memory_bytes=peaks, shards_reused=sum(r["reused"] for r in reports))


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


# --- helpers -------------------------------------------------------------------------


def _device(device: str, ranks: Ranks) -> tuple[torch.device, str | None]:
    """This rank's device, or the CPU and the reason when the device option is unusable
    (reported in setup, so the line is printed once rather than by every rank)."""
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


def _init_group(backend: str, ranks: Ranks):
    """Join torchrun's rendezvous and start the process group; return a key-value store
    private to this run (torchrun's, or rank 0's outside its agent) for the reports."""
    store, _, _ = next(dist.rendezvous("env://", ranks.rank, ranks.world_size, timeout=SETUP_TIMEOUT))
    store.set_timeout(SETUP_TIMEOUT)
    dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=ranks.rank,
                            world_size=ranks.world_size, timeout=SETUP_TIMEOUT)
    # torchrun keeps its store across restarts of the workers: keys are per attempt
    return dist.PrefixStore(f"longdoc-embed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _gather(mine: dict, world_size: int) -> list[dict]:
    everyone = [None] * world_size
    dist.all_gather_object(everyone, mine)
    return everyone


def _fail_together(results: list[dict], store, rank: int, step: str):
    """If any rank failed at `step`: rank 0 prints one line naming them all, and every
    rank raises ReportedElsewhere (exit 2), the others only once that line is out,
    so torchrun does not stop rank 0 before it has printed."""
    failures = [(r, result["error"]) for r, result in enumerate(results) if "error" in result]
    if not failures:
        return
    message = describe_failures(failures, len(results))
    if rank == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)  # the CLI's one-line format
        store.set(f"{step}/printed", "1")
    else:
        store.wait([f"{step}/printed"])
    raise ReportedElsewhere(message)


def _report_failure(store, rank: int, cause: str) -> UserError:
    """Tell rank 0 (which may be waiting in step 4) and return the error to raise here."""
    try:
        store.set(f"report/{rank}", json.dumps({"error": cause}))
    except Exception:  # the store may be gone with torchrun's agent; the line below still says it
        pass
    return UserError(f"rank {rank} failed: {cause}")


def _finished_shard(shard: Path, attrs: dict, overwrite: bool) -> bool:
    """True when `shard` is a complete shard file of exactly this plan and settings."""
    existing = read_attrs(shard) if shard.exists() else None
    if existing is None or overwrite:
        return False
    diff = differences(existing, attrs, (*CACHE_IDENTITY, *SHARD_KEYS))
    if diff:
        raise UserError(f"{shard} holds a shard of other settings ({'; '.join(diff)}); "
                        f"rerun with those settings, or pass --overwrite to start again")
    return True


def _check_shard(shard: Path, expected: dict) -> Path:
    existing = read_attrs(shard)
    if existing is None:
        raise UserError(f"{shard} is missing or incomplete")
    diff = differences(existing, expected, (*CACHE_IDENTITY, *SHARD_KEYS), names=("the plan", "the file"))
    if diff:
        raise UserError(f"{shard} is not the planned shard ({'; '.join(diff)})")
    return shard


def _shard_tokens(job: Job, shard: tuple[int, int], counted: tuple[int, int], counted_tokens: list) -> list:
    """Token ids of the shard's documents, reusing those tokenized in setup."""
    (start, end), (lo, hi) = shard, counted
    texts, tokenizer = job.corpus.texts, job.encoder.tokenizer
    before = tokenize(tokenizer, texts[start:min(end, lo)]) if start < min(end, lo) else []
    reused = counted_tokens[max(start, lo) - lo:min(end, hi) - lo] if max(start, lo) < min(end, hi) else []
    after = tokenize(tokenizer, texts[max(start, hi):end]) if max(start, hi) < end else []
    return [*before, *reused, *after]
