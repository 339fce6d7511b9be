"""The window-embedding cache: the HDF5 file stage one writes and stage two reads.

The format is documented in docs/cache-format.md; this module is its only writer
and the reference reader. In short, per split one HDF5 file with

    embeddings    float32 [n_windows, hidden]   one [CLS] vector per window
    doc_offsets   int64   [n_docs + 1]          windows of doc i: offsets[i]:offsets[i+1]
    window_starts int64   [n_windows]           token offset of each window's text in its doc
    labels        int64   [n_docs]              index into attrs["label_names"]
    doc_ids       utf-8   [n_docs]              source id or path of each document
    doc_tokens    int64   [n_docs]              document length in tokens (no specials)
    terms/indptr  int64   [n_docs + 1]          hashed term counts of each whole document,
    terms/indices int32   [n_terms]             CSR, one row per document (`stages.terms`);
    terms/counts  int32   [n_terms]             absent when embedded with --no-terms

and root attributes naming the model, its fingerprint, the window settings and the
data they came from (`CACHE_IDENTITY` plus provenance).

Crash safety: the file at `--out` only ever appears complete, by an atomic rename.
Work in progress lives in `<out>.partial/`: `settings.json` and one `block-START-END.npy`
per finished run of documents, each written to a temporary name and renamed. A run
killed at any moment loses at most the block it was computing; run again with the
same settings, it picks up after the last finished block. `<out>.partial/lock` is
held (flock) by the one process writing; a second writer is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

from stages.errors import UserError
from stages.workdir import WorkDir, atomic_write_bytes, differences  # noqa: F401 (re-exported)

FORMAT_NAME = "longdoc-window-cache"
# 2: adds `terms/` and the `window_vector` and `term_hashing` attributes. Version 1
# caches are still read: [CLS] window vectors and no terms.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# The attributes that say what a cache *is*: two caches (or a cache and a head)
# agree when these agree. Everything else in the attributes is provenance.
ENCODER_IDENTITY = ("model_fingerprint", "chunk_tokens", "stride", "window_vector")
CACHE_IDENTITY = (*ENCODER_IDENTITY, "model", "precision", "data_source", "data_fingerprint", "term_hashing")
# What a version-1 cache, written before these attributes existed, was made with.
VERSION_1_DEFAULTS = {"window_vector": "cls", "term_hashing": "{}"}


# --- reading -----------------------------------------------------------------------


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
        """JSON of the `stages.terms.TermHashing` the terms were made with; "{}" without terms."""
        return str(self.attrs.get("term_hashing", "{}"))

    def term_rows(self, docs: np.ndarray) -> "sp.csr_matrix":
        """Hashed term counts of documents `docs`, one CSR row each, in the order given."""
        import scipy.sparse as sp

        indptr = self.term_indptr
        group = self.file["terms"]
        n_features = self.term_features
        docs = np.asarray(docs, dtype=np.int64)
        if len(docs) == self.n_docs and np.array_equal(docs, np.arange(self.n_docs)):  # all: two reads
            return sp.csr_matrix((group["counts"][:], group["indices"][:], indptr), shape=(self.n_docs, n_features))
        pieces = [(group["indices"][indptr[d]:indptr[d + 1]], group["counts"][indptr[d]:indptr[d + 1]])
                  for d in docs.tolist()]
        return _csr(pieces, n_features)

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

    def doc_windows(self, i: int) -> np.ndarray:
        return self.embeddings[self.doc_offsets[i]:self.doc_offsets[i + 1]]

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
        offsets = file["doc_offsets"][:].astype(np.int64)
        labels = file["labels"][:].astype(np.int64)
        n_windows = file["embeddings"].shape[0]
        if (len(offsets) != len(labels) + 1 or offsets[0] != 0 or offsets[-1] != n_windows
                or np.any(np.diff(offsets) < 0)):
            raise UserError(f"{path}: doc_offsets do not match embeddings and labels (truncated file?)")
        if len(labels) == 0:
            raise UserError(f"{path}: cache holds no documents")
        if "terms" in file:
            indptr = file["terms"]["indptr"]
            if (indptr.shape != (len(labels) + 1,) or file["terms"]["indices"].shape != file["terms"]["counts"].shape
                    or int(indptr[-1]) != file["terms"]["indices"].shape[0]):
                raise UserError(f"{path}: terms/ does not match the documents (truncated file?)")
        label_names = list(json.loads(attrs["label_names"]))
        if labels.min() < 0 or labels.max() >= len(label_names):
            raise UserError(f"{path}: labels outside label_names")
    except UserError:
        file.close()
        raise
    except (OSError, KeyError, ValueError) as error:
        file.close()
        raise UserError(f"{path}: damaged cache ({type(error).__name__}: {error})") from None
    return WindowCache(path, file, attrs, offsets, labels, label_names)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- writing -----------------------------------------------------------------------


@dataclass
class Block:
    """Embeddings of documents [doc_start, doc_end), in document order."""

    doc_start: int
    doc_end: int
    embeddings: np.ndarray  # float32 [windows of these docs, hidden]
    terms: "sp.csr_matrix | None" = None  # hashed term counts of these docs, one row each


class PartialCache(WorkDir):
    """The resumable work area `<out>.partial/` of one writer; see the module docstring."""

    def finished_blocks(self) -> list[tuple[int, int, Path]]:
        """(doc_start, doc_end, path) of each finished block, checked to be contiguous."""
        blocks = []
        for path in sorted(self.dir.glob("block-*.npy")):
            start, end = (int(x) for x in path.stem.split("-")[1:3])
            blocks.append((start, end, path))
        expected = 0
        for start, end, path in blocks:
            if start != expected:
                raise UserError(f"{self.dir}: block files are not contiguous at {path.name}; "
                                f"pass --overwrite to start again")
            expected = end
        return blocks

    def save(self, block: Block):
        path = self.dir / f"block-{block.doc_start:09d}-{block.doc_end:09d}.npy"
        if block.terms is not None:  # first: a finished block always has its terms beside it
            save_terms(terms_path(path), block.terms)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.save(f, block.embeddings.astype(np.float32, copy=False))
        os.replace(tmp, path)


def load_block(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        return np.load(f)


def terms_path(block_path: Path) -> Path:
    """Where the term counts of a block's documents live: `terms-START-END.npz` beside it."""
    return block_path.with_name(block_path.name.replace("block-", "terms-", 1)).with_suffix(".npz")


