"""Validation of a window cache, each check a UserError of one line naming the file and
the field: the part of `longdoc.cache.reader.open_cache` that proves a file is a complete,
well-formed cache before anything of it is used (the table in docs/RELIABILITY.md).

Reads the HDF5 file it is given (attributes, dataset headers, per-document arrays whole,
per-window and per-term arrays CHECK_CHUNK entries at a time); writes nothing.
`label_sets_problem` is shared with `longdoc.cache.writer`, which proves label sets well
formed before it writes or joins them.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from longdoc.cache.term_files import CHECK_CHUNK, term_rows_problem
from longdoc.runtime.errors import UserError
from longdoc.settings.labels import check_label_names
from longdoc.settings.model import PRECISIONS, TASKS, WINDOW_VECTORS
from longdoc.terms.hashing import NO_TERMS, TermHashing

# What the attributes may hold: the precision the encoder ran at and the window vector
# chosen (`auto` is resolved before anything is written); no encoder reads windows of
# more than 2^20 tokens (the longest BERT-family contexts are 8,192).
RUN_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")
CACHE_WINDOW_VECTORS = tuple(v for v in WINDOW_VECTORS if v != "auto")
MAX_CHUNK_TOKENS = 2**20
# The task a cache's labels are for (its `task` attribute, one of TASKS): one label per
# document (`labels`), or a set of labels per document (`label_sets/`).
LABEL_SET_DATASETS = {"indptr": (1, "iu"), "indices": (1, "iu")}


def shown(value) -> str:
    """A value read from a file, for a message: its repr, cut at 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_attributes(path: Path, file: h5py.File) -> dict:
    """Every root attribute as a plain value; one that cannot be read or decoded is named."""
    attrs = {}
    for key in file.attrs.keys():
        try:
            attrs[key] = plain(file.attrs[key])
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
DATASETS = {"embeddings": (2, "f4"), "doc_offsets": (1, "iu"), "window_starts": (1, "iu"),
            "doc_ids": (1, "str"), "doc_tokens": (1, "iu")}
TERM_DATASETS = {"indptr": (1, "iu"), "indices": (1, "iu"), "counts": (1, "iu")}
_LAYOUTS = (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED)  # not virtual: no other files


def check_layout(path: Path, file: h5py.File, task: str):
    """Each array is a dataset of the documented rank and kind, stored in this file, holding
    the data its shape declares (so nothing is allocated for a size the file does not back)."""
    for name, (ndim, kinds) in DATASETS.items():
        check_dataset(path, file, name, ndim, kinds)
    if file["embeddings"].shape[1] < 1:
        raise UserError(f"{path}: embeddings have no columns (damaged cache)")
    if "terms" in file:
        if not isinstance(file.get("terms", getlink=True), h5py.HardLink) or not isinstance(file["terms"], h5py.Group):
            raise UserError(f"{path}: terms is not a group of this file as the cache format says (damaged cache)")
        for name, (ndim, kinds) in TERM_DATASETS.items():
            check_dataset(path, file["terms"], name, ndim, kinds, f"terms/{name}")
    check_label_layout(path, file, task)


def check_dataset(path: Path, group: h5py.Group, name: str, ndim: int, kinds: str, label: str | None = None):
    label = label or name
    if name not in group:
        raise UserError(f"{path}: cache lacks {label}")
    if not isinstance(group.get(name, getlink=True), h5py.HardLink):  # a soft or external link
        raise UserError(f"{path}: {label} is a link, not a dataset of this file (damaged cache)")
    item = group.get(name)
    kind_ok = isinstance(item, h5py.Dataset) and (
        h5py.check_string_dtype(item.dtype) is not None if kinds == "str"
        else item.dtype == np.float32 if kinds == "f4" else item.dtype.kind in kinds)
    if not isinstance(item, h5py.Dataset) or item.ndim != ndim or not kind_ok:
        what = type(item).__name__ if not isinstance(item, h5py.Dataset) else f"{item.ndim}-D {item.dtype}"
        raise UserError(f"{path}: {label} is a {what}, not a {ndim}-D dataset of "
                        f"{dict(f4='float32', iu='integers', str='strings')[kinds]} as the cache format says "
                        f"(damaged cache)")
    plist = item.id.get_create_plist()
    if plist.get_layout() not in _LAYOUTS or plist.get_external_count():
        raise UserError(f"{path}: {label} is stored in other files (virtual or external), not in this one "
                        f"(damaged cache)")
    if not plist.get_nfilters() and item.id.get_storage_size() < item.size * item.dtype.itemsize:
        raise UserError(f"{path}: {label} declares {item.shape} entries but the file holds less data "
                        f"(truncated file?)")


def _int(value) -> bool:
    return type(value) is int  # exactly: True is no count of tokens, 256.0 no integer here


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())  # any path or name embed was given


def _sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def check_identity(path: Path, attrs: dict, hidden: int):
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
            raise UserError(f"{path}: attribute {name} is {shown(value)}, not {what} (damaged cache)")


def label_names_of(path: Path, attrs: dict) -> list[str]:
    try:
        names = json.loads(attrs["label_names"])
    except (ValueError, RecursionError):
        raise UserError(f"{path}: label_names is not JSON (damaged cache)") from None
    if not isinstance(names, list):
        raise UserError(f"{path}: label_names is not a list of names (damaged cache)")
    check_label_names(names, f"{path}: label_names")
    return names


