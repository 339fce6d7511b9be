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

from longdoc.cache.term_files import CHECK_CHUNK, csr_of_rows, term_rows_problem
from longdoc.runtime.errors import UserError
from longdoc.runtime.workdir import differences  # noqa: F401 (re-exported: compares CACHE_IDENTITY)
from longdoc.settings.labels import check_label_names
from longdoc.settings.model import PRECISIONS, WINDOW_VECTORS
from longdoc.terms.hashing import NO_TERMS, TermHashing

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
# What the attributes may hold: the precision the encoder ran at and the window vector
# chosen (`auto` is resolved before anything is written); no encoder reads windows of
# more than 2^20 tokens (the longest BERT-family contexts are 8,192).
RUN_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")
CACHE_WINDOW_VECTORS = tuple(v for v in WINDOW_VECTORS if v != "auto")
MAX_CHUNK_TOKENS = 2**20


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
        attrs = _read_attributes(path, file)
        if not isinstance(attrs.get("format"), str) or attrs["format"] != FORMAT_NAME:
            raise UserError(f"{path}: not a window cache (no format={FORMAT_NAME!r} attribute)")
        version = attrs.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise UserError(f"{path}: cache format version {_shown(version)}, "
                            f"this code reads {' and '.join(map(str, READABLE_VERSIONS))}")
        if version == 1:
            attrs = {**VERSION_1_DEFAULTS, **attrs}
        if attrs.get("complete") is not True:  # the writer writes True; "no" is a truthy string
            raise UserError(f"{path}: cache is incomplete (complete = {_shown(attrs.get('complete'))})")
        _check_layout(path, file)
        n_windows, hidden = file["embeddings"].shape
        _check_identity(path, attrs, hidden)
        label_names = _label_names(path, attrs)
        n_docs = file["labels"].shape[0]
        if n_docs == 0:
            raise UserError(f"{path}: cache holds no documents")
        for name, shape in (("doc_offsets", n_docs + 1), ("doc_ids", n_docs), ("doc_tokens", n_docs),
                            ("window_starts", n_windows)):  # sizes first: nothing is read yet
            if file[name].shape != (shape,):
                raise UserError(f"{path}: {name} holds {file[name].shape[0]:,} entries, not the {shape:,} "
                                f"the labels and embeddings make (truncated file?)")
        offsets = file["doc_offsets"][:].astype(np.int64)  # a uint64 past 2^63 turns negative: refused
        labels = file["labels"][:].astype(np.int64)
        if offsets[0] != 0 or offsets[-1] != n_windows or np.any(np.diff(offsets) < 0):
            raise UserError(f"{path}: doc_offsets do not match embeddings and labels (truncated file?)")
        if np.any(np.diff(offsets) == 0):  # every document has at least one window (longdoc.encoding.windows)
            doc = int(np.flatnonzero(np.diff(offsets) == 0)[0])
            raise UserError(f"{path}: document {doc} has no windows (damaged cache)")
        if labels.min() < 0 or labels.max() >= len(label_names):
            raise UserError(f"{path}: labels outside label_names")
        _check_doc_ids(path, file["doc_ids"])
        _check_windows(path, file, offsets, attrs["chunk_tokens"], attrs["stride"])
        term_indptr = _checked_terms(path, file, attrs["term_hashing"], n_docs)
    except UserError:
        file.close()
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError,
            RecursionError) as error:
        file.close()
        first = (str(error).strip().splitlines() or [""])[0][:160]
        raise UserError(f"{path}: damaged cache ({type(error).__name__}: {first})") from None
    return WindowCache(path, file, attrs, offsets, labels, label_names, term_indptr)