def save_terms(path: Path, matrix: "sp.csr_matrix"):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, indptr=matrix.indptr.astype(np.int64), indices=matrix.indices.astype(np.int32),
                 counts=matrix.data.astype(np.int32), n_features=np.int64(matrix.shape[1]))
    os.replace(tmp, path)


def load_terms(path: Path) -> "sp.csr_matrix":
    """A block's term counts; saved by `save_terms`, read without pickle."""
    import scipy.sparse as sp

    try:
        with np.load(path, allow_pickle=False) as z:
            indptr, indices, counts, n = z["indptr"], z["indices"], z["counts"], int(z["n_features"])
        return sp.csr_matrix((counts, indices, indptr), shape=(len(indptr) - 1, n))
    except (OSError, KeyError, ValueError) as error:
        raise UserError(f"{path}: unreadable term counts ({error}); pass --overwrite to start again") from None


def _csr(pieces, n_features: int) -> "sp.csr_matrix":
    """One CSR matrix from (indices, counts) per row."""
    import scipy.sparse as sp

    lengths = [len(i) for i, _ in pieces]
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = np.concatenate([i for i, _ in pieces]).astype(np.int32) if pieces else np.zeros(0, np.int32)
    counts = np.concatenate([c for _, c in pieces]).astype(np.int32) if pieces else np.zeros(0, np.int32)
    return sp.csr_matrix((counts, indices, indptr), shape=(len(pieces), n_features))


class TermsWriter:
    """Appends CSR rows to `terms/` of an open HDF5 file, one block of documents at a time."""

    def __init__(self, f: h5py.File):
        group = f.create_group("terms")
        self.indptr = [np.zeros(1, dtype=np.int64)]
        self.indices = group.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(65536,))
        self.counts = group.create_dataset("counts", shape=(0,), maxshape=(None,), dtype="int32", chunks=(65536,))
        self.group = group

    def append(self, indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray):
        """Rows given as CSR arrays (`indptr` starting at 0)."""
        at = self.indices.shape[0]
        self.indices.resize((at + len(indices),))
        self.counts.resize((at + len(counts),))
        self.indices[at:] = indices
        self.counts[at:] = counts
        self.indptr.append(np.asarray(indptr[1:], dtype=np.int64) + at)

    def close(self):
        self.group.create_dataset("indptr", data=np.concatenate(self.indptr))