def check_doc_ids(path: Path, ids: h5py.Dataset):
    """Every id decodes as UTF-8; read CHECK_CHUNK at a time."""
    for lo in range(0, ids.shape[0], CHECK_CHUNK):
        for n, raw in enumerate(ids[lo:lo + CHECK_CHUNK]):
            try:
                if isinstance(raw, bytes):  # h5py hands variable-length strings over undecoded
                    raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UserError(f"{path}: doc_ids of document {lo + n} is not UTF-8 ({raw[error.start:error.end]!r} "
                                f"at byte {error.start}) (damaged cache)") from None


def check_windows(path: Path, file: h5py.File, offsets: np.ndarray, chunk_tokens: int, stride: int):
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


def checked_terms(path: Path, file: h5py.File, hashing: str, n_docs: int) -> np.ndarray | None:
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


def plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value



def check_label_layout(path: Path, file: h5py.File, task: str):
    """The labels the `task` attribute names, and only those: `labels` for a single-label
    cache, the group `label_sets/` (indptr, indices) for a multi-label one."""
    if task not in TASKS:
        raise UserError(f"{path}: attribute task is {shown(task)}, not one of {', '.join(TASKS)} (damaged cache)")
    if "labels" in file and "label_sets" in file:
        raise UserError(f"{path}: cache holds both labels and label_sets/, one label and a set of labels per "
                        f"document (damaged cache)")
    if task == "single_label":
        if "label_sets" in file:
            raise UserError(f"{path}: attribute task is single_label but the cache holds label_sets/, not labels "
                            f"(damaged cache)")
        check_dataset(path, file, "labels", 1, "iu")
        return
    if "labels" in file:
        raise UserError(f"{path}: attribute task is multi_label but the cache holds labels, not label_sets/ "
                        f"(damaged cache)")
    if "label_sets" not in file:
        raise UserError(f"{path}: cache lacks label_sets/")
    if not isinstance(file.get("label_sets", getlink=True), h5py.HardLink) or not isinstance(file["label_sets"],
                                                                                            h5py.Group):
        raise UserError(f"{path}: label_sets is not a group of this file as the cache format says (damaged cache)")
    for name, (ndim, kinds) in LABEL_SET_DATASETS.items():
        check_dataset(path, file["label_sets"], name, ndim, kinds, f"label_sets/{name}")


def documents_of(file: h5py.File, task: str) -> int:
    """How many documents the labels declare (their datasets' headers, nothing read)."""
    return file["labels"].shape[0] if task == "single_label" else file["label_sets"]["indptr"].shape[0] - 1


def checked_labels(path: Path, file: h5py.File, task: str, n_labels: int):
    """(labels, None) of a single-label cache, (None, (indptr, indices)) of a multi-label
    one, once every entry is proven in range and every label set sorted and unique."""
    if task == "single_label":
        labels = file["labels"][:].astype(np.int64)  # a uint64 past 2^63 turns negative: refused
        if labels.min() < 0 or labels.max() >= n_labels:
            raise UserError(f"{path}: labels outside label_names")
        return labels, None
    group = file["label_sets"]
    indptr, indices = group["indptr"][:], group["indices"][:]
    problem = label_sets_problem(indptr, indices, n_labels, prefix="label_sets/")
    if problem:
        raise UserError(f"{path}: {problem} (damaged cache)")
    return None, (indptr.astype(np.int64), indices.astype(np.int32))


def label_sets_problem(indptr, indices, n_labels: int, prefix: str = "") -> str | None:
    """What is wrong with label sets in CSR form, or None when they are what the cache format
    says: `indptr` 1-D integers from 0, never decreasing, ending at the number of entries;
    `indices` 1-D integers, each in [0, n_labels), strictly increasing within a document's
    row (sorted, no label twice). An empty row is a document without a label. The message
    names the field as `prefix` + its name (the cache's `label_sets/indices`)."""
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    for name, array in (("indptr", indptr), ("indices", indices)):
        if array.ndim != 1 or array.dtype.kind not in "iu":
            return f"{prefix}{name} is not a 1-D array of integers ({array.ndim}-D {array.dtype})"
    if len(indptr) == 0:
        return f"{prefix}indptr is empty"
    indptr, ids = indptr.astype(np.int64), indices.astype(np.int64)  # a uint64 past 2^63 turns negative
    steps = np.diff(indptr)
    if indptr[0] != 0:
        return f"{prefix}indptr starts at {indptr[0]}, not at 0"
    if (steps < 0).any():
        return f"{prefix}indptr decreases after document {int(np.argmax(steps < 0))}"
    if indptr[-1] != len(ids):
        return f"{prefix}indptr ends at {indptr[-1]}, not at the {len(ids)} entries of {prefix}indices"
    outside = (ids < 0) | (ids >= n_labels)
    if outside.any():
        at = int(np.argmax(outside))
        doc = int(np.searchsorted(indptr, at, side="right")) - 1
        return (f"{prefix}indices holds {ids[at]} for document {doc}, outside the {n_labels} label_names")
    follows = np.ones(len(ids), dtype=bool)  # entry k follows entry k - 1 in the same row
    follows[indptr[:-1][steps > 0]] = False
    wrong = follows[1:] & (ids[1:] <= ids[:-1])
    if wrong.any():
        at = int(np.argmax(wrong)) + 1
        doc = int(np.searchsorted(indptr, at, side="right")) - 1
        how = f"holds label {ids[at]} twice" if ids[at] == ids[at - 1] else "is not sorted"
        return f"{prefix}indices: the label set of document {doc} {how}"
    return None
