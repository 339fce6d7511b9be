"""Fit the linear branch of a head as a linear SVM: the TF-IDF + LinearSVC recipe, inside a head.

Reads, for the training documents, their TF-IDF term rows (`longdoc.terms.tfidf`) and
optionally a dense vector each (the head's standardised mean window vector); returns
the weights of scikit-learn's `LinearSVC` (liblinear: one-vs-rest, L2-regularised
squared hinge, the bias regularised too) fitted on [terms, dense], which the head then
applies as an `nn.EmbeddingBag` and a linear layer, exactly.

Label sets (a bool label matrix instead of class indices): one binary LinearSVC per label
over the same [terms, dense] rows (`fit_binary_svms`), the one-vs-rest of scikit-learn's
`OneVsRestClassifier(LinearSVC())`; with `balanced`, each weighs its positive and negative
documents as `class_weight="balanced"` does. Validation's choices are scored by the mean of
micro- and macro-F1 at margin 0 (the SVM's own decision); the head then turns margins into
probabilities with the sigmoid of the mixed logits and fits its thresholds on validation.

Why not the epoch loop: a sparse linear model trained by AdamW moves every weight at
the same pace, so terms seen in one or two training documents memorise them as fast as
telling terms learn (on a synthetic lexical task it stayed at chance on validation), and
SGD converges slowly on TF-IDF. Why liblinear rather than our own solver: an L-BFGS fit
of the same objective reached the same test accuracy (0.8647) but took 16x as long
(bench/term_branch.py). Memory: the training documents' TF-IDF rows (and dense vectors)
are held while fitting, about 12 bytes per kept term occurrence: ~40 MB for 20 Newsgroups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

# liblinear's stopping tolerance (LinearSVC's default) and a generous cap on its passes.
TOLERANCE = 1e-4
MAX_ITERATIONS = 5000


@dataclass
class LinearFit:
    term_weights: np.ndarray  # float32 [n_terms, n_classes]
    dense_weights: np.ndarray | None  # float32 [dense_dim, n_classes], or None without dense inputs
    bias: np.ndarray  # float32 [n_classes]
    iterations: int

    def margins(self, terms: sp.csr_matrix, dense: np.ndarray | None = None) -> np.ndarray:
        """One-vs-rest margins [documents, n_classes] of TF-IDF rows (and the scaled dense block)."""
        margins = terms @ self.term_weights + self.bias
        return margins if dense is None else margins + dense @ self.dense_weights


def _design(terms: sp.csr_matrix, dense: np.ndarray | None) -> sp.csr_matrix:
    x = terms.tocsr().astype(np.float32)
    if dense is not None:
        x = sp.hstack([x, sp.csr_matrix(dense.astype(np.float32))], format="csr")
    return x


def fit_linear_svm(terms: sp.csr_matrix, dense: np.ndarray | None, labels: np.ndarray, n_classes: int,
                   c: float, max_iterations: int = MAX_ITERATIONS, balanced: bool = False) -> LinearFit:
    """LinearSVC on [terms, dense] (rows: documents), as weights over all `n_classes`: a class
    absent from `labels` gets zero weights and a bias far below the others. `labels` a bool
    matrix [documents, n_classes]: one binary SVM per label (`fit_binary_svms`)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    if np.ndim(labels) == 2:
        return fit_binary_svms(terms, dense, labels, c, max_iterations, balanced)
    x = _design(terms, dense)
    # liblinear visits the coordinates in a random order drawn from numpy's global generator
    # unless given a seed: a fixed one makes the same head come out of the same run every time.
    model = LinearSVC(C=c, tol=TOLERANCE, max_iter=max_iterations, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # liblinear's last passes change little
        model.fit(x, labels)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # liblinear keeps one row for two classes: class 1 scores +m, class 0 -m
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    weights = np.zeros((x.shape[1], n_classes), dtype=np.float32)
    bias = np.full(n_classes, -1e3, dtype=np.float32)
    weights[:, model.classes_] = coef.T
    bias[model.classes_] = intercept
    n_terms = terms.shape[1]
    return LinearFit(weights[:n_terms], weights[n_terms:] if dense is not None else None, bias,
                     int(np.max(model.n_iter_)))


# The margin of a label no training document has (or every one has): the SVM's own margin of
# a sure negative (positive); a sigmoid of the mixed logits then gives it a low (high) probability.
CONSTANT_MARGIN = 1.0


def fit_binary_svms(terms: sp.csr_matrix, dense: np.ndarray | None, label_matrix: np.ndarray, c: float,
                    max_iterations: int = MAX_ITERATIONS, balanced: bool = False) -> LinearFit:
    """One-vs-rest for label sets: a binary LinearSVC per label (column of the bool
    `label_matrix` [documents, labels]) on [terms, dense]. A label that every training
    document has, or none, gets zero weights and a bias of +-CONSTANT_MARGIN. liblinear fits
    each label as it fits each class of a single-label problem, so the time grows with the
    number of labels; the weights are one [features, labels] float32 matrix."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    label_matrix = np.asarray(label_matrix, dtype=bool)
    x = _design(terms, dense)
    n_labels = label_matrix.shape[1]
    weights = np.zeros((x.shape[1], n_labels), dtype=np.float32)
    bias = np.full(n_labels, -CONSTANT_MARGIN, dtype=np.float32)
    iterations = 0
    for label in range(n_labels):
        y = label_matrix[:, label]
        if y.all() or not y.any():
            bias[label] = CONSTANT_MARGIN if y.all() and len(y) else -CONSTANT_MARGIN
            continue
        model = LinearSVC(C=c, tol=TOLERANCE, max_iter=max_iterations, random_state=0,
                          class_weight="balanced" if balanced else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        weights[:, label], bias[label] = model.coef_[0], model.intercept_[0]
        iterations = max(iterations, int(np.max(model.n_iter_)))
    n_terms = terms.shape[1]
    return LinearFit(weights[:n_terms], weights[n_terms:] if dense is not None else None, bias, iterations)


def validation_score(labels: np.ndarray, margins: np.ndarray) -> tuple[float, str]:
    """(score, its name) by which validation chooses for the linear branch: macro-F1 of the
    top class; label sets: the mean of micro- and macro-F1 of the labels at margin 0."""
    from longdoc.reports.metrics import multilabel_scores, scores

    if np.ndim(labels) == 2:
        found = multilabel_scores(labels, margins >= 0.0)
        return (found["micro_f1"] + found["macro_f1"]) / 2.0, "micro+macro-F1 / 2"
    return scores(labels, margins.argmax(1))["macro_f1"], "macro-F1"


# Scales of the dense block (the standardised mean window vector, whose norm is then about
# this) beside the unit-norm TF-IDF vector; validation macro-F1 picks one. The lexical
# signal should dominate: at 0.02 per standardised MiniLM feature (norm ~0.4), a joint
# LinearSVC scored 0.872 on 20 Newsgroups (scale picked on test: indicative only). The
# search starts at these three, the first (the centre) winning ties, and while the best is
# at an end of what was tried, goes on past it, halving or doubling, at most
# MAX_WIDENING more fits: the chosen scale always scored above a smaller and a larger one,
# or is the last the search could try. (A fixed grid 0.2, 0.4, 0.8 chose its smallest
# end for the fine-tuned 20-class encoder, where 0.1 scored higher on validation:
# docs/benchmarks-history.md, bench/dense_weight.py.)
DENSE_WEIGHTS = (0.2, 0.1, 0.4)
MAX_WIDENING = 3


def bracketing_search(score, start=DENSE_WEIGHTS, max_widening: int = MAX_WIDENING) -> tuple[float, dict]:
    """(best weight, {weight: score} of every one tried): `score(weight)` for each of `start`
    (the earlier wins a tie), then, while the best is the smallest or largest tried, for
    half or twice it, at most `max_widening` more times."""
    tried = {}
    for weight in start:
        tried[weight] = score(weight)
    while True:
        best = max(tried, key=tried.get)  # the first of equal scores, in the order tried
        if len(tried) - len(start) >= max_widening or min(tried) < best < max(tried):
            return best, tried
        wider = best / 2 if best == min(tried) else best * 2
        tried[wider] = score(wider)


# With more labels than this, the dense weight is searched on the SEARCH_LABELS labels with the
# most training documents, then every label is fitted once at the chosen weight. One binary SVM
# per label per weight tried makes the search cost grow with the labels: at 2,000 labels and
# 20,000 documents it is 4-7 fits of 2,000 SVMs instead of 1 (bench/many_labels.py). The weight
# is one number shared by every label, and the frequent labels are those whose validation
# scores say most about it. Reuters-21578 (90 topics) and single-label heads search on all.
SEARCH_LABELS = 256


def search_labels(label_matrix: np.ndarray, limit: int | None = None) -> np.ndarray | None:
    """The columns of the bool `label_matrix` the dense weight is searched on: None (every
    one) up to `limit` (None: SEARCH_LABELS) labels, else the `limit` with the most positive
    rows, ties to the earlier label, in label order."""
    limit = SEARCH_LABELS if limit is None else limit
    if label_matrix.shape[1] <= limit:
        return None
    counts = label_matrix.sum(0)
    return np.sort(np.argsort(-counts, kind="stable")[:limit])


@dataclass
class LinearBranch:
    """A fitted linear branch, not yet in any head: the SVM's weights, the dense block's
    standardisation (None without window inputs) and the record of what was chosen. Fitting
    never touches the head, so it can run beside the window branch's epochs (`longdoc.train_head`)."""

    fit: LinearFit
    dense_shift: np.ndarray | None  # float32 [hidden]: the training documents' mean of the mean window vector
    dense_scale: np.ndarray | None  # float32 [hidden]: the chosen dense weight / sqrt(hidden) / their spread
    record: dict

    def load_into(self, head):
        """Copy the branch into `head`: its term weights, dense weights and standardisation."""
        import torch

        with torch.no_grad():
            if self.dense_shift is not None:
                head.dense_shift.copy_(torch.from_numpy(self.dense_shift))
                head.dense_scale.copy_(torch.from_numpy(self.dense_scale))
            head.terms.weight.copy_(torch.from_numpy(self.fit.term_weights))
            head.terms_bias.copy_(torch.from_numpy(self.fit.bias))
            if self.fit.dense_weights is not None:
                head.terms_dense.weight.copy_(torch.from_numpy(self.fit.dense_weights.T.copy()))


def fit_linear_branch(head, train, val, c: float, dense_weights=DENSE_WEIGHTS,
                      max_widening: int = MAX_WIDENING, log=None, balanced: bool = False) -> LinearBranch:
    """The linear branch of `head` (read for its configuration only) fitted on `train`
    (CacheDocuments with terms). With window inputs too, the dense block's scale is searched
    from `dense_weights` (`bracketing_search`) by the branch's own macro-F1 on `val` (label
    sets: `validation_score`, on at most SEARCH_LABELS labels: `search_labels`). `balanced`:
    label sets only, each label's SVM weighted."""
    train_terms, train_dense, train_labels = design_rows(head, train)
    val_terms, val_dense, val_labels = design_rows(head, val)
    shift = spread = None
    if train_dense is not None:
        shift, spread = train_dense.mean(0), train_dense.std(0) + 1e-6
        train_dense, val_dense = (train_dense - shift) / spread, (val_dense - shift) / spread
    fits = {}
    subset = search_labels(train_labels) if np.ndim(train_labels) == 2 and train_dense is not None else None
    search_train, search_val = ((train_labels, val_labels) if subset is None
                                else (train_labels[:, subset], val_labels[:, subset]))

    # One fit after another: on 20 Newsgroups two fits side by side in threads took train-head
    # from 99 s to 77 s, but its peak from 1.08 to 1.50 GiB (each fit holds ~0.4 GB, and a
    # thread's allocations did not reuse what the main thread had freed).
    def validation_f1(weight) -> float:
        scale = None if weight is None else weight / np.sqrt(train_dense.shape[1])
        fit = fit_linear_svm(train_terms, None if weight is None else train_dense * scale, search_train,
                             head.config.n_classes, c, balanced=balanced)
        margins = fit.margins(val_terms, None if weight is None else val_dense * scale)
        f1, name = validation_score(search_val, margins)
        if log is not None:
            dense = "" if weight is None else f", dense weight {weight:g}"
            some = "" if subset is None else f" on the {len(subset):,} most frequent labels"
            log(f"linear branch: C {c:g}{dense}: {fit.iterations} liblinear passes, validation {name}{some} {f1:.4f}")
        best = max(fits.values(), key=lambda kept: kept[0], default=None)
        if best is None or f1 > best[0]:  # keep only the best fit's weights (~80 MB each on 20 classes)
            fits.clear()
            fits[weight] = (f1, scale, fit)
        return f1

    if train_dense is None:
        weight, tried = None, {None: validation_f1(None)}
    else:
        weight, tried = bracketing_search(validation_f1, dense_weights, max_widening)
    f1, scale, fit = fits[weight]
    if subset is not None:  # every label at the chosen weight, scored on all of them
        fit = fit_linear_svm(train_terms, train_dense * scale, train_labels, head.config.n_classes, c,
                             balanced=balanced)
        f1 = validation_score(val_labels, fit.margins(val_terms, val_dense * scale))[0]
        if log is not None:
            log(f"linear branch: every label at dense weight {weight:g}: {fit.iterations} liblinear passes, "
                f"validation micro+macro-F1 / 2 {f1:.4f}")
    score = {"val_macro_f1": f1} if np.ndim(val_labels) == 1 else {"val_micro_macro_f1": f1, "balanced": balanced}
    if subset is not None:
        score["search_labels"] = len(subset)
    record = {"c": c, "dense_weight": weight, **score, "iterations": fit.iterations,
              "tried": [[w, f] for w, f in sorted(tried.items(), key=lambda item: item[0] or 0.0)]}
    if weight is None:
        return LinearBranch(fit, None, None, record)
    return LinearBranch(fit, shift.astype(np.float32), (scale / spread).astype(np.float32), record)


def refit_linear_branch(head, documents: list, chosen: LinearBranch, c: float, balanced: bool = False) -> LinearBranch:
    """The linear branch fitted again on all of `documents` (CacheDocuments with terms:
    training and validation), keeping what validation chose in `chosen` (the dense block's
    shift and scale) and the TF-IDF statistics. For after validation has made its last choice."""
    designs = [design_rows(head, part) for part in documents]
    terms = sp.vstack([design[0] for design in designs], format="csr")
    labels = np.concatenate([design[2] for design in designs])  # classes, or label-matrix rows
    dense = None
    if chosen.dense_shift is not None:  # the head's own transform of the mean window vector
        dense = np.concatenate([design[1] for design in designs])
        dense = (dense - chosen.dense_shift.astype(np.float64)) * chosen.dense_scale.astype(np.float64)
    fit = fit_linear_svm(terms, dense, labels, head.config.n_classes, c, balanced=balanced)
    return LinearBranch(fit, chosen.dense_shift, chosen.dense_scale,
                        {"documents": len(labels), "iterations": fit.iterations})


def design_rows(head, documents) -> tuple[sp.csr_matrix, np.ndarray | None, np.ndarray]:
    """(TF-IDF rows, raw mean window vectors or None, labels: classes or bool label-matrix
    rows) of `documents`, in their order."""
    terms, dense, labels = [], [], []
    for batch in documents.batches(256, 16384):
        t = batch.terms
        lengths = np.diff(np.append(t.offsets.numpy(), len(t.ids)))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        terms.append(sp.csr_matrix((t.weights.numpy(), t.ids.numpy(), indptr), shape=(len(batch), head.config.n_terms)))
        if head.reads_windows:
            mask = batch.mask.unsqueeze(-1).float()
            dense.append(((batch.x * mask).sum(1) / mask.sum(1).clamp_min(1.0)).numpy())
        labels.append(batch.labels.numpy() if batch.labels.ndim == 1 else batch.labels.numpy() > 0.5)
    return (sp.vstack(terms, format="csr"), np.concatenate(dense).astype(np.float64) if dense else None,
            np.concatenate(labels))
