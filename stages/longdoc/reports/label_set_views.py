"""What report.html shows of one document of a multi-label head: a `LabelSetView`.

Plain data (label indices into the head's `label_names`, probabilities and thresholds of
the labels shown, each explained label's window and term contributions, the text and its
window spans), so `longdoc.reports.label_sets_html` renders it without a head, a cache or
a corpus. `build_label_set_views` makes them for the documents report.html shows: it explains
each one's predicted labels (`longdoc.explain.contributions.explain_label_sets`, the
`max_explained` most probable) and names their terms from the text. Reads and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from longdoc.explain.contributions import explain_label_sets
from longdoc.explain.text import name_terms

# Predicted labels explained per shown document, most probable first: each costs nothing more
# in leave-one-out calls (one set of variants serves every label), but its strip and terms
# take room on the page.
MAX_EXPLAINED = 5


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


def build_label_set_views(head, documents, docs: np.ndarray, probabilities: np.ndarray, truth: np.ndarray,
                          predicted: np.ndarray, thresholds: np.ndarray, doc_ids: list[str],
                          spans: list[np.ndarray] | None = None, texts: list[str] | None = None,
                          term_weights=None, max_explained: int = MAX_EXPLAINED) -> list[LabelSetView]:
    """LabelSetViews of documents `docs` (cache indices). `probabilities` [documents, labels]
    (sigmoid), `truth` and `predicted` bool [documents, labels] (the head's decision applied;
    they may hold more labels than the head: unseen ones, never predicted),
    `thresholds` [labels]: all indexed by cache document; `spans`/`texts` are per entry of
    `docs`. With texts and the head's `term_weights`, the top terms are named."""
    docs = np.asarray(docs, dtype=np.int64)
    sets, views = [], []
    for d in docs.tolist():
        chosen = np.flatnonzero(predicted[d])
        sets.append(chosen[np.argsort(-probabilities[d, chosen], kind="stable")][:max_explained])
    explanations = explain_label_sets(head, documents, sets, docs=docs, thresholds=thresholds) if len(docs) else []
    named = texts is not None and term_weights is not None
    if named:
        flat = [e for per_doc in explanations for e in per_doc]
        name_terms(flat, term_weights, [texts[n] for n, per_doc in enumerate(explanations) for _ in per_doc])
    n_head = probabilities.shape[1]  # labels past it: test labels the head never saw (no probability)
    for n, (d, per_doc) in enumerate(zip(docs.tolist(), explanations)):
        true, chosen = np.flatnonzero(truth[d]), np.flatnonzero(predicted[d])
        shown = [k for k in np.union1d(true, chosen).tolist() if k < n_head]
        views.append(LabelSetView(
            d, doc_ids[d], true.astype(np.int64), chosen.astype(np.int64),
            {k: float(probabilities[d, k]) for k in shown}, {k: float(thresholds[k]) for k in shown},
            [LabelExplained(e.target, e.windows, e.terms if named else None) for e in per_doc],
            int(documents.counts[d]), None if spans is None else spans[n], None if texts is None else texts[n]))
    return views
