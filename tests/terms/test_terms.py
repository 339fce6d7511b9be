"""Terms: hashing in stage one, TF-IDF fitted on training documents, the term branch of a head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import cli_error, write_synthetic_cache

from longdoc.cache.reader import open_cache
from longdoc.configs import EvaluateConfig, TrainConfig
from longdoc.evaluate import run as run_evaluate
from longdoc.heads.checkpoint import load_checkpoint
from longdoc.runtime.errors import UserError
from longdoc.terms.hashing import TermHashing
from longdoc.terms.tfidf import TermWeights
from longdoc.train_head import run as run_train_head

QUIET = dict(progress=False, curve=False)
FILLER = "the of and to in is it that for on with as was he be by at this have from or one had".split()


def lexical_corpus(n_docs: int, n_classes: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Documents of common filler words plus one rare marker word of their class: only the
    terms tell the classes apart."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_docs) % n_classes
    texts = [" ".join([*rng.choice(FILLER, 6), f"marker{label}x", *rng.choice(FILLER, 6)]) for label in labels]
    return texts, labels


@pytest.fixture(scope="module")
def lexical(tmp_path_factory):
    """Window vectors are pure noise; each document's class is written in one word of its text."""
    folder = tmp_path_factory.mktemp("lexical")
    caches = []
    for split, n, seed in (("train", 120, 0), ("test", 60, 1)):
        texts, labels = lexical_corpus(n, 3, seed)
        caches.append(write_synthetic_cache(folder / f"{split}.h5", n_docs=n, seed=seed, separable=False,
                                            labels=labels, texts=texts))
    return caches


def train(tmp_path, cache, name="head.pt", **kwargs):
    return run_train_head(TrainConfig(train=str(cache), out=str(tmp_path / name), **{**QUIET, **kwargs}),
                          log=lambda line: None)


def test_hashing_is_stateless_and_matches_scikit_learn():
    from sklearn.feature_extraction.text import HashingVectorizer

    texts = ["Rare NAME-42 and a bigram here", "", "ünïcode wörds wörds", "one"]
    counts = TermHashing().counts(texts)
    reference = HashingVectorizer(n_features=2**20, ngram_range=(1, 2), alternate_sign=False, norm=None)
    assert (counts != reference.transform(texts)).nnz == 0
    assert counts.dtype == np.int32 and counts[1].nnz == 0
    assert (TermHashing().counts(texts[2:]) != counts[2:]).nnz == 0  # rows do not depend on their neighbours
    assert TermHashing.from_json(TermHashing().to_json()) == TermHashing()


def hashing_json(**changes) -> str:
    import json

    record = {**json.loads(TermHashing().to_json()), **changes}
    return json.dumps({k: v for k, v in record.items() if v is not DROP})


DROP = object()
CATASTROPHIC = r"(a+)+b"  # on "aaa...a" without a b: exponential backtracking


@pytest.mark.parametrize("text, named", [
    ("{nope", "not JSON"), ("[" * 100_000, "not JSON"), ("1" * 5000, "not JSON"), ('["a"]', "not a JSON object"),
    (hashing_json(n_features=DROP), "n_features is missing"), (hashing_json(extra=1), "unknown key 'extra'"),
    (hashing_json(n_features="1024"), "n_features must be of type int"),
    (hashing_json(n_features=1024.0), "n_features must be of type int"),
    (hashing_json(n_features=True), "n_features must be of type int"),
    (hashing_json(n_features=0), "n_features must be from 1 to"),
    (hashing_json(n_features=2**24 + 1), "n_features must be from 1 to"),
    (hashing_json(ngram_max=0), "ngram_max must be from 1 to 3"), (hashing_json(ngram_max=4), "ngram_max"),
    (hashing_json(lowercase=1), "lowercase must be of type bool"), (hashing_json(lowercase="yes"), "lowercase"),
    (hashing_json(token_pattern=r"\w+"), "token_pattern"), (hashing_json(token_pattern=7), "token_pattern"),
    (hashing_json(scheme="sklearn-hashing-vectorizer/murmur3/signed"), "scheme"),
])
def test_a_term_hashing_read_from_a_file_is_exactly_the_schema(text, named):
    with pytest.raises(ValueError, match=named):
        TermHashing.from_json(text)


