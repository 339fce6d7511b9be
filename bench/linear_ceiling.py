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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fused import SETTINGS, hashed_tfidf  # noqa: E402  (bench/fused.py, beside this file)
from machine import machine_name  # noqa: E402

from stages.cache import open_cache  # noqa: E402


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

    from stages.data import load_corpus

    texts = {}
    for split, ids in (("train", train_ids), ("test", test_ids)):
        corpus = load_corpus("20newsgroups", split, SETTINGS[setting]["categories"], SETTINGS[setting]["remove"])
        if list(corpus.doc_ids) != list(ids):
            sys.exit(f"--setting {setting}: its {split} documents are not the cache's, in the cache's order")
        texts[split] = corpus.texts
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, analyzer="char_wb", ngram_range=(2, 5))
    return vectorizer.fit_transform(texts["train"]), vectorizer.transform(texts["test"])


def grid(folder: Path, cs: list[float], dense_weights: list[float], char_weights: list[float],
         setting: str | None) -> list[dict]:
    from sklearn.svm import LinearSVC

    (train_terms, train_dense, y_train, train_ids), (test_terms, test_dense, y_test, test_ids) = (
        read(folder / "train.h5"), read(folder / "test.h5"))
    x_train, x_test = hashed_tfidf(train_terms, test_terms)
    chars = char_blocks(setting, train_ids, test_ids) if any(char_weights) else (None, None)
    shift, spread = train_dense.mean(0), train_dense.std(0) + 1e-6
    root = np.sqrt(train_dense.shape[1])
    cells = []
    for char_weight in char_weights:
        for weight in dense_weights:
            def design(terms, dense, char):
                blocks = [terms] + ([char * char_weight] if char_weight else [])
                blocks += [sp.csr_matrix((dense - shift) / spread * (weight / root))] if weight else []
                return sp.hstack(blocks, format="csr")
            train_x, test_x = design(x_train, train_dense, chars[0]), design(x_test, test_dense, chars[1])
            for c in cs:
                model = LinearSVC(C=c, max_iter=5000, random_state=0).fit(train_x, y_train)
                accuracy = float(np.mean(model.predict(test_x) == y_test))
                cells.append({"c": c, "dense_weight": weight, "char_weight": char_weight, "test_accuracy": accuracy})
                print(json.dumps({"cache": folder.name, **cells[-1]}), file=sys.stderr, flush=True)
    return cells


def table(name: str, cells: list[dict], cs: list[float]) -> list[str]:
    best = max(cells, key=lambda cell: cell["test_accuracy"])
    lines = [f"### {name}: ceiling {best['test_accuracy']:.4f} (C {best['c']:g}, dense weight "
             f"{best['dense_weight']:g}, char weight {best['char_weight']:g})", "",
             "| char weight | dense weight | " + " | ".join(f"C {c:g}" for c in cs) + " |",
             "| ---: | ---: |" + " ---: |" * len(cs)]
    for char_weight, weight in dict.fromkeys((cell["char_weight"], cell["dense_weight"]) for cell in cells):
        row = {cell["c"]: cell["test_accuracy"] for cell in cells
               if (cell["char_weight"], cell["dense_weight"]) == (char_weight, weight)}
        lines.append(f"| {char_weight:g} | {weight:g} | " + " | ".join(f"{row[c]:.4f}" for c in cs) + " |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", action="append", required=True, metavar="NAME=FOLDER",
                        help="a folder with train.h5 and test.h5, named for the table (repeatable)")
    parser.add_argument("--c", default="0.1,0.3,1,3,10")
    parser.add_argument("--dense-weights", default="0,0.05,0.1,0.2,0.4,0.8,1.6")
    parser.add_argument("--char-weights", default="0", help="weights of a char 2-5-gram block (needs --setting)")
    parser.add_argument("--setting", choices=sorted(SETTINGS), help="the caches' corpus, for --char-weights")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    cs = [float(c) for c in args.c.split(",")]
    dense_weights = [float(w) for w in args.dense_weights.split(",")]
    char_weights = [float(w) for w in args.char_weights.split(",")]
    if any(char_weights) and not args.setting:
        parser.error("--char-weights other than 0 needs --setting (the raw texts)")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = {}
    lines = ["Test accuracy of LinearSVC on [TF-IDF terms, dense weight x standardised mean window vector], "
             "fitted on all training documents, **every cell scored on the test set**: the best cell is a "
             "ceiling for this family on these caches, not a result.", ""]
    for spec in args.cache:
        name, _, folder = spec.partition("=")
        results[name] = {"folder": folder, "cells": grid(Path(folder), cs, dense_weights, char_weights,
                                                                args.setting)}
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
