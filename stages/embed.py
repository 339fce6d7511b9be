"""Stage one: embed every window of every document once and cache the vectors.

Reads a corpus (`stages.data`) and an encoder (`stages.encoder`); writes one HDF5
cache per split (`stages.cache`, format in docs/cache-format.md).

    python cli.py embed --data 20newsgroups --split train --out data/cache/train.h5

How it keeps memory small and independent of document length:
* each document is tokenized once, whole, and cut into windows (`stages.windows`);
* windows are encoded under `torch.inference_mode()`, sorted by length and packed
  into batches of at most `batch_tokens` tokens, so padding is near zero and the
  activations of one batch are the peak, whatever the longest document;
* documents are processed in blocks of about `block_windows` windows, each saved
  as soon as it is done, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import stages
from stages.cache import CACHE_IDENTITY, Block, PartialCache, differences, read_attrs, write_cache
from stages.data import NEWSGROUPS, Corpus, load_corpus
from stages.encoder import DEFAULT_MODEL, Encoder, load_encoder, read_lineage
from stages.errors import UserError
from stages.windows import SpecialTokens, WindowSpec, tokenize


@dataclass
class EmbedConfig:
    out: Path
    data: str = NEWSGROUPS
    split: str = "train"
    model: str = DEFAULT_MODEL
    # MiniLM was trained on inputs of at most 256 tokens and attention cost grows
    # with length; 256 keeps most posts (median 337 tokens) to one or two windows.
    chunk_tokens: int = 256
    # 32 tokens of overlap give each boundary sentence context on both sides for
    # about 14% more windows than none.
    stride: int = 32
    # None: `default_batch_tokens(device)`. Set it to bound activation memory by hand.
    batch_tokens: int | None = None
    precision: str = "auto"
    device: str = "auto"
    categories: list[str] | None = None
    remove: tuple[str, ...] = ()
    data_home: str | None = None
    limit: int | None = None
    overwrite: bool = False
    # Work lost to a kill is at most one block: about 2048 windows, ~1 min on 2 cores.
    block_windows: int = 2048
    progress: bool | None = None  # None: a bar on a terminal, quiet in logs
    # Torch threads; 0 leaves torch's default (every core) in one process, and gives
    # each torchrun rank its share of the machine's cores (stages.distributed).
    threads: int = 0


@dataclass
class EmbedSummary:
    out: Path
    documents: int
    empty_documents: int
    windows: int
    tokens: int  # tokens run through the encoder, special tokens and overlaps included
    seconds: float
    peak_memory_bytes: int
    resumed_documents: int = 0
    already_complete: bool = False
    # Under torchrun (stages.distributed): how many ranks, each one's peak memory,
    # and how many shards an earlier run had finished.
    ranks: int = 1
    rank_peak_memory_bytes: tuple[int, ...] = ()
    shards_reused: int = 0

    def line(self) -> str:
        if self.already_complete:
            return f"{self.out} is complete already ({self.documents:,} documents); pass --overwrite to redo it"
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        parts = [f"embedded {self.documents:,} documents"]
        if self.ranks > 1:
            parts.append(f" on {self.ranks} ranks")
        if self.empty_documents:
            parts.append(f" ({self.empty_documents:,} empty)")
        if self.resumed_documents:
            parts.append(f" ({self.resumed_documents:,} resumed from an earlier run")
            shards = f", {self.shards_reused} whole shard{'s' * (self.shards_reused != 1)}"
            parts.append(f"{shards if self.shards_reused else ''})")
        if self.rank_peak_memory_bytes:
            memory = "peak memory per rank " + ", ".join(f"{p / 2**30:.2f}" for p in self.rank_peak_memory_bytes)
        else:
            memory = f"peak memory {self.peak_memory_bytes / 2**30:.2f}"
        parts.append(f": {self.windows:,} windows, {self.tokens:,} tokens in {self.seconds:,.1f} s "
                     f"({rate:,.0f} tokens/s), {memory} GiB -> {self.out}")
        return "".join(parts)


def default_batch_tokens(device: torch.device) -> int:
    """Token budget of one encoder batch when --batch-tokens is not given.

    CPU: 1024. Larger batches are no faster on CPU (16k-token batches were slower),
    while activation memory grows with the batch; 1024 keeps a 100k-token document
    within 1.1x of a short one's peak memory.
    CUDA: 32768, enough windows to fill a GPU; activations stay near 1 GB for bert-base.
    See docs/BENCHMARKS.md.
    """
    return 32768 if device.type == "cuda" else 1024


def peak_memory_bytes(device: torch.device | None = None) -> int:
    """Peak resident memory of this process (plus peak CUDA memory on a GPU)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if device is not None and device.type == "cuda":
        peak += torch.cuda.max_memory_allocated(device)
    return peak


