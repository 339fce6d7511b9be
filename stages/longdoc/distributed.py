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

The run, as every rank sees it (`_run`):
1. Set up (`_set_up`): check the options, load the corpus and the encoder, tokenize one
   N-th of the documents (a contiguous slice by count) and gather every rank's token
   counts. From them every rank computes the same plan: contiguous runs of documents
   with about equal encoder tokens (`longdoc.embedding.shards.plan_shards`). The plan depends only
   on the corpus, the settings and N, so a rerun resumes the very same shards.
2. Open this rank's shard (`_open_shard`): a finished shard file of the same settings is
   kept as it is; otherwise take the shard's lock and find its finished blocks.
3. Embed what is left (`_embed_shard`) with `longdoc.embedding.job` (same windows, batches and
   blocks as one process), write the shard file (atomic rename), report done or failed
   in the rendezvous store, and exit.
4. Rank 0 alone (`_join`): wait for every report, check each shard file against the
   plan, join.

Failures: an error in steps 1-2 is gathered, and rank 0 prints one line naming each
failing rank and its cause (`error: rank 1 failed: ...`); every rank exits 2
(`longdoc.runtime.ranks.Group.agree`). An error in step 3 is printed by the rank that hit it,
which exits 2; torchrun then stops the others (and adds its own report below that
line). A killed rank loses at most the block it was computing. Only renamed files count
as finished, so nothing half-written is ever taken for complete.

Not supported: changing the number of ranks in the middle of a run (refused, naming
the earlier count; --overwrite starts again), and more ranks on a machine than it has
GPUs (one rank per GPU).
"""


from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from longdoc.cache.reader import CACHE_IDENTITY
from longdoc.cache.writer import PartialCache, join_caches
from longdoc.configs import EmbedConfig
from longdoc.embedding.job import (
    EmbedSummary,
    Job,
    complete_already,
    embed_documents,
    label_stats,
    prepare,
    publish,
)
from longdoc.embedding.shards import (
    Shard,
    encoded_tokens,
    even_slice,
    plan_shards,
    shard_tokens,
    shards_of_other_runs,
)
from longdoc.encoding.windows import tokenize
from longdoc.runtime.errors import UserError
from longdoc.runtime.process import peak_memory_bytes
from longdoc.runtime.ranks import Group, Ranks, failure_line, same_as_rank_zero, start


def run(config: EmbedConfig, ranks: Ranks) -> EmbedSummary | None:
    """Stage one as one rank of a torchrun job: rank 0 returns the summary of the
    joined cache, every other rank None. See the module docstring for the steps."""
    started = time.perf_counter()
    group, threads, _, device_error = start(ranks, config.threads, config.device)
    config = replace(config, threads=threads, progress=config.progress if ranks.rank == 0 else False)
    try:
        return _run(config, group, device_error, started)
    finally:
        group.close()


@dataclass
class _Setup:
    """What setup loaded on this rank, and the documents it tokenized: `counted`, an
    equal N-th of the corpus (`even_slice`), whose token ids the shard reuses."""

    job: Job
    complete: bool  # `--out` is a complete cache of these settings already
    counted: tuple[int, int] = (0, 0)
    counted_tokens: list[np.ndarray] = field(default_factory=list)


def _run(config: EmbedConfig, group: Group, device_error: str | None, started: float) -> EmbedSummary | None:
    """The four steps of the module docstring, as every rank runs them; rank 0 joins."""
    out = Path(config.out)
    setup, doc_tokens = _set_up(config, group, device_error)
    job = setup.job
    if doc_tokens is None:  # complete already
        return EmbedSummary(out, len(job.corpus), 0, 0, 0, 0.0, peak_memory_bytes(), already_complete=True,
                            **label_stats(job.corpus)) if group.rank == 0 else None
    if group.rank == 0:
        for path, _ in shards_of_other_runs(out, group.world_size):  # --overwrite: an earlier run on other ranks
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    plan = plan_shards(encoded_tokens(job.spec, doc_tokens), group.world_size)
    shard = Shard.of(out, plan, group.rank, job.attrs)
    with ExitStack() as stack:
        reused, partial = _open_shard(shard, config.overwrite, group, stack)
        report = _embed_shard(setup, shard, partial, reused, group)
    group.report(report)
    if group.rank != 0:
        return None
    reports = group.reports()
    _join(out, job, plan, config.overwrite)
    peaks = tuple(r["peak"] for r in reports)
    return EmbedSummary(out, len(job.corpus), int((doc_tokens == 0).sum()), int(job.spec.counts(doc_tokens).sum()),
                        sum(r["tokens"] for r in reports), time.perf_counter() - started, max(peaks),
                        resumed_documents=sum(r["resumed"] for r in reports), ranks=group.world_size,
                        rank_peak_memory_bytes=peaks, shards_reused=sum(r["reused"] for r in reports),
                        **label_stats(job.corpus))


def _set_up(config: EmbedConfig, group: Group, device_error: str | None) -> tuple[_Setup, np.ndarray | None]:
    """Step 1 on every rank: load the job, check `--out` and any shards of a run on
    other ranks, tokenize this rank's N-th; then agree. Returns this rank's setup and
    every document's length in tokens, or None when `--out` is complete already."""
    setup = None
    try:
        if device_error:
            raise UserError(device_error)
        job = prepare(config)
        out, world = Path(config.out), group.world_size
        setup = _Setup(job, complete_already(out, job.attrs, config.overwrite))
        stale = [] if setup.complete else shards_of_other_runs(out, world)
        if stale and not config.overwrite:
            path, count = stale[0]
            raise UserError(f"{path} is left by a run on {count} ranks; rerun on {count} ranks to resume it, "
                            f"or pass --overwrite to start again on {world}")
        if not setup.complete:
            setup.counted = even_slice(len(job.corpus), group.rank, world)
            setup.counted_tokens = tokenize(job.encoder.tokenizer, job.corpus.texts[slice(*setup.counted)])
        mine = {"complete": setup.complete, "identity": job.identity,
                "doc_tokens": np.array([len(t) for t in setup.counted_tokens], dtype=np.int64)}
    except (UserError, OSError) as error:
        mine = {"error": str(error)}
    everyone = group.agree("setup", mine, check=same_as_rank_zero("identity", CACHE_IDENTITY))
    if everyone[0]["complete"]:
        return setup, None
    return setup, np.concatenate([outcome["doc_tokens"] for outcome in everyone])


