"""How a multi-label head's probabilities become label sets: its `Decision`.

One threshold per label and what a document gets when no label reaches its threshold,
fitted on validation by `longdoc.training.thresholds.fit_decision` and recorded in the head
file (`longdoc.heads.checkpoint`), which checks the record with `Decision.from_dict` when
it loads. Pure numpy; reads and writes no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("global", "per-label", "fallback")  # how the thresholds were fitted (training.thresholds)
EMPTY = ("none", "best")  # what a document reached by no label gets: nothing, or its best label


@dataclass
class Decision:
    """How probabilities become a label set: `thresholds` [labels] and the `empty` rule."""

    thresholds: np.ndarray  # float64 [labels]
    empty: str = "none"  # "none" or "best"
    rule: str = "global"  # which rule fitted the thresholds (for the record)
    record: dict | None = None  # what validation measured of each rule

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Bool [documents, labels]: each label at or above its threshold; with `empty`
        "best", a document that none reaches gets its most probable label."""
        probabilities = np.asarray(probabilities)
        chosen = probabilities >= self.thresholds[None, :]
        if self.empty == "best" and probabilities.shape[1]:
            nothing = ~chosen.any(1)
            chosen[np.flatnonzero(nothing), probabilities[nothing].argmax(1)] = True
        return chosen

    def to_dict(self) -> dict:
        return {"thresholds": [float(t) for t in self.thresholds], "empty": self.empty, "rule": self.rule,
                "record": self.record}

    @classmethod
    def from_dict(cls, record: dict, n_labels: int) -> "Decision":
        """A head's recorded decision, checked: one finite threshold in [0, 1] per label."""
        if not isinstance(record, dict):
            raise ValueError("the decision is not a record")
        thresholds = np.asarray(record.get("thresholds"), dtype=np.float64)
        if thresholds.shape != (n_labels,) or not np.all(np.isfinite(thresholds)) or \
                np.any((thresholds < 0) | (thresholds > 1)):
            raise ValueError(f"the decision needs {n_labels} thresholds in [0, 1]")
        if record.get("empty") not in EMPTY or record.get("rule") not in RULES:
            raise ValueError(f"the decision's empty rule is one of {EMPTY} and its rule one of {RULES}")
        return cls(thresholds, record["empty"], record["rule"], record.get("record"))
