"""Why a head predicted what it did: the contribution of each window of a document.

Reads window vectors through a `longdoc.heads.batches.CacheDocuments` (a cache's, or
the vectors `predict` just computed) and a head, which it feeds only through
`head_logits`; writes nothing. `longdoc.explain.text` maps windows back to characters.

Window contribution, by leave-one-out, for every pooling:

    contribution_i = logit_c(all windows) - logit_c(all windows but window i)

where c is the class explained (the predicted one unless another is asked for).
Window i is *dropped* from the sequence, not zeroed: the lstm and transformer
poolings see the remaining windows in order, mean and attention renormalise over
them. Attention weights alone would say where an attention head looked, not what
each window changed, and mean/max/lstm have no weights at all.

A one-window document has nothing left without its window; its contribution is the
document's logit margin, logit_c minus the best other class's logit (positive when
c is the predicted class). It ranks first among its document's windows either way,
and its size says how decided the head was.

Cost: a document of n windows needs n variants of n-1 windows. Variants of
documents of similar length are batched together, at most `batch_windows` padded
window rows per head call, so memory is bounded whatever the longest document
(a 900-window document runs as ~100 calls of 9 variants of 899 windows).

Term contributions, for heads with a term branch (`inputs` terms or both): the branch
is linear over the document's TF-IDF terms, so its logit for class c is exactly
bias_c + sum over terms j of W[j, c] * tfidf_j; each term's contribution is its
summand. `Explanation.terms` holds the `terms_k` largest, by compact term id;
`longdoc.explain.text.name_terms` turns ids back into the words and bigrams of the text
(hashing is one-way, so naming needs the text). Window leave-one-out keeps the
document's terms, so a window's contribution is what the window branch loses.

Label sets (a multi-label head, sigmoid outputs: `explain_label_sets`): the same, toward
each label j asked for, logit_j being that label's own logit; one set of leave-one-out
variants serves every label of a document. A one-window document's contribution toward j
is logit_j's margin over the logit of j's threshold. Terms: W[term, j] * tfidf_j, their
exact share of the linear (one-vs-rest) branch's logit for j.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from longdoc.heads.batches import Batch, CacheDocuments, head_logits
from longdoc.runtime.errors import UserError
from longdoc.terms.tfidf import TermBatch

# Padded window rows per head call: 8192 (12 MB of MiniLM vectors) was as fast as or faster
# than 2048-65536 for the lstm head on 1,560 posts of 20NG's length mix on this 2-core CPU
# (20.1 s vs 24.0 s at 16384, 21 s at 4096); memory stays bounded whatever the document.
EXPLAIN_BATCH_WINDOWS = 8192
# Documents per group whose variants share calls; bounds the per-group bookkeeping.
EXPLAIN_GROUP_DOCS = 1024
# Terms kept per explanation: enough to read what the term branch saw.
EXPLAIN_TERMS = 10


@dataclass
class TermContribution:
    term_id: int  # compact id in the head's term branch (index into TermWeights.features)
    contribution: float  # W[term, class] * tfidf: this term's share of the explained class's logit
    term: str | None = None  # the word or bigram, once named from the text (longdoc.explain.text.name_terms)


@dataclass
class Explanation:
    """Why one document got its logits."""

    doc: int  # index of the document in its CacheDocuments
    target: int  # the class explained (index into the head's label_names)
    logits: np.ndarray  # float32 [n_classes]: the whole document's logits
    windows: np.ndarray  # float32 [n_windows]: contribution of each window, in document order
    terms: list[TermContribution] | None = None  # heads with a term branch only, largest first

    def ranked(self, k: int | None = None) -> np.ndarray:
        """Window indices, largest contribution first (ties: earlier window first)."""
        order = np.argsort(-self.windows, kind="stable")
        return order if k is None else order[:k]


def has_term_branch(head: nn.Module) -> bool:
    """Whether the head has a (linear) term branch whose terms can be explained."""
    return bool(getattr(head, "reads_terms", False))


def require_term_branch(head: nn.Module, head_path) -> None:
    if not has_term_branch(head):
        pooling = getattr(getattr(head, "config", None), "pooling", "?")
        raise UserError(f"{head_path}: this head ({pooling} pooling, windows only) has no term branch, so there "
                        f"are no terms to explain; train one with --inputs both or terms, or leave out --explain-terms")


def explain_terms(head: nn.Module, terms: TermBatch, targets: np.ndarray, k: int = EXPLAIN_TERMS) -> list:
    """The k largest term contributions to class targets[i] of each document i of `terms`."""
    return [toward[0] for toward in _terms_toward(head, terms, [np.array([t]) for t in np.asarray(targets)], k)]


def _terms_toward(head: nn.Module, terms: TermBatch, target_sets: list[np.ndarray], k: int) -> list:
    """For each document i of `terms`, per label of target_sets[i]: its k largest term
    contributions (W[term, label] * tfidf), largest first."""
    weight = head.terms.weight.detach()
    ids, values = terms.ids.numpy(), terms.weights.numpy()
    ends = np.append(terms.offsets.numpy()[1:], len(ids))
    out = []
    for start, end, targets in zip(terms.offsets.numpy().tolist(), ends.tolist(), target_sets):
        targets = np.asarray(targets, dtype=np.int64)
        # [terms of the document, labels explained]: one gather of the rows, then the columns
        rows = weight[torch.from_numpy(ids[start:end])][:, torch.from_numpy(targets)].numpy()
        contribution = rows * values[start:end, None]
        per_label = []
        for j in range(len(targets)):
            order = np.argsort(-contribution[:, j], kind="stable")[:k]
            per_label.append([TermContribution(int(ids[start + i]), float(contribution[i, j])) for i in order.tolist()])
        out.append(per_label)
    return out


def _take_terms(terms: TermBatch, rows: np.ndarray) -> TermBatch:
    """The TermBatch of documents `rows` (repeats allowed) of `terms`."""
    starts = terms.offsets.numpy()
    lengths = np.diff(np.append(starts, len(terms.ids)))[rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    index = np.arange(int(lengths.sum())) + np.repeat(starts[rows] - offsets, lengths)
    index = torch.from_numpy(index.astype(np.int64))
    return TermBatch(terms.ids[index], torch.from_numpy(offsets), terms.weights[index])


def _subset(batch: Batch, rows: np.ndarray, x: torch.Tensor, mask: torch.Tensor) -> Batch:
    """A Batch of `rows` of `batch` with new windows `x`, `mask`; every other per-document
    field (labels, docs, and whatever a head adds later) is taken row by row."""
    values = {}
    for field in fields(batch):
        value = getattr(batch, field.name)
        if field.name == "x":
            value = x
        elif field.name == "mask":
            value = mask
        elif isinstance(value, TermBatch):
            value = _take_terms(value, rows)
        elif isinstance(value, torch.Tensor) and value.ndim and len(value) == len(batch):
            value = value[torch.as_tensor(rows)]
        elif isinstance(value, np.ndarray) and value.ndim and len(value) == len(batch):
            value = value[rows]
        values[field.name] = value
    return type(batch)(**values)


def _without(batch: Batch, rows: np.ndarray, drop: np.ndarray, lengths: np.ndarray) -> Batch:
    """Documents `rows` of `batch`, each without its window `drop` (the rest in order)."""
    width = max(int(lengths.max()) - 1, 1)
    j = np.arange(width)[None, :]
    keep = j + (j >= drop[:, None])  # window index per position, skipping the dropped one
    mask = j < (lengths - 1)[:, None]
    keep = np.where(mask, keep, 0)
    x = batch.x[torch.as_tensor(rows)[:, None], torch.as_tensor(keep)]
    mask_t = torch.from_numpy(mask)
    x = x.masked_fill(~mask_t.unsqueeze(-1), 0.0)
    return _subset(batch, rows, x, mask_t)


def _margin(logits: np.ndarray, target: int) -> float:
    others = np.delete(logits, target)
    return float(logits[target] - others.max()) if len(others) else float(logits[target])


@torch.inference_mode()
def explain_documents(head: nn.Module, documents: CacheDocuments, docs: np.ndarray | None = None,
                      targets: np.ndarray | None = None, batch_windows: int = EXPLAIN_BATCH_WINDOWS,
                      terms_k: int = EXPLAIN_TERMS) -> list[Explanation]:
    """One Explanation per document of `docs` (default: all of `documents`), in that order.

    `targets`: the class to explain per document (default: the predicted one). Heads with
    a term branch also get their `terms_k` largest term contributions."""
    docs = documents.docs if docs is None else np.asarray(docs, dtype=np.int64)
    if targets is not None and len(targets) != len(docs):
        raise ValueError("targets needs one class per document")
    target_sets = None if targets is None else [np.array([t], dtype=np.int64) for t in np.asarray(targets).tolist()]
    out = _explain(head, documents, docs, target_sets, None, batch_windows, terms_k)
    return [explanations[0] for explanations in out]


@torch.inference_mode()
def explain_label_sets(head: nn.Module, documents: CacheDocuments, label_sets: list[np.ndarray],
                       docs: np.ndarray | None = None, thresholds: np.ndarray | None = None,
                       batch_windows: int = EXPLAIN_BATCH_WINDOWS,
                       terms_k: int = EXPLAIN_TERMS) -> list[list[Explanation]]:
    """For a multi-label head: per document of `docs` (default: all), one Explanation per
    label of `label_sets[i]`, in that order, each toward that label's logit (`target`).

    The same leave-one-out variants serve every label of a document: its cost is that of
    one label. A one-window document's contribution toward label j is its logit's margin over
    the label's threshold, logit_j - logit(thresholds[j]) (positive when the label clears it;
    without `thresholds`, over 0, a probability of 0.5)."""
    docs = documents.docs if docs is None else np.asarray(docs, dtype=np.int64)
    if len(label_sets) != len(docs):
        raise ValueError("label_sets needs one set of labels per document")
    target_sets = [np.asarray(labels, dtype=np.int64).reshape(-1) for labels in label_sets]
    if thresholds is None:
        baseline = None
    else:
        t = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-7, 1 - 1e-7)
        baseline = np.log(t) - np.log1p(-t)  # the logit at which each label's probability is its threshold
    return _explain(head, documents, docs, target_sets, baseline, batch_windows, terms_k, sets=True)


def _explain(head, documents, docs, target_sets, baseline, batch_windows, terms_k, sets=False) -> list[list]:
    """Explanations per document of `docs`, one per label of target_sets[i] (None: the
    predicted class); `sets`: one-window contributions are margins over `baseline` (label
    sets), else over the best other class."""
    was_training = head.training
    head.eval()
    counts = documents.counts[docs]
    out: list[list[Explanation] | None] = [None] * len(docs)
    group, cost = [], 0
    for pos in np.argsort(counts, kind="stable").tolist():  # similar lengths share calls
        n = int(counts[pos])
        rows = n * max(n - 1, 1)
        if group and (cost + rows > batch_windows or len(group) >= EXPLAIN_GROUP_DOCS):
            _explain_group(head, documents, docs, target_sets, baseline, sets, group, out, batch_windows, terms_k)
            group, cost = [], 0
        group.append(pos)
        cost += rows
    if group:
        _explain_group(head, documents, docs, target_sets, baseline, sets, group, out, batch_windows, terms_k)
    head.train(was_training)
    return out


def _explain_group(head, documents, docs, target_sets, baseline, sets, group, out, batch_windows, terms_k):
    group = np.asarray(group)
    batch = documents.load(docs[group])
    full = head_logits(head, batch).float().numpy()
    targets = ([np.array([t]) for t in full.argmax(1).tolist()] if target_sets is None
               else [target_sets[pos] for pos in group.tolist()])
    lengths = documents.counts[docs[group]]
    contributions = [np.zeros((len(t), n), dtype=np.float32) for t, n in zip(targets, lengths.tolist())]
    # Every (document row, left-out window) pair of the documents with more than one window.
    pair_rows = np.concatenate([np.full(n, r) for r, n in enumerate(lengths.tolist()) if n > 1] or [[]])
    pair_drop = np.concatenate([np.arange(n) for n in lengths.tolist() if n > 1] or [[]])
    pair_rows, pair_drop = pair_rows.astype(np.int64), pair_drop.astype(np.int64)
    at = 0
    while at < len(pair_rows):
        end = at + 1  # lengths only grow along the pairs: the last pair is the widest
        while end < len(pair_rows) and (end - at + 1) * (int(lengths[pair_rows[end]]) - 1) <= batch_windows:
            end += 1
        rows, drop = pair_rows[at:end], pair_drop[at:end]
        less = head_logits(head, _without(batch, rows, drop, lengths[rows])).float().numpy()
        for i, (row, window) in enumerate(zip(rows.tolist(), drop.tolist())):
            t = targets[row]
            contributions[row][:, window] = full[row, t] - less[i, t]
        at = end
    terms = (_terms_toward(head, batch.terms, targets, terms_k)
             if has_term_branch(head) and batch.terms is not None else [[None] * len(t) for t in targets])
    for r, pos in enumerate(group.tolist()):
        if lengths[r] == 1:
            for j, target in enumerate(targets[r].tolist()):
                if not sets:
                    contributions[r][j, 0] = _margin(full[r], target)
                else:
                    contributions[r][j, 0] = full[r, target] - (0.0 if baseline is None else baseline[target])
        out[pos] = [Explanation(int(docs[pos]), int(target), full[r].copy(), contributions[r][j], terms[r][j])
                    for j, target in enumerate(targets[r].tolist())]


@torch.inference_mode()
def logits_without(head: nn.Module, documents: CacheDocuments, docs: np.ndarray, drop: np.ndarray,
                   batch_windows: int = EXPLAIN_BATCH_WINDOWS) -> np.ndarray:
    """Logits [len(docs), n_classes] of each document without its window `drop[i]`
    (-1: keep every window; a one-window document always keeps its window)."""
    docs, drop = np.asarray(docs, dtype=np.int64), np.asarray(drop, dtype=np.int64)
    was_training = head.training
    head.eval()
    out = None
    counts = documents.counts[docs]
    order = np.argsort(counts, kind="stable")
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * counts[order[end]] <= batch_windows:
            end += 1
        pick = order[start:end]
        batch = documents.load(docs[pick])
        lengths = counts[pick]
        drops = np.where((drop[pick] >= 0) & (lengths > 1), drop[pick], -1)
        logits = head_logits(head, batch).float().numpy()
        cut = np.flatnonzero(drops >= 0)
        if len(cut):
            logits[cut] = head_logits(head, _without(batch, cut, drops[cut], lengths[cut])).float().numpy()
        if out is None:
            out = np.empty((len(docs), logits.shape[1]), dtype=np.float32)
        out[pick] = logits
        start = end
    head.train(was_training)
    return out
