"""Explanations toward each label of a label set: windows by leave-one-out, terms' exact share."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_explain import brute_force, random_documents, random_head, term_documents

from longdoc.explain.contributions import explain_documents, explain_label_sets
from longdoc.heads.batches import predict_logits
from longdoc.heads.head import Head
from longdoc.settings.model import HeadConfig

COUNTS = [1, 2, 5, 3, 9, 1, 4]
SETS = [[0, 2], [1], [], [0, 1, 2], [2], [1, 2], [0]]


@pytest.mark.parametrize("pooling", ["mean", "lstm"])
def test_each_label_of_a_set_gets_its_own_leave_one_out(pooling):
    """Toward label j, as explaining class j alone; by hand too; batching changes nothing."""
    documents, head = random_documents(COUNTS), random_head(pooling)
    sets = [np.array(s, dtype=np.int64) for s in SETS]
    together = explain_label_sets(head, documents, sets)
    tiny = explain_label_sets(head, documents, sets, batch_windows=5)
    for doc, explanations in enumerate(together):
        assert [e.target for e in explanations] == SETS[doc] and all(e.doc == doc for e in explanations)
        for e, small in zip(explanations, tiny[doc]):
            np.testing.assert_allclose(e.windows, small.windows, atol=1e-5)
            if COUNTS[doc] > 1:
                alone = explain_documents(head, documents, docs=np.array([doc]), targets=np.array([e.target]))[0]
                np.testing.assert_allclose(e.windows, alone.windows, atol=1e-5)
                np.testing.assert_allclose(e.windows, brute_force(head, documents, doc, e.target), atol=1e-5)


def test_a_one_window_document_counts_its_margin_over_the_threshold():
    documents, head = random_documents([1, 1]), random_head("attention")
    logits = predict_logits(head, documents)
    thresholds = np.array([0.5, 0.2, 0.9])
    out = explain_label_sets(head, documents, [np.array([0, 1, 2]), np.array([1])], thresholds=thresholds)
    logit_of = np.log(thresholds / (1 - thresholds))
    np.testing.assert_allclose([e.windows[0] for e in out[0]], logits[0] - logit_of, atol=1e-5)
    assert out[1][0].windows[0] == pytest.approx(logits[1, 1] - logit_of[1], abs=1e-5)
    without = explain_label_sets(head, documents, [np.array([2]), np.array([])])
    assert without[0][0].windows[0] == pytest.approx(logits[0, 2], abs=1e-5) and without[1] == []


def test_terms_are_the_exact_share_of_each_labels_linear_logit():
    documents = term_documents(COUNTS)
    torch.manual_seed(0)
    head = Head(HeadConfig("mean", 8, 3, inner_dim=8, inputs="both", n_terms=40)).eval()
    with torch.no_grad():
        head.terms.weight.normal_()
        head.terms_bias.normal_()
    sets = [np.array(s, dtype=np.int64) for s in SETS]
    out = explain_label_sets(head, documents, sets, terms_k=1000)
    batch = documents.load(documents.docs)
    terms = batch.terms
    term_logits = (head.terms(terms.ids, terms.offsets, per_sample_weights=terms.weights)
                   + head.terms_bias).detach().numpy()
    for doc, explanations in enumerate(out):
        for e in explanations:
            values = [t.contribution for t in e.terms]
            assert values == sorted(values, reverse=True)
            total = sum(values) + float(head.terms_bias.detach()[e.target])
            assert total == pytest.approx(term_logits[doc, e.target], abs=1e-4)


def test_label_sets_must_match_the_documents():
    documents, head = random_documents([2, 3]), random_head("mean")
    with pytest.raises(ValueError, match="one set of labels per document"):
        explain_label_sets(head, documents, [np.array([0])])
