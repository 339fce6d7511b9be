"""Term counts on disk: a finished block's `terms-START-END.npz` in `<out>.partial/` and
the `terms/` group of a cache, both CSR, one row per document (docs/cache-format.md).

Reads and writes numpy `.npz` files (never pickled: loaded with `allow_pickle=False`) and
appends rows to an open HDF5 file; `longdoc.cache.writer` writes them and `longdoc.cache.reader` reads them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from longdoc.runtime.errors import UserError
from longdoc.runtime.workdir import atomic_path

if TYPE_CHECKING:
    import scipy.sparse as sp


def terms_path(block_path: Path) -> Path:
    """Where the term counts of a block's documents live: `terms-START-END.npz` beside it."""
    return block_path.with_name(block_path.name.replace("block-", "terms-", 1)).with_suffix(".npz")


def save_terms(path: Path, matrix: "sp.csr_matrix"):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, indptr=matrix.indptr.astype(np.int64), indices=matrix.indices.astype(np.int32),
                 counts=matrix.data.astype(np.int32), n_features=np.int64(matrix.shape[1]))


def terms_rows_in(path: Path) -> int | None:
    """Documents in a complete term-count file, or None when it is missing or damaged."""
    try:
        return load_terms(path).shape[0]
    except UserError:
        return None


def load_terms(path: Path) -> "sp.csr_matrix":
    """A block's term counts; saved by `save_terms`, read without pickle."""
    import scipy.sparse as sp

    try:
        with np.load(path, allow_pickle=False) as z:
            indptr, indices, counts, n = z["indptr"], z["indices"], z["counts"], int(z["n_features"])
        return sp.csr_matrix((counts, indices, indptr), shape=(len(indptr) - 1, n))
    except (OSError, KeyError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as error:  # damaged: not fatal
        raise UserError(f"{path}: unreadable term counts ({error}); pass --overwrite to start again") from None


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
