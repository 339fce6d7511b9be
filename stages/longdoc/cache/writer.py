"""Writing the window cache: the resumable work area of a run, and the final file.

Reads the finished blocks in `<out>.partial/` (or, to join shards, complete caches);
writes the HDF5 cache at `--out` in the format `longdoc.cache.reader` documents and reads
(docs/cache-format.md). Stage one (`longdoc.embedding.job`, `longdoc.embed`,
`longdoc.distributed`) is its only user: stage two needs only `longdoc.cache.reader`.

Crash safety: the file at `--out` only ever appears complete, by an atomic rename.
Work in progress lives in `<out>.partial/`: `settings.json` and one `block-START-END.npy`
per finished run of documents (with `terms-START-END.npz` beside it unless --no-terms),
each written to a temporary name and renamed. A block is trusted on resume only once its
header, size, values (all finite) and term counts are proven; a damaged one is deleted with
every block after it and computed again. A run killed at any moment loses at most
the block it was computing; run again with the same settings, it picks up after the last
finished block. `<out>.partial/lock` is held (flock) by the one process writing; a second
writer is refused.
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

from longdoc.cache.checks import label_sets_problem
from longdoc.cache.reader import FORMAT_NAME, FORMAT_VERSION
from longdoc.cache.term_files import (
    TermsWriter,
    load_terms,
    save_terms,
    terms_path,
    terms_rows_in,
)
from longdoc.runtime.errors import UserError
from longdoc.runtime.workdir import WorkDir, WriteGuard, atomic_path
from longdoc.terms.hashing import NO_TERMS, TermHashing

# Rows of a block read at once while checking its values: ~1.5 MB at hidden 384.
CHECK_ROWS = 1024


@dataclass
class Block:
    """Embeddings of documents [doc_start, doc_end), in document order."""

    doc_start: int
    doc_end: int
    embeddings: np.ndarray  # float32 [windows of these docs, hidden]
    terms: sp.csr_matrix | None = None  # hashed term counts of these docs, one row each


class PartialCache(WorkDir):
    """The resumable work area `<out>.partial/` of one writer; see the module docstring."""

    def finished_blocks(self, window_counts: np.ndarray | None = None) -> list[tuple[int, int, Path]]:
        """(doc_start, doc_end, path) of the finished blocks that run contiguously from
        document 0. A block that is damaged (zero-length, truncated, not float32 rows, a
        value that is NaN or infinite, term counts missing or malformed), or that holds
        other than its documents' `window_counts` windows, is deleted with every block
        after it: they are recomputed, never trusted."""
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
            if self.keeps_terms and terms_rows_in(terms_path(path), self.term_features) != end - start:
                break
            if not _finite_block(path):
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
        return self.settings.get("term_hashing", NO_TERMS) != NO_TERMS

    @property
    def term_features(self) -> int:
        """Columns of this run's term counts (its `term_hashing`)."""
        return TermHashing.from_json(self.settings["term_hashing"]).n_features

    def save(self, block: Block):
        if not np.isfinite(block.embeddings).all():  # never on disk, so never in a cache
            raise UserError(f"the encoder gave NaN or infinite vectors for documents {block.doc_start}.."
                            f"{block.doc_end - 1}; nothing of them was saved (at --precision fp16 or bf16, "
                            f"try fp32)")
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


def _finite_block(path: Path) -> bool:
    """Whether every value of a block (whose header `_block_rows` accepted) is finite;
    read `CHECK_ROWS` rows at a time."""
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
        return all(np.isfinite(rows[lo:lo + CHECK_ROWS]).all() for lo in range(0, len(rows), CHECK_ROWS))
    except (OSError, ValueError):
        return False


def write_cache(out: Path, attrs: dict, blocks: list[tuple[int, int, Path]], *, doc_ids, doc_tokens,
                window_counts, window_starts, hidden: int, labels=None, label_sets=None):
    """Assemble finished blocks into the final file: a private temporary beside `out`,
    fsynced, then renamed (`longdoc.runtime.workdir.atomic_path`).

    The documents' labels are either `labels`, one index into the `label_names` attribute
    each (a single-label cache), or `label_sets`, one sorted list of indices each, possibly
    empty (a multi-label cache, stored as `label_sets/`); `attrs["task"]`, when given, must
    name that task (the file's `task` attribute always does).

    Nothing is marked complete unless the blocks provably cover every document once:
    contiguous from document 0 to the last, each holding exactly its documents' windows,
    every value finite (a last line of defence: `PartialCache` already refuses them) and
    their term counts well formed. Streams one block at a time, so memory stays at one
    block however big the cache.
    """
    out = Path(out)
    offsets = np.concatenate([[0], np.cumsum(window_counts)]).astype(np.int64)
    label_data = _label_data(attrs, labels, label_sets, len(window_counts))
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
            block = np.load(path)
            lo, hi = offsets[start], offsets[end]
            if block.shape != (hi - lo, hidden):
                raise UserError(f"{path}: holds {block.shape}, expected {(hi - lo, hidden)}; "
                                f"pass --overwrite to start again")
            if not np.isfinite(block).all():
                raise UserError(f"{path}: holds NaN or infinite values; rerun the same command to compute "
                                f"it again")
            embeddings[lo:hi] = block
        if attrs.get("term_hashing", NO_TERMS) != NO_TERMS:
            terms = TermsWriter(f)
            n_features = TermHashing.from_json(attrs["term_hashing"]).n_features
            for start, end, path in blocks:
                matrix = load_terms(terms_path(path), n_features)
                if matrix.shape[0] != end - start:
                    raise UserError(f"{terms_path(path)}: holds {matrix.shape[0]} documents, expected "
                                    f"{end - start}; pass --overwrite to start again")
                terms.append(matrix.indptr, matrix.indices, matrix.data)
            terms.close()
        _write_the_rest(f, attrs, offsets, label_data, window_starts=window_starts, doc_ids=doc_ids,
                        doc_tokens=doc_tokens)


