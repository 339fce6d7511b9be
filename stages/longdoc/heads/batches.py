"""Batches of documents from a window cache, grouped by window count.

A batch is a padded tensor `x` [docs, windows, hidden], a mask [docs, windows] and
the labels: class indices, or for label sets the rows of the label matrix (0/1 floats,
the targets of binary cross-entropy). Documents of similar window count go together, so padding is small,
and a batch holds at most `batch_docs` documents and `batch_windows` padded windows:
memory is bounded by the batch, whatever the longest document. A document longer
than `batch_windows` forms a batch of its own (never truncated or dropped).

Where the embeddings live:
* a cache whose embeddings fit in `memory_budget_mb` (None: no budget, as for tests and
  small caches; the commands pass `--memory-budget-mb`) is read once, whole
  (`embeddings[:]`), which makes an epoch a few hundred in-memory gathers;
* a larger one stays on disk and each batch reads its documents by h5py slices,
  in file order, so a cache larger than RAM still trains (slower: one slice per
  document per epoch).

Batching is deterministic given the `numpy.random.Generator` passed in.
Reads an open cache (`longdoc.cache.reader.WindowCache`: vectors, labels, term rows); writes nothing.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from longdoc.cache.reader import WindowCache
from longdoc.runtime.errors import UserError
from longdoc.runtime.process import memory_step
from longdoc.terms.tfidf import TermBatch, TermWeights

# What bounds the memory of a cache loaded whole: the budget below which it is.
LOADING_HINT = "lower --memory-budget-mb (a cache above it is read by slices)"


@dataclass
class Batch:
    x: torch.Tensor  # float32 [docs, windows, hidden], zeros at padded windows
    mask: torch.Tensor  # bool [docs, windows]
    labels: torch.Tensor  # int64 [docs]; label sets: float32 [docs, n_labels] of 0 and 1
    docs: np.ndarray  # indices of these documents
    terms: TermBatch | None = None  # TF-IDF terms of these documents, for heads with a term branch

    def __len__(self) -> int:
        return len(self.docs)


class CacheDocuments:
    """A subset (`docs`) of the documents whose windows are `embeddings[offsets[i]:offsets[i+1]]`,
    ready to batch. `embeddings` is an h5py dataset or an array; `from_cache` takes a cache's."""

    def __init__(self, embeddings, offsets: np.ndarray, labels: np.ndarray, docs: np.ndarray | None = None,
                 memory_budget_mb: float | None = None, term_rows=None,
                 term_weights: TermWeights | None = None):
        """`term_rows(docs)` gives hashed term counts (CSR) of documents; with `term_weights`,
        every batch carries its documents' TF-IDF terms."""
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.counts = np.diff(self.offsets)
        # class indices, int64 [n_docs]; or a bool label matrix [n_docs, n_labels] (label sets)
        labels = np.asarray(labels)
        self.labels = labels.astype(bool) if labels.ndim == 2 else labels.astype(np.int64)
        self.docs = np.arange(len(self.counts)) if docs is None else np.asarray(docs, dtype=np.int64)
        self.hidden = int(embeddings.shape[1])
        self.in_memory = (isinstance(embeddings, np.ndarray) or memory_budget_mb is None
                          or embeddings.nbytes <= memory_budget_mb * 2**20)
        self.source = getattr(getattr(embeddings, "file", None), "filename", "the cache")
        loading = self.in_memory and not isinstance(embeddings, np.ndarray)  # a cache's, read whole
        step = memory_step(f"loading {self.source} into memory", LOADING_HINT) if loading else nullcontext()
        with self._reading(), step:
            self.embeddings = embeddings[:] if loading else embeddings
            if self.in_memory:  # on disk, `load` checks each batch as it is read
                for lo in range(0, len(self.embeddings), 65_536):  # bounded scratch memory
                    self._check_finite(self.embeddings[lo:lo + 65_536], lo)
        self.term_rows, self.term_weights = term_rows, term_weights

    @classmethod
    def from_cache(cls, cache: WindowCache, docs: np.ndarray | None = None, labels: np.ndarray | None = None,
                   memory_budget_mb: float | None = None,
                   term_weights: TermWeights | None = None) -> "CacheDocuments":
        """`labels` may replace the cache's (evaluation maps them to the head's order by name);
        a multi-label cache's labels are its label matrix (`WindowCache.label_matrix`).
        With `term_weights`, batches carry terms: the cache's term counts are read whole when
        they fit in the memory budget, else per batch."""
        term_rows = None
        if term_weights is not None:
            term_rows = cache.term_rows
            if memory_budget_mb is None or cache.file["terms"]["indices"].nbytes * 2 <= memory_budget_mb * 2**20:
                with memory_step(f"loading the term counts of {cache.path} into memory", LOADING_HINT):
                    every = cache.term_rows(np.arange(cache.n_docs))
                term_rows = every.__getitem__
        if labels is None:
            labels = cache.label_matrix() if cache.multi_label else cache.labels
        return cls(cache.embeddings, cache.doc_offsets, labels, docs,
                   memory_budget_mb, term_rows, term_weights)

    def __len__(self) -> int:
        return len(self.docs)

    def plan(self, batch_docs: int, batch_windows: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """Cut `self.docs` into batches of similar window count.

        With `rng`, ties in window count are broken at random and the batch order is
        shuffled (training); without, the order is fixed (evaluation)."""
        counts = self.counts[self.docs]
        tiebreak = rng.random(len(self.docs)) if rng is not None else np.arange(len(self.docs))
        order = np.lexsort((tiebreak, counts))
        batches, start = [], 0
        while start < len(order):
            end = start + 1
            # counts grow along `order`, so the batch's widest document is its last one
            while (end < len(order) and end - start < batch_docs
                   and (end - start + 1) * counts[order[end]] <= batch_windows):
                end += 1
            batches.append(self.docs[order[start:end]])
            start = end
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def load(self, docs: np.ndarray, terms: bool = True) -> Batch:
        """The batch of `docs`; `terms=False` leaves out their terms (a step that reads none)."""
        counts = self.counts[docs]
        width = int(counts.max())
        x = np.zeros((len(docs), width, self.hidden), dtype=np.float32)
        mask = np.zeros((len(docs), width), dtype=bool)
        with self._reading():
            for row in np.argsort(self.offsets[docs], kind="stable"):  # file order: sequential reads
                doc = docs[row]
                lo, hi = self.offsets[doc], self.offsets[doc + 1]
                x[row, :hi - lo] = self.embeddings[lo:hi]
                mask[row, :hi - lo] = True
        if not self.in_memory:
            for row, doc in enumerate(docs.tolist()):
                self._check_finite(x[row, :counts[row]], int(self.offsets[doc]))
        term_batch = None
        if terms and self.term_weights is not None:
            term_batch = self.term_weights.batch(self.term_rows(docs))
        labels = self.labels[docs]
        labels = torch.from_numpy(labels.astype(np.float32) if labels.ndim == 2 else labels)
        return Batch(torch.from_numpy(x), torch.from_numpy(mask), labels, docs, term_batch)

    @contextmanager
    def _reading(self):
        """h5py reports damaged chunks and metadata as OSError: refuse the file in one line."""
        try:
            yield
        except OSError as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
            raise UserError(f"{self.source}: damaged cache ({first})") from None

    def _check_finite(self, rows: np.ndarray, first_row: int):
        """Refuse NaN or infinite vectors (a damaged cache): training on them saves a head of NaNs."""
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            window = first_row + int(np.argmax(bad))
            doc = int(np.searchsorted(self.offsets, window, side="right")) - 1
            raise UserError(f"{self.source}: document {doc} has vectors that are NaN or infinite (damaged cache); "
                            f"embed it again")

    def batches(self, batch_docs: int, batch_windows: int, rng: np.random.Generator | None = None,
                terms: bool = True):
        for docs in self.plan(batch_docs, batch_windows, rng):
            yield self.load(docs, terms)


def head_logits(head: nn.Module, batch: Batch) -> torch.Tensor:
    """The one place a Batch is fed to a head: every input the head takes comes from the batch."""
    return head(batch.x, batch.mask, batch.terms)


def head_branch_logits(head: nn.Module, batch: Batch) -> torch.Tensor:
    """Each branch's own logits [docs, branches, n_classes] (`Head.branch_logits`); the head's
    are `head.combine` of them."""
    return head.branch_logits(batch.x, batch.mask, batch.terms)


# Inference holds no gradients, so batches can be far larger than in training.
EVAL_BATCH_DOCS, EVAL_BATCH_WINDOWS = 256, 16384


@torch.inference_mode()
def predict_logits(head: nn.Module, documents: CacheDocuments, logits_of=head_logits,
                   batch_docs: int = EVAL_BATCH_DOCS, batch_windows: int = EVAL_BATCH_WINDOWS,
                   terms: bool = True) -> np.ndarray:
    """Logits [len(documents), n_classes] (or whatever `logits_of(head, batch)` gives per
    document), in the order of `documents.docs`; `terms=False` for a `logits_of` that reads none."""
    was_training = head.training
    head.eval()
    position = {doc: i for i, doc in enumerate(documents.docs.tolist())}
    out = None
    for batch in documents.batches(batch_docs, batch_windows, terms=terms):
        logits = logits_of(head, batch).float().numpy()
        if out is None:
            out = np.empty((len(documents), *logits.shape[1:]), dtype=np.float32)
        out[[position[d] for d in batch.docs.tolist()]] = logits
    head.train(was_training)
    return out
