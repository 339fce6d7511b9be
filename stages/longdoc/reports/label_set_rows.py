"""A head's answers per task: one class (softmax) or a label set (sigmoid, Decision); sets in rows.

The small interface `predict` and the reports need of a head, whatever wrote it:

    head_task(checkpoint)      "single_label" or "multi_label": the head config's `task`,
                               single-label when a head (format 1-2) records none
    probabilities(logits, task)  softmax over classes, or each label's sigmoid
    chosen_labels(probabilities, decision)  each document's labels, most probable first, under a
                               `longdoc.training.thresholds.Decision` (thresholds per label and the
                               empty-set rule; anything with its `apply`: training sits above
                               this block, and `predict` reads the head's)

and how a label set sits in one CSV cell (`join_cell`, `split_cell`): labels joined by `|`,
a `|` or `\\` inside a label written `\\|`, `\\\\`, so any label set comes back exactly. Reads
and writes no files.
"""

from __future__ import annotations

import numpy as np

from longdoc.runtime.errors import UserError

SINGLE_LABEL, MULTI_LABEL = "single_label", "multi_label"  # longdoc.cache.checks.TASKS
CELL_SEP = "|"


def head_task(checkpoint) -> str:
    """The task a head was trained for; a head that records none is single-label."""
    task = getattr(checkpoint.head.config, "task", SINGLE_LABEL)
    if task not in (SINGLE_LABEL, MULTI_LABEL):
        raise UserError(f"{checkpoint.path}: damaged head checkpoint (head.task: {task!r} is not "
                        f"{SINGLE_LABEL} or {MULTI_LABEL})")
    return task


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """float32 [documents, labels]: softmax (one class) or independent sigmoids (label sets)."""
    logits = np.asarray(logits, dtype=np.float64)
    if task == MULTI_LABEL:
        out = np.empty_like(logits)
        positive = logits >= 0  # the two stable forms of 1 / (1 + e^-x)
        out[positive] = 1.0 / (1.0 + np.exp(-logits[positive]))
        e = np.exp(logits[~positive])
        out[~positive] = e / (1.0 + e)
        return out.astype(np.float32)
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return (shifted / shifted.sum(1, keepdims=True)).astype(np.float32)


def chosen_labels(probabilities: np.ndarray, decision) -> list[np.ndarray]:
    """Each document's labels under `decision` (int64 indices), most probable first (ties: label order)."""
    chosen = decision.apply(probabilities)
    out = []
    for row, mask in zip(probabilities, chosen):
        labels = np.flatnonzero(mask)
        out.append(labels[np.argsort(-row[labels], kind="stable")].astype(np.int64))
    return out


def join_cell(values) -> str:
    """Labels (or numbers as text) in one cell: `|`-joined, `\\` and `|` inside escaped."""
    return CELL_SEP.join(str(v).replace("\\", "\\\\").replace(CELL_SEP, "\\" + CELL_SEP) for v in values)


def split_cell(cell: str) -> list[str]:
    """`join_cell`'s values back; an empty cell is an empty set."""
    if cell == "":
        return []
    values, current, chars = [], [], iter(cell)
    for c in chars:
        if c == "\\":
            current.append(next(chars, "\\"))
        elif c == CELL_SEP:
            values.append("".join(current))
            current = []
        else:
            current.append(c)
    values.append("".join(current))
    return values
