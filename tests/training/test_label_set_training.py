"""Training blocks for label sets: the one-vs-rest linear branch, the BCE weights per label and
the validation split of label matrices."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from longdoc.training.head_task import MAX_POSITIVE_WEIGHT, positive_weight_tensor, task_loss
from longdoc.training.linear_fit import CONSTANT_MARGIN, fit_binary_svms, fit_linear_svm, validation_score
from longdoc.training.split import iterative_split, validation_split


def sparse_problem(n_docs=120, n_terms=30, n_labels=4, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.random((n_docs, n_labels)) < 0.3
    counts = rng.random((n_docs, n_terms)) < 0.1
    counts[:, :n_labels] |= truth  # term k says label k
    return sp.csr_matrix(counts.astype(np.float32)), truth


def test_the_linear_branch_of_label_sets_is_scikit_learns_one_vs_rest_linear_svc():
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    terms, truth = sparse_problem()
    dense = np.random.default_rng(1).normal(size=(len(truth), 3))
    fit = fit_linear_svm(terms, dense, truth, truth.shape[1], c=1.0)
    reference = OneVsRestClassifier(LinearSVC(C=1.0, tol=1e-4, max_iter=5000, random_state=0)).fit(
        sp.hstack([terms, sp.csr_matrix(dense.astype(np.float32))]).tocsr(), truth)
    want = np.stack([e.coef_[0] for e in reference.estimators_], 1)
    np.testing.assert_allclose(np.vstack([fit.term_weights, fit.dense_weights]), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.bias, [e.intercept_[0] for e in reference.estimators_], rtol=1e-4, atol=1e-5)
    margins = fit.margins(terms, dense)
    assert margins.shape == truth.shape and ((margins >= 0) == truth).mean() > 0.95


def test_a_label_no_training_document_has_or_every_one_has_gets_a_constant_margin():
    terms, truth = sparse_problem(n_labels=3)
    truth[:, 1] = False
    truth[:, 2] = True
    fit = fit_binary_svms(terms, None, truth, c=1.0)
    assert not fit.term_weights[:, 1:].any()
    assert fit.bias[1] == -CONSTANT_MARGIN and fit.bias[2] == CONSTANT_MARGIN
    assert fit.term_weights[:, 0].any()


def test_balanced_weighs_a_rare_labels_positives_up():
    terms, truth = sparse_problem(n_docs=300, seed=3)
    rare = np.zeros(len(truth), dtype=bool)
    rare[:6] = True
    truth = np.column_stack([truth, rare])
    plain = fit_binary_svms(terms, None, truth, c=0.1)
    balanced = fit_binary_svms(terms, None, truth, c=0.1, balanced=True)
    assert (balanced.margins(terms)[:, -1] >= 0).sum() >= (plain.margins(terms)[:, -1] >= 0).sum()
    assert (balanced.margins(terms)[:6, -1]).mean() > (plain.margins(terms)[:6, -1]).mean()


def test_validation_scores_label_sets_by_micro_and_macro_f1_at_margin_zero():
    truth = np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)
    score, name = validation_score(truth, np.where(truth, 1.0, -1.0))
    assert score == 1.0 and name == "micro+macro-F1 / 2"
    assert validation_score(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == (1.0, "macro-F1")


def test_positive_weights_are_negatives_over_positives_capped_and_one_for_an_absent_label():
    matrix = np.zeros((1000, 4), dtype=bool)
    matrix[:500, 0] = True  # 500 / 500
    matrix[:100, 1] = True  # 900 / 100
    matrix[:1, 2] = True  # 999 / 1: capped
    weights = positive_weight_tensor(matrix)
    assert weights.tolist() == pytest.approx([1.0, 9.0, MAX_POSITIVE_WEIGHT, 1.0])
    loss = task_loss(True, weights)
    assert isinstance(loss, torch.nn.BCEWithLogitsLoss) and torch.equal(loss.pos_weight, weights)
    assert isinstance(task_loss(False, None), torch.nn.CrossEntropyLoss)


def test_validation_split_of_a_label_matrix_is_iterative_and_a_label_of_one_document_is_fine():
    rng = np.random.default_rng(0)
    truth = rng.random((200, 6)) < 0.25
    truth[:, 5] = False
    truth[17, 5] = True  # one document
    settings = SimpleNamespace(val_fraction=0.2, val_split="random")
    train, val = validation_split(truth, [f"d{i}" for i in range(200)], settings, np.random.default_rng(3))
    again = iterative_split(truth, 0.2, np.random.default_rng(3))
    assert train.tolist() == again[0].tolist() and val.tolist() == again[1].tolist()
    assert sorted([*train, *val]) == list(range(200)) and 17 in train
    for label in range(5):  # each label's share of validation is near the fraction
        assert abs(truth[val, label].sum() / truth[:, label].sum() - 0.2) < 0.08
    latest = validation_split(truth, [f"d{i}" for i in range(200)], SimpleNamespace(val_fraction=0.1,
                                                                                     val_split="latest"), None)
    assert latest[1].tolist() == list(range(180, 200))


def test_the_dense_weight_is_searched_on_the_most_frequent_labels_only_past_search_labels():
    from longdoc.training.linear_fit import search_labels

    matrix = np.zeros((10, 5), dtype=bool)
    for label, count in enumerate([2, 5, 1, 5, 3]):
        matrix[:count, label] = True
    assert search_labels(matrix, limit=5) is None  # every label: the search as before
    assert search_labels(matrix, limit=3).tolist() == [1, 3, 4]  # most positives, in label order
    assert search_labels(matrix, limit=1).tolist() == [1]  # a tie goes to the earlier label


def test_past_search_labels_every_label_is_fitted_once_at_the_weight_the_frequent_ones_chose(monkeypatch):
    from longdoc.training import linear_fit

    terms, truth = sparse_problem(n_docs=200, n_labels=5, seed=4)
    truth[:, 0] = np.arange(200) < 12  # a rare label, left out of the search
    dense = np.random.default_rng(5).normal(size=(len(truth), 6))
    rows = {"train": (terms[:150], dense[:150], truth[:150]), "val": (terms[150:], dense[150:], truth[150:])}
    monkeypatch.setattr(linear_fit, "design_rows", lambda head, part: rows[part])
    monkeypatch.setattr(linear_fit, "SEARCH_LABELS", 3)
    head = SimpleNamespace(config=SimpleNamespace(n_classes=5))
    lines = []
    branch = linear_fit.fit_linear_branch(head, "train", "val", c=1.0, log=lines.append)

    searched = linear_fit.search_labels(truth[:150], limit=3)
    assert 0 not in searched and len(searched) == 3
    assert branch.record["search_labels"] == 3
    assert all("on the 3 most frequent labels" in line for line in lines[:-1]) and "every label" in lines[-1]
    # The weights of every label: one fit of all five at the chosen weight, as the head would make it.
    train_dense = (dense[:150] - branch.dense_shift) / (dense[:150].std(0) + 1e-6)
    weight = branch.record["dense_weight"]
    want = fit_linear_svm(terms[:150], train_dense * (weight / np.sqrt(6)), truth[:150], 5, c=1.0)
    assert branch.fit.term_weights.shape == (terms.shape[1], 5)
    np.testing.assert_allclose(branch.fit.term_weights, want.term_weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(branch.fit.bias, want.bias, rtol=1e-4, atol=1e-5)
    assert branch.fit.term_weights[:, 0].any()  # the rare label has its own SVM
