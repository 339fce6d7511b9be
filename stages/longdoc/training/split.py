"""Pieces every training command shares: the validation split and the schedule.

Pure functions of labels, ids, a generator and step counts; reads and writes nothing.
"""

from __future__ import annotations

import re

import numpy as np

_DIGITS = frozenset("0123456789")


def validation_split(labels: np.ndarray, doc_ids: list[str], settings, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) document indices as `settings` say: `val_fraction` and `val_split`, the
    fields of `longdoc.configs.ValidationSettings` that finetune's and train-head's configs share.
    `labels` class indices, or a bool label matrix [documents, labels] for label sets: then
    `iterative_split`, or with "latest" the documents whose ids sort last, of all of them."""
    if np.ndim(labels) == 2:
        if settings.val_split == "latest":
            return latest_split(np.zeros(len(labels), dtype=np.int64), doc_ids, settings.val_fraction)
        return iterative_split(labels, settings.val_fraction, rng)
    if settings.val_split == "latest":
        return latest_split(labels, doc_ids, settings.val_fraction)
    return stratified_split(labels, settings.val_fraction, rng)


def _held_out_count(n_members: int, fraction: float) -> int:
    """`fraction` of a class, rounded; at least one of a class of two or more, never all."""
    if n_members < 2:
        return 0
    return min(max(int(round(fraction * n_members)), 1), n_members - 1)


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) document indices: `fraction` of each class (rounded, at least one
    of any class with two or more documents) goes to validation."""
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = _held_out_count(len(members), fraction)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def natural_key(doc_id: str) -> tuple:
    """Sort key of an id with its digit runs compared as numbers: `sci.space/9999` before
    `sci.space/10000`, `2024-5-1` before `2024-10-1`. Numbers are compared by length, then
    digit by digit, never converted: an id from a cache may hold any number of digits."""
    key = []
    for part in re.split(r"([0-9]+)", doc_id):
        if part[:1] in _DIGITS:
            number = part.lstrip("0")
            key.append((0, len(number), number, part))
        elif part:
            key.append((1, 0, part, ""))
    return tuple(key)


def latest_split(labels: np.ndarray, doc_ids: list[str], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) document indices: in each class, the documents whose ids sort last
    (`natural_key`) go to validation, as many as `stratified_split` would hold out. A
    newsgroup numbers its posts as they arrive, so on 20 Newsgroups these are the newest."""
    if len(doc_ids) != len(labels):
        raise ValueError(f"{len(doc_ids)} ids for {len(labels)} labels")
    keys = [natural_key(doc_id) for doc_id in doc_ids]
    train, val = [], []
    for label in np.unique(labels):
        members = sorted(np.flatnonzero(labels == label).tolist(), key=lambda i: (keys[i], i))
        n_val = _held_out_count(len(members), fraction)
        val.extend(members[len(members) - n_val:])
        train.extend(members[:len(members) - n_val])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def iterative_split(label_sets: np.ndarray, fraction: float, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) document indices of a multi-label corpus, `label_sets` a bool matrix
    [documents, labels]: iterative stratification (Sechidis, Tsoumakas and Vlahavas 2011),
    so that each label's share of validation documents is as near `fraction` as its
    documents allow, rare labels first.

    Each label wants `fraction` of its documents in validation and the rest in training.
    Repeatedly, the label with the fewest documents still to place has them placed, one
    by one, on the side that wants that label most (ties: the side that wants the most
    documents overall, then a coin of `rng`); placing a document fills every one of its
    labels' wants. A label of one document goes to training (it wants 0.1 of a document in
    validation against 0.9 in training), so it is learned from, not only held out.
    Documents without labels last, to whichever side is furthest below its size."""
    label_sets = np.asarray(label_sets, dtype=bool)
    n_docs, n_labels = label_sets.shape
    sides = np.array([1.0 - fraction, fraction])  # train, val
    want_docs = sides * n_docs
    counts = label_sets.sum(0)
    want = sides[:, None] * counts[None, :].astype(np.float64)  # [2, labels]
    side_of = np.full(n_docs, -1, dtype=np.int64)
    docs_of = [np.flatnonzero(column) for column in label_sets.T]  # each label's documents
    left = counts.astype(np.int64)  # each label's documents not yet placed
    done = np.zeros(n_labels, dtype=bool)
    while not done.all():
        label = int(np.argmin(np.where(done, np.iinfo(np.int64).max, left)))
        done[label] = True
        for doc in rng.permutation(docs_of[label]):
            if side_of[doc] >= 0:
                continue
            candidates = np.flatnonzero(want[:, label] == want[:, label].max())
            if len(candidates) > 1:
                candidates = candidates[want_docs[candidates] == want_docs[candidates].max()]
            side = int(candidates[rng.integers(len(candidates))]) if len(candidates) > 1 else int(candidates[0])
            side_of[doc] = side
            labels_of_doc = label_sets[doc]
            want[side, labels_of_doc] -= 1.0
            want_docs[side] -= 1.0
            left[labels_of_doc] -= 1
    for doc in rng.permutation(np.flatnonzero(side_of < 0)):  # documents without a label
        side = int(np.argmax(want_docs))
        side_of[doc] = side
        want_docs[side] -= 1.0
    return np.flatnonzero(side_of == 0), np.flatnonzero(side_of == 1)