def write_cache(out: Path, attrs: dict, blocks: list[tuple[int, int, Path]], *, labels, doc_ids,
                doc_tokens, window_counts, window_starts, hidden: int):
    """Assemble finished blocks into the final file: write `<out>.tmp`, then rename.

    Streams one block at a time, so memory stays at one block however big the cache.
    """
    out = Path(out)
    tmp = Path(f"{out}.tmp")
    offsets = np.concatenate([[0], np.cumsum(window_counts)]).astype(np.int64)
    with h5py.File(tmp, "w") as f:
        embeddings = _create_embeddings(f, int(offsets[-1]), hidden)
        for start, end, path in blocks:
            block = load_block(path)
            lo, hi = offsets[start], offsets[end]
            if block.shape != (hi - lo, hidden):
                raise UserError(f"{path}: holds {block.shape}, expected {(hi - lo, hidden)}; "
                                f"pass --overwrite to start again")
            embeddings[lo:hi] = block
        if attrs.get("term_hashing", "{}") != "{}":
            terms = TermsWriter(f)
            for start, end, path in blocks:
                matrix = load_terms(terms_path(path))
                if matrix.shape[0] != end - start:
                    raise UserError(f"{terms_path(path)}: holds {matrix.shape[0]} documents, expected "
                                    f"{end - start}; pass --overwrite to start again")
                terms.append(matrix.indptr, matrix.indices, matrix.data)
            terms.close()
        _write_the_rest(f, attrs, offsets, window_starts=window_starts, labels=labels, doc_ids=doc_ids,
                        doc_tokens=doc_tokens)
    os.replace(tmp, out)


def join_caches(out: Path, parts: list[Path], attrs: dict, rows_per_copy: int = 65_536):
    """Concatenate complete caches of consecutive runs of documents (the shards of a
    sharded stage one, in document order) into one cache at `out`: `<out>.tmp`, then rename.

    The result is laid out exactly like a cache written by one process: per-window and
    per-document arrays concatenated, `doc_offsets` rebased onto the joined embeddings,
    root attributes `attrs`. Embeddings are copied `rows_per_copy` windows at a time
    (96 MB at hidden 384), so memory stays flat however large the shards.
    """
    out = Path(out)
    tmp = Path(f"{out}.tmp")
    sources = [h5py.File(path, "r") for path in parts]
    try:
        window_counts = np.concatenate([np.diff(src["doc_offsets"][:]) for src in sources])
        offsets = np.concatenate([[0], np.cumsum(window_counts)]).astype(np.int64)
        hidden = int(attrs["hidden_size"])
        with h5py.File(tmp, "w") as f:
            embeddings = _create_embeddings(f, int(offsets[-1]), hidden)
            at = 0
            for src in sources:
                part = src["embeddings"]
                for lo in range(0, len(part), rows_per_copy):
                    hi = min(lo + rows_per_copy, len(part))
                    embeddings[at + lo:at + hi] = part[lo:hi]
                at += len(part)
            if all("terms" in src for src in sources) and sources:
                terms = TermsWriter(f)
                for src in sources:
                    group = src["terms"]
                    terms.append(group["indptr"][:], group["indices"][:], group["counts"][:])
                terms.close()
            joined = {name: np.concatenate([src[name][:] for src in sources])
                      for name in ("window_starts", "labels", "doc_tokens")}
            doc_ids = [x for src in sources for x in src["doc_ids"].asstr()[:]]
            _write_the_rest(f, attrs, offsets, doc_ids=doc_ids, **joined)
    finally:
        for src in sources:
            src.close()
    os.replace(tmp, out)


def _create_embeddings(f: h5py.File, n_windows: int, hidden: int) -> h5py.Dataset:
    return f.create_dataset("embeddings", shape=(n_windows, hidden), dtype="float32",
                            chunks=(min(n_windows, 4096), hidden) if n_windows else None)


def _write_the_rest(f: h5py.File, attrs: dict, offsets, *, window_starts, labels, doc_ids, doc_tokens):
    """Every dataset but `embeddings`, and the root attributes, marked complete."""
    f.create_dataset("doc_offsets", data=offsets)
    f.create_dataset("window_starts", data=np.asarray(window_starts, dtype=np.int64))
    f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
    f.create_dataset("doc_ids", data=list(doc_ids), dtype=h5py.string_dtype("utf-8"))
    f.create_dataset("doc_tokens", data=np.asarray(doc_tokens, dtype=np.int64))
    for key, value in attrs.items():
        f.attrs[key] = value
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["complete"] = True


def read_attrs(path: Path) -> dict | None:
    """Root attributes of an existing complete cache, or None if there is none."""
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
    except OSError:
        return None
    return attrs if attrs.get("complete") and attrs.get("format") == FORMAT_NAME else None
