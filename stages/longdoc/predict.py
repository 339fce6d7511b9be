"""Classify raw text end to end with a trained head: FILEs, or whole corpora.

    python cli.py predict --head runs/head.pt post1.txt post2.txt
    cat post.txt | python cli.py predict --head runs/head.pt - --json --explain
    python cli.py predict --head runs/head.pt --data corpus.jsonl --out runs/predictions.jsonl --explain

Uses exactly what the head records: the encoder (`model`, checked against its
fingerprint), the window settings and the precision of the cache it was trained
on (int8: on the CPU, whatever --device auto would pick).
Windowing and encoding are stage one's own code (`longdoc.encoding.windows`,
`longdoc.encoding.batches.encode_windows`), so a document is embedded here as it was there.
`--explain` adds each document's top windows by leave-one-out contribution
(`longdoc.explain.contributions`), with their character spans and text; `--explain-terms`, for a
head with a term branch, its terms with the largest contribution.

A multi-label head (its config's `task`, `longdoc.reports.label_set_rows.head_task`) gives each
document a label set: every label whose sigmoid probability reaches the threshold the head
recorded for it (its `Decision`, fitted on validation), and, where the decision says so, the
most probable label when none does. Each predicted label comes with its probability and its
threshold, most probable first; `--explain` explains every predicted label, toward that
label's logit (`explain_label_sets`).

Corpus mode (`--data`, any corpus `embed` reads, labels optional) streams: documents
are read one at a time (`longdoc.corpus.sources.iter_documents`), twice. The first pass, before the
encoder is loaded, checks every record and fingerprints the corpus (`DocumentDigest`,
kept in the work folder's settings: a resume against an edited corpus is refused); the
second classifies the blocks of `longdoc.reports.predictions.plan_blocks` (`block_docs`
documents, fewer at ~2M characters), so memory is bounded by a block, not by the corpus.
Each finished block's rows are published in `<out>.partial/`; a rerun of the same command
after a kill resumes after the finished blocks it can prove, and `--out` is written from
the blocks at the end (`longdoc.reports.predictions`). Under torchrun (`predict_on_ranks`)
the ranks share the same blocks of one work folder, each classifying every N-th block, and
rank 0 writes `--out`, the bytes one process writes:

    torchrun --standalone --nproc_per_node 2 cli.py predict --head runs/head.pt --data corpus.jsonl \
        --out runs/predictions.jsonl
    make predict NPROC=2 DATA=corpus.jsonl HEAD=runs/head.pt OUT=runs/predictions.jsonl `--out` and its work folder may not be,
hold, or lie inside `--data` or `--head`. `--out` ending in `.csv` gives CSV rows (cells a
spreadsheet would evaluate escaped), `.jsonl` JSON lines.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from longdoc.configs import PredictConfig
from longdoc.corpus.builtin import NEWSGROUPS
from longdoc.corpus.sources import DocumentDigest, iter_documents
from longdoc.inference.predictor import Prediction, Predictor, head_decision  # noqa: F401  (re-exported)
from longdoc.reports.predictions import RowBlocks, RowFormat, owner, plan_blocks
from longdoc.runtime.errors import UserError
from longdoc.runtime.process import memory_step, peak_memory_bytes, progress_bar
from longdoc.runtime.ranks import Group, Ranks, failure_line, same_as_rank_zero, shared_folder, start
from longdoc.runtime.workdir import WorkDir, check_not_an_input, check_output_path, work_folder

STDIN = "-"
OUTPUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}


def read_texts(sources: list[str]) -> list[str]:
    """Each FILE's text (UTF-8, undecodable bytes replaced); `-` is all of stdin, once."""
    if not sources:
        raise UserError("give at least one FILE to classify, or - for stdin, or --data CORPUS --out FILE")
    if sources.count(STDIN) > 1:
        raise UserError("- (stdin) can be given only once")
    texts = []
    for source in sources:
        if source == STDIN:
            texts.append(sys.stdin.buffer.read().decode("utf-8", "replace"))
            continue
        path = Path(source)
        if not source.isprintable() or source != source.encode("utf-8", "replace").decode("utf-8"):
            # it is printed back on one tab-separated line: a tab, newline or undecodable byte would break it
            raise UserError(f"{source!r}: a file name with a control character or bytes that are not UTF-8; "
                            f"rename it or pass it on stdin (-)")
        if not path.is_file():
            raise UserError(f"{source}: no such file")
        try:
            texts.append(path.read_bytes().decode("utf-8", "replace"))
        except OSError as error:
            raise UserError(f"{source}: cannot read it ({error.strerror})") from None
    return texts


@dataclass
class FilePredictions:
    """FILE mode's result: one Prediction per FILE, in order. The summary is a line per
    document (tab-separated) or, with --json, a JSON object per document."""

    predictions: list[Prediction]

    def line(self) -> str:
        return "\n".join(prediction.line() for prediction in self.predictions)

    def as_json(self) -> str:
        return "\n".join(json.dumps(prediction.record(), ensure_ascii=False) for prediction in self.predictions)


