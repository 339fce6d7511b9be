"""Evaluation: a trained head on a cache -> accuracy, macro-F1 and a report folder.

    python cli.py evaluate --head runs/head.pt --cache data/cache/test.h5 --report runs/report
    python cli.py evaluate ... --report runs/report --data 20newsgroups --split test   # with texts
    run(EvaluateConfig(head="runs/head.pt", cache="data/cache/test.h5"))           # from Python: an Evaluation

The cache must come from the head's encoder and window settings (refused otherwise,
naming what differs); its classes are matched to the head's by name. The report:

    metrics.json           accuracy, macro-F1, per-class and per-length figures, confusion matrix,
                           calibration (each document's top probability against whether its top
                           class is right); for a head of both inputs, each branch alone and its weight
    report.md              the per-class precision / recall / F1 table, the branches, accuracy by length
    confusion_matrix.png   rows: true class, columns: predicted, with class names (up to
                           MAX_PLOTTED_CLASSES; beyond, only the numbers in metrics.json)
    reliability.png        how often the top class is right against its probability (ECE)
    report.html            one self-contained page (`longdoc.reports.html`): the figures above, and
                           the misclassified documents (plus a sample of correct ones) with their
                           windows shaded by contribution (`longdoc.explain.contributions`)

The page shows the documents' text only when given the corpus the cache was embedded
from (`corpus`: the `--data` options of `embed`), which is checked against the cache's
`data_fingerprint` and read through `longdoc.explain.text`; the encoder is never run here.

A multi-label head (label sets) is scored on a multi-label cache only (a cache of the other
task is refused in one line), by its recorded decision; its report is
`longdoc.reports.label_sets`': metrics.json (micro-, macro-, samples-F1, subset accuracy,
Hamming loss, per-label figures, the labels never predicted, by length, calibration of every
(document, label) probability, each branch alone), report.md, label_f1.png (F1 against
support per label, in place of the confusion matrix), reliability.png and report.html
(`longdoc.reports.label_sets_html`: label sets as chips, filters by label). Test labels the head never saw are scored as missed, and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from longdoc.cache.reader import open_cache
from longdoc.configs import EvaluateConfig
from longdoc.explain.text import load_cache_corpus, shown_spans
from longdoc.heads.batches import (
    LOADING_HINT,
    CacheDocuments,
    head_branch_logits,
    predict_logits,
)
from longdoc.heads.checkpoint import check_compatible, label_matrix_by_name, labels_by_name, load_checkpoint
from longdoc.reports.html import (
    build_views,
    render_report,
    select_documents,
)
from longdoc.reports.label_sets import label_set_metrics, markdown_label_sets
from longdoc.reports.label_sets_html import label_set_html
from longdoc.reports.metrics import (
    MAX_PLOTTED_CLASSES,
    calibration,
    plot_label_f1,
    plot_reliability,
    save_figure,
    scores,
)
from longdoc.runtime.errors import UserError
from longdoc.runtime.process import memory_step
from longdoc.runtime.workdir import atomic_write_bytes, check_not_an_input

# Document length buckets, in windows: one window, a few, many, very many.
LENGTH_BUCKETS = (("1", 1, 1), ("2-4", 2, 4), ("5-16", 5, 16), (">16", 17, None))
# A class name on the picture's axes keeps this many characters (then "..."): a long one
# would push the matrix off the canvas (100,000 characters took 20 s to lay out).
PLOT_NAME_CHARS = 40
# Characters that mean something in Markdown (and GitHub's $math$), escaped in class names.
MARKDOWN_SPECIAL = set("\\`*_[]<>|&~$")


@dataclass
class Evaluation:
    metrics: dict
    report_dir: Path | None

    def line(self) -> str:
        m = self.metrics
        where = f" -> {self.report_dir}" if self.report_dir else ""
        if m.get("task") == "multi_label":
            alone = "".join(f"; {name.split()[0]} alone micro-F1 {value['micro_f1']:.4f}"
                            for name, value in m.get("branches", {}).items() if name != "mix")
            unseen = m["unseen_labels"]
            missed = f"; {unseen['labels']} labels unseen in training, scored as missed" if unseen["labels"] else ""
            return (f"micro-F1 {m['micro_f1']:.4f}  macro-F1 {m['macro_f1']:.4f}  samples-F1 {m['samples_f1']:.4f}  "
                    f"subset accuracy {m['subset_accuracy']:.4f}  on {m['documents']:,} documents of "
                    f"{m['cache']}{missed}{alone}{where}")
        alone = "".join(f"; {name.split()[0]} alone {value['accuracy']:.4f}"
                        for name, value in m.get("branches", {}).items() if name != "mix")
        return (f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
                f"on {m['documents']:,} documents of {m['cache']}{alone}{where}")


def run(config: EvaluateConfig) -> Evaluation:
    """Score `config.head` on `config.cache`; with `config.report`, write the report there
    (with `config.data`, report.html shows the texts). The settings are checked by
    `EvaluateConfig`."""
    head_path, cache_path, report_dir, corpus = config.head, config.cache, config.report, config.corpus()
    memory_budget_mb, max_wrong, n_correct = config.memory_budget_mb, config.report_wrong, config.report_correct
    if config.threads:
        torch.set_num_threads(config.threads)
    if corpus is not None and report_dir is None:
        raise UserError("--data is read only for the HTML report: give --report too")
    for name in REPORT_FILES if report_dir else ():
        check_not_an_input(Path(report_dir) / name, {"--head": head_path, "--cache": cache_path}, what="--report")
    checkpoint = load_checkpoint(head_path)
    with open_cache(cache_path) as cache:
        check_compatible(checkpoint, cache)  # the task first: a head of classes on label sets is refused
        if checkpoint.head.multi_label:
            return _run_label_sets(checkpoint, cache, config)
        labels = labels_by_name(checkpoint, cache)
        texts = load_cache_corpus(cache, **corpus).texts if corpus is not None else None
        documents = CacheDocuments.from_cache(cache, labels=labels, memory_budget_mb=memory_budget_mb,
                                              term_weights=checkpoint.terms)
        with memory_step(f"scoring {cache_path}", LOADING_HINT):  # batches are fixed; the loaded cache is not
            branches = predict_logits(checkpoint.head, documents, head_branch_logits)
        logits = checkpoint.head.combine(torch.from_numpy(branches)).numpy()
        windows = cache.window_counts
        metrics = _metrics(head_path, cache_path, labels, logits.argmax(1), windows, checkpoint.label_names)
        top = checkpoint.head.probabilities(torch.from_numpy(logits)).numpy().max(1)
        metrics["calibration"] = calibration(top, logits.argmax(1) == labels)
        if checkpoint.head.stacked:
            metrics["branches"] = branch_scores(checkpoint.head, branches, labels)
        report = Path(report_dir) if report_dir else None
        if report is not None:
            write_report(report, metrics)
            with memory_step("explaining the documents of report.html", "lower --report-wrong and --report-correct"):
                html = html_report(checkpoint, cache, documents, logits, labels, metrics, texts, max_wrong, n_correct)
            _write_text(report / "report.html", html)
    return Evaluation(metrics, report)


# Every file a report may write: none of them may be an input.
REPORT_FILES = ("metrics.json", "report.md", "confusion_matrix.png", "report.html", "reliability.png", "label_f1.png")


def _run_label_sets(checkpoint, cache, config: EvaluateConfig) -> Evaluation:
    """A multi-label head on a multi-label cache: scored by the head's decision, the report
    of `longdoc.reports.label_sets`."""
    truth, unseen, unseen_names = label_matrix_by_name(checkpoint, cache)
    documents = CacheDocuments.from_cache(cache, labels=truth, memory_budget_mb=config.memory_budget_mb,
                                          term_weights=checkpoint.terms)
    head = checkpoint.head
    with memory_step(f"scoring {config.cache}", LOADING_HINT):
        branches = torch.from_numpy(predict_logits(head, documents, head_branch_logits))
    probabilities = head.probabilities(head.combine(branches)).numpy()
    alone = None
    if head.stacked:
        alone = {"mix": head.mix.tolist(),
                 **{name: head.probabilities(branches[:, i]).numpy() for i, name in enumerate(branch_names(head))}}
    metrics = {"head": str(config.head), "cache": str(config.cache),
               **label_set_metrics(truth, unseen, unseen_names, probabilities, checkpoint.decision,
                                   cache.window_counts, checkpoint.label_names, alone)}
    report = Path(config.report) if config.report else None
    if report is not None:
        _make_folder(report)
        _write_text(report / "metrics.json", json.dumps(metrics, indent=1))
        _write_text(report / "report.md", markdown_label_sets(metrics, markdown_text))
        per_label = metrics["per_label"]
        plot_label_f1([c["label"] for c in per_label], [c["f1"] for c in per_label], [c["support"] for c in per_label],
                      report / "label_f1.png", f"{Path(config.head).name} on {Path(config.cache).name}")
        plot_reliability(metrics["calibration"], report / "reliability.png", "every (document, label) probability")
        (report / "confusion_matrix.png").unlink(missing_ok=True)  # an earlier single-label report's would mislead
        corpus = config.corpus()
        texts = load_cache_corpus(cache, **corpus).texts if corpus is not None else None
        with memory_step("explaining the documents of report.html", "lower --report-wrong and --report-correct"):
            html = label_set_html(checkpoint, cache, documents, probabilities, truth, metrics, texts,
                                  config.report_wrong, config.report_correct, unseen)
        _write_text(report / "report.html", html)
    return Evaluation(metrics, report)


def branch_names(head) -> tuple[str, str]:
    """How a report names a fused head's two branches, windows first."""
    return (f"windows ({head.config.pooling} pooling)", "linear (terms and the mean window vector)")