def join_caches(out: Path, parts: list[Path], attrs: dict, rows_per_copy: int = 65_536):
    """Concatenate complete caches of consecutive runs of documents (the shards of a
    sharded stage one, in document order) into one cache at `out`, atomically (`atomic_path`).

    The result is laid out exactly like a cache written by one process: per-window and
    per-document arrays concatenated, `doc_offsets` rebased onto the joined embeddings,
    root attributes `attrs`; label sets (a multi-label cache) joined row after row, each
    shard's proven well formed first. Embeddings are copied `rows_per_copy` windows at a time
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
                    rows = part[lo:hi]
                    if not np.isfinite(rows).all():  # a planted or damaged shard: never published
                        raise UserError(f"{src.filename}: holds NaN or infinite vectors; pass --overwrite "
                                        f"to embed again")
                    embeddings[at + lo:at + hi] = rows
                at += len(part)
            if all("terms" in src for src in sources) and sources:
                terms = TermsWriter(f)
                for src in sources:
                    group = src["terms"]
                    terms.append(group["indptr"][:], group["indices"][:], group["counts"][:])
                terms.close()
            joined = {name: np.concatenate([src[name][:] for src in sources])
                      for name in ("window_starts", "doc_tokens")}
            doc_ids = [x for src in sources for x in src["doc_ids"].asstr()[:]]
            _write_the_rest(f, attrs, offsets, _joined_labels(sources, attrs), doc_ids=doc_ids, **joined)
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


def _label_data(attrs: dict, labels, label_sets, n_docs: int) -> dict:
    """The label datasets to write, by their path in the file, and the task they make:
    {"task": ..., "labels": int64} or {"task": ..., "label_sets/indptr": int64,
    "label_sets/indices": int32}, once they fit the documents and `label_names`."""
    if (labels is None) == (label_sets is None):
        raise ValueError("a cache holds either labels (single-label) or label_sets (multi-label)")
    task = "single_label" if label_sets is None else "multi_label"
    if attrs.get("task", task) != task:
        raise ValueError(f"attrs name task {attrs['task']!r} for the labels of a {task} cache")
    if labels is not None:  # as they always were: the corpus's, checked when it was read
        return {"task": task, "labels": np.asarray(labels, dtype=np.int64)}
    n_labels = len(json.loads(attrs["label_names"]))
    if len(label_sets) != n_docs:
        raise ValueError(f"{len(label_sets)} label sets for {n_docs} documents")
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in label_sets])]).astype(np.int64)
    indices = np.fromiter((k for s in label_sets for k in s), dtype=np.int64, count=int(indptr[-1]))
    return _label_set_data(indptr, indices, n_labels, "the label sets to write")


def _label_set_data(indptr, indices, n_labels: int, what: str) -> dict:
    problem = label_sets_problem(indptr, indices, n_labels)
    if problem:
        raise UserError(f"{what}: {problem}")
    return {"task": "multi_label", "label_sets/indptr": np.asarray(indptr, dtype=np.int64),
            "label_sets/indices": np.asarray(indices, dtype=np.int32)}


def _joined_labels(sources: list[h5py.File], attrs: dict) -> dict:
    """The label datasets of shards joined in order (see `_label_data`); every shard of the
    task `attrs` names, its label sets proven well formed before they are rebased."""
    task = attrs.get("task", "single_label")
    for src in sources:
        theirs = src.attrs.get("task", "single_label")
        if theirs != task or ("label_sets" in src) != (task == "multi_label"):
            raise UserError(f"{src.filename}: holds labels of another task than {task}; pass --overwrite to "
                            f"embed again")
    if task == "single_label":
        return {"task": task, "labels": np.concatenate([src["labels"][:] for src in sources]).astype(np.int64)}
    n_labels = len(json.loads(attrs["label_names"]))
    indptrs, indices, at = [np.zeros(1, dtype=np.int64)], [], 0
    for src in sources:
        group = src["label_sets"]
        part_indptr, part_indices = group["indptr"][:], group["indices"][:]
        problem = label_sets_problem(part_indptr, part_indices, n_labels, prefix="label_sets/")
        if problem:
            raise UserError(f"{src.filename}: {problem}; pass --overwrite to embed again")
        indptrs.append(part_indptr[1:].astype(np.int64) + at)
        indices.append(part_indices.astype(np.int64))
        at += len(part_indices)
    return _label_set_data(np.concatenate(indptrs), np.concatenate(indices or [np.zeros(0, np.int64)]),
                           n_labels, "the joined label sets")


def _write_the_rest(f: h5py.File, attrs: dict, offsets, label_data: dict, *, window_starts, doc_ids, doc_tokens):
    """Every dataset but `embeddings`, and the root attributes, marked complete."""
    f.create_dataset("doc_offsets", data=offsets)
    f.create_dataset("window_starts", data=np.asarray(window_starts, dtype=np.int64))
    for name, data in label_data.items():
        if name != "task":
            f.create_dataset(name, data=data)
    f.create_dataset("doc_ids", data=list(doc_ids), dtype=h5py.string_dtype("utf-8"))
    f.create_dataset("doc_tokens", data=np.asarray(doc_tokens, dtype=np.int64))
    for key, value in attrs.items():
        f.attrs[key] = value
    f.attrs["task"] = label_data["task"]
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["complete"] = True