def _shown(value) -> str:
    """A value read from a file, for a message: its repr, cut at 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _read_attributes(path: Path, file: h5py.File) -> dict:
    """Every root attribute as a plain value; one that cannot be read or decoded is named."""
    attrs = {}
    for key in file.attrs.keys():
        try:
            attrs[key] = _plain(file.attrs[key])
        except (OSError, ValueError, TypeError) as error:  # UnicodeDecodeError is a ValueError
            raise UserError(f"{path}: attribute {key} cannot be read ({type(error).__name__}) "
                            f"(damaged cache)") from None
        try:  # h5py hands undecodable text over with its bytes as lone surrogates
            if isinstance(attrs[key], str):
                attrs[key].encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{path}: attribute {key} is not valid UTF-8 (damaged cache)") from None
    return attrs


# Each dataset: (rank, dtype kinds): `f4` exactly for the vectors (a narrower float would change
# them); integers of any width, since their values are checked; strings for the ids.
DATASETS = {"embeddings": (2, "f4"), "doc_offsets": (1, "iu"), "window_starts": (1, "iu"), "labels": (1, "iu"),
            "doc_ids": (1, "str"), "doc_tokens": (1, "iu")}
TERM_DATASETS = {"indptr": (1, "iu"), "indices": (1, "iu"), "counts": (1, "iu")}
_LAYOUTS = (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED)  # not virtual: no other files


def _check_layout(path: Path, file: h5py.File):
    """Each array is a dataset of the documented rank and kind, stored in this file, holding
    the data its shape declares (so nothing is allocated for a size the file does not back)."""
    for name, (ndim, kinds) in DATASETS.items():
        _check_dataset(path, file, name, ndim, kinds)
    if file["embeddings"].shape[1] < 1:
        raise UserError(f"{path}: embeddings have no columns (damaged cache)")
    if "terms" in file:
        if not isinstance(file.get("terms", getlink=True), h5py.HardLink) or not isinstance(file["terms"], h5py.Group):
            raise UserError(f"{path}: terms is not a group of this file as the cache format says (damaged cache)")
        for name, (ndim, kinds) in TERM_DATASETS.items():
            _check_dataset(path, file["terms"], name, ndim, kinds, f"terms/{name}")


def _check_dataset(path: Path, group: h5py.Group, name: str, ndim: int, kinds: str, shown: str | None = None):
    shown = shown or name
    if name not in group:
        raise UserError(f"{path}: cache lacks {shown}")
    if not isinstance(group.get(name, getlink=True), h5py.HardLink):  # a soft or external link
        raise UserError(f"{path}: {shown} is a link, not a dataset of this file (damaged cache)")
    item = group.get(name)
    kind_ok = isinstance(item, h5py.Dataset) and (
        h5py.check_string_dtype(item.dtype) is not None if kinds == "str"
        else item.dtype == np.float32 if kinds == "f4" else item.dtype.kind in kinds)
    if not isinstance(item, h5py.Dataset) or item.ndim != ndim or not kind_ok:
        what = type(item).__name__ if not isinstance(item, h5py.Dataset) else f"{item.ndim}-D {item.dtype}"
        raise UserError(f"{path}: {shown} is a {what}, not a {ndim}-D dataset of "
                        f"{dict(f4='float32', iu='integers', str='strings')[kinds]} as the cache format says "
                        f"(damaged cache)")
    plist = item.id.get_create_plist()
    if plist.get_layout() not in _LAYOUTS or plist.get_external_count():
        raise UserError(f"{path}: {shown} is stored in other files (virtual or external), not in this one "
                        f"(damaged cache)")
    if not plist.get_nfilters() and item.id.get_storage_size() < item.size * item.dtype.itemsize:
        raise UserError(f"{path}: {shown} declares {item.shape} entries but the file holds less data "
                        f"(truncated file?)")


def _int(value) -> bool:
    return type(value) is int  # exactly: True is no count of tokens, 256.0 no integer here


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())  # any path or name embed was given


def _sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _check_identity(path: Path, attrs: dict, hidden: int):
    """The attributes that say how the vectors were made, each of its type and range."""
    checks = (  # (name, accepted, what it must be), in order: stride is checked against chunk_tokens
        ("model", _text, "a model name"),
        ("model_fingerprint", _sha256, "a sha256 in hexadecimal"),
        ("chunk_tokens", lambda v: _int(v) and 1 <= v <= MAX_CHUNK_TOKENS,
         f"a whole number of tokens from 1 to {MAX_CHUNK_TOKENS:,}"),
        ("stride", lambda v: _int(v) and 0 <= v < attrs["chunk_tokens"], "a whole number from 0 to below chunk_tokens"),
        ("precision", lambda v: v in RUN_PRECISIONS, f"one of {', '.join(RUN_PRECISIONS)}"),
        ("hidden_size", lambda v: _int(v) and v == hidden, f"the embeddings' width, {hidden}"),
        ("window_vector", lambda v: v in CACHE_WINDOW_VECTORS, f"one of {', '.join(CACHE_WINDOW_VECTORS)}"),
        ("data_source", lambda v: isinstance(v, str), "a description of the corpus"),
        ("data_fingerprint", _sha256, "a sha256 in hexadecimal"),
        ("label_names", lambda v: isinstance(v, str), "a JSON list of names"),
        ("term_hashing", lambda v: isinstance(v, str), "JSON of the term hashing"),
    )
    for name, accepted, what in checks:
        if name not in attrs:
            raise UserError(f"{path}: cache lacks its {name} attribute (damaged cache)")
        value = attrs[name]
        if isinstance(value, np.ndarray) or not accepted(value):  # an array is never a setting here
            raise UserError(f"{path}: attribute {name} is {_shown(value)}, not {what} (damaged cache)")


def _label_names(path: Path, attrs: dict) -> list[str]:
    try:
        names = json.loads(attrs["label_names"])
    except (ValueError, RecursionError):
        raise UserError(f"{path}: label_names is not JSON (damaged cache)") from None
    if not isinstance(names, list):
        raise UserError(f"{path}: label_names is not a list of names (damaged cache)")
    check_label_names(names, f"{path}: label_names")
    return names


def _check_doc_ids(path: Path, ids: h5py.Dataset):
    """Every id decodes as UTF-8; read CHECK_CHUNK at a time."""
    for lo in range(0, ids.shape[0], CHECK_CHUNK):
        for n, raw in enumerate(ids[lo:lo + CHECK_CHUNK]):
            try:
                if isinstance(raw, bytes):  # h5py hands variable-length strings over undecoded
                    raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UserError(f"{path}: doc_ids of document {lo + n} is not UTF-8 ({raw[error.start:error.end]!r} "
                                f"at byte {error.start}) (damaged cache)") from None


def _check_windows(path: Path, file: h5py.File, offsets: np.ndarray, chunk_tokens: int, stride: int):
    """`window_starts` and `doc_tokens` are those of the window geometry (`longdoc.encoding.windows`):
    the windows of a document start at 0, step, 2 step, ..., with one step for the whole cache
    (a body of `step + stride` tokens, at most `chunk_tokens`), and a document of n tokens has
    `WindowSpec.count(n)` of them. window_starts is read CHECK_CHUNK windows at a time."""
    counts = np.diff(offsets)
    doc_tokens = file["doc_tokens"][:].astype(np.int64)
    if doc_tokens.min() < 0:
        raise UserError(f"{path}: doc_tokens of document {int(np.argmin(doc_tokens))} is negative (damaged cache)")
    starts = file["window_starts"]
    longer = np.flatnonzero(counts >= 2)
    step = int(starts[offsets[longer[0]] + 1]) if len(longer) else 0
    if len(longer) and not 1 <= step <= chunk_tokens - stride:
        raise UserError(f"{path}: window_starts of document {int(longer[0])} step by {step} tokens, which windows "
                        f"of {chunk_tokens} tokens overlapping by {stride} cannot (damaged cache)")
    for lo in range(0, int(offsets[-1]), CHECK_CHUNK):
        window = np.arange(lo, min(lo + CHECK_CHUNK, int(offsets[-1])))
        doc = np.searchsorted(offsets, window, side="right") - 1
        wrong = starts[window[0]:window[-1] + 1].astype(np.int64) != (window - offsets[doc]) * step
        if wrong.any():
            raise UserError(f"{path}: window_starts of document {int(doc[np.argmax(wrong)])} are not 0, {step}, "
                            f"{2 * step}, ... as its windows' (damaged cache)")
    if len(longer):
        body = step + stride
        expected = np.where(doc_tokens <= body, 1, 1 + -(-(doc_tokens - body) // step))
    else:  # every document fits one window, whose body (unknown here) is at most chunk_tokens
        expected = np.where(doc_tokens <= chunk_tokens, 1, 0)
    if np.any(expected != counts):
        doc = int(np.argmax(expected != counts))
        raise UserError(f"{path}: doc_tokens of document {doc} ({doc_tokens[doc]:,} tokens) does not make its "
                        f"{counts[doc]} window(s) of {chunk_tokens} tokens, stride {stride} (damaged cache)")


def _checked_terms(path: Path, file: h5py.File, hashing: str, n_docs: int) -> np.ndarray | None:
    """`terms/indptr` once `terms/` is proven well formed (`term_rows_problem`) and of the
    hashing the `term_hashing` attribute names; None for a cache without terms."""
    if "terms" not in file:
        if hashing != NO_TERMS:
            raise UserError(f"{path}: term_hashing names a hashing but the cache holds no terms/ (damaged cache)")
        return None
    try:
        n_features = TermHashing.from_json(hashing).n_features
    except ValueError as error:
        raise UserError(f"{path}: attribute term_hashing is not this code's term hashing ({error}) "
                        f"(damaged cache)") from None
    group = file["terms"]
    if group["indptr"].shape != (n_docs + 1,):
        raise UserError(f"{path}: terms/ does not match the documents (truncated file?)")
    indptr = group["indptr"][:]
    problem = term_rows_problem(indptr, group["indices"], group["counts"], n_features, prefix="terms/")
    if problem:
        raise UserError(f"{path}: {problem} (damaged cache)")
    return indptr.astype(np.int64)


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
    return attrs if attrs.get("complete") is True and attrs.get("format") == FORMAT_NAME else None
