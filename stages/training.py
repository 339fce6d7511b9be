"""Pieces every training command shares: the validation split and the schedule.

Pure functions of labels, a generator and step counts; reads and writes nothing.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) document indices: `fraction` of each class (rounded, at least one
    of any class with two or more documents) goes to validation."""
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(fraction * len(members)))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        else:
            n_val = 0
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


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
