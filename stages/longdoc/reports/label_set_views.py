"""What report.html shows of one document of a multi-label head: a `LabelSetView`.

Plain data (label indices into the head's `label_names`, probabilities and thresholds of
the labels shown, each explained label's window and term contributions, the text and its
window spans), so `longdoc.reports.label_sets_html` renders it without a head, a cache or
a corpus. Reads and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LabelExplained:
    """Why a document got one label: toward that label's logit."""

    label: int  # index into the head's label_names
    contributions: np.ndarray  # float32 [n_windows]: leave-one-window-out, in document order
    terms: list | None = None  # TermContributions (named), largest first; heads with a term branch


@dataclass
class LabelSetView:
    index: int  # document index in the cache
    doc_id: str
    true: np.ndarray  # int64, sorted label indices (empty: a document with no label)
    predicted: np.ndarray  # int64, sorted label indices
    probabilities: dict[int, float] = field(default_factory=dict)  # of the labels shown (true and predicted)
    thresholds: dict[int, float] = field(default_factory=dict)  # of the same labels
    explained: list[LabelExplained] = field(default_factory=list)  # predicted labels, most probable first
    windows: int = 0
    spans: np.ndarray | None = None  # [n_windows, 2] character spans; None without text
    text: str | None = None

    @property
    def exact(self) -> bool:
        return np.array_equal(np.sort(self.true), np.sort(self.predicted))
