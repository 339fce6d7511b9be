"""Decisions for label sets: the probability each label must reach, fitted on validation.

Reads validation probabilities [documents, labels] and the true label sets (bool, same
shape); returns a `Decision`: one threshold per label and what a document gets when no
label reaches its threshold (`longdoc.heads.decision`, where a head file's record of it is
checked). A head records its Decision (`to_dict`), so `evaluate` and `predict` decide exactly
as validation chose. Pure functions; reads and writes no files.

Three rules are fitted, and one is chosen:

    global     one threshold for every label, the one of best micro-F1 on validation
    per-label  each label its own threshold, the one of best F1 for that label (SCut)
    fallback   per-label where a label has at least `MIN_POSITIVES` validation documents
               to tune on, the global threshold for the rarer ones

and, for each, whether a document that no label reaches gets its most probable label
("at least one", the usual prior of newswire: every story has a topic) or nothing.
Choosing among these on the same documents that fitted them would favour the rule that
overfits most (a per-label threshold tuned on one document). So the choice is made by
cross-validation inside validation: the rules are fitted on `FOLDS - 1` folds and scored on
the held-out one, by the mean of micro-F1 and macro-F1 (both matter: micro is dominated by
frequent labels, macro by rare ones); the winner is then fitted again on all of validation.
"""

from __future__ import annotations

import numpy as np

from longdoc.heads.decision import EMPTY, RULES, Decision  # noqa: F401 (re-exported: what is fitted here)
from longdoc.reports.metrics import multilabel_scores

# A threshold tuned on fewer validation documents of a label than this is mostly noise:
# with 1 or 2 positives the F1-optimal cut sits just below them, whatever test looks like.
MIN_POSITIVES = 3
# Folds of validation for choosing the rule: 3 keeps a third of validation's rare labels
# in each held-out fold while fitting on two thirds.
FOLDS = 3
# Where no document of a label is seen (or its scores give nothing better), its threshold
# is the global one; before any fit, 0.5 is what a sigmoid's 0 logit means.
DEFAULT_THRESHOLD = 0.5


def global_threshold(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The threshold of best micro-F1 over every (document, label) pair: each distinct
    probability is tried as the cut (midway to the next lower one, so a test score just
    under the cut of validation is not lost)."""
    scores, positives = probabilities.ravel(), truth.ravel()
    return _best_cut(scores, positives, positives.sum())


def per_label_thresholds(probabilities: np.ndarray, truth: np.ndarray, fallback: float) -> np.ndarray:
    """Each label's threshold of best F1 on its own; `fallback` for a label without a
    validation document (no F1 to maximise)."""
    thresholds = np.full(probabilities.shape[1], fallback, dtype=np.float64)
    for label in np.flatnonzero(truth.any(0)):
        thresholds[label] = _best_cut(probabilities[:, label], truth[:, label], truth[:, label].sum())
    return thresholds


def _best_cut(scores: np.ndarray, positives: np.ndarray, n_positive: int) -> float:
    """The cut on `scores` maximising F1 = 2 TP / (P + predicted): scores sorted high to low,
    every prefix is a candidate; ties are kept together (a cut cannot split equal scores)."""
    if n_positive == 0:
        return DEFAULT_THRESHOLD
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(positives[order])
    last_of_tie = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # prefixes ending a tie run
    f1 = 2.0 * hits[last_of_tie] / (n_positive + last_of_tie + 1)
    best = int(last_of_tie[np.argmax(f1)])
    below = ranked[best + 1] if best + 1 < len(ranked) else 0.0
    return float((ranked[best] + below) / 2.0)


def fit_rule(rule: str, probabilities: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The thresholds of `rule` (RULES) fitted on these documents."""
    shared = global_threshold(probabilities, truth)
    if rule == "global":
        return np.full(probabilities.shape[1], shared)
    own = per_label_thresholds(probabilities, truth, shared)
    if rule == "per-label":
        return own
    return np.where(truth.sum(0) >= MIN_POSITIVES, own, shared)


def _selection_score(scores: dict) -> float:
    return (scores["micro_f1"] + scores["macro_f1"]) / 2.0


def fit_decision(probabilities: np.ndarray, truth: np.ndarray, rng: np.random.Generator,
                 folds: int = FOLDS) -> Decision:
    """The rule and empty-set choice of best cross-validated score on validation (see the
    module docstring), fitted again on all of it. With fewer documents than folds, the
    fallback rule without cross-validation."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    n = len(probabilities)
    record: dict = {"folds": folds, "min_positives": MIN_POSITIVES, "cross_validated": {}}
    if n < folds:
        return Decision(fit_rule("fallback", probabilities, truth), "none", "fallback", record)
    fold_of = rng.permutation(np.arange(n) % folds)
    totals = {(rule, empty): 0.0 for rule in RULES for empty in EMPTY}
    for fold in range(folds):
        fit, held = fold_of != fold, fold_of == fold
        for rule in RULES:
            thresholds = fit_rule(rule, probabilities[fit], truth[fit])
            for empty in EMPTY:
                chosen = Decision(thresholds, empty).apply(probabilities[held])
                totals[rule, empty] += _selection_score(multilabel_scores(truth[held], chosen)) / folds
    record["cross_validated"] = {f"{rule}/{empty}": round(score, 6) for (rule, empty), score in totals.items()}
    rule, empty = max(totals, key=lambda key: (totals[key], -RULES.index(key[0]), -EMPTY.index(key[1])))
    return Decision(fit_rule(rule, probabilities, truth), empty, rule, record)
