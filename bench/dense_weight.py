"""The linear branch's dense weight: what validation sees against what test scores.

    .venv/bin/python bench/dense_weight.py --train CACHE/train.h5 --test CACHE/test.h5 \\
        --out docs/bench/dense-weight-20class
    .venv/bin/python bench/dense_weight.py --train FT/train.h5 --test FT/test.h5 --seeds 0 ...

A head with both inputs fits one linear SVM on [TF-IDF terms, w x the standardised mean
window vector] (`longdoc.training.linear_fit`), and validation macro-F1 chooses the scale w. For
each seed's validation split (10% of each class, drawn as `train-head` draws it) and each
w in --weights, this fits that SVM on the other 90% exactly as `train-head` does and
reports its validation macro-F1 and its test accuracy; with the first seed it also fits
again on all training documents (what `--refit-terms` ships) and scores test. And it
says which w `bracketing_search` (train-head's rule) picks from those validation scores.

On a cache whose encoder `finetune` trained on these documents, pass --seeds with the
fine-tuning run's seed only (0 by default): any other split validates on documents the
encoder was trained on (docs/benchmarks-history.md, fine-tuned encoder with terms).
Reads the two caches; writes OUT.json (every fit) and OUT.md (the table). The test set
is scored here to show what the choice costs, and chooses nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from machine import machine_name  # noqa: E402  (bench/machine.py, beside this file)

from longdoc.cache.reader import open_cache
from longdoc.heads.batches import CacheDocuments
from longdoc.options import DEFAULT_C
from longdoc.reports.metrics import scores
from longdoc.terms.tfidf import TermWeights
from longdoc.training.linear_fit import bracketing_search, design_rows, fit_linear_svm
from longdoc.training.split import validation_split


def study(train_path: str, test_path: str, seeds: list[int], weights: list[float]) -> list[dict]:
    rows = []
    with open_cache(train_path) as train_cache, open_cache(test_path) as test_cache:
        n_classes = len(train_cache.label_names)
        for seed in seeds:
            train_docs, val_docs = validation_split(
                train_cache.labels, train_cache.doc_ids(), SimpleNamespace(val_split="random", val_fraction=0.1),
                np.random.default_rng(seed))
            statistics = TermWeights.fit(train_cache.term_hashing, train_cache.term_features, train_cache.term_rows,
                                         train_docs)
            head = SimpleNamespace(config=SimpleNamespace(n_terms=statistics.n_terms), reads_windows=True)
            parts = {name: design_rows(head, CacheDocuments.from_cache(cache, docs, term_weights=statistics))
                     for name, cache, docs in (("train", train_cache, train_docs), ("val", train_cache, val_docs),
                                               ("test", test_cache, None))}
            shift, spread = parts["train"][1].mean(0), parts["train"][1].std(0) + 1e-6
            dense = {name: (part[1] - shift) / spread for name, part in parts.items()}
            for weight in weights:
                started = time.perf_counter()
                scale = weight / np.sqrt(dense["train"].shape[1])
                fit = fit_linear_svm(parts["train"][0], dense["train"] * scale, parts["train"][2], n_classes, DEFAULT_C)
                row = {"seed": seed, "weight": weight}
                for name in ("val", "test"):
                    predicted = fit.margins(parts[name][0], dense[name] * scale).argmax(1)
                    row.update({f"{name}_{key}": value for key, value in scores(parts[name][2], predicted).items()})
                if seed == seeds[0]:  # fitted again on all training documents, as --refit-terms does
                    refit = fit_linear_svm(sp.vstack([parts["train"][0], parts["val"][0]], format="csr"),
                                           np.concatenate([dense["train"], dense["val"]]) * scale,
                                           np.concatenate([parts["train"][2], parts["val"][2]]), n_classes, DEFAULT_C)
                    predicted = refit.margins(parts["test"][0], dense["test"] * scale).argmax(1)
                    row["refit_test_accuracy"] = scores(parts["test"][2], predicted)["accuracy"]
                row["seconds"] = time.perf_counter() - started
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], seeds: list[int], weights: list[float]) -> str:
    lines = ["| dense weight | " + " | ".join(f"val macro-F1 (seed {s})" for s in seeds)
             + " | test accuracy (fit on 90%, mean of seeds) | test accuracy (refit on all) |",
             "| ---: |" + " ---: |" * (len(seeds) + 2)]
    for weight in weights:
        mine = [r for r in rows if r["weight"] == weight]
        refit = [r["refit_test_accuracy"] for r in mine if "refit_test_accuracy" in r]
        lines.append(f"| {weight:g} | " + " | ".join(f"{r['val_macro_f1']:.4f}" for r in mine)
                     + f" | {np.mean([r['test_accuracy'] for r in mine]):.4f} | "
                     + (f"{refit[0]:.4f}" if refit else "-") + " |")
    picks = []
    for seed in seeds:
        val = {r["weight"]: r["val_macro_f1"] for r in rows if r["seed"] == seed}

        def score(weight):
            if weight not in val:
                raise KeyError(weight)
            return val[weight]

        try:
            best, _ = bracketing_search(score)
            picks.append(f"seed {seed}: {best:g}")
        except KeyError as missing:
            picks.append(f"seed {seed}: needs weight {missing.args[0]:g}, not in --weights")
    return "\n".join(lines) + "\n\ntrain-head's search (`bracketing_search`) on these validation scores picks: " \
        + "; ".join(picks) + ".\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--weights", default="0.025,0.05,0.1,0.2,0.4,0.8,1.6")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    weights = [float(w) for w in args.weights.split(",")]
    rows = study(args.train, args.test, seeds, weights)
    command = " ".join([".venv/bin/python bench/dense_weight.py", *sys.argv[1:]])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine_name(), "date": when,
                                                    "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(
        f"Caches {args.train} / {args.test}; validation: 10% of each class of the training cache.\n\n"
        + table(rows, seeds, weights) + f"\nMachine: {machine_name()}; `{command}`; {when}.\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
