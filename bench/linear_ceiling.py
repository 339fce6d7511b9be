"""How far the linear branch's family can go on a pair of caches, every setting picked on test.

    .venv/bin/python bench/linear_ceiling.py --cache frozen-minilm=CACHES/3class \\
        --cache finetuned-minilm=RUNS/3class/kall --out docs/bench/linear-ceiling-3class

A diagnostic, not a result: for each named folder (holding train.h5 and test.h5 made by
`cli.py embed`), LinearSVC on [TF-IDF of the cache's hashed terms, dense weight x the
standardised mean window vector] is fitted on all training documents for every C in
--c and dense weight in --dense-weights (0: terms alone), and scored on the test set. The
best of that grid is a ceiling for this model family on these caches: it is what picking
C and the dense weight on the test set itself would give. The head picks them on
validation, so it can only come in at or under it (its window branch aside).

TF-IDF as in bench/fused.py (`hashed_tfidf`): sublinear tf, idf from the training documents,
terms in at least 2 and at most half of them. `--char-weights` adds a third block the caches do not
hold: TF-IDF of character 2- to 5-grams within words (scikit-learn's `char_wb`, sublinear tf,
in at least 2 training documents) of the raw texts of `--setting`, times each weight given
(0: none). Writes OUT.json (every cell) and OUT.md (the grids).

Two more members of the family, to see whether the ceiling is this family's or the signals':
- `--term-weightings tfidf,nb` also tries NB-SVM (Wang & Manning 2012): the terms binarised
  and scaled, per class, by their naive-Bayes log-count ratio (add-one smoothing), one
  binary LinearSVC per class, the highest decision value wins; often a point or two above
  TF-IDF on small text sets.
- `--cache NAME=FOLDER+SECOND` adds a second encoder's standardised mean window vector (the
  same documents, embedded by another model) beside the first's, times each weight in
  `--second-weights`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from fused import SETTINGS, hashed_tfidf  # noqa: E402  (bench/fused.py, beside this file)
from machine import machine_name

from longdoc.cache.reader import open_cache


def read(path: Path) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, list[str]]:
    """(hashed term counts, mean window vector, label, id) of every document of a cache."""
    with open_cache(path) as cache:
        terms, labels, ids = cache.term_rows(np.arange(cache.n_docs)), cache.labels.copy(), cache.doc_ids()
        offsets = np.asarray(cache.doc_offsets)
        windows = cache.embeddings[:].astype(np.float64)
    sums = np.add.reduceat(windows, offsets[:-1], axis=0) if len(windows) else np.zeros((len(labels), 0))
    counts = np.diff(offsets)
    means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    return terms, means, labels, ids


def char_blocks(setting: str, train_ids: list[str], test_ids: list[str]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """TF-IDF of the raw texts' character 2-5-grams within words, fitted on the training texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from longdoc.corpus.sources import load_corpus

    texts = {}
    for split, ids in (("train", train_ids), ("test", test_ids)):
        corpus = load_corpus("20newsgroups", split, SETTINGS[setting]["categories"], SETTINGS[setting]["remove"])
        if list(corpus.doc_ids) != list(ids):
            sys.exit(f"--setting {setting}: its {split} documents are not the cache's, in the cache's order")
        texts[split] = corpus.texts
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, analyzer="char_wb", ngram_range=(2, 5))
    return vectorizer.fit_transform(texts["train"]), vectorizer.transform(texts["test"])


def standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sides shifted and scaled by the training documents' statistics, then divided by
    the root of the width, so a block's expected squared norm is 1 whatever its width."""
    shift, spread, root = train.mean(0), train.std(0) + 1e-6, np.sqrt(train.shape[1])
    return (train - shift) / spread / root, (test - shift) / spread / root


def nb_ratios(binary: sp.csr_matrix, labels: np.ndarray) -> list[np.ndarray]:
    """Per class, log((1 + count in the class) / (1 + count outside)), each side normalised."""
    ratios = []
    for label in np.unique(labels):
        inside = 1 + np.asarray(binary[labels == label].sum(0)).ravel()
        outside = 1 + np.asarray(binary[labels != label].sum(0)).ravel()
        ratios.append(np.log((inside / inside.sum()) / (outside / outside.sum())))
    return ratios


def fit_and_score(weighting: str, terms, rest: tuple, y_train, y_test, c: float) -> float:
    """Test accuracy of LinearSVC on [terms, rest]: one multi-class model over TF-IDF (`terms`
    a (train, test) pair), or NB-SVM's one binary model per class (`terms` one pair per class
    of ratio-scaled binary terms)."""
    from sklearn.svm import LinearSVC

    def fit(train_x, labels):
        return LinearSVC(C=c, max_iter=5000, random_state=0).fit(train_x, labels)

    if weighting == "tfidf":
        model = fit(sp.hstack([terms[0], *rest[0]], format="csr"), y_train)
        return float(np.mean(model.predict(sp.hstack([terms[1], *rest[1]], format="csr")) == y_test))
    classes, scores = np.unique(y_train), []
    for label, class_terms in zip(classes, terms):
        scaled = [sp.hstack([side, *others], format="csr") for side, others in zip(class_terms, rest)]
        scores.append(fit(scaled[0], y_train == label).decision_function(scaled[1]))
    return float(np.mean(classes[np.argmax(np.stack(scores, axis=1), axis=1)] == y_test))