def _open_shard(shard: Shard, overwrite: bool, group: Group, stack: ExitStack) -> tuple[bool, PartialCache | None]:
    """Step 2 on every rank, agreed: whether the shard file is finished already (kept as
    it is), and the shard's work area, locked in `stack`, when there is work left."""
    reused, partial = False, None
    try:
        reused = not shard.empty and shard.finished(overwrite)
        if not shard.empty and not reused:
            partial = stack.enter_context(PartialCache(shard.path, shard.identity, fresh=overwrite))
        mine = {}
    except (UserError, OSError) as error:
        mine = {"error": str(error)}
    group.agree("open", mine)
    return reused, partial


def _embed_shard(setup: _Setup, shard: Shard, partial: PartialCache | None, reused: bool, group: Group) -> dict:
    """Step 3: embed the rest of the shard into `partial` and write the shard file; the
    report for rank 0. A failure is reported to rank 0 and raised as one line."""
    job = setup.job
    try:
        report = {"tokens": 0, "resumed": shard.end - shard.start if reused else 0, "reused": reused}
        if partial is not None:
            docs = slice(shard.start, shard.end)
            tokens = shard_tokens(job.encoder.tokenizer, job.corpus.texts, (shard.start, shard.end), setup.counted,
                                  setup.counted_tokens)
            done = embed_documents(job, partial, tokens, job.corpus.texts[docs], job.config.progress,
                                   on_block=group.block_done)
            publish(job, partial, shard.path, shard.attrs, done, docs)
            report.update(tokens=done.tokens_encoded, resumed=done.resumed_documents)
        report["peak"] = peak_memory_bytes(job.encoder.device)
        return report
    except Exception as error:  # bad input, the machine (disk full, permissions), or a bug (with its traceback)
        raise failure_line(group, error) from None


def _join(out: Path, job: Job, plan: list[tuple[int, int]], overwrite: bool):
    """Step 4, rank 0 once every rank has reported: check each shard file against the
    plan, join them into `out`, delete them."""
    try:
        parts = [Shard.of(out, plan, k, job.attrs).checked() for k, (lo, hi) in enumerate(plan) if hi > lo]
        # Again before publishing: a run of other settings may have finished `out` meanwhile.
        complete_already(out, job.attrs, overwrite)
        join_caches(out, parts, {**job.attrs, "shards": len(plan)})
    except (UserError, OSError) as error:
        raise UserError(f"rank 0 failed joining the shards: {error}") from None
    for path in parts:
        path.unlink()
        shutil.rmtree(f"{path}.partial", ignore_errors=True)  # blocks of a shard finished earlier: stale
