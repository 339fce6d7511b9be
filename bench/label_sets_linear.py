"""Which class weights the linear branch of label sets gets: one-vs-rest LinearSVC on Reuters-21578
R90, plain and balanced, scored on validation only (an iterative 10% of train; test is never read).

    .venv/bin/python bench/label_sets_linear.py   # about 10 s a seed

Raw-text TF-IDF (sublinear tf, min_df 2, max_df 0.5: the reference recipe), the branch's own
`fit_binary_svms`, then the decision of `fit_decision` on sigmoid margins; prints validation
micro/macro-F1 at margin 0 and the decision's 3-fold (micro + macro) / 2 inside validation.
The figures behind the default of `--class-weights` for label sets (`longdoc.configs.TrainConfig`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from longdoc.corpus.reuters import load_reuters
from longdoc.reports.metrics import multilabel_scores
from longdoc.training.linear_fit import fit_binary_svms
from longdoc.training.split import iterative_split
from longdoc.training.thresholds import fit_decision

ROOT = Path(__file__).resolve().parent.parent
PLACES = [ROOT / "data", ROOT.parent / "shared" / "datasets"]


def main(seeds=(0, 1)):
    from sklearn.feature_extraction.text import TfidfVectorizer

    _, texts, topics = load_reuters("train", PLACES)
    names = sorted({t for ts in topics for t in ts})
    truth = np.zeros((len(texts), len(names)), dtype=bool)
    for i, ts in enumerate(topics):
        truth[i, [names.index(t) for t in ts]] = True
    print(f"{len(texts)} documents, {len(names)} labels")
    for seed in seeds:
        fit_docs, val_docs = iterative_split(truth, 0.1, np.random.default_rng(seed))
        tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2, max_df=0.5)
        x_fit = tfidf.fit_transform([texts[i] for i in fit_docs])
        x_val = tfidf.transform([texts[i] for i in val_docs])
        for balanced in (False, True):
            started = time.perf_counter()
            margins = fit_binary_svms(x_fit, None, truth[fit_docs], c=1.0, balanced=balanced).margins(x_val)
            at_zero = multilabel_scores(truth[val_docs], margins >= 0)
            decision = fit_decision(1 / (1 + np.exp(-margins)), truth[val_docs], np.random.default_rng(seed))
            cv = decision.record["cross_validated"]
            best = max(cv, key=cv.get)
            print(f"seed {seed} balanced {balanced}: {time.perf_counter() - started:.1f} s; at margin 0 micro-F1 "
                  f"{at_zero['micro_f1']:.4f} macro-F1 {at_zero['macro_f1']:.4f}; decision 3-fold (micro+macro)/2: "
                  f"best {best} {cv[best]:.4f}, global/none {cv['global/none']:.4f}; "
                  f"chosen {decision.rule}/{decision.empty}")


if __name__ == "__main__":
    main(tuple(int(s) for s in sys.argv[1:]) or (0, 1))