def grid(folders: list[Path], cs: list[float], dense_weights: list[float], char_weights: list[float],
         setting: str | None, weightings: list[str] = ("tfidf",), second_weights: list[float] = (0,)) -> list[dict]:
    (train_terms, train_dense, y_train, train_ids), (test_terms, test_dense, y_test, test_ids) = (
        read(folders[0] / "train.h5"), read(folders[0] / "test.h5"))
    x_train, x_test = hashed_tfidf(train_terms, test_terms)
    nb_terms = None  # per class, (train, test) binary terms scaled by the class's NB ratios
    if "nb" in weightings:
        binary = [x.copy() for x in (x_train, x_test)]
        for x in binary:
            x.data[:] = 1.0
        nb_terms = [tuple(side @ sp.diags(ratio) for side in binary) for ratio in nb_ratios(binary[0], y_train)]
    chars = char_blocks(setting, train_ids, test_ids) if any(char_weights) else (None, None)
    dense = standardised(train_dense, test_dense)
    second = (None, None)
    if len(folders) > 1:
        (_, other_train, other_y, other_ids), (_, other_test, _, other_test_ids) = (
            read(folders[1] / "train.h5"), read(folders[1] / "test.h5"))
        if other_ids != train_ids or other_test_ids != test_ids or not np.array_equal(other_y, y_train):
            sys.exit(f"{folders[1]}: not the documents of {folders[0]}, in the same order")
        second = standardised(other_train, other_test)
    cells = []
    for weighting in weightings:
        terms = (x_train, x_test) if weighting == "tfidf" else nb_terms
        for char_weight in char_weights:
            for weight in dense_weights:
                for second_weight in (second_weights if len(folders) > 1 else (0,)):
                    rest = tuple([*([chars[side] * char_weight] if char_weight else []),
                                  *([sp.csr_matrix(dense[side] * weight)] if weight else []),
                                  *([sp.csr_matrix(second[side] * second_weight)] if second_weight else [])]
                                 for side in (0, 1))
                    for c in cs:
                        accuracy = fit_and_score(weighting, terms, rest, y_train, y_test, c)
                        cells.append({"terms": weighting, "c": c, "dense_weight": weight,
                                      "second_weight": second_weight, "char_weight": char_weight,
                                      "test_accuracy": accuracy})
                        print(json.dumps({"cache": folders[0].name, **cells[-1]}), file=sys.stderr, flush=True)
    return cells


ROW_KEYS = ("terms", "char_weight", "dense_weight", "second_weight")


def table(name: str, cells: list[dict], cs: list[float]) -> list[str]:
    best = max(cells, key=lambda cell: cell["test_accuracy"])
    lines = [f"### {name}: ceiling {best['test_accuracy']:.4f} (terms {best['terms']}, C {best['c']:g}, dense "
             f"weight {best['dense_weight']:g}, second weight {best['second_weight']:g}, char weight "
             f"{best['char_weight']:g})", "",
             "| terms | char weight | dense weight | second weight | " + " | ".join(f"C {c:g}" for c in cs) + " |",
             "| --- | ---: | ---: | ---: |" + " ---: |" * len(cs)]
    for key in dict.fromkeys(tuple(cell[k] for k in ROW_KEYS) for cell in cells):
        row = {cell["c"]: cell["test_accuracy"] for cell in cells if tuple(cell[k] for k in ROW_KEYS) == key}
        lines.append(f"| {key[0]} | " + " | ".join(f"{v:g}" for v in key[1:]) + " | "
                     + " | ".join(f"{row[c]:.4f}" for c in cs) + " |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", action="append", required=True, metavar="NAME=FOLDER[+SECOND]",
                        help="a folder with train.h5 and test.h5, named for the table (repeatable); +SECOND: "
                             "another encoder's caches of the same documents, whose mean vectors join")
    parser.add_argument("--c", default="0.1,0.3,1,3,10")
    parser.add_argument("--dense-weights", default="0,0.05,0.1,0.2,0.4,0.8,1.6")
    parser.add_argument("--char-weights", default="0", help="weights of a char 2-5-gram block (needs --setting)")
    parser.add_argument("--setting", choices=sorted(SETTINGS), help="the caches' corpus, for --char-weights")
    parser.add_argument("--term-weightings", default="tfidf", help="tfidf and/or nb (NB-SVM), comma-separated")
    parser.add_argument("--second-weights", default="0,0.5,1,2", help="weights of a +SECOND cache's vectors")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    cs = [float(c) for c in args.c.split(",")]
    dense_weights = [float(w) for w in args.dense_weights.split(",")]
    char_weights = [float(w) for w in args.char_weights.split(",")]
    second_weights = [float(w) for w in args.second_weights.split(",")]
    weightings = args.term_weightings.split(",")
    if not set(weightings) <= {"tfidf", "nb"}:
        parser.error("--term-weightings: tfidf and/or nb")
    if any(char_weights) and not args.setting:
        parser.error("--char-weights other than 0 needs --setting (the raw texts)")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = {}
    lines = ["Test accuracy of LinearSVC on [terms (TF-IDF, or NB-SVM's ratio-scaled binary terms), dense weight "
             "x standardised mean window vector, second weight x a second encoder's, char weight x char 2-5-gram "
             "TF-IDF], fitted on all training documents, **every cell scored on the test set**: the best cell is "
             "a ceiling for this family on these caches, not a result.", ""]
    for spec in args.cache:
        name, _, folder = spec.partition("=")
        results[name] = {"folder": folder, "cells": grid([Path(f) for f in folder.split("+")], cs, dense_weights,
                                                         char_weights, args.setting, weightings, second_weights)}
        lines += table(name, results[name]["cells"], cs)
    command = shlex.join([".venv/bin/python", *sys.argv])
    lines.append(f"Machine: {machine_name()}; `{command}`; {started}.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"command": command, "machine": machine_name(),
                                                    "date": started, "caches": results}, indent=1))
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
