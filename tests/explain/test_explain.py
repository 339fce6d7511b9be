"""Explanations: leave-one-out window contributions for every pooling, and windows mapped to text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import WORDS

from longdoc.cache.reader import open_cache
from longdoc.encoding.windows import tokenize
from longdoc.explain.contributions import explain_documents, logits_without, require_term_branch
from longdoc.explain.text import (
    WindowMapper,
    cached_geometry,
    load_cache_corpus,
    tokenize_with_offsets,
)
from longdoc.heads.batches import CacheDocuments, predict_logits
from longdoc.heads.head import Head
from longdoc.runtime.errors import UserError
from longdoc.settings.model import POOLINGS, HeadConfig


def random_documents(counts, hidden=8, seed=0) -> CacheDocuments:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return CacheDocuments(rng.normal(size=(offsets[-1], hidden)).astype(np.float32), offsets,
                          np.zeros(len(counts), dtype=np.int64))


def random_head(pooling, hidden=8, n_classes=3, seed=0) -> Head:
    torch.manual_seed(seed)
    return Head(HeadConfig(pooling, hidden, n_classes, inner_dim=8, transformer_heads=2)).eval()


def brute_force(head, documents, doc, target):
    """Leave-one-out by hand: a fresh one-document CacheDocuments per variant."""
    lo, hi = documents.offsets[doc], documents.offsets[doc + 1]
    windows = documents.embeddings[lo:hi]

    def logit(rows):
        one = CacheDocuments(rows, np.array([0, len(rows)]), np.zeros(1, dtype=np.int64))
        return predict_logits(head, one)[0, target]

    return np.array([logit(windows) - logit(np.delete(windows, i, axis=0)) for i in range(len(windows))])


@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_leave_one_out_matches_brute_force_and_ignores_batching(pooling):
    """Same numbers alone, in any batch, with any variant chunking, as computed by hand."""
    counts = [1, 2, 5, 3, 9, 1, 4, 17]
    documents, head = random_documents(counts), random_head(pooling)
    together = explain_documents(head, documents)
    tiny_batches = explain_documents(head, documents, batch_windows=7)
    predicted = predict_logits(head, documents).argmax(1)
    for doc, explanation in enumerate(together):
        alone = explain_documents(head, documents, docs=np.array([doc]))[0]
        assert explanation.doc == doc and explanation.target == predicted[doc]
        np.testing.assert_allclose(explanation.windows, alone.windows, atol=1e-5)
        np.testing.assert_allclose(explanation.windows, tiny_batches[doc].windows, atol=1e-5)
        if counts[doc] > 1:
            np.testing.assert_allclose(explanation.windows, brute_force(head, documents, doc, predicted[doc]),
                                       atol=1e-5)
        else:  # one window: the logit margin of the predicted class
            logits = explanation.logits
            assert explanation.windows[0] == pytest.approx(logits.max() - np.sort(logits)[-2], abs=1e-5)


@pytest.mark.parametrize("pooling", ["max", "mean", "attention"])
def test_the_one_window_that_decides_is_ranked_first(pooling):
    """A head that reads only feature 0, with one window far out on it: that window comes first."""
    hidden, rng = 4, np.random.default_rng(1)
    head = Head(HeadConfig(pooling, hidden, 2, input_norm=False, dropout=0.0, inner_dim=4)).eval()
    with torch.no_grad():
        head.classifier.weight.zero_()
        head.classifier.weight[0, 0], head.classifier.weight[1, 0] = 1.0, -1.0
        head.classifier.bias.zero_()
    counts, deciding = [6, 11, 3], [4, 0, 2]
    rows = []
    for n, k in zip(counts, deciding):
        x = rng.uniform(-1.0, -0.5, size=(n, hidden))
        x[k, 0] = 8.0
        rows.append(x)
    documents = CacheDocuments(np.concatenate(rows).astype(np.float32), np.concatenate([[0], np.cumsum(counts)]),
                               np.zeros(3, dtype=np.int64))
    for explanation, k in zip(explain_documents(head, documents, targets=np.zeros(3, dtype=np.int64)), deciding):
        assert explanation.ranked(1)[0] == k
        assert explanation.windows[k] > 0


def test_a_900_window_document_stays_bounded():
    documents, head = random_documents([900], hidden=8), random_head("lstm")
    explanation = explain_documents(head, documents, batch_windows=4096)[0]
    assert explanation.windows.shape == (900,) and np.isfinite(explanation.windows).all()


def test_logits_without_drops_the_asked_window():
    counts = [3, 1, 4]
    documents, head = random_documents(counts), random_head("transformer")
    full = predict_logits(head, documents)
    explanations = explain_documents(head, documents)
    drop = np.array([1, 0, -1])
    less = logits_without(head, documents, np.arange(3), drop)
    np.testing.assert_allclose(less[1:], full[1:], atol=1e-5)  # one-window and -1: unchanged
    t = explanations[0].target
    assert full[0, t] - less[0, t] == pytest.approx(explanations[0].windows[1], abs=1e-5)


def term_documents(counts, n_terms=40, hidden=8, seed=0):
    import scipy.sparse as sp

    from longdoc.terms.tfidf import TermWeights

    rng = np.random.default_rng(seed)
    rows = [np.unique(rng.integers(0, n_terms, rng.integers(1, 12))) for _ in counts]
    csr = sp.csr_matrix((np.concatenate([rng.integers(1, 4, len(r)) for r in rows]).astype(np.int32),
                         np.concatenate(rows), np.concatenate([[0], np.cumsum([len(r) for r in rows])])),
                        shape=(len(counts), n_terms))
    weights = TermWeights("{}", np.arange(n_terms, dtype=np.int64), rng.uniform(1, 3, n_terms).astype(np.float32))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return CacheDocuments(rng.normal(size=(offsets[-1], hidden)).astype(np.float32), offsets,
                          np.zeros(len(counts), dtype=np.int64), term_rows=csr.__getitem__, term_weights=weights)


@pytest.mark.parametrize("pooling", ["lstm", "attention"])
def test_heads_with_a_term_branch(pooling):
    """Window contributions still match leave-one-out by hand (terms kept); term contributions
    add up, with the bias, to the terms' part of the linear branch's logit."""
    counts = [1, 3, 6, 2, 9]
    documents = term_documents(counts)
    torch.manual_seed(0)
    head = Head(HeadConfig(pooling, 8, 3, inner_dim=8, transformer_heads=2, inputs="both", n_terms=40)).eval()
    with torch.no_grad():
        head.terms.weight.normal_()
    explanations = explain_documents(head, documents, terms_k=1000)
    full = predict_logits(head, documents)
    batch = documents.load(np.arange(len(counts)))
    terms = batch.terms  # the terms' own part of the linear branch (its dense part is the mean window)
    term_logits = (head.terms(terms.ids, terms.offsets, per_sample_weights=terms.weights)
                   + head.terms_bias).detach().numpy()
    for doc, explanation in enumerate(explanations):
        t = explanation.target
        assert t == full[doc].argmax()
        total = sum(term.contribution for term in explanation.terms) + float(head.terms_bias.detach()[t])
        assert total == pytest.approx(term_logits[doc, t], abs=1e-4)
        alone = explain_documents(head, documents, docs=np.array([doc]), batch_windows=5)[0]
        np.testing.assert_allclose(explanation.windows, alone.windows, atol=1e-5)
        if counts[doc] > 1:
            drop = np.arange(counts[doc])
            less = logits_without(head, documents, np.full(counts[doc], doc), drop)[:, t]
            np.testing.assert_allclose(explanation.windows, full[doc, t] - less, atol=1e-5)


def test_heads_without_a_term_branch_say_so():
    with pytest.raises(UserError, match="no term branch"):
        require_term_branch(random_head("mean"), "runs/head.pt")
    assert explain_documents(random_head("mean"), random_documents([2]))[0].terms is None


# --- windows back to text ------------------------------------------------------------


@pytest.fixture(scope="module")
def word_cache(tmp_path_factory, tiny_bert):
    """A cache of documents made of whole vocabulary words: one token per word."""
    from longdoc.configs import EmbedConfig
    from longdoc.embed import run as run_embed

    folder = tmp_path_factory.mktemp("words")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (folder / "corpus" / label).mkdir(parents=True)
        for i, n in enumerate([0, 5, 70, 200]):
            text = "  ".join(rng.choice(WORDS[:30], n)) + ("\n" if n else "")
            (folder / "corpus" / label / f"{i}.txt").write_text(text)
    run_embed(EmbedConfig(out=folder / "c.h5", data=str(folder / "corpus"), model=str(tiny_bert), chunk_tokens=32,
                          stride=4, progress=False, device="cpu"))
    return folder / "corpus", folder / "c.h5"


def test_offsets_give_the_same_tokens_as_stage_one(tiny_bert):
    from longdoc.encoding.encoder import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_bert))
    texts = ["", "space rocket, orbit!", "Café the a " * 300]
    with_offsets = tokenize_with_offsets(tokenizer, texts, segment_chars=100)
    for (ids, offsets), plain, text in zip(with_offsets, tokenize(tokenizer, texts, segment_chars=100), texts):
        np.testing.assert_array_equal(ids, plain)
        assert offsets.shape == (len(ids), 2)
        assert all(text[a:b].strip() for a, b in offsets.tolist())  # every token covers real characters


def test_window_spans_map_back_to_the_words_of_each_window(word_cache):
    corpus_path, cache_path = word_cache
    with open_cache(cache_path) as cache:
        corpus = load_cache_corpus(cache, str(corpus_path))
        mapper = WindowMapper.for_cache(cache)
        docs = np.arange(cache.n_docs)
        doc_tokens, starts = cached_geometry(cache, docs)
        spans = mapper.spans(corpus.doc_ids, corpus.texts, doc_tokens, starts)
    body = mapper.spec.body
    for text, doc_spans, doc_starts in zip(corpus.texts, spans, starts):
        words = text.split()
        assert len(doc_spans) == len(doc_starts)
        for (a, b), start in zip(doc_spans.tolist(), doc_starts.tolist()):
            assert text[a:b].split() == words[start:start + body]


def test_a_changed_or_vanished_document_is_refused(word_cache, tmp_path):
    import shutil

    corpus_path, cache_path = word_cache
    changed = tmp_path / "changed"
    shutil.copytree(corpus_path, changed)
    with open_cache(cache_path) as cache:
        (changed / "a" / "2.txt").write_text("space " * 3)
        with pytest.raises(UserError, match="not the corpus"):
            load_cache_corpus(cache, str(changed))
        (changed / "b" / "1.txt").unlink()
        with pytest.raises(UserError, match="document b/1.txt of .* is not in --data"):
            load_cache_corpus(cache, str(changed))
        mapper = WindowMapper.for_cache(cache)
        doc_tokens, starts = cached_geometry(cache, np.array([2]))
        with pytest.raises(UserError, match="document a/2.txt changed since it was embedded"):
            mapper.spans(["a/2.txt"], ["space " * 3], doc_tokens, starts)