def test_a_planted_token_pattern_is_refused_not_compiled():
    """A pattern read from a file is data: one off the list is refused before anything
    compiles it. Run in a process under `timeout`: if the pattern were accepted, hashing a
    line of 40 a's with it would backtrack for hours and the timeout would end the test."""
    import subprocess
    import sys

    from checkout import ROOT

    script = ("import sys\nfrom longdoc.terms.hashing import TermHashing\n"
              "try:\n    hashing = TermHashing.from_json(sys.argv[1])\n"
              "except ValueError as error:\n    print(error)\n    sys.exit(3)\n"
              "hashing.counts(['a' * 40])\n")
    result = subprocess.run(["timeout", "60", sys.executable, "-c", script, hashing_json(token_pattern=CATASTROPHIC)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "token_pattern" in result.stdout and "never compiled" in result.stdout


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_term_rows_are_checked_alike_whatever_the_chunk_they_are_read_in(chunk):
    """`term_rows_problem` reads indices and counts `chunk` entries at a time (a cache larger
    than memory): the rows `TermHashing` makes pass at every chunk size, a repeated term is
    found where the repeat straddles two chunks, and a row may start below where the row
    before it ended."""
    from longdoc.cache.term_files import term_rows_problem

    hashing = TermHashing(ngram_max=1)
    matrix = hashing.counts(["a1 b1 c1 d1 e1 f1 g1", "h1", "aa aa bb", "", "x1 y1 z1 w1"])
    assert matrix.indptr[1] == 7  # seven terms in row 0: chunks of 1, 2, 3 and 7 split it or end with it
    assert term_rows_problem(matrix.indptr, matrix.indices, matrix.data, hashing.n_features, chunk=chunk) is None
    repeated = matrix.indices.copy()
    repeated[6] = repeated[5]
    assert "document 0 are not strictly increasing" in term_rows_problem(
        matrix.indptr, repeated, matrix.data, hashing.n_features, chunk=chunk)
    indptr, indices, counts = np.array([0, 3, 4, 6]), np.array([5, 9, 60, 2, 1, 3]), np.ones(6, np.int32)
    assert term_rows_problem(indptr, indices, counts, 64, chunk=chunk) is None
    assert "document 2 are not strictly increasing" in term_rows_problem(
        indptr, indices[[0, 1, 2, 3, 5, 4]], counts, 64, chunk=chunk)


def test_tf_idf_matches_scikit_learn_on_the_kept_terms():
    from sklearn.feature_extraction.text import TfidfTransformer

    texts, _ = lexical_corpus(30, 3, seed=0)
    counts = TermHashing().counts(texts)
    weights = TermWeights.fit("{}", counts.shape[1], counts.__getitem__, np.arange(20), min_df=2, max_df=0.9)
    df = np.bincount(counts[:20].indices, minlength=counts.shape[1])
    assert weights.features.tolist() == np.flatnonzero((df >= 2) & (df <= 18)).tolist()  # from docs 0-19 only
    kept = counts[:, weights.features]
    expected = TfidfTransformer(sublinear_tf=True).fit(kept[:20]).transform(kept).toarray()
    batch = weights.batch(counts)
    bag = torch.nn.EmbeddingBag(weights.n_terms, weights.n_terms, mode="sum", _weight=torch.eye(weights.n_terms))
    got = bag(batch.ids, batch.offsets, per_sample_weights=batch.weights).detach().double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("slack", [0, 65_536], ids=["document-by-document", "one-span"])
def test_term_rows_of_any_documents_in_the_order_given(lexical, slack, monkeypatch):
    import longdoc.cache.reader

    monkeypatch.setattr(longdoc.cache.reader, "SPAN_SLACK", slack)
    picks = [[5, 3, 100, 0], sorted(np.random.default_rng(0).choice(120, 60, replace=False)), [119], [7, 7], []]
    with open_cache(lexical[0]) as cache:
        every = cache.term_rows(np.arange(cache.n_docs))
        assert every.nnz > 0
        for docs in picks:
            rows = cache.term_rows(np.asarray(docs, dtype=np.int64))
            assert rows.shape == (len(docs), every.shape[1]) and (rows != every[docs]).nnz == 0, docs


def test_the_term_branch_learns_what_the_windows_cannot_see(tmp_path, lexical):
    train_cache, test_cache = lexical
    scores = {}
    for inputs in ("windows", "terms", "both"):
        summary = train(tmp_path, train_cache, name=f"{inputs}.pt", inputs=inputs, pooling="mean", max_epochs=30,
                        lr=3e-3)
        scores[inputs] = run_evaluate(EvaluateConfig(head=str(summary.out), cache=str(test_cache))).metrics["accuracy"]
    assert scores["terms"] >= 0.95 and scores["both"] >= 0.95
    assert scores["windows"] <= 0.6  # noise windows: near chance (1/3)


def test_both_is_the_default_on_a_cache_with_terms_and_the_head_records_its_statistics(tmp_path, lexical):
    summary = train(tmp_path, lexical[0], pooling="mean", max_epochs=2)
    checkpoint = load_checkpoint(summary.out)
    assert checkpoint.head.config.inputs == "both" and checkpoint.head.reads_terms
    assert checkpoint.terms.hashing == TermHashing().to_json()
    assert checkpoint.terms.n_terms == checkpoint.head.config.n_terms > 0
    payload = torch.load(summary.out, weights_only=True)
    assert payload["terms"]["features"].dtype == torch.int64
    linear = checkpoint.training["linear_branch"]  # the dense weight chosen, and every one tried
    tried = dict(linear["tried"])
    assert {0.1, 0.2, 0.4} <= set(tried) and linear["dense_weight"] in tried
    assert tried[linear["dense_weight"]] == max(tried.values()) == linear["val_macro_f1"]


def test_a_fused_head_stacks_a_window_branch_chosen_by_its_own_validation_loss(tmp_path, lexical):
    """Both inputs: the history is the window branch's, its epoch the one of lowest validation
    loss; the record's validation scores are the whole head's, the branches weighed there."""
    lines = []
    summary = run_train_head(TrainConfig(train=str(lexical[0]), val=str(lexical[1]), out=str(tmp_path / "head.pt"),
                                         pooling="mean", max_epochs=6, patience=6, lr=3e-2, **QUIET),
                             log=lines.append)
    checkpoint = load_checkpoint(summary.out)
    history = checkpoint.training["history"]
    assert len(history) == 6 and checkpoint.training["best_epoch"] == 1 + int(np.argmin([h["val_loss"] for h in history]))
    assert max(h["val_accuracy"] for h in history) <= 0.7  # noise windows alone: near chance
    # With --val there is no refit: the saved head is the one validation scored.
    metrics = run_evaluate(EvaluateConfig(head=str(summary.out), cache=str(lexical[1]))).metrics
    assert checkpoint.training["val_accuracy"] == pytest.approx(metrics["accuracy"]) == summary.val_accuracy
    assert metrics["accuracy"] >= 0.95
    mix = checkpoint.head.mix.tolist()
    assert mix[1] > mix[0] and lines[-1] == (f"head: window branch x {mix[0]:.3f} + linear branch x {mix[1]:.3f}: "
                                             f"validation accuracy {metrics['accuracy']:.4f}, "
                                             f"macro-F1 {metrics['macro_f1']:.4f}")


@pytest.mark.parametrize("peak, chosen, order", [
    (0.2, 0.2, [0.2, 0.1, 0.4]),  # bracketed at once: as many fits as a fixed grid of three
    (0.05, 0.05, [0.2, 0.1, 0.4, 0.05, 0.025]),  # the small end wins: halve until it loses
    (0.8, 0.8, [0.2, 0.1, 0.4, 0.8, 1.6]),  # the large end wins: double until it loses
    (0.001, 0.0125, [0.2, 0.1, 0.4, 0.05, 0.025, 0.0125]),  # at most MAX_WIDENING more fits
    (None, 0.2, [0.2, 0.1, 0.4]),  # all equal: the centre, tried first
])
def test_the_dense_weight_search_brackets_the_best(peak, chosen, order):
    from longdoc.training.linear_fit import MAX_WIDENING, bracketing_search

    calls = []

    def score(weight):  # validation macro-F1 peaking at `peak` on a log scale
        calls.append(weight)
        return 0.9 if peak is None else 0.9 - abs(np.log2(weight / peak)) / 100

    best, tried = bracketing_search(score)
    assert best == pytest.approx(chosen) and calls == pytest.approx(order) and list(tried) == calls
    assert len(calls) <= 3 + MAX_WIDENING


@pytest.mark.parametrize("inputs", ["terms", "both"])
def test_refit_terms_fits_the_linear_branch_again_on_validation_too(tmp_path, lexical, inputs):
    train(tmp_path, lexical[0], "plain.pt", inputs=inputs, max_epochs=2, refit_terms=False)
    refit = train(tmp_path, lexical[0], "refit.pt", inputs=inputs, max_epochs=2)  # the default
    before, after = load_checkpoint(tmp_path / "plain.pt"), load_checkpoint(tmp_path / "refit.pt")
    assert after.training["linear_branch"]["refit"]["documents"] == refit.n_train + refit.n_val == 120
    assert "refit" not in before.training["linear_branch"]
    # Validation chose the same things: the epoch's scores and the window branch are the plain run's.
    untimed = [[{k: v for k, v in entry.items() if k != "seconds"} for entry in run.training["history"]]
               for run in (before, after)]
    assert untimed[0] == untimed[1]
    assert not torch.equal(after.head.state_dict()["terms.weight"], before.head.state_dict()["terms.weight"])
    for name, value in before.head.state_dict().items():
        if not name.startswith("terms"):
            assert torch.equal(after.head.state_dict()[name], value), name
    assert run_evaluate(EvaluateConfig(head=str(tmp_path / "refit.pt"), cache=str(lexical[1]))).metrics["accuracy"] > 0.9


def test_a_term_head_refuses_a_cache_without_terms(tmp_path, lexical):
    plain = write_synthetic_cache(tmp_path / "plain.h5", n_docs=30)
    summary = train(tmp_path, lexical[0], inputs="terms", max_epochs=1)
    with pytest.raises(UserError, match="holds no term counts.*--inputs windows"):
        run_evaluate(EvaluateConfig(head=str(summary.out), cache=str(plain)))
    code, err = cli_error("in-process", "train-head", "--train", plain, "--inputs", "both",
                          "--out", tmp_path / "x.pt", "--no-progress")
    assert code == 2 and len(err) == 1 and "holds no term counts" in err[0]
    assert not (tmp_path / "x.pt").exists()


def test_a_cache_without_terms_trains_a_windows_head_by_default(tmp_path):
    plain = write_synthetic_cache(tmp_path / "plain.h5", n_docs=30)
    summary = train(tmp_path, plain, max_epochs=1)
    assert load_checkpoint(summary.out).head.config.inputs == "windows"
    with open_cache(plain) as cache:
        assert not cache.has_terms and cache.term_hashing == "{}"


def test_the_linear_branch_gives_every_class_a_score_even_two_or_absent_ones():
    """liblinear keeps one row for two classes and none for a class absent from training:
    the fit still scores every class, and agrees with LinearSVC's own predictions."""
    import scipy.sparse as sp
    from sklearn.svm import LinearSVC

    from longdoc.training.linear_fit import fit_linear_svm

    rng = np.random.default_rng(0)
    for present in ([0, 1], [0, 2, 3]):  # two classes; three of four (class 1 never seen)
        labels = rng.choice(present, 200)
        terms = sp.random(200, 60, density=0.1, random_state=1, format="csr") + sp.csr_matrix(
            np.hstack([np.eye(4)[labels], np.zeros((200, 56))]))
        dense = rng.normal(size=(200, 5))
        fit = fit_linear_svm(terms.tocsr(), dense, labels, 4, c=0.5)
        both = sp.hstack([terms, sp.csr_matrix(dense)]).tocsr()
        scores = both @ np.vstack([fit.term_weights, fit.dense_weights]) + fit.bias
        assert scores.shape == (200, 4)
        reference = LinearSVC(C=0.5).fit(both, labels).predict(both)
        assert (scores.argmax(1) == reference).mean() >= 0.99
        assert set(scores.argmax(1).tolist()) <= set(present)


@pytest.mark.slow
def test_odd_documents_all_embed_and_get_their_term_rows(tiny_bert, tmp_path):
    """Empty, one word repeated, binary junk and a 150,000-token post: each keeps all its
    windows and a term row of its own whole text; nothing is truncated or dropped."""
    from longdoc.configs import EmbedConfig
    from longdoc.embed import run as run_embed
    from longdoc.encoding.encoder import load_tokenizer
    from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize

    rng = np.random.default_rng(0)
    texts = {"a/empty.txt": "", "a/repeated.txt": "spam " * 5000,
             "b/junk.txt": rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes().decode("latin-1"),
             "b/long.txt": " ".join(rng.choice(FILLER, 150_000))}
    for name, text in texts.items():
        (tmp_path / "corpus" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "corpus" / name).write_text(text, encoding="utf-8")
    out = tmp_path / "odd.h5"
    run_embed(EmbedConfig(out=out, data=str(tmp_path / "corpus"), model=str(tiny_bert), chunk_tokens=64, stride=8,
                          precision="fp32", device="cpu", progress=False))
    with open_cache(out) as cache:
        ids = cache.doc_ids()
        written = [texts[i].encode("utf-8").decode("utf-8") for i in ids]
        tokens = tokenize(load_tokenizer(str(tiny_bert)), written)
        spec = WindowSpec(64, 8, SpecialTokens.of(load_tokenizer(str(tiny_bert))))
        assert cache.window_counts.tolist() == [spec.count(len(t)) for t in tokens]
        assert max(len(t) for t in tokens) >= 150_000
        rows = cache.term_rows(np.arange(cache.n_docs))
        assert (rows != TermHashing().counts(written)).nnz == 0
        by_id = dict(zip(ids, range(len(ids))))
        assert rows[by_id["a/empty.txt"]].nnz == 0
        assert sorted(rows[by_id["a/repeated.txt"]].data.tolist()) == [4999, 5000]  # "spam spam", "spam"
        assert rows[by_id["b/long.txt"]].sum() > 150_000
