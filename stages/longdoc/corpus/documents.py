"""Documents in memory and their fingerprint: `Corpus` (ids, texts, labels or label sets,
in a fixed order), `from_records` and `keep_categories` to build and narrow one, and
`DocumentDigest`, the same fingerprint fed one streamed record at a time. Reads and writes
no files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from longdoc.runtime.errors import UserError


@dataclass
class Corpus:
    """Documents in a fixed order, with their labels as indices into `label_names`.

    A single-label corpus (class folders, a `label` field, 20 Newsgroups) holds `labels`,
    one index per document, and `label_sets` None. A multi-label corpus (a `labels`
    field, Reuters-21578) holds `label_sets`, one sorted list of indices per document
    (an empty list is a document with no label), and `labels` None; its `label_names` are
    the sorted names of every label that occurs. Two fields rather than one form for both:
    every single-label reader (the cache, heads, finetune) keeps the array it reads today,
    and a reader not yet taught label sets finds no `labels` rather than one label of each
    set (`single_label_only` says so in one line)."""

    doc_ids: list[str]
    texts: list[str]
    labels: np.ndarray | None  # int64 [n_docs]; None for a multi-label corpus
    label_names: list[str]
    source: str  # how to get these documents again, e.g. "20newsgroups:train"
    label_sets: list[list[int]] | None = None  # multi-label: sorted indices per document

    def __post_init__(self):
        if (self.labels is None) == (self.label_sets is None):
            raise ValueError("a Corpus holds either labels (single-label) or label_sets (multi-label)")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def multi_label(self) -> bool:
        return self.label_sets is not None

    def fingerprint(self) -> str:
        """sha256 over label names, ids, labels and texts, in order. A multi-label corpus's
        starts with the words "multi-label" and takes each label set as a JSON list of
        indices ("[0, 3]"), so it never equals a single-label corpus's, whose bytes are
        what they always were (existing caches keep matching their corpus)."""
        digest = hashlib.sha256()
        if self.multi_label:
            digest.update(b"multi-label\0")
            labels = [json.dumps(label_set) for label_set in self.label_sets]
        else:
            labels = self.labels.tolist()
        digest.update(json.dumps(self.label_names).encode())
        for doc_id, label, text in zip(self.doc_ids, labels, self.texts):
            _hash_parts(digest, (doc_id, str(label), text))
        return digest.hexdigest()

    def label_of(self, i: int) -> str | tuple[str, ...]:
        """Document `i`'s label name, or (multi-label) the tuple of its label names."""
        if self.multi_label:
            return tuple(self.label_names[k] for k in self.label_sets[i])
        return self.label_names[int(self.labels[i])]

    def label_matrix(self) -> np.ndarray:
        """A multi-label corpus's label sets as a bool matrix [documents, labels]."""
        matrix = np.zeros((len(self.texts), len(self.label_names)), dtype=bool)
        for i, label_set in enumerate(self.label_sets):
            matrix[i, label_set] = True
        return matrix

    def single_label_only(self, command: str) -> None:
        """Refuse, in one line, a multi-label corpus given to a command that reads one label
        per document."""
        if self.multi_label:
            raise UserError(f"{self.source} is a multi-label corpus (a set of labels per document): multi-label "
                            f"corpora are not supported by {command} yet")

    def subset(self, keep: list[int], source: str) -> "Corpus":
        """Documents `keep` (indices, in this order), labels as they are."""
        return Corpus([self.doc_ids[i] for i in keep], [self.texts[i] for i in keep],
                      None if self.labels is None else self.labels[np.asarray(keep, dtype=np.int64)],
                      self.label_names, source,
                      None if self.label_sets is None else [self.label_sets[i] for i in keep])

    def head(self, limit: int | None) -> "Corpus":
        """The first `limit` documents (all of them when `limit` is None)."""
        if limit is None:
            return self
        if limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        return self.subset(list(range(min(limit, len(self)))), f"{self.source}[:{limit}]")


def _hash_parts(digest, parts):
    """Each part length-prefixed, so ("ab", "c") and ("a", "bc") differ; None (a record
    without a label) is its own length, 2**64 - 1, unlike any string."""
    for part in parts:
        if part is None:
            digest.update(b"\xff" * 8)
            continue
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)


class DocumentDigest:
    """The fingerprint of a streamed corpus: sha256 over the (doc_id, text, label or None)
    records `iter_documents` yields, in order, hashed as `Corpus.fingerprint` hashes its
    documents (id, label, text, length-prefixed), and their number. Fed one record at a
    time, so no corpus is held to fingerprint it."""

    def __init__(self):
        self._digest = hashlib.sha256()
        self.documents = 0

    def add(self, record: tuple[str, str, str | tuple[str, ...] | None]):
        """One record; a label set (a tuple of names) is hashed as its JSON list."""
        doc_id, text, label = record
        if isinstance(label, tuple):
            label = json.dumps(list(label))
        _hash_parts(self._digest, (doc_id, label, text))
        self.documents += 1

    def through(self, records):
        """`records`, each added as it passes."""
        for record in records:
            self.add(record)
            yield record

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def keep_categories(corpus: Corpus, categories: list[str]) -> Corpus:
    """Keep documents of `categories`, renumbering labels in sorted category order. In a
    multi-label corpus a document is kept when it has at least one of them, and its other
    labels are dropped from its set."""
    unknown = sorted(set(categories) - set(corpus.label_names))
    if unknown:
        raise UserError(f"--categories: unknown {', '.join(unknown)}; known: {', '.join(corpus.label_names)}")
    kept_names = sorted(set(categories), key=corpus.label_names.index)
    old_to_new = {corpus.label_names.index(name): new for new, name in enumerate(kept_names)}
    source = corpus.source + f"[categories={','.join(kept_names)}]"
    if corpus.multi_label:
        sets = [[old_to_new[k] for k in label_set if k in old_to_new] for label_set in corpus.label_sets]
        keep = [i for i, label_set in enumerate(sets) if label_set]
        return Corpus([corpus.doc_ids[i] for i in keep], [corpus.texts[i] for i in keep], None, kept_names, source,
                      [sets[i] for i in keep])
    keep = [i for i, label in enumerate(corpus.labels.tolist()) if label in old_to_new]
    return Corpus(
        [corpus.doc_ids[i] for i in keep], [corpus.texts[i] for i in keep],
        np.asarray([old_to_new[int(corpus.labels[i])] for i in keep], dtype=np.int64),
        kept_names, source,
    )


def from_records(records: list[tuple[str, str, str | tuple[str, ...]]], source: str) -> Corpus:
    """(doc_id, text, label) records -> Corpus with labels in sorted name order. Labels
    that are tuples of names (a `labels` field; a reader never mixes the two) make a
    multi-label corpus."""
    multi_label = bool(records) and isinstance(records[0][2], tuple)
    label_names = sorted({name for r in records for name in (r[2] if multi_label else (r[2],))})
    index = {name: i for i, name in enumerate(label_names)}
    doc_ids, texts = [r[0] for r in records], [r[1] for r in records]
    if multi_label:
        return Corpus(doc_ids, texts, None, label_names, source, [sorted(index[n] for n in r[2]) for r in records])
    return Corpus(doc_ids, texts, np.asarray([index[r[2]] for r in records], dtype=np.int64), label_names, source)
