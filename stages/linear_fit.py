"""Fit the linear branch of a head as a linear SVM: the TF-IDF + LinearSVC recipe, inside a head.

Reads, for the training documents, their TF-IDF term rows (`stages.term_weights`) and
optionally a dense vector each (the head's standardised mean window vector); returns
the weights of a one-vs-rest L2-regularised squared-hinge linear model, the objective
scikit-learn's `LinearSVC` solves (its bias is regularised too, as liblinear's is):

    sum over classes k:  0.5 * |w_k|^2 + 0.5 * b_k^2 + C * sum_i max(0, 1 - y_ik (w_k . x_i + b_k))^2

solved in the primal by L-BFGS over full batches. Why not the epoch loop: a sparse linear
model trained by AdamW moves every weight at the same pace, so terms seen in one or two
training documents memorise them as fast as telling terms learn (on a synthetic lexical
task it stayed at chance on validation), and SGD converges slowly on TF-IDF; the convex
fit reaches LinearSVC's solution in a few hundred L-BFGS steps (bench/term_branch.py).
Memory: the training documents' TF-IDF rows (and dense vectors) are held while fitting,
about 12 bytes per kept term occurrence: ~40 MB for 20 Newsgroups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

# LinearSVC's default and the reference setting (shared/datasets/README.md): C = 1.
DEFAULT_C = 1.0
# L-BFGS stops earlier once the gradient is this small; 500 steps bound the worst case.
MAX_ITERATIONS = 500
TOLERANCE = 1e-5


@dataclass
class LinearFit:
    term_weights: np.ndarray  # float32 [n_terms, n_classes]
    dense_weights: np.ndarray | None  # float32 [dense_dim, n_classes], or None without dense inputs
    bias: np.ndarray  # float32 [n_classes]
    iterations: int


def fit_linear_svm(terms: sp.csr_matrix, dense: np.ndarray | None, labels: np.ndarray, n_classes: int,
                   c: float = DEFAULT_C, max_iterations: int = MAX_ITERATIONS,
                   start: LinearFit | None = None) -> LinearFit:
    """One-vs-rest squared-hinge SVM on [terms, dense] (rows: documents). Products run in
    float32 (the features are float32 already); `start` warm-starts from an earlier fit."""
    from scipy.optimize import minimize

    x = terms.tocsr().astype(np.float32)
    if dense is not None:
        x = sp.hstack([x, sp.csr_matrix(dense.astype(np.float32))], format="csr")
    n, d = x.shape
    y = -np.ones((n, n_classes), dtype=np.float32)
    y[np.arange(n), labels] = 1.0
    xt = x.T.tocsr()

    def objective(flat: np.ndarray):
        w, b = flat[:d * n_classes].reshape(d, n_classes).astype(np.float32), flat[d * n_classes:].astype(np.float32)
        slack = np.maximum(0.0, 1.0 - y * (x @ w + b))
        loss = 0.5 * float((w * w).sum()) + 0.5 * float((b * b).sum()) + c * float((slack * slack).sum())
        g = -2.0 * c * y * slack  # d loss / d margin
        grad = np.concatenate([(w + xt @ g).ravel(), b + g.sum(0)]).astype(np.float64)
        return loss, grad

    x0 = np.zeros(d * n_classes + n_classes)
    if start is not None and start.term_weights.shape[0] + (0 if start.dense_weights is None
                                                             else start.dense_weights.shape[0]) == d:
        parts = [start.term_weights] + ([start.dense_weights] if start.dense_weights is not None else [])
        x0 = np.concatenate([np.vstack(parts).ravel(), start.bias]).astype(np.float64)
    result = minimize(objective, x0, jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iterations, "gtol": TOLERANCE})
    w, b = result.x[:d * n_classes].reshape(d, n_classes), result.x[d * n_classes:]
    n_terms = terms.shape[1]
    return LinearFit(w[:n_terms].astype(np.float32), w[n_terms:].astype(np.float32) if dense is not None else None,
                     b.astype(np.float32), int(result.nit))


# Scales of the dense block (the standardised mean window vector, whose norm is then about
# this) tried beside the unit-norm TF-IDF vector; validation macro-F1 picks one. The
# lexical signal should dominate: at 0.02 per standardised MiniLM feature (norm ~0.4), a
# joint LinearSVC scored 0.872 on 20 Newsgroups (scale picked on test: indicative only).
DENSE_WEIGHTS = (0.2, 0.4, 0.8)


def fit_linear_branch(head, train, val, c: float = DEFAULT_C, dense_weights=DENSE_WEIGHTS, log=None) -> dict:
    """Fit `head`'s linear branch on `train` (CacheDocuments with terms) and freeze it.

    With window inputs too, the dense block's scale is chosen among `dense_weights` by the
    branch's own macro-F1 on `val`. Returns what was chosen, for the training record."""
    import torch

    from stages.metrics import scores

    train_terms, train_dense, train_labels = _design(head, train)
    val_terms, val_dense, val_labels = _design(head, val)
    if train_dense is None:
        dense_weights = (None,)
    else:
        shift, spread = train_dense.mean(0), train_dense.std(0) + 1e-6
        train_dense, val_dense = (train_dense - shift) / spread, (val_dense - shift) / spread
    best, fit = None, None
    for weight in dense_weights:
        scale = None if weight is None else weight / np.sqrt(train_dense.shape[1])
        fit = fit_linear_svm(train_terms, None if weight is None else train_dense * scale, train_labels,
                             head.config.n_classes, c, start=fit)  # the last scale's solution is close
        margins = val_terms @ fit.term_weights + fit.bias
        if weight is not None:
            margins = margins + (val_dense * scale) @ fit.dense_weights
        f1 = scores(val_labels, margins.argmax(1))["macro_f1"]
        if log is not None:
            log(f"linear branch: C {c:g}, dense weight {weight}: {fit.iterations} L-BFGS steps, "
                f"validation macro-F1 {f1:.4f}")
        if best is None or f1 > best[0] + 1e-6:
            best = (f1, weight, scale, fit)
    f1, weight, scale, fit = best
    with torch.no_grad():
        head.terms.weight.copy_(torch.from_numpy(fit.term_weights))
        head.terms_bias.copy_(torch.from_numpy(fit.bias))
        if weight is not None:
            head.terms_dense.weight.copy_(torch.from_numpy(fit.dense_weights.T.copy()))
            head.dense_shift.copy_(torch.from_numpy(shift.astype(np.float32)))
            head.dense_scale.copy_(torch.from_numpy((scale / spread).astype(np.float32)))
    for name, parameter in head.named_parameters():
        if name.startswith("terms"):
            parameter.requires_grad_(False)
    return {"c": c, "dense_weight": weight, "val_macro_f1": f1, "iterations": fit.iterations}


def _design(head, documents) -> tuple[sp.csr_matrix, np.ndarray | None, np.ndarray]:
    """(TF-IDF rows, raw mean window vectors or None, labels) of `documents`, in their order."""
    terms, dense, labels = [], [], []
    for batch in documents.batches(256, 16384):
        t = batch.terms
        lengths = np.diff(np.append(t.offsets.numpy(), len(t.ids)))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        terms.append(sp.csr_matrix((t.weights.numpy(), t.ids.numpy(), indptr), shape=(len(batch), head.config.n_terms)))
        if head.reads_windows:
            mask = batch.mask.unsqueeze(-1).float()
            dense.append(((batch.x * mask).sum(1) / mask.sum(1).clamp_min(1.0)).numpy())
        labels.append(batch.labels.numpy())
    return (sp.vstack(terms, format="csr"), np.concatenate(dense).astype(np.float64) if dense else None,
            np.concatenate(labels))