# --- encoding ----------------------------------------------------------------------


def pack_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Group window indices, longest first, into batches of at most `batch_tokens`
    padded tokens (a window longer than the budget goes alone)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, batch_tokens // max(longest, 1))
        batches.append(order[start:start + size])
        start += size
    return batches


def pad_batch(windows: list[list[int]], batch: np.ndarray, pad_id: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(input ids [len(batch), longest], attention mask or None) of windows[batch].

    Without padding the mask is all ones: leaving it out (None) lets SDPA take its
    fastest kernel."""
    width = max(len(windows[i]) for i in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, i in enumerate(batch):
        ids[row, :len(windows[i])] = windows[i]
        mask[row, :len(windows[i])] = 1
    ids_t = torch.from_numpy(ids).to(device, non_blocking=True)
    return ids_t, None if mask.all() else torch.from_numpy(mask).to(device, non_blocking=True)


def encode_windows(encoder: Encoder, windows: list[list[int]], batch_tokens: int,
                   on_batch=None) -> np.ndarray:
    """[CLS] vector of each window (float32 [n, hidden]), in the order given."""
    lengths = np.fromiter((len(w) for w in windows), dtype=np.int64, count=len(windows))
    out = np.empty((len(windows), encoder.hidden_size), dtype=np.float32)
    pad_id = SpecialTokens.of(encoder.tokenizer).pad_id if windows else 0
    # One autocast context for all batches: autocast caches the low-precision copy of
    # each weight until the context exits, so weights are cast once, not per batch.
    with torch.inference_mode(), encoder.autocast():
        for batch in pack_batches(lengths, batch_tokens):
            ids_t, mask_t = pad_batch(windows, batch, pad_id, encoder.device)
            cls = encoder.cls_vectors(ids_t, mask_t)
            out[batch] = cls.float().cpu().numpy()
            if on_batch is not None:
                on_batch(len(batch))
    return out


def plan_blocks(window_counts: np.ndarray, block_windows: int) -> list[tuple[int, int]]:
    """Cut documents into contiguous runs of about `block_windows` windows."""
    blocks, start, filled = [], 0, 0
    for i, count in enumerate(window_counts.tolist()):
        filled += count
        if filled >= block_windows:
            blocks.append((start, i + 1))
            start, filled = i + 1, 0
    if start < len(window_counts):
        blocks.append((start, len(window_counts)))
    return blocks


# --- the stage ---------------------------------------------------------------------


def check_output_path(out: Path):
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


@dataclass
class Job:
    """Everything a writer of a cache needs, loaded and checked once: the corpus, the
    encoder, the window geometry and the attributes the cache will carry."""

    config: EmbedConfig
    corpus: Corpus
    encoder: Encoder
    spec: WindowSpec
    batch_tokens: int
    attrs: dict

    @property
    def identity(self) -> dict:
        return {k: self.attrs[k] for k in CACHE_IDENTITY}


@dataclass
class Embedded:
    """What `embed_documents` did: per-document geometry and the work it took."""

    doc_tokens: np.ndarray
    window_counts: np.ndarray
    window_starts: np.ndarray
    tokens_encoded: int
    resumed_documents: int


def prepare(config: EmbedConfig) -> Job:
    """Check the options, load the corpus and the encoder; UserError on bad input."""
    out = Path(config.out)
    if config.batch_tokens is not None and config.batch_tokens < 1:
        raise UserError(f"--batch-tokens must be positive; got {config.batch_tokens}")
    if config.block_windows < 1:
        raise UserError(f"--block-windows must be positive; got {config.block_windows}")
    if config.threads < 0:
        raise UserError(f"--threads must be 0 (automatic) or more; got {config.threads}")
    check_output_path(out)
    if config.threads:
        torch.set_num_threads(config.threads)
    corpus = load_corpus(config.data, config.split, config.categories, config.remove,
                         config.data_home, config.limit)
    encoder = load_encoder(config.model, config.device, config.precision)
    if config.chunk_tokens > encoder.max_tokens:
        raise UserError(f"--chunk-tokens {config.chunk_tokens} is above the {encoder.max_tokens} "
                        f"tokens {config.model} takes")
    batch_tokens = config.batch_tokens or default_batch_tokens(encoder.device)
    if batch_tokens < config.chunk_tokens:
        raise UserError(f"--batch-tokens {batch_tokens} must be at least --chunk-tokens {config.chunk_tokens}")
    spec = WindowSpec(config.chunk_tokens, config.stride, SpecialTokens.of(encoder.tokenizer))
    attrs = {
        "model": config.model,
        "model_fingerprint": encoder.fingerprint,
        "chunk_tokens": config.chunk_tokens,
        "stride": config.stride,
        "precision": encoder.precision,
        "data_source": corpus.source,
        "data_fingerprint": corpus.fingerprint(),
        "label_names": json.dumps(corpus.label_names),
        "hidden_size": encoder.hidden_size,
        "package_version": stages.__version__,
        # Fine-tuned encoders (`finetune`) carry their base model and scores; {} otherwise.
        "encoder_lineage": json.dumps(read_lineage(config.model, encoder.fingerprint) or {}),
    }
    return Job(config, corpus, encoder, spec, batch_tokens, attrs)


def complete_already(out: Path, attrs: dict, overwrite: bool) -> bool:
    """True when `out` is a complete cache of these settings (nothing to do); refuses
    a cache of other settings or a stray file unless `overwrite`."""
    existing = read_attrs(out) if out.exists() else None
    if existing is not None and not overwrite:
        diff = differences(existing, attrs, CACHE_IDENTITY)
        if diff:
            raise UserError(f"{out} exists with other settings ({'; '.join(diff)}); "
                            f"pass --overwrite to replace it, or choose another --out")
        return True
    if out.exists() and existing is None and not overwrite:
        raise UserError(f"{out} exists and is not a complete cache; pass --overwrite to replace it")
    return False


def embed_documents(job: Job, partial: PartialCache, token_ids: list[np.ndarray], progress: bool | None,
                    on_block=None) -> Embedded:
    """Embed the documents `token_ids` (in order) block by block into `partial`, after
    the blocks an earlier run finished there. `on_block()` is called after each save."""
    spec = job.spec
    doc_tokens = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    window_counts = np.fromiter((spec.count(n) for n in doc_tokens), dtype=np.int64, count=len(doc_tokens))
    window_starts = (np.concatenate([spec.starts(n) for n in doc_tokens]) if len(doc_tokens)
                     else np.zeros(0, dtype=np.int64))
    done = partial.finished_blocks()
    resumed_docs = done[-1][1] if done else 0
    todo = [b for b in plan_blocks(window_counts, job.config.block_windows) if b[0] >= resumed_docs]
    if todo and todo[0][0] != resumed_docs:  # earlier run used another block size
        todo.insert(0, (resumed_docs, todo[0][0]))
    tokens_encoded = 0
    with _progress(int(window_counts[resumed_docs:].sum()), progress) as bar:
        for start, end in todo:
            windows = [w for doc in range(start, end) for w in spec.windows(token_ids[doc])]
            embeddings = encode_windows(job.encoder, windows, job.batch_tokens, on_batch=bar.update)
            partial.save(Block(start, end, embeddings))
            tokens_encoded += sum(len(w) for w in windows)
            if on_block is not None:
                on_block()
    return Embedded(doc_tokens, window_counts, window_starts, tokens_encoded, resumed_docs)


def run_embed(config: EmbedConfig) -> EmbedSummary:
    """Stage one in one process. Under torchrun, `stages.distributed.run_embed_sharded`
    runs the same steps on one shard of the documents per rank."""
    started = time.perf_counter()
    out = Path(config.out)
    job = prepare(config)
    corpus = job.corpus
    if complete_already(out, job.attrs, config.overwrite):
        return EmbedSummary(out, len(corpus), 0, 0, 0, 0.0, peak_memory_bytes(), already_complete=True)
    with PartialCache(out, job.identity, fresh=config.overwrite) as partial:
        token_ids = tokenize(job.encoder.tokenizer, corpus.texts)
        done = embed_documents(job, partial, token_ids, config.progress)
        write_cache(out, job.attrs, partial.finished_blocks(), labels=corpus.labels, doc_ids=corpus.doc_ids,
                    doc_tokens=done.doc_tokens, window_counts=done.window_counts,
                    window_starts=done.window_starts, hidden=job.encoder.hidden_size)
        partial.discard()
    return EmbedSummary(out, len(corpus), int((done.doc_tokens == 0).sum()), int(done.window_counts.sum()),
                        done.tokens_encoded, time.perf_counter() - started, peak_memory_bytes(job.encoder.device),
                        resumed_documents=done.resumed_documents)


def _progress(total: int, enabled: bool | None):
    from tqdm import tqdm

    return tqdm(total=total, unit="window", disable=None if enabled is None else not enabled,
                smoothing=0.1, dynamic_ncols=True)
