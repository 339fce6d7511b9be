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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

from stages.errors import UserError
from stages.term_files import (
    TermsWriter,
    csr_of_rows,
    load_terms,
    save_terms,
    terms_path,
    terms_rows_in,
)
from stages.workdir import (  # noqa: F401 (re-exported)
    WorkDir,
    WriteGuard,
    atomic_path,
    atomic_write_bytes,
    differences,
)

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
        _check_layout(path, file)
        offsets = file["doc_offsets"][:].astype(np.int64)
        labels = file["labels"][:].astype(np.int64)
        n_windows = file["embeddings"].shape[0]
        if (len(offsets) != len(labels) + 1 or offsets[0] != 0 or offsets[-1] != n_windows
                or np.any(np.diff(offsets) < 0)):
            raise UserError(f"{path}: doc_offsets do not match embeddings and labels (truncated file?)")
        if np.any(np.diff(offsets) == 0):  # every document has at least one window (stages.windows)
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

    def finished_blocks(self, window_counts: np.ndarray | None = None) -> list[tuple[int, int, Path]]:
        """(doc_start, doc_end, path) of the finished blocks that run contiguously from
        document 0. A block that is damaged (zero-length, truncated, not float32 rows),
        or that holds other than its documents' `window_counts` windows, is deleted with
        every block after it: they are recomputed, never trusted."""
        blocks, expected = [], 0
        for path in sorted(self.dir.glob("block-*.npy")):
            try:
                start, end = (int(x) for x in path.stem.split("-")[1:3])
            except ValueError:
                continue
            rows = _block_rows(path)
            fits = window_counts is None or (end <= len(window_counts)
                                             and rows == int(window_counts[start:end].sum()))
            if start != expected or end <= start or rows is None or not fits:
                break
            if self.keeps_terms and terms_rows_in(terms_path(path)) != end - start:
                break
            blocks.append((start, end, path))
            expected = end
        kept = {path for _, _, path in blocks} | {terms_path(path) for _, _, path in blocks}
        for path in [*self.dir.glob("block-*.npy"), *self.dir.glob("terms-*.npz")]:
            if path not in kept:
                path.unlink(missing_ok=True)
        return blocks

    @property
    def keeps_terms(self) -> bool:
        """Whether each block has its documents' term counts beside it (`terms-START-END.npz`)."""
        return self.settings.get("term_hashing", "{}") != "{}"

    def save(self, block: Block):
        path = self.dir / f"block-{block.doc_start:09d}-{block.doc_end:09d}.npy"
        if block.terms is not None:  # first: a finished block always has its terms beside it
            save_terms(terms_path(path), block.terms)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, block.embeddings.astype(np.float32, copy=False))


def _block_rows(path: Path) -> int | None:
    """Rows of a complete 2-D float32 block file, or None when it is damaged."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            data_at = f.tell()
        size = path.stat().st_size
    except (OSError, ValueError, SyntaxError, TypeError):
        return None
    if len(shape) != 2 or dtype != np.float32 or fortran or size != data_at + shape[0] * shape[1] * 4:
        return None
    return int(shape[0])


def load_block(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        return np.load(f)


def write_cache(out: Path, attrs: dict, blocks: list[tuple[int, int, Path]], *, labels, doc_ids,
                doc_tokens, window_counts, window_starts, hidden: int):
    """Assemble finished blocks into the final file: a private temporary beside `out`,
    fsynced, then renamed (`stages.workdir.atomic_path`).

    Nothing is marked complete unless the blocks provably cover every document once:
    contiguous from document 0 to the last, each holding exactly its documents' windows.
    Streams one block at a time, so memory stays at one block however big the cache.
    """
    out = Path(out)
    offsets = np.concatenate([[0], np.cumsum(window_counts)]).astype(np.int64)
    covered = 0
    for start, end, path in blocks:
        if start != covered or end <= start:
            raise UserError(f"{path}: blocks do not cover documents {covered}.. once and in order; "
                            f"rerun the same command to recompute them")
        covered = end
    if covered != len(window_counts):
        raise UserError(f"the finished blocks cover {covered} of {len(window_counts)} documents; "
                        f"rerun the same command to finish them")
    with atomic_path(out) as tmp, _hdf5_for_writing(tmp) as f:
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


def join_caches(out: Path, parts: list[Path], attrs: dict, rows_per_copy: int = 65_536):
    """Concatenate complete caches of consecutive runs of documents (the shards of a
    sharded stage one, in document order) into one cache at `out`, atomically (`atomic_path`).

    The result is laid out exactly like a cache written by one process: per-window and
    per-document arrays concatenated, `doc_offsets` rebased onto the joined embeddings,
    root attributes `attrs`. Embeddings are copied `rows_per_copy` windows at a time
    (96 MB at hidden 384), so memory stays flat however large the shards.
    """
    out = Path(out)
    sources = [h5py.File(path, "r") for path in parts]
    try:
        window_counts = np.concatenate([np.diff(src["doc_offsets"][:]) for src in sources])
        offsets = np.concatenate([[0], np.cumsum(window_counts)]).astype(np.int64)
        hidden = int(attrs["hidden_size"])
        with atomic_path(out) as tmp, _hdf5_for_writing(tmp) as f:
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


@contextmanager
def _hdf5_for_writing(path: Path):
    """An h5py file writing to `path` through a WriteGuard: a failed write (disk full,
    file too large) ends in that OSError once h5py has closed cleanly, not in a crash."""
    with open(path, "w+b", buffering=0) as raw:
        guard = WriteGuard(raw)
        try:
            with h5py.File(guard, "w") as f:
                yield f
        except Exception:
            if guard.error is not None:  # h5py tripping over the dropped writes: the cause is the write
                raise guard.error from None
            raise
        if guard.error is not None:
            raise guard.error


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
    except (OSError, KeyError, ValueError, TypeError, RuntimeError):  # not a cache, or a damaged one
        return None
    return attrs if attrs.get("complete") and attrs.get("format") == FORMAT_NAME else None
