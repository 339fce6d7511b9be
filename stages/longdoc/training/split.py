"""Pieces every training command shares: the validation split and the schedule.

Pure functions of labels, ids, a generator and step counts; reads and writes nothing.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

_DIGITS = frozenset("0123456789")


def validation_split(labels: np.ndarray, doc_ids: list[str], settings, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) document indices as `settings` say: `val_fraction` and `val_split`, the
    fields of `longdoc.configs.ValidationSettings` that finetune's and train-head's configs share."""
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


def lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up to 1, then cosine decay to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def class_weight_tensor(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """n / (k * count_c) for the k classes present; 1 for absent ones (never in the loss)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)
