"""The window-embedding cache: the HDF5 file stage one writes and stage two reads.

The format is documented in docs/cache-format.md; this module names it (the constants
below) and is its reference reader (`open_cache`, `read_attrs`): it reads cache files and
writes nothing. `longdoc.cache.writer` is the format's only writer. In short, per split
one HDF5 file with

    embeddings    float32 [n_windows, hidden]   one [CLS] vector per window
    doc_offsets   int64   [n_docs + 1]          windows of doc i: offsets[i]:offsets[i+1]
    window_starts int64   [n_windows]           token offset of each window's text in its doc
    labels        int64   [n_docs]              single-label: index into attrs["label_names"]
    label_sets/indptr  int64 [n_docs + 1]       multi-label, instead of `labels`: the label set of
    label_sets/indices int32 [n_entries]        doc i is indices[indptr[i]:indptr[i+1]], sorted
    doc_ids       utf-8   [n_docs]              source id or path of each document
    doc_tokens    int64   [n_docs]              document length in tokens (no specials)
    terms/indptr  int64   [n_docs + 1]          hashed term counts of each whole document,
    terms/indices int32   [n_terms]             CSR, one row per document (`longdoc.terms.hashing`);
    terms/counts  int32   [n_terms]             absent when embedded with --no-terms

and root attributes naming the task (`task`: single_label or multi_label), the model, its
fingerprint, the window settings and the data they came from (`CACHE_IDENTITY` plus
provenance). The checks that prove a file is such a cache live in `longdoc.cache.checks`.

The file at `--out` only ever appears complete (`longdoc.cache.writer` says how).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

from longdoc.cache.checks import (
    TASKS,  # noqa: F401 (re-exported: the tasks a cache can be for)
    check_doc_ids,
    check_identity,
    check_layout,
    check_windows,
    checked_labels,
    checked_terms,
    documents_of,
    label_names_of,
    plain,
    read_attributes,
    shown,
)
from longdoc.cache.term_files import csr_of_rows
from longdoc.runtime.errors import UserError
from longdoc.runtime.workdir import differences  # noqa: F401 (re-exported: compares CACHE_IDENTITY)

FORMAT_NAME = "longdoc-window-cache"
# 2: adds `terms/` and the `window_vector` and `term_hashing` attributes. Version 1
# caches are still read: [CLS] window vectors and no terms.
# 3: adds the `task` attribute and, for a multi-label cache, `label_sets/` in place of
# `labels`. Versions 1 and 2 are read as single-label caches.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
# The attributes that say what a cache *is*: two caches (or a cache and a head)
# agree when these agree. Everything else in the attributes is provenance.
ENCODER_IDENTITY = ("model_fingerprint", "chunk_tokens", "stride", "window_vector")
CACHE_IDENTITY = (*ENCODER_IDENTITY, "model", "precision", "data_source", "data_fingerprint", "term_hashing", "task")
# `term_rows` reads the span from its first document's terms to its last one's at once
# when that is at most twice what it needs plus this many terms (~0.5 MB): batches drawn
# from all of a cache read thousands of term entries per document, two reads each otherwise.
SPAN_SLACK = 65_536
# What a version-1 cache, written before these attributes existed, was made with.
VERSION_1_DEFAULTS = {"window_vector": "cls", "term_hashing": "{}"}
# ... and what a version-1 or -2 cache, written before multi-label caches existed, is for.
VERSION_2_DEFAULTS = {"task": "single_label"}


@dataclass
class WindowCache:
    """An open, complete cache. Arrays other than `embeddings` are loaded eagerly
    (they are small); embeddings are read by slices, so a cache larger than RAM works.

    Labels, for either task (`task`, `multi_label`): a single-label cache holds `labels`,
    one index into `label_names` per document; a multi-label cache holds `labels` None and
    its label sets as CSR rows, `label_indptr` (int64 [n_docs + 1]) and `label_indices`
    (int32, sorted and unique within a row; an empty row is a document without a label).
    `label_matrix` and `label_sets_of` read either task the same way, a single label
    being a set of one."""

    path: Path
    file: h5py.File
    attrs: dict
    doc_offsets: np.ndarray
    labels: np.ndarray | None  # int64 [n_docs]; None in a multi-label cache
    label_names: list[str]
    _term_indptr: np.ndarray | None = None
    label_indptr: np.ndarray | None = None  # multi-label: int64 [n_docs + 1]
    label_indices: np.ndarray | None = None  # multi-label: int32 [entries]

    @property
    def embeddings(self) -> h5py.Dataset:
        return self.file["embeddings"]

    @property
    def n_docs(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def task(self) -> str:
        """"single_label" or "multi_label" (`TASKS`): the cache's `task` attribute."""
        return "multi_label" if self.label_indptr is not None else "single_label"

    @property
    def multi_label(self) -> bool:
        return self.label_indptr is not None

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    def label_matrix(self, rows=None) -> np.ndarray:
        """bool [len(rows), n_labels]: True where document `rows[i]` has label j (all
        documents, in order, when `rows` is None). A single-label cache gives one True a row."""
        rows = np.arange(self.n_docs) if rows is None else np.asarray(rows, dtype=np.int64)
        matrix = np.zeros((len(rows), self.n_labels), dtype=bool)
        if not self.multi_label:
            matrix[np.arange(len(rows)), self.labels[rows]] = True
            return matrix
        for i, d in enumerate(rows.tolist()):
            matrix[i, self.label_indices[self.label_indptr[d]:self.label_indptr[d + 1]]] = True
        return matrix

    def label_sets_of(self, rows=None) -> list[list[int]]:
        """The sorted label indices of documents `rows` (all when None), one list each; a
        single-label cache gives lists of one."""
        rows = range(self.n_docs) if rows is None else np.asarray(rows, dtype=np.int64).tolist()
        if not self.multi_label:
            return [[int(self.labels[d])] for d in rows]
        indptr, indices = self.label_indptr, self.label_indices
        return [indices[indptr[d]:indptr[d + 1]].tolist() for d in rows]

    def single_label_only(self, command: str) -> None:
        """Refuse, in one line naming the file, a multi-label cache given to a command that
        reads one label per document."""
        if self.multi_label:
            raise UserError(f"{self.path}: multi-label caches are not yet supported by {command} "
                            f"(the cache holds a set of labels per document)")

    @property
    def hidden_size(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def window_counts(self) -> np.ndarray:
        return np.diff(self.doc_offsets)

    @property
    def has_terms(self) -> bool:
        return "terms" in self.file

    @property
    def term_hashing(self) -> str:
        """JSON of the `longdoc.terms.hashing.TermHashing` the terms were made with; "{}" without terms."""
        return str(self.attrs.get("term_hashing", "{}"))

    def term_rows(self, docs: np.ndarray) -> sp.csr_matrix:
        """Hashed term counts of documents `docs`, one CSR row each, in the order given."""
        import scipy.sparse as sp

        indptr = self.term_indptr
        group = self.file["terms"]
        n_features = self.term_features
        docs = np.asarray(docs, dtype=np.int64)
        if len(docs) == self.n_docs and np.array_equal(docs, np.arange(self.n_docs)):  # all: two reads
            return sp.csr_matrix((group["counts"][:], group["indices"][:], indptr), shape=(self.n_docs, n_features))
        if len(docs) == 0:
            return csr_of_rows([], n_features)
        lo, hi = int(indptr[docs.min()]), int(indptr[docs.max() + 1])
        wanted = int((indptr[docs + 1] - indptr[docs]).sum())
        if hi - lo <= 2 * wanted + SPAN_SLACK:  # one read of the span holding them (memory: ~2x theirs)
            indices, counts = group["indices"][lo:hi], group["counts"][lo:hi]
            pieces = [(indices[indptr[d] - lo:indptr[d + 1] - lo], counts[indptr[d] - lo:indptr[d + 1] - lo])
                      for d in docs.tolist()]
        else:  # scattered documents: two reads each
            pieces = [(group["indices"][indptr[d]:indptr[d + 1]], group["counts"][indptr[d]:indptr[d + 1]])
                      for d in docs.tolist()]
        return csr_of_rows(pieces, n_features)

    @property
    def term_features(self) -> int:
        """Width of the hashed term space (n_features of the hashing); 0 without terms."""
        return int(json.loads(self.term_hashing).get("n_features", 0))

    @property
    def term_indptr(self) -> np.ndarray:
        if self._term_indptr is None:
            self._term_indptr = self.file["terms"]["indptr"][:].astype(np.int64)
        return self._term_indptr

    def doc_ids(self) -> list[str]:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in self.file["doc_ids"][:]]

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_cache(path: str | Path) -> WindowCache:
    """Open and validate a cache; anything that is not a complete cache is a UserError.

    Every dataset and attribute stage two uses is checked before it returns: present,
    of its type, rank and declared size, in range, consistent with the rest (the table in
    docs/RELIABILITY.md). Per-document arrays are read whole (8 bytes a document); per-window
    and per-term arrays are scanned CHECK_CHUNK entries at a time, so a cache larger than
    memory still opens. The vectors' values are checked as they are loaded
    (`longdoc.heads.batches`): a scan here would read the whole cache once more."""
    path = Path(path)
    if not path.is_file():
        partial = Path(f"{path}.partial")
        hint = f" ({partial} holds an unfinished run: rerun embed to finish it)" if partial.exists() else ""
        raise UserError(f"{path}: no such cache file{hint}")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise UserError(f"{path}: not a readable HDF5 file ({str(error).splitlines()[0]})") from None
    try:
        attrs = read_attributes(path, file)
        if not isinstance(attrs.get("format"), str) or attrs["format"] != FORMAT_NAME:
            raise UserError(f"{path}: not a window cache (no format={FORMAT_NAME!r} attribute)")
        version = attrs.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise UserError(f"{path}: cache format version {shown(version)}, "
                            f"this code reads {', '.join(map(str, READABLE_VERSIONS))}")
        attrs = {**VERSION_1_DEFAULTS, **attrs} if version == 1 else attrs
        attrs = {**VERSION_2_DEFAULTS, **attrs} if version in (1, 2) else attrs
        if attrs.get("complete") is not True:  # the writer writes True; "no" is a truthy string
            raise UserError(f"{path}: cache is incomplete (complete = {shown(attrs.get('complete'))})")
        if version in (1, 2) and "label_sets" in file:
            raise UserError(f"{path}: cache format version {version} holds one label per document, yet the file "
                            f"holds label_sets/ (damaged cache)")
        if "task" not in attrs:
            raise UserError(f"{path}: cache lacks its task attribute (damaged cache)")
        task = attrs["task"] if isinstance(attrs["task"], str) else shown(attrs["task"])
        check_layout(path, file, task)
        n_windows, hidden = file["embeddings"].shape
        check_identity(path, attrs, hidden)
        label_names = label_names_of(path, attrs)
        n_docs = documents_of(file, task)
        if n_docs <= 0:
            raise UserError(f"{path}: cache holds no documents")
        for name, shape in (("doc_offsets", n_docs + 1), ("doc_ids", n_docs), ("doc_tokens", n_docs),
                            ("window_starts", n_windows)):  # sizes first: nothing is read yet
            if file[name].shape != (shape,):
                raise UserError(f"{path}: {name} holds {file[name].shape[0]:,} entries, not the {shape:,} "
                                f"the labels and embeddings make (truncated file?)")
        offsets = file["doc_offsets"][:].astype(np.int64)  # a uint64 past 2^63 turns negative: refused
        if offsets[0] != 0 or offsets[-1] != n_windows or np.any(np.diff(offsets) < 0):
            raise UserError(f"{path}: doc_offsets do not match embeddings and labels (truncated file?)")
        if np.any(np.diff(offsets) == 0):  # every document has at least one window (longdoc.encoding.windows)
            doc = int(np.flatnonzero(np.diff(offsets) == 0)[0])
            raise UserError(f"{path}: document {doc} has no windows (damaged cache)")
        labels, label_sets = checked_labels(path, file, task, len(label_names))
        check_doc_ids(path, file["doc_ids"])
        check_windows(path, file, offsets, attrs["chunk_tokens"], attrs["stride"])
        term_indptr = checked_terms(path, file, attrs["term_hashing"], n_docs)
    except UserError:
        file.close()
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError,
            RecursionError) as error:
        file.close()
        first = (str(error).strip().splitlines() or [""])[0][:160]
        raise UserError(f"{path}: damaged cache ({type(error).__name__}: {first})") from None
    indptr, indices = label_sets or (None, None)
    return WindowCache(path, file, attrs, offsets, labels, label_names, term_indptr, indptr, indices)




def read_attrs(path: Path) -> dict | None:
    """Root attributes of an existing complete cache, or None if there is none; a cache of
    format version 1 or 2 reads as single-label (`task`)."""
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: plain(v) for k, v in f.attrs.items()}
    except (OSError, KeyError, ValueError, TypeError, RuntimeError):  # not a cache, or a damaged one
        return None
    if attrs.get("format_version") in (1, 2):
        attrs = {**VERSION_2_DEFAULTS, **attrs}
    return attrs if attrs.get("complete") is True and attrs.get("format") == FORMAT_NAME else None
