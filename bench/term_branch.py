"""The linear branch alone, on all of 20 Newsgroups, without any encoder: does the head's
term pipeline (stateless hashing -> TF-IDF fitted on train -> L-BFGS linear SVM) match
TF-IDF + LinearSVC?

    .venv/bin/python bench/term_branch.py --out docs/bench/term-branch-20class

Rows, same data, same machine, one invocation (bydate test set, 20 classes, full posts):
  * TfidfVectorizer (fitted vocabulary, unigrams) + LinearSVC: ../shared/datasets/README.md's reference;
  * the cache's hashing (`longdoc.terms.hashing.TermHashing`, unigrams + bigrams) + `longdoc.terms.tfidf`
    TF-IDF + scikit-learn's LinearSVC;
  * the same features + `longdoc.training.linear_fit.fit_linear_svm`, what `train-head --inputs terms` fits
    (here on every training post: train-head holds out 10% for validation). Until commit
    "linear_fit: liblinear" this was an L-BFGS solver of the same objective (same accuracy,
    16x slower: docs/bench/term-branch-20class.md); it now calls liblinear like the row above.
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from machine import machine_name

from longdoc.corpus.sources import load_corpus
from longdoc.reports.metrics import scores
from longdoc.terms.hashing import TermHashing
from longdoc.terms.tfidf import TermWeights
from longdoc.training.linear_fit import fit_linear_svm


def tfidf_rows(weights: TermWeights, counts: sp.csr_matrix) -> sp.csr_matrix:
    batch = weights.batch(counts)
    indptr = np.append(batch.offsets.numpy(), len(batch.ids))
    return sp.csr_matrix((batch.weights.numpy(), batch.ids.numpy(), indptr), shape=(counts.shape[0], weights.n_terms))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    train, test = load_corpus("20newsgroups", "train"), load_corpus("20newsgroups", "test")
    rows = []

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(sublinear_tf=True, max_df=0.5, min_df=2)
    predicted = LinearSVC(C=1.0).fit(vectorizer.fit_transform(train.texts), train.labels).predict(
        vectorizer.transform(test.texts))
    rows.append({"method": "TfidfVectorizer (fitted vocabulary) + LinearSVC C=1",
                 **scores(test.labels, predicted), "seconds": time.perf_counter() - start})

    start = time.perf_counter()
    hashing = TermHashing()
    train_counts, test_counts = hashing.counts(train.texts), hashing.counts(test.texts)
    weights = TermWeights.fit(hashing.to_json(), hashing.n_features, train_counts.__getitem__,
                              np.arange(len(train)))
    x_train, x_test = tfidf_rows(weights, train_counts), tfidf_rows(weights, test_counts)
    features_seconds = time.perf_counter() - start

    start = time.perf_counter()
    predicted = LinearSVC(C=1.0).fit(x_train, train.labels).predict(x_test)
    rows.append({"method": "hashed unigrams + bigrams, longdoc.terms.tfidf TF-IDF, scikit-learn LinearSVC C=1",
                 **scores(test.labels, predicted), "seconds": time.perf_counter() - start + features_seconds})

    start = time.perf_counter()
    fit = fit_linear_svm(x_train, None, train.labels, len(train.label_names), c=1.0)
    predicted = (x_test @ fit.term_weights + fit.bias).argmax(1)
    rows.append({"method": f"same features, longdoc.training.linear_fit.fit_linear_svm C=1 ({fit.iterations} iterations)",
                 **scores(test.labels, predicted), "seconds": time.perf_counter() - start + features_seconds})

    command = shlex.join([".venv/bin/python", *sys.argv])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"20 Newsgroups, all classes, full posts: {len(train):,} train / {len(test):,} test; "
             f"{weights.n_terms:,} hashed terms kept (min_df 2, max_df 0.5).", "",
             "| method | test accuracy | test macro-F1 | seconds (features + fit) |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['method']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['seconds']:.0f} |" for r in rows]
    lines += ["", f"Machine: {machine_name()}; `{command}`; {when}."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"command": command, "machine": machine_name(), "date": when,
                                                    "rows": rows}, indent=1))
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
