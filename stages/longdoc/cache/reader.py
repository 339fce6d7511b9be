"""The window-embedding cache: the HDF5 file stage one writes and stage two reads.

The format is documented in docs/cache-format.md; this module names it (the constants
below) and is its reference reader (`open_cache`, `read_attrs`): it reads cache files and
writes nothing. `longdoc.cache.writer` is the format's only writer. In short, per split
one HDF5 file with

    embeddings    float32 [n_windows, hidden]   one [CLS] vector per window
    doc_offsets   int64   [n_docs + 1]          windows of doc i: offsets[i]:offsets[i+1]
    window_starts int64   [n_windows]           token offset of each window's text in its doc
    labels        int64   [n_docs]              index into attrs["label_names"]
    doc_ids       utf-8   [n_docs]              source id or path of each document
    doc_tokens    int64   [n_docs]              document length in tokens (no specials)
    terms/indptr  int64   [n_docs + 1]          hashed term counts of each whole document,
    terms/indices int32   [n_terms]             CSR, one row per document (`longdoc.terms.hashing`);
    terms/counts  int32   [n_terms]             absent when embedded with --no-terms

and root attributes naming the model, its fingerprint, the window settings and the
data they came from (`CACHE_IDENTITY` plus provenance).

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

from longdoc.cache.term_files import csr_of_rows
from longdoc.runtime.errors import UserError
from longdoc.runtime.workdir import differences  # noqa: F401 (re-exported: compares CACHE_IDENTITY)

FORMAT_NAME = "longdoc-window-cache"
# 2: adds `terms/` and the `window_vector` and `term_hashing` attributes. Version 1
# caches are still read: [CLS] window vectors and no terms.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# The attributes that say what a cache *is*: two caches (or a cache and a head)
# agree when these agree. Everything else in the attributes is provenance.
ENCODER_IDENTITY = ("model_fingerprint", "chunk_tokens", "stride", "window_vector")
CACHE_IDENTITY = (*ENCODER_IDENTITY, "model", "precision", "data_source", "data_fingerprint", "term_hashing")
# `term_rows` reads the span from its first document's terms to its last one's at once
# when that is at most twice what it needs plus this many terms (~0.5 MB): batches drawn
# from all of a cache read thousands of term entries per document, two reads each otherwise.
SPAN_SLACK = 65_536
# What a version-1 cache, written before these attributes existed, was made with.
VERSION_1_DEFAULTS = {"window_vector": "cls", "term_hashing": "{}"}


@dataclass
class WindowCache:
    """An open, complete cache. Arrays other than `embeddings` are loaded eagerly
    (they are small); embeddings are read by slices, so a cache larger than RAM works."""

    path: Path
    file: h5py.File
    attrs: dict
    doc_offsets: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    _term_indptr: np.ndarray | None = None

    @property
    def embeddings(self) -> h5py.Dataset:
        return self.file["embeddings"]

    @property
    def n_docs(self) -> int:
        return len(self.labels)

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
    """Open and validate a cache; anything that is not a complete cache is a UserError."""
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
        attrs = {k: _plain(v) for k, v in file.attrs.items()}
        if attrs.get("format") != FORMAT_NAME:
            raise UserError(f"{path}: not a window cache (no format={FORMAT_NAME!r} attribute)")
        if int(attrs.get("format_version", -1)) not in READABLE_VERSIONS:
            raise UserError(f"{path}: cache format version {attrs.get('format_version')}, "
                            f"this code reads {' and '.join(map(str, READABLE_VERSIONS))}")
        if int(attrs["format_version"]) == 1:
            attrs = {**VERSION_1_DEFAULTS, **attrs}
        if not attrs.get("complete"):
            raise UserError(f"{path}: cache is incomplete")
        missing = [n for n in ("embeddings", "doc_offsets", "labels", "doc_ids") if n not in file]
        if missing:
            raise UserError(f"{path}: cache lacks {', '.join(missing)}")
        _check_layout(path, file)
        offsets = file["doc_offsets"][:].astype(np.int64)
        labels = file["labels"][:].astype(np.int64)
        n_windows = file["embeddings"].shape[0]
        if (len(offsets) != len(labels) + 1 or offsets[0] != 0 or offsets[-1] != n_windows
                or np.any(np.diff(offsets) < 0)):
            raise UserError(f"{path}: doc_offsets do not match embeddings and labels (truncated file?)")
        if np.any(np.diff(offsets) == 0):  # every document has at least one window (longdoc.encoding.windows)
            doc = int(np.flatnonzero(np.diff(offsets) == 0)[0])
            raise UserError(f"{path}: document {doc} has no windows (damaged cache)")
        if len(file["doc_ids"]) != len(labels):
            raise UserError(f"{path}: doc_ids do not match labels (damaged cache)")
        if len(labels) == 0:
            raise UserError(f"{path}: cache holds no documents")
        if "terms" in file:
            indptr = file["terms"]["indptr"]
            if (indptr.shape != (len(labels) + 1,) or file["terms"]["indices"].shape != file["terms"]["counts"].shape
                    or int(indptr[-1]) != file["terms"]["indices"].shape[0]):
                raise UserError(f"{path}: terms/ does not match the documents (truncated file?)")
        label_names = json.loads(attrs["label_names"])
        if not isinstance(label_names, list) or not all(isinstance(n, str) for n in label_names):
            raise UserError(f"{path}: label_names is not a list of names (damaged cache)")
        if labels.min() < 0 or labels.max() >= len(label_names):
            raise UserError(f"{path}: labels outside label_names")
    except UserError:
        file.close()
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError,
            RecursionError) as error:
        file.close()
        first = (str(error).strip().splitlines() or [""])[0][:160]
        raise UserError(f"{path}: damaged cache ({type(error).__name__}: {first})") from None
    return WindowCache(path, file, attrs, offsets, labels, label_names)


def _check_layout(path: Path, file: h5py.File):
    """Each array is a dataset of the documented shape and kind (not a group, not 1-D)."""
    expected = {"embeddings": (2, "f"), "doc_offsets": (1, "iu"), "labels": (1, "iu"), "doc_ids": (1, "OSU")}
    for name, (ndim, kinds) in expected.items():
        item = file.get(name)
        if not isinstance(item, h5py.Dataset) or item.ndim != ndim or item.dtype.kind not in kinds:
            what = type(item).__name__ if not isinstance(item, h5py.Dataset) else f"{item.ndim}-D {item.dtype}"
            raise UserError(f"{path}: {name} is a {what}, not a {ndim}-D dataset as the cache format says "
                            f"(damaged cache)")
    if file["embeddings"].shape[1] < 1:
        raise UserError(f"{path}: embeddings have no columns (damaged cache)")


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(path: Path) -> dict | None:
    """Root attributes of an existing complete cache, or None if there is none."""
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
    except (OSError, KeyError, ValueError, TypeError, RuntimeError):  # not a cache, or a damaged one
        return None
    return attrs if attrs.get("complete") and attrs.get("format") == FORMAT_NAME else None