def html_report(checkpoint, cache, documents: CacheDocuments, logits: np.ndarray, labels: np.ndarray,
                metrics: dict, texts: list[str] | None, max_wrong: int, n_correct: int) -> str:
    """report.html: explain the documents it shows, map their windows to text when there is text."""
    y_pred = logits.argmax(1)
    wrong, right = select_documents(labels, y_pred, max_wrong, n_correct)
    shown = np.concatenate([wrong, right]).astype(np.int64)
    doc_ids = cache.doc_ids()
    spans, shown_texts = shown_spans(cache, shown, doc_ids, texts)
    views = build_views(checkpoint.head, documents, shown, logits, labels, checkpoint.label_names, doc_ids,
                        spans, shown_texts, checkpoint.terms)
    n_wrong = int((labels != y_pred).sum())
    return render_report(metrics, views, n_wrong, len(labels) - n_wrong, max_wrong, n_correct)


def _metrics(head_path, cache_path, labels: np.ndarray, y_pred: np.ndarray, windows: np.ndarray,
             names: list[str]) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    metrics = {"head": str(head_path), "cache": str(cache_path), "documents": int(len(labels)),
               **scores(labels, y_pred)}
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, y_pred, labels=np.arange(len(names)), zero_division=0)
    metrics["per_class"] = [
        {"class": n, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for n, p, r, f, s in zip(names, precision, recall, f1, support)]
    metrics["by_length"] = []
    for name, lo, hi in LENGTH_BUCKETS:
        pick = (windows >= lo) & (windows <= (hi if hi is not None else windows.max()))
        metrics["by_length"].append({"windows": name, "documents": int(pick.sum()),
                                     "accuracy": float(np.mean(labels[pick] == y_pred[pick])) if pick.any() else None})
    metrics["label_names"] = names
    metrics["confusion_matrix"] = confusion_matrix(labels, y_pred, labels=np.arange(len(names))).tolist()
    return metrics


def branch_scores(head, branches: np.ndarray, labels: np.ndarray) -> dict:
    """Each branch of a fused head scored alone, and the weights that combine them: where
    the head's answers come from (on 20 Newsgroups almost all from the linear branch)."""
    names = branch_names(head)
    return {"mix": head.mix.tolist(),
            **{name: scores(labels, branches[:, i].argmax(1)) for i, name in enumerate(names)}}


def _make_folder(folder: Path):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--report {folder}: cannot create it ({error.strerror})") from None


def write_report(folder: Path, metrics: dict):
    _make_folder(folder)
    _write_text(folder / "metrics.json", json.dumps(metrics, indent=1))
    if "calibration" in metrics:
        plot_reliability(metrics["calibration"], folder / "reliability.png", "each document's top class")
    n_classes = len(metrics["label_names"])
    skipped = (f"\nConfusion matrix: {n_classes} classes, too many to draw (more than {MAX_PLOTTED_CLASSES}); "
               f"its numbers are in metrics.json.\n") if n_classes > MAX_PLOTTED_CLASSES else ""
    _write_text(folder / "report.md", markdown_report(metrics) + skipped)
    if skipped:
        (folder / "confusion_matrix.png").unlink(missing_ok=True)  # an earlier report's picture would mislead
    else:
        plot_confusion(np.asarray(metrics["confusion_matrix"]), metrics["label_names"],
                       folder / "confusion_matrix.png")


def markdown_report(m: dict) -> str:
    lines = [f"# {m['head']} on {m['cache']}", "",
             f"accuracy **{m['accuracy']:.4f}**, macro-F1 **{m['macro_f1']:.4f}**, {m['documents']:,} documents", "",
             *([f"Calibration: expected calibration error {m['calibration']['ece']:.4f} of each document's top "
                f"probability; {m['calibration']['wrong_above_0.99']:,} wrong answers had a probability above 0.99 "
                f"(reliability.png).", ""] if "calibration" in m else []),
             "| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {markdown_text(c['class'])} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} "
              f"| {c['support']} |" for c in m["per_class"]]
    if "branches" in m:
        alone = [(name, value) for name, value in m["branches"].items() if name != "mix"]
        lines += ["", "| branch alone | accuracy | macro-F1 | weight in the head |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name} | {value['accuracy']:.4f} | {value['macro_f1']:.4f} | {weight:.3f} |"
                  for (name, value), weight in zip(alone, m["branches"]["mix"])]
    lines += ["", "| windows per document | documents | accuracy |", "| --- | ---: | ---: |"]
    lines += [f"| {b['windows']} | {b['documents']} | {_fmt(b['accuracy'])} |" for b in m["by_length"]]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown_text(text: str) -> str:
    """`text` as literal Markdown: a `|` would end a table cell, `<script>` be HTML, `$x$` math."""
    return "".join(f"\\{c}" if c in MARKDOWN_SPECIAL else c for c in text)


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Names are text, never math or TeX: "$x^$" made mathtext raise and the report fail.
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        _draw_confusion(plt, matrix, [_plot_name(n) for n in names], path)


def _plot_name(name: str) -> str:
    return name if len(name) <= PLOT_NAME_CHARS else name[:PLOT_NAME_CHARS - 3] + "..."


def _draw_confusion(plt, matrix: np.ndarray, names: list[str], path: Path):
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 25:
        limit = matrix.max() / 2 if matrix.size else 0
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=6,
                        color="white" if value > limit else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _write_text(path: Path, text: str):
    atomic_write_bytes(path, text.encode())
