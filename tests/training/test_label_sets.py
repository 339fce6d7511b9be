"""The building blocks of label sets: their scores, calibration, thresholds and validation split."""

from __future__ import annotations

import numpy as np
import pytest

from longdoc.reports.metrics import calibration, multilabel_scores, per_label_scores
from longdoc.training.split import iterative_split
from longdoc.training.thresholds import (
    MIN_POSITIVES,
    Decision,
    fit_decision,
    fit_rule,
    global_threshold,
    per_label_thresholds,
)


def random_sets(n_docs=200, n_labels=12, seed=0, density=0.2):
    rng = np.random.default_rng(seed)
    return rng.random((n_docs, n_labels)) < density


def test_multilabel_scores_equal_scikit_learns():
    from sklearn.metrics import f1_score, hamming_loss

    truth, predicted = random_sets(seed=1), random_sets(seed=2)
    truth[:, -1] = predicted[:, -1] = False  # a label neither true nor predicted counts for nothing
    got = multilabel_scores(truth, predicted)
    present = np.flatnonzero(truth.any(0) | predicted.any(0))
    assert got["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert got["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro", labels=present))
    assert got["samples_f1"] == pytest.approx(f1_score(truth, predicted, average="samples", zero_division=1))
    assert got["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
    assert got["subset_accuracy"] == pytest.approx(np.mean((truth == predicted).all(1)))


def test_perfect_and_empty_label_sets():
    truth = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=bool)
    perfect = multilabel_scores(truth, truth)
    assert perfect == {"micro_f1": 1.0, "macro_f1": 1.0, "samples_f1": 1.0, "subset_accuracy": 1.0,
                       "hamming_loss": 0.0}
    nothing = multilabel_scores(truth, np.zeros_like(truth))
    assert nothing["micro_f1"] == 0.0 and nothing["samples_f1"] == pytest.approx(1 / 3)  # the empty doc is right
    labels = per_label_scores(truth, np.array([[1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=bool))
    assert labels["precision"].tolist() == [1.0, 0.5, 0.0] and labels["recall"].tolist() == [1.0, 1.0, 0.0]
    assert labels["support"].tolist() == [1, 1, 1] and labels["predicted"].tolist() == [1, 2, 0]


def test_calibration_of_calibrated_and_overconfident_probabilities():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    honest = calibration(p, rng.random(len(p)) < p)
    assert honest["ece"] < 0.01 and sum(b["count"] for b in honest["bins"]) == len(p)
    overconfident = calibration(np.full(1000, 0.995), np.arange(1000) < 700)
    assert overconfident["ece"] == pytest.approx(0.295) and overconfident["wrong_above_0.99"] == 300
    edges = calibration(np.array([0.0, 1.0]), np.array([0, 1]))  # the ends fall in the first and last bins
    assert edges["bins"][0]["count"] == 1 and edges["bins"][-1]["count"] == 1 and edges["ece"] == 0.0


def test_the_global_threshold_maximises_micro_f1():
    rng = np.random.default_rng(3)
    truth = random_sets(300, 8, seed=3)
    probabilities = np.clip(truth * 0.35 + rng.random(truth.shape) * 0.6, 0, 1)
    best = global_threshold(probabilities, truth)

    def micro(t):
        return multilabel_scores(truth, probabilities >= t)["micro_f1"]
    grid = np.unique(probabilities)
    assert micro(best) == pytest.approx(max(micro(t) for t in grid))


def test_per_label_thresholds_fit_each_label_and_keep_the_fallback_where_there_is_nothing_to_fit():
    truth = np.zeros((6, 3), dtype=bool)
    truth[:3, 0] = True  # label 0: scores above 0.6 are its documents
    truth[[0, 5], 1] = True
    probabilities = np.array([[0.9, 0.2, 0.1], [0.8, 0.3, 0.1], [0.7, 0.1, 0.1],
                              [0.4, 0.2, 0.1], [0.3, 0.1, 0.1], [0.2, 0.6, 0.1]])
    thresholds = per_label_thresholds(probabilities, truth, fallback=0.42)
    assert 0.4 < thresholds[0] <= 0.7  # between the last positive and the first negative
    assert thresholds[2] == 0.42  # label 2 has no validation document
    assert (probabilities[:, 0] >= thresholds[0]).tolist() == truth[:, 0].tolist()


def test_fallback_uses_the_global_threshold_for_rare_labels():
    truth = random_sets(120, 6, seed=4, density=0.3)
    truth[:, 5] = False
    truth[:MIN_POSITIVES - 1, 5] = True  # too rare to tune
    probabilities = np.random.default_rng(4).random(truth.shape)
    shared = fit_rule("global", probabilities, truth)
    own = fit_rule("per-label", probabilities, truth)
    mixed = fit_rule("fallback", probabilities, truth)
    assert mixed[5] == shared[5] and mixed[0] == own[0] and len(set(shared)) == 1


def test_fit_decision_chooses_by_cross_validation_and_round_trips():
    rng = np.random.default_rng(5)
    truth = np.zeros((400, 10), dtype=bool)
    truth[np.arange(400), rng.integers(0, 10, 400)] = True  # one label each: "at least one" should win
    # each document's true label is its most probable, at a scale of its own: no threshold finds them all
    scale = rng.uniform(0.1, 1.0, (400, 1))
    probabilities = scale * np.where(truth, 1.0, rng.uniform(0.0, 0.6, truth.shape))
    decision = fit_decision(probabilities, truth, np.random.default_rng(0))
    assert decision.rule in ("global", "per-label", "fallback") and decision.empty == "best"
    assert set(decision.record["cross_validated"]) == {f"{r}/{e}" for r in ("global", "per-label", "fallback")
                                                      for e in ("none", "best")}
    assert decision.apply(probabilities).any(1).all()
    again = Decision.from_dict(decision.to_dict(), 10)
    assert np.array_equal(again.thresholds, decision.thresholds) and again.empty == decision.empty
    for bad in ({"thresholds": [0.5] * 9, "empty": "none", "rule": "global"},
                {"thresholds": [float("nan")] * 10, "empty": "none", "rule": "global"},
                {"thresholds": [0.5] * 10, "empty": "maybe", "rule": "global"}, [0.5]):
        with pytest.raises(ValueError):
            Decision.from_dict(bad, 10)


def test_fit_decision_on_fewer_documents_than_folds():
    decision = fit_decision(np.array([[0.9, 0.1]]), np.array([[True, False]]), np.random.default_rng(0))
    assert decision.rule == "fallback" and decision.apply(np.array([[0.95, 0.05]])).tolist() == [[True, False]]


def test_iterative_split_keeps_rare_labels_in_both_sides_and_singletons_in_training():
    rng = np.random.default_rng(6)
    n_docs, n_labels = 1000, 40
    frequency = 0.3 / (1 + np.arange(n_labels))  # Zipf-like: label 0 common, the last ones rare
    label_sets = rng.random((n_docs, n_labels)) < frequency
    label_sets[:, -1] = False
    label_sets[17, -1] = True  # a label of one document
    train, val = iterative_split(label_sets, 0.1, np.random.default_rng(0))
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(n_docs))
    assert abs(len(val) - 100) <= 3
    assert 17 in train
    counts = label_sets.sum(0)
    for label in np.flatnonzero(counts >= 10):
        share = label_sets[val, label].sum() / counts[label]
        assert abs(share - 0.1) <= 1.0 / counts[label] + 0.02, (label, share)
    random_val = np.random.default_rng(0).permutation(n_docs)[:100]
    rare = np.flatnonzero((counts >= 5) & (counts < 20))
    kept = sum(label_sets[val, lab].any() for lab in rare)
    assert kept >= sum(label_sets[random_val, lab].any() for lab in rare)  # at least as many rare labels held out


def test_iterative_split_is_seeded_and_handles_documents_without_labels():
    label_sets = random_sets(300, 5, seed=7, density=0.1)
    first = iterative_split(label_sets, 0.2, np.random.default_rng(1))
    second = iterative_split(label_sets, 0.2, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    empty = np.zeros((50, 3), dtype=bool)
    train, val = iterative_split(empty, 0.2, np.random.default_rng(0))
    assert len(val) == 10 and len(train) == 40