def run(config: PredictConfig, ranks: Ranks | None = None) -> FilePredictions | CorpusSummary | None:
    """FILE mode (`config.files`): each file classified, nothing written; --data mode: every
    document of the corpus into `config.out` (`predict_corpus`), or under torchrun (`ranks`,
    several) shared among the ranks (`predict_on_ranks`: None on every rank but 0).
    Settings checked by `PredictConfig`."""
    if ranks is not None and config.data is None:
        raise UserError("under torchrun predict classifies a corpus: give --data CORPUS --out FILE "
                        "(FILEs are classified in one process)")
    if config.data is not None:
        with memory_step(f"classifying {config.data}", "lower --batch-tokens or --block-docs"):
            return predict_corpus(config) if ranks is None else predict_on_ranks(config, ranks)
    texts = read_texts(list(config.files))  # bad files are refused before any encoder is loaded
    with memory_step("classifying the FILEs", "lower --batch-tokens, or pass fewer FILEs at once"):
        predictor = Predictor(config.head, config.device, config.batch_tokens, config.threads, config.explain_terms)
        return FilePredictions(predictor.classify(list(config.files), texts, config.top_windows))


# --- corpus mode -----------------------------------------------------------------------


@dataclass
class CorpusSummary:
    out: Path
    documents: int
    resumed_documents: int
    seconds: float
    peak_memory_bytes: int  # under torchrun: the largest of any rank
    format: str  # jsonl or csv
    ranks: int = 1  # processes of the torchrun job (1: one process)

    def line(self) -> str:
        resumed = f" ({self.resumed_documents:,} resumed from an earlier run)" if self.resumed_documents else ""
        on = f" on {self.ranks} ranks" if self.ranks > 1 else ""
        return (f"predicted {self.documents:,} documents{on}{resumed} in {self.seconds:,.1f} s, peak memory "
                f"{self.peak_memory_bytes / 2**30:.2f} GiB -> {self.out}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CorpusChanged(UserError):
    """--data was edited during the run: no block of it can be trusted."""


@dataclass
class _CorpusJob:
    """What corpus mode checked before classifying: `--out`, its format, the corpus (its
    fingerprint and block plan), the predictor, and the settings the work folder records."""

    config: PredictConfig
    out: Path
    kind: str
    corpus: DocumentDigest
    plan: list[tuple[int, int]]  # (start, end) of each block of `plan_blocks`, in corpus order
    predictor: Predictor
    settings: dict
    rows: RowFormat

    def records(self):
        c = self.config
        return iter_documents(c.data, c.split, c.categories, tuple(c.remove), c.data_home, c.limit, c.label_sep)


def _corpus_job(config: PredictConfig) -> _CorpusJob:
    """Check `--out`, read the corpus once (every record checked, fingerprinted, cut into
    the block plan) before the encoder is loaded, then load the predictor."""
    out = Path(config.out)
    inputs = {"--data": None if config.data == NEWSGROUPS else config.data, "--head": config.head}
    for path in (out, work_folder(out)):  # first: an input is refused, never offered to --overwrite
        check_not_an_input(path, inputs, inside=True)
    kind = OUTPUT_FORMATS.get(out.suffix.lower())
    if kind is None:
        raise UserError(f"--out {out}: name it .jsonl (JSON lines) or .csv")
    check_output_path(out)
    if out.exists() and not config.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    # One pass over the corpus before the encoder is loaded: every record is checked, and the
    # fingerprint in the settings refuses a resume against a corpus edited since.
    corpus = DocumentDigest()
    job = _CorpusJob(config, out, kind, corpus, [], None, {}, None)
    job.plan = [(start, start + len(block)) for start, block in plan_blocks(corpus.through(job.records()),
                                                                          config.block_docs)]
    if not corpus.documents:
        raise UserError(f"--data {config.data}: no documents found")
    job.predictor = predictor = Predictor(config.head, config.device, config.batch_tokens, config.threads, config.explain_terms)
    if config.top_k > len(predictor.label_names):
        raise UserError(f"--top-k {config.top_k} is above the head's {len(predictor.label_names)} classes")
    job.settings = {"head": str(Path(config.head).resolve()), "head_sha256": _sha256(Path(config.head)),
                    "data": config.data, "data_fingerprint": corpus.hexdigest(), "documents": corpus.documents,
                    "split": config.split, "categories": config.categories, "remove": list(config.remove),
                    "limit": config.limit, "label_sep": config.label_sep, "format": kind, "top_k": config.top_k,
                    "explain": config.top_windows, "explain_terms": config.explain_terms,
                    "block_docs": config.block_docs}
    job.rows = RowFormat(kind, predictor.label_names, config.top_k, config.top_windows, config.explain_terms,
                         predictor.task)
    return job


def _classify_blocks(job: _CorpusJob, blocks: RowBlocks, mine, on_block=None) -> tuple[dict, int]:
    """Classify (or resume) the blocks numbered `mine(b)` of the plan into `blocks`; the
    finished block files by (start, end), and the documents resumed. Reads the corpus
    again (the records are needed anyway) and refuses it when it changed meanwhile."""
    config, predictor = job.config, job.predictor
    finished, resumed = {}, 0
    read_again = DocumentDigest()
    with progress_bar(sum(end - start for b, (start, end) in enumerate(job.plan) if mine(b)), config.progress,
                      unit="doc") as bar:
        for b, (start, block) in enumerate(plan_blocks(read_again.through(job.records()), config.block_docs)):
            if not mine(b):
                continue
            path = blocks.resume(start, [r[0] for r in block])
            if path is not None:
                resumed += len(block)
            else:
                predictions = predictor.classify([r[0] for r in block], [r[1] for r in block], config.top_windows)
                for prediction, record in zip(predictions, block):
                    prediction.true_label = record[2]
                path = blocks.save(start, predictions)
            finished[start, start + len(block)] = path
            bar.update(len(block))
            if on_block is not None:
                on_block()
    if read_again.hexdigest() != job.corpus.hexdigest():
        raise CorpusChanged(f"--data {config.data} changed while it was being classified; no rows were kept, "
                            f"run the command again")
    return finished, resumed


def predict_corpus(config: PredictConfig) -> CorpusSummary:
    """Classify every document of `config.data` into `config.out` (CSV or JSON lines),
    resumably. The settings are checked by `PredictConfig`."""
    started = time.perf_counter()
    job = _corpus_job(config)
    with WorkDir(job.out, job.settings, fresh=config.overwrite) as work:
        blocks = RowBlocks(work.dir, job.rows)
        try:
            finished, resumed = _classify_blocks(job, blocks, mine=lambda b: True)
        except CorpusChanged:
            work.discard()  # its blocks may mix two corpora
            raise
        blocks.publish(job.out, [finished[block] for block in job.plan])
        work.discard()
    return CorpusSummary(job.out, job.corpus.documents, resumed, time.perf_counter() - started,
                         peak_memory_bytes(job.predictor.encoder.device), job.kind)


# --- corpus mode under torchrun --------------------------------------------------------


def predict_on_ranks(config: PredictConfig, ranks: Ranks) -> CorpusSummary | None:
    """`predict --data` as one rank of a torchrun job; rank 0 returns the summary, every
    other rank None. Every rank checks the options and reads the corpus as one process
    does, and its settings must equal rank 0's; rank 0 opens the work folder, which must
    be the same folder for every rank (`shared_folder`); each rank classifies the blocks
    it owns (`longdoc.reports.predictions.owner`), resuming the ones it can prove; rank 0
    waits for every rank's report and joins all blocks into `--out` in corpus order, the
    bytes one process writes. A failing rank fails the run in one line naming it."""
    started = time.perf_counter()
    group, threads, _, device_error = start(ranks, config.threads, config.device)
    config = replace(config, threads=threads, progress=config.progress if ranks.rank == 0 else False)
    try:
        return _predict_on_ranks(config, group, device_error, started)
    finally:
        group.close()


def _predict_on_ranks(config: PredictConfig, group: Group, device_error: str | None,
                      started: float) -> CorpusSummary | None:
    job, mine = None, {}
    try:
        if device_error:
            raise UserError(device_error)
        job = _corpus_job(config)
        # what the rows depend on: the recorded settings, and how the encoder runs
        mine = {"settings": {**job.settings, "batch_tokens": job.predictor.batch_tokens,
                             "precision": job.predictor.encoder.precision}}
    except (UserError, OSError) as error:
        mine = {"error": str(error)}
    group.agree("setup", mine, check=same_as_rank_zero("settings", hint="start every rank with the same options"))
    folder = work_folder(job.out)
    with ExitStack() as stack:
        try:
            if group.rank == 0:
                work = stack.enter_context(WorkDir(job.out, job.settings, fresh=config.overwrite))
                RowBlocks(work.dir, job.rows)  # tidy: planted entries go before any rank writes
            mine = {}
        except (UserError, OSError) as error:
            mine = {"error": str(error)}
        group.agree("work folder", mine)
        shared_folder(group, folder, "--out's work folder")
        rank, world = group.rank, group.world_size
        try:
            owned = {block for b, block in enumerate(job.plan) if owner(b, world) == rank}
            blocks = RowBlocks(folder, job.rows, owned=owned, tidy=False)
            _, resumed = _classify_blocks(job, blocks, lambda b: owner(b, world) == rank, on_block=group.block_done)
            report = {"resumed": resumed, "peak": peak_memory_bytes(job.predictor.encoder.device)}
        except Exception as error:  # bad input, the machine, or a bug (with its traceback)
            raise failure_line(group, error) from None
        group.report(report)
        if rank != 0:
            return None
        reports = group.reports()
        try:
            paths = [blocks.path(*block) for block in job.plan]
            missing = next((path for path in paths if not path.is_file()), None)
            if missing is not None:
                raise UserError(f"{missing} is missing")
            blocks.publish(job.out, paths)
        except (UserError, OSError) as error:
            raise UserError(f"rank 0 failed joining the blocks: {error}") from None
        work.discard()
    return CorpusSummary(job.out, job.corpus.documents, sum(r["resumed"] for r in reports),
                         time.perf_counter() - started, max(r["peak"] for r in reports), job.kind, ranks=world)
