"""Term counts on disk: a finished block's `terms-START-END.npz` in `<out>.partial/` and
the `terms/` group of a cache, both CSR, one row per document (docs/cache-format.md).

Reads and writes numpy `.npz` files (never pickled: loaded with `allow_pickle=False`) and
appends rows to an open HDF5 file; `longdoc.cache.writer` writes them and `longdoc.cache.reader` reads them.
Both readers prove the rows well formed first (`term_rows_problem`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from longdoc.runtime.errors import UserError
from longdoc.runtime.workdir import atomic_path
from longdoc.terms.hashing import MAX_FEATURES

if TYPE_CHECKING:
    import scipy.sparse as sp

# Entries read at once while checking term rows: a few arrays of 8 MB, whatever the
# size of the cache, so a cache larger than memory is still checked.
CHECK_CHUNK = 1 << 20
# Counts are stored as int32 (docs/cache-format.md).
MAX_COUNT = np.iinfo(np.int32).max


def terms_path(block_path: Path) -> Path:
    """Where the term counts of a block's documents live: `terms-START-END.npz` beside it."""
    return block_path.with_name(block_path.name.replace("block-", "terms-", 1)).with_suffix(".npz")


def save_terms(path: Path, matrix: "sp.csr_matrix"):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, indptr=matrix.indptr.astype(np.int64), indices=matrix.indices.astype(np.int32),
                 counts=matrix.data.astype(np.int32), n_features=np.int64(matrix.shape[1]))


def terms_rows_in(path: Path, n_features: int | None = None) -> int | None:
    """Documents in a complete, well-formed term-count file of `n_features` columns, or
    None when it is missing or damaged."""
    try:
        return load_terms(path, n_features).shape[0]
    except UserError:
        return None


def load_terms(path: Path, n_features: int | None = None) -> "sp.csr_matrix":
    """A block's term counts; saved by `save_terms`, read without pickle, refused unless
    well formed (`term_rows_problem`) and, given `n_features`, of that width."""
    import scipy.sparse as sp

    try:
        with np.load(path, allow_pickle=False) as z:
            indptr, indices, counts, n = z["indptr"], z["indices"], z["counts"], z["n_features"]
        if n.shape != () or n.dtype.kind not in "iu" or not 1 <= int(n) <= MAX_FEATURES:
            raise ValueError(f"n_features is {n!r}, not one integer from 1 to {MAX_FEATURES}")
        if n_features is not None and int(n) != n_features:
            raise ValueError(f"n_features is {int(n)}, not the run's {n_features}")
        problem = term_rows_problem(indptr, indices, counts, int(n))
        if problem:
            raise ValueError(problem)
        return sp.csr_matrix((counts.astype(np.int32), indices.astype(np.int32), indptr.astype(np.int64)),
                             shape=(len(indptr) - 1, int(n)))
    except (OSError, KeyError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as error:  # damaged: not fatal
        raise UserError(f"{path}: unreadable term counts ({error}); pass --overwrite to start again") from None


def term_rows_problem(indptr, indices, counts, n_features: int, prefix: str = "",
                      chunk: int = CHECK_CHUNK) -> str | None:
    """What is wrong with CSR term rows, or None when they are what `longdoc.terms.hashing` makes:
    `indptr` 1-D, from 0, never decreasing, ending at the number of entries; `indices` and
    `counts` 1-D integers of one length; each index in [0, n_features), strictly increasing
    within its row (sorted, no repeats); each count from 1 to MAX_COUNT. `indices` and
    `counts` may be h5py datasets: they are read `chunk` entries at a time. The message
    names the field as `prefix` + its name (the cache's `terms/indices`)."""
    indptr = np.asarray(indptr)
    for name, array in (("indptr", indptr), ("indices", indices), ("counts", counts)):
        if array.ndim != 1 or array.dtype.kind not in "iu":
            return f"{prefix}{name} is not a 1-D array of integers ({array.ndim}-D {array.dtype})"
    if len(indptr) == 0:
        return f"{prefix}indptr is empty"
    if indices.shape != counts.shape:
        return f"{prefix}indices and {prefix}counts differ in length ({len(indices)} vs {len(counts)})"
    indptr = indptr.astype(np.int64)  # a uint64 past 2^63 turns negative: refused below
    steps = np.diff(indptr)
    if indptr[0] != 0:
        return f"{prefix}indptr starts at {indptr[0]}, not at 0"
    if (steps < 0).any():
        return f"{prefix}indptr decreases after document {int(np.argmax(steps < 0))}"
    if indptr[-1] != len(indices):
        return f"{prefix}indptr ends at {indptr[-1]}, not at the {len(indices)} entries of {prefix}indices"
    previous = None  # the previous chunk's last index
    for lo in range(0, len(indices), chunk):
        hi = min(lo + chunk, len(indices))
        ids, values = np.asarray(indices[lo:hi]).astype(np.int64), np.asarray(counts[lo:hi]).astype(np.int64)
        outside = (ids < 0) | (ids >= n_features)
        if outside.any():
            at = int(np.argmax(outside))
            return (f"{prefix}indices holds {ids[at]} at entry {lo + at}, outside the term hashing's "
                    f"[0, {n_features})")
        wrong = (values < 1) | (values > MAX_COUNT)
        if wrong.any():
            at = int(np.argmax(wrong))
            return f"{prefix}counts holds {values[at]} at entry {lo + at}; a term occurs at least once"
        row_starts = np.zeros(hi - lo, dtype=bool)  # entry k of the chunk begins a document's row
        row_starts[indptr[(indptr >= lo) & (indptr < hi)] - lo] = True
        before = np.concatenate([[ids[0] if previous is None else previous], ids[:-1]])  # entry k - 1
        unsorted = ~row_starts & (ids <= before)
        if previous is None:
            unsorted[0] = False  # the first entry of all has no predecessor
        if unsorted.any():
            doc = int(np.searchsorted(indptr, lo + int(np.argmax(unsorted)), side="right")) - 1
            return f"{prefix}indices of document {doc} are not strictly increasing (unsorted or repeated terms)"
        previous = ids[-1]
    return None


def csr_of_rows(pieces, n_features: int) -> "sp.csr_matrix":
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
