"""Scores and figures shared by every command that measures a classifier.

Pure functions of labels and predictions: classes (`scores`), label sets
(`multilabel_scores`, `per_label_scores`), and how far probabilities can be trusted
(`calibration`, `plot_reliability`), each label's F1 against its support (`plot_label_f1`);
plus one atomic PNG writer. Reads nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from longdoc.runtime.workdir import atomic_path

# The confusion matrix is drawn (confusion_matrix.png, report.html's table) up to this many
# classes. Past 60 the names are unreadable and both grow with the square of the count
# (500 classes: a 27,000-pixel square, ~3 GB; 2,000 classes: 352 MB of HTML); beyond it
# only the numbers are kept, in metrics.json.
MAX_PLOTTED_CLASSES = 60


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy and macro-F1 over the classes that occur in `y_true` or `y_pred`."""
    from sklearn.metrics import f1_score

    present = np.union1d(y_true, y_pred)
    return {"accuracy": float(np.mean(y_true == y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))}


def save_figure(fig, path: Path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")


# --- label sets ---------------------------------------------------------------------------


def multilabel_scores(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Scores of predicted label sets: bool indicator matrices [documents, labels].

    micro-F1   F1 over every (document, label) decision pooled
    macro-F1   the mean of each label's F1, over the labels that occur in `truth` or are
               predicted (as `scores` does for classes), so a label absent from both counts
               for nothing; a label predicted but never true scores 0
    samples-F1 the mean of each document's F1; a document with no true and no predicted label
               scores 1 (nothing to find, nothing claimed)
    subset accuracy  documents whose set is exactly right
    Hamming loss     wrong (document, label) decisions, of all of them
    """
    truth, predicted = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
    if truth.shape != predicted.shape or truth.ndim != 2:
        raise ValueError(f"label-set shapes differ: {truth.shape} vs {predicted.shape}")
    hits = (truth & predicted).sum(0).astype(np.float64)
    true_count, predicted_count = truth.sum(0).astype(np.float64), predicted.sum(0).astype(np.float64)
    micro = _f1(hits.sum(), true_count.sum(), predicted_count.sum())
    present = (true_count > 0) | (predicted_count > 0)
    macro = float(np.mean(_f1(hits[present], true_count[present], predicted_count[present]))) if present.any() else 0.0
    doc_hits = (truth & predicted).sum(1).astype(np.float64)
    doc_true, doc_predicted = truth.sum(1).astype(np.float64), predicted.sum(1).astype(np.float64)
    samples = np.where(doc_true + doc_predicted == 0, 1.0, _f1(doc_hits, doc_true, doc_predicted))
    return {"micro_f1": float(micro), "macro_f1": macro,
            "samples_f1": float(samples.mean()) if len(samples) else 0.0,
            "subset_accuracy": float(np.mean((truth == predicted).all(1))) if len(truth) else 0.0,
            "hamming_loss": float(np.mean(truth != predicted)) if truth.size else 0.0}


def per_label_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Each label's precision, recall, F1 (0 where undefined) and support (true documents)."""
    truth, predicted = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
    hits = (truth & predicted).sum(0).astype(np.float64)
    support, claimed = truth.sum(0).astype(np.float64), predicted.sum(0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(claimed > 0, hits / claimed, 0.0)
        recall = np.where(support > 0, hits / support, 0.0)
    return {"precision": precision, "recall": recall, "f1": _f1(hits, support, claimed),
            "support": support.astype(np.int64), "predicted": claimed.astype(np.int64)}


def _f1(hits, true_count, predicted_count):
    """2 hits / (true + predicted), 0 where both are 0 (elementwise on arrays)."""
    denominator = np.asarray(true_count, dtype=np.float64) + np.asarray(predicted_count, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2.0 * np.asarray(hits, dtype=np.float64) / denominator, 0.0)


# --- how far the probabilities can be trusted ------------------------------------------------

# 15 equal-width bins: the usual choice for expected calibration error (Guo et al. 2017).
CALIBRATION_BINS = 15


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error and the reliability table of probabilities `confidence`
    against outcomes `correct` (1-D, any length): in each of `bins` equal-width bins of
    confidence, how often the outcome held. ECE is the bins' |accuracy - confidence|
    weighted by their share of the predictions.

    Single-label: a document's top probability and whether its top class is right.
    Label sets: every (document, label) probability and whether the label is true, so
    a probability of 0.8 should mean the label holds 8 times in 10."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_confidence = np.bincount(which, weights=confidence, minlength=bins)
    hits = np.bincount(which, weights=correct, minlength=bins)
    table, ece = [], 0.0
    for b in range(bins):
        if count[b]:
            conf, acc = mean_confidence[b] / count[b], hits[b] / count[b]
            ece += count[b] / len(confidence) * abs(acc - conf)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(count[b]),
                      "confidence": float(mean_confidence[b] / count[b]) if count[b] else None,
                      "accuracy": float(hits[b] / count[b]) if count[b] else None})
    confident_wrong = int(((confidence > 0.99) & (correct < 0.5)).sum())
    return {"ece": float(ece), "bins": table, "predictions": int(len(confidence)),
            "wrong_above_0.99": confident_wrong}


def plot_reliability(calibration_record: dict, path: Path, title: str):
    """The reliability diagram of `calibration(...)`: accuracy against confidence per bin,
    the diagonal being perfect calibration, each bar's width its bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The title names a head and a cache: text, never math ("$x^$" would make mathtext raise).
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        filled = [b for b in calibration_record["bins"] if b["count"]]
        ax.bar([b["low"] for b in filled], [b["accuracy"] for b in filled], width=[b["high"] - b["low"] for b in filled],
               align="edge", edgecolor="tab:blue", color="tab:blue", alpha=0.6, label="observed")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("how often it was right")
        ax.set_title(f"{title}\nECE {calibration_record['ece']:.3f}", fontsize=9)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        save_figure(fig, path)
        plt.close(fig)


# --- each label's F1 against its support -------------------------------------------------------

# The bar panel names this many labels, the most frequent first: past ~60 the names are
# unreadable (as for the confusion matrix); the scatter beside it shows every label.
MAX_CHARTED_LABELS = 60
# Characters of a label name on an axis; longer names are cut with "...".
CHART_NAME_CHARS = 40
# The files evaluate writes beside report.html, named once for the page that shows them.
RELIABILITY_PNG = "reliability.png"
LABEL_F1_PNG = "label_f1.png"


def chart_name(name: str) -> str:
    return name if len(name) <= CHART_NAME_CHARS else name[:CHART_NAME_CHARS - 3] + "..."


def by_support(support: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """Label indices, most frequent first (ties: higher F1 first, then label order)."""
    support, f1 = np.asarray(support), np.asarray(f1)
    return np.lexsort((np.arange(len(support)), -f1, -support))


def plot_label_f1(names: list[str], f1: np.ndarray, support: np.ndarray, path: Path, title: str,
                  max_labels: int = MAX_CHARTED_LABELS):
    """Each label's F1 against its support (true documents), for label sets, where a confusion
    matrix means nothing. Left: every label as a point, support on a log axis (a label never
    predicted sits at F1 0); right: bars of the `max_labels` most frequent labels' F1, named
    with their support. Memory and size grow with the number of labels charted, not its square."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f1, support = np.asarray(f1, dtype=np.float64), np.asarray(support, dtype=np.int64)
    if len(names) != len(f1) or len(f1) != len(support):
        raise ValueError("one name, F1 and support per label")
    order = by_support(support, f1)
    shown = order[:max_labels]
    # Names are text, never math or TeX: "$x^$" would make mathtext raise.
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        height = max(3.5, 0.2 * len(shown) + 1.2)
        fig, (scatter, bars) = plt.subplots(1, 2, figsize=(11, height), gridspec_kw={"width_ratios": [1, 1.3]})
        scatter.scatter(np.maximum(support, 0.8), f1, s=8, alpha=0.5, color="tab:blue")
        scatter.set_xscale("log")
        scatter.set_ylim(-0.03, 1.03)
        scatter.set_xlabel("support (true documents, log scale; 0 drawn at 0.8)")
        scatter.set_ylabel("F1")
        scatter.set_title(f"all {len(f1):,} labels", fontsize=9)
        y = np.arange(len(shown))
        bars.barh(y, f1[shown], color="tab:blue", alpha=0.7)
        bars.set_yticks(y, [f"{chart_name(names[i])} ({support[i]:,})" for i in shown], fontsize=7)
        bars.invert_yaxis()
        bars.set_xlim(0, 1)
        bars.set_xlabel("F1")
        cut = f"the {len(shown):,} most frequent of {len(f1):,}" if len(shown) < len(f1) else f"{len(f1):,}"
        bars.set_title(f"{cut} labels, by support", fontsize=9)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        save_figure(fig, path)
        plt.close(fig)
