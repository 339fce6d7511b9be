"""Stage one's job, as one process or one torchrun rank runs it: checks, loading, and
embedding a run of documents block by block into a work folder, with the settings of
`longdoc.configs.EmbedConfig`.

Reads a corpus (`longdoc.corpus.sources`) and an encoder (`longdoc.encoding.encoder`); writes finished
blocks into a `longdoc.cache.writer.PartialCache`, and `publish` assembles them into a
cache. `longdoc.embed` (one process) and `longdoc.distributed` (torchrun) run these steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

import longdoc
from longdoc.cache.reader import CACHE_IDENTITY, differences, read_attrs
from longdoc.cache.writer import Block, PartialCache, write_cache
from longdoc.corpus.sources import NEWSGROUPS, Corpus, load_corpus
from longdoc.encoding.batches import default_batch_tokens, encode_windows
from longdoc.encoding.encoder import (
    Encoder,
    load_encoder,
    read_lineage,
)
from longdoc.encoding.windows import SpecialTokens, WindowSpec
from longdoc.runtime.errors import UserError
from longdoc.runtime.process import memory_step, progress_bar
from longdoc.runtime.workdir import check_not_an_input, check_output_path
from longdoc.settings.model import check_batch_holds_window, check_window_fits
from longdoc.terms.hashing import NO_TERMS, TermHashing

if TYPE_CHECKING:  # the settings it runs with; a block never imports the commands' settings at run time
    from longdoc.configs import EmbedConfig

# What bounds a block's memory: the encoder's batch (activations) and the block's windows.
EMBED_MEMORY_HINT = "lower --batch-tokens or --block-windows"


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
    # Under torchrun (longdoc.distributed): how many ranks, each one's peak memory,
    # and how many shards an earlier run had finished.
    ranks: int = 1
    rank_peak_memory_bytes: tuple[int, ...] = ()
    shards_reused: int = 0
    # The labels (`label_stats`): the task, how many labels, per document, documents without one.
    task: str = "single_label"
    n_labels: int = 0
    labels_per_document: float = 1.0
    documents_without_labels: int = 0

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
        parts.append(f"; {self.labels_line()}")
        return "".join(parts)

    def labels_line(self) -> str:
        if self.task == "single_label":
            return f"single-label: {self.n_labels:,} classes"
        return (f"multi-label: {self.n_labels:,} labels, {self.labels_per_document:.2f} per document, "
                f"{self.documents_without_labels:,} document{'s' * (self.documents_without_labels != 1)} with none")


def label_stats(corpus: Corpus) -> dict:
    """The summary's label fields (`EmbedSummary.task` ...) for `corpus`."""
    if not corpus.multi_label:
        return {"task": "single_label", "n_labels": len(corpus.label_names)}
    sizes = np.array([len(s) for s in corpus.label_sets], dtype=np.int64)
    return {"task": "multi_label", "n_labels": len(corpus.label_names),
            "labels_per_document": float(sizes.mean()) if len(sizes) else 0.0,
            "documents_without_labels": int((sizes == 0).sum())}


# --- encoding ----------------------------------------------------------------------


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

    def term_counts(self, texts: list[str]):
        """Hashed term counts of `texts` (CSR), or None when the cache keeps no terms."""
        if self.attrs["term_hashing"] == NO_TERMS:
            return None
        return TermHashing.from_json(self.attrs["term_hashing"]).counts(texts)


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
    check_output_path(out)
    check_not_an_input(out, {"--data": config.data if config.data != NEWSGROUPS else None})
    if config.threads:
        torch.set_num_threads(config.threads)
    corpus = load_corpus(config.data, config.split, config.categories, config.remove,
                         config.data_home, config.limit, config.label_sep)
    encoder = load_encoder(config.model, config.device, config.precision, config.window_vector)
    check_window_fits(config.chunk_tokens, encoder.max_tokens, config.model)
    batch_tokens = config.batch_tokens or default_batch_tokens(encoder.device)
    check_batch_holds_window(batch_tokens, config.chunk_tokens)
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
        "task": "multi_label" if corpus.multi_label else "single_label",
        "hidden_size": encoder.hidden_size,
        "window_vector": encoder.window_vector,
        "term_hashing": TermHashing().to_json() if config.terms else NO_TERMS,
        "package_version": longdoc.__version__,
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


def embed_documents(job: Job, partial: PartialCache, token_ids: list[np.ndarray], texts: list[str],
                    progress: bool | None, on_block=None) -> Embedded:
    """Embed the documents `token_ids` (in order) block by block into `partial`, after
    the blocks an earlier run finished there, with the hashed term counts of their
    `texts` when the job keeps terms. `on_block()` is called after each save."""
    spec = job.spec
    doc_tokens = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    window_counts = spec.counts(doc_tokens)
    window_starts = (np.concatenate([spec.starts(n) for n in doc_tokens]) if len(doc_tokens)
                     else np.zeros(0, dtype=np.int64))
    done = partial.finished_blocks(window_counts)
    resumed_docs = done[-1][1] if done else 0
    # Plan from the documents actually saved, whatever block size the earlier run used.
    todo = [(resumed_docs + a, resumed_docs + b)
            for a, b in plan_blocks(window_counts[resumed_docs:], job.config.block_windows)]
    tokens_encoded = 0
    with progress_bar(int(window_counts[resumed_docs:].sum()), progress, unit="window") as bar:
        for start, end in todo:
            with memory_step(f"embedding documents {start:,} to {end:,}", EMBED_MEMORY_HINT):
                windows = spec.pack(token_ids[start:end])
                embeddings = encode_windows(job.encoder, windows, job.batch_tokens, on_batch=bar.update)
            partial.save(Block(start, end, embeddings, job.term_counts(texts[start:end])))
            tokens_encoded += len(windows.tokens)
            if on_block is not None:
                on_block()
    return Embedded(doc_tokens, window_counts, window_starts, tokens_encoded, resumed_docs)


def publish(job: Job, partial: PartialCache, out: Path, attrs: dict, done: Embedded, docs: slice = slice(None)):
    """Assemble the finished blocks in `partial` (documents `docs` of the corpus, as
    `embed_documents` left them) into the cache `out` with root attributes `attrs`,
    atomically; then delete the work area."""
    corpus = job.corpus
    labels = {"label_sets": corpus.label_sets[docs]} if corpus.multi_label else {"labels": corpus.labels[docs]}
    write_cache(out, attrs, partial.finished_blocks(), doc_ids=corpus.doc_ids[docs], doc_tokens=done.doc_tokens,
                window_counts=done.window_counts, window_starts=done.window_starts, hidden=job.encoder.hidden_size,
                **labels)
    partial.discard()
