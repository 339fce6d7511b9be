"""Scores and figures shared by every command that measures a classifier.

Pure functions of labels and predictions, plus one atomic PNG writer; reads nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from longdoc.runtime.workdir import atomic_path


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy and macro-F1 over the classes that occur in `y_true` or `y_pred`."""
    from sklearn.metrics import f1_score

    present = np.union1d(y_true, y_pred)
    return {"accuracy": float(np.mean(y_true == y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))}


def save_figure(fig, path: Path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
