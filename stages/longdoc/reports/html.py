"""The evaluation report as one self-contained HTML page (`report.html`).

Reads the figures `evaluate` computed (the `metrics.json` dict), and for the documents
it shows: their windows' contributions (`longdoc.explain.contributions`) and, when the corpus is
given, their text with each window's character span (`longdoc.explain.text`). Returns a
string; `evaluate` writes it atomically. Inline CSS and a few lines of plain
JavaScript (filters only); no external resource, so the file opens anywhere offline
and reads fine with scripts off.

What it shows: the summary figures, the per-class table, the confusion matrix (up to
`MAX_PLOTTED_CLASSES` classes, like the PNG: it grows with the square of the count; past
that the page says so and the numbers stay in metrics.json), accuracy by length, calibration
(when evaluate measured it: ECE, the reliability table, and `reliability.png` beside the page), and
documents: the misclassified ones, in cache order, up to `max_wrong`, and a seeded
random sample of `n_correct` correctly classified ones.
Each has its true, predicted and top competing class, a strip of its windows
coloured by contribution to the predicted class (orange: for it, blue: against it),
its text with the same shading, and, for heads with a term branch, its top terms. Texts longer than `max_chars` keep their first
`HEAD_CHARS` characters and their top windows; cuts are marked with the number of
characters left out. The page states these caps. 20 Newsgroups' test set with the
defaults gives a page of a few MB.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from longdoc.explain.contributions import explain_documents
from longdoc.explain.text import name_terms
from longdoc.reports.metrics import MAX_PLOTTED_CLASSES, RELIABILITY_PNG

MAX_CHARS = 4000  # characters of text per document: ~1 page; long posts keep their top windows
HEAD_CHARS = 400  # the start of a long text (subject, first lines) is always kept
SAMPLE_SEED = 0


@dataclass
class DocView:
    index: int  # document index in the cache
    doc_id: str
    true: str
    predicted: str
    probability: float
    runner_up: str  # the most probable class other than the predicted one
    runner_up_probability: float
    contributions: np.ndarray  # [n_windows], to the predicted class
    spans: np.ndarray | None = None  # [n_windows, 2] character spans; None without text
    text: str | None = None
    terms: list | None = None  # top TermContributions, named (heads with a term branch, with text)

    @property
    def correct(self) -> bool:
        return self.true == self.predicted


def select_documents(labels: np.ndarray, predicted: np.ndarray, max_wrong: int,
                     n_correct: int, seed: int = SAMPLE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(misclassified shown, correct shown): the first `max_wrong` misclassified in cache
    order, and a seeded sample of `n_correct` correct ones, in cache order."""
    wrong = np.flatnonzero(labels != predicted)[:max_wrong]
    right = np.flatnonzero(labels == predicted)
    pick = np.random.default_rng(seed).choice(len(right), min(n_correct, len(right)), replace=False)
    return wrong, np.sort(right[pick])


def build_views(head, documents, docs: np.ndarray, logits: np.ndarray, labels: np.ndarray, names: list[str],
                doc_ids: list[str], spans: list[np.ndarray] | None = None,
                texts: list[str] | None = None, term_weights=None) -> list[DocView]:
    """DocViews of documents `docs` (cache indices); `spans`/`texts` are per entry of `docs`.
    With texts and the head's `term_weights`, the top terms are named and shown too."""
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    views = []
    explanations = explain_documents(head, documents, docs=docs)
    named = texts is not None and term_weights is not None
    if named:
        name_terms(explanations, term_weights, texts)
    for n, explanation in enumerate(explanations):
        d = explanation.doc
        order = np.argsort(-probabilities[d], kind="stable")
        runner = int(order[1]) if len(order) > 1 else int(order[0])
        views.append(DocView(d, doc_ids[d], names[labels[d]], names[explanation.target],
                             float(probabilities[d, explanation.target]), names[runner],
                             float(probabilities[d, runner]), explanation.windows,
                             None if spans is None else spans[n], None if texts is None else texts[n],
                             explanation.terms if named else None))
    return views


# --- rendering -------------------------------------------------------------------------

E = html.escape

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
.figures{display:flex;gap:1em;flex-wrap:wrap}.figure{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.figure b{display:block;font-size:1.6em}table{border-collapse:collapse;font-size:.9em}
td,th{padding:2px 6px;border:1px solid #e4e4e4;text-align:right}th{background:#f6f6f6}td.l,th.l{text-align:left}
.bar{display:inline-block;height:.7em;background:#4a7fd0;vertical-align:middle}
.cm td{min-width:1.8em}.note{color:#666}.doc{border:1px solid #ddd;border-radius:6px;margin:.5em 0;padding:.3em .8em}
.doc.wrong{border-left:4px solid #d33}.doc.right{border-left:4px solid #3a3}summary{cursor:pointer}
.strip{display:flex;height:12px;margin:.4em 0;border:1px solid #ccc}.strip i{flex:1;min-width:1px}
pre.text{white-space:pre-wrap;word-wrap:break-word;font:12px/1.4 ui-monospace,monospace;background:#fcfcfc;
padding:.5em;max-height:32em;overflow:auto}mark.w{color:inherit;padding:0}.gap{color:#888;font-style:italic}
.legend i{display:inline-block;width:1em;height:1em;vertical-align:middle}
"""

SCRIPT = """
function filterDocs(){var show=document.getElementById('show').value,c=document.getElementById('cls').value;
document.querySelectorAll('.doc').forEach(function(d){var ok=(show=='all'||d.classList.contains(show))&&
(c==''||d.dataset.true==c||d.dataset.pred==c);d.style.display=ok?'':'none';});}
"""


def shade(contribution: float, scale: float) -> str:
    """Background colour of a window: orange for the predicted class, blue against it."""
    alpha = 0.06 + 0.6 * min(abs(contribution) / scale, 1.0) if scale > 0 else 0.06
    rgb = "235,130,0" if contribution >= 0 else "40,110,230"
    return f"rgba({rgb},{alpha:.2f})"


def kept_ranges(text_length: int, spans: np.ndarray, ranked: np.ndarray, max_chars: int) -> list[tuple[int, int]]:
    """Character ranges of a text to show: all of it when short, else its start and its
    top windows (by contribution) until `max_chars`, merged and in order."""
    if text_length <= max_chars:
        return [(0, text_length)]
    ranges, budget = [(0, min(HEAD_CHARS, text_length))], max_chars - min(HEAD_CHARS, text_length)
    for i in ranked.tolist():
        if budget <= 0:
            break
        a, b = int(spans[i, 0]), int(spans[i, 1])
        b = min(b, a + budget)
        ranges.append((a, b))
        budget -= b - a
    ranges.sort()
    merged = [ranges[0]]
    for a, b in ranges[1:]:
        if a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def shaded_text(text: str, spans: np.ndarray, contributions: np.ndarray, max_chars: int = MAX_CHARS) -> str:
    """The text as HTML, each stretch shaded by the covering window of largest |contribution|."""
    scale = float(np.abs(contributions).max()) if len(contributions) else 0.0
    ranked = np.argsort(-contributions, kind="stable")
    parts, shown_to = [], 0
    for a, b in kept_ranges(len(text), spans, ranked, max_chars):
        if a > shown_to:
            parts.append(f'<span class="gap">[… {a - shown_to:,} characters …]</span>')
        cuts = sorted({a, b, *[int(x) for x in spans.ravel() if a < x < b]})
        for s, e in zip(cuts, cuts[1:]):
            covering = np.flatnonzero((spans[:, 0] <= s) & (spans[:, 1] >= e))
            piece = E(text[s:e])
            if len(covering) == 0:
                parts.append(piece)
                continue
            w = int(covering[np.argmax(np.abs(contributions[covering]))])
            c = float(contributions[w])
            parts.append(f'<mark class="w" data-w="{w}" style="background:{shade(c, scale)}" '
                         f'title="window {w}: {c:+.3f}">{piece}</mark>')
        shown_to = b
    if shown_to < len(text):
        parts.append(f'<span class="gap">[… {len(text) - shown_to:,} characters …]</span>')
    return "".join(parts)


def strip(contributions: np.ndarray, spans: np.ndarray | None) -> str:
    """A row of cells, one per window in document order, shaded by its contribution."""
    scale = float(np.abs(contributions).max()) if len(contributions) else 0.0
    cells = []
    for w, value in enumerate(contributions.tolist()):
        where = f" [{spans[w, 0]}:{spans[w, 1]}]" if spans is not None else ""
        cells.append(f'<i style="background:{shade(value, scale)}" title="window {w}{where}: {value:+.3f}"></i>')
    return f'<div class="strip">{"".join(cells)}</div>'


def _strip(view: DocView) -> str:
    return strip(view.contributions, view.spans)


def _document(view: DocView, opened: bool, max_chars: int) -> str:
    kind = "right" if view.correct else "wrong"
    top = int(np.argmax(view.contributions))
    head = (f'<summary><code>{E(view.doc_id)}</code> true <b>{E(view.true)}</b> → predicted '
            f'<b class="pred">{E(view.predicted)}</b> ({view.probability:.3f}); competing: '
            f'{E(view.runner_up)} ({view.runner_up_probability:.3f}); {len(view.contributions)} '
            f'window{"s" * (len(view.contributions) != 1)}, top window {top} ({view.contributions[top]:+.3f})'
            f'</summary>')
    body = _strip(view)
    if view.terms:
        scale = max(abs(t.contribution) for t in view.terms) or 1.0
        body += ('<p class="terms">top terms for the predicted class: ' + ", ".join(
            f'<code style="background:{shade(t.contribution, scale)}">{E(t.term or "?")}</code> '
            f'{t.contribution:+.3f}' for t in view.terms[:8]) + "</p>")
    if view.text is not None:
        body += f'<pre class="text">{shaded_text(view.text, view.spans, view.contributions, max_chars)}</pre>'
    return (f'<details class="doc {kind}" id="doc-{view.index}" data-true="{E(view.true)}" '
            f'data-pred="{E(view.predicted)}"{" open" if opened else ""}>{head}{body}</details>')


def _tables(m: dict) -> str:
    names = m["label_names"]
    rows = "".join(
        f'<tr><td class="l">{E(c["class"])}</td><td>{c["precision"]:.3f}</td><td>{c["recall"]:.3f}</td>'
        f'<td>{c["f1"]:.3f} <span class="bar" style="width:{60 * c["f1"]:.0f}px"></span></td>'
        f'<td>{c["support"]}</td></tr>' for c in m["per_class"])
    out = ['<h2>Per class</h2><table id="per-class"><tr><th class="l">class</th><th>precision</th>'
           f'<th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>']
    out.append(_confusion(m["confusion_matrix"], names))
    rows = "".join(
        f'<tr><td class="l">{E(b["windows"])}</td><td>{b["documents"]}</td><td>'
        + ("-" if b["accuracy"] is None else
           f'{b["accuracy"]:.4f} <span class="bar" style="width:{100 * b["accuracy"]:.0f}px"></span>')
        + "</td></tr>" for b in m["by_length"])
    out.append('<h2>Accuracy by length</h2><table id="by-length"><tr><th class="l">windows per document</th>'
               f'<th>documents</th><th>accuracy</th></tr>{rows}</table>')
    return "".join(out)


def _confusion(rows: list[list[int]], names: list[str]) -> str:
    """The confusion matrix as a shaded table, or past MAX_PLOTTED_CLASSES a line saying why not."""
    if len(names) > MAX_PLOTTED_CLASSES:
        return (f'<h2>Confusion matrix</h2><p class="note" id="confusion-skipped">{len(names):,} classes, too many '
                f'to draw (more than {MAX_PLOTTED_CLASSES}): the table would grow with the square of the count. '
                f'Its numbers are in metrics.json.</p>')
    matrix = np.asarray(rows)
    totals = np.maximum(matrix.sum(1, keepdims=True), 1)
    head = "".join(f'<th title="{E(n)}">{j}</th>' for j, n in enumerate(names))
    body = "".join(
        f'<tr><th class="l">{i} {E(n)}</th>' + "".join(
            f'<td style="background:rgba(74,127,208,{matrix[i, j] / totals[i, 0]:.2f})" '
            f'title="true {E(n)}, predicted {E(names[j])}">{matrix[i, j] or ""}</td>'
            for j in range(len(names))) + "</tr>" for i, n in enumerate(names))
    return (f'<h2>Confusion matrix</h2><p class="note">rows: true class, columns: predicted (numbered as '
            f'the rows); shade: share of the row</p><table class="cm" id="confusion">'
            f'<tr><th></th>{head}</tr>{body}</table>')


def calibration_section(m: dict) -> str:
    """How far the probabilities can be trusted, when evaluate measured it (`calibration` in
    the metrics, `longdoc.reports.metrics.calibration`): ECE, the confident mistakes, the bins,
    and the reliability diagram evaluate writes beside the page (RELIABILITY_PNG)."""
    record = m.get("calibration")
    if not record:
        return ""
    what = ("every (document, label) probability against whether the label is true" if m.get("task") == "multi_label"
            else "each document's top probability against whether its top class is right")
    rows = "".join(f'<tr><td class="l">{b["low"]:.2f}-{b["high"]:.2f}</td><td>{b["count"]:,}</td>'
                   f'<td>{b["confidence"]:.3f}</td><td>{b["accuracy"]:.3f}</td></tr>'
                   for b in record.get("bins", []) if b.get("count"))
    return (f'<h2>Calibration</h2><div class="figures" id="calibration">'
            f'<div class="figure"><b data-metric="ece">{record["ece"]:.4f}</b>expected calibration error</div>'
            f'<div class="figure"><b data-metric="wrong_above_0.99">{record.get("wrong_above_0.99", 0):,}</b>'
            f'wrong with probability above 0.99</div>'
            f'<div class="figure"><b>{record.get("predictions", 0):,}</b>probabilities</div></div>'
            f'<p class="note">{what}, in {len(record.get("bins", []))} equal-width bins.</p>'
            f'<p><img src="{RELIABILITY_PNG}" alt="reliability diagram ({RELIABILITY_PNG} beside this page)" '
            f'width="360"></p><table id="reliability"><tr><th class="l">probability</th><th>count</th>'
            f'<th>mean probability</th><th>how often right</th></tr>{rows}</table>')


def render_report(m: dict, views: list[DocView], misclassified_total: int, correct_total: int,
                  max_wrong: int, n_correct: int, max_chars: int = MAX_CHARS) -> str:
    """The whole page."""
    wrong = [v for v in views if not v.correct]
    right = [v for v in views if v.correct]
    figures = [("accuracy", f'{m["accuracy"]:.4f}'), ("macro_f1", f'{m["macro_f1"]:.4f}'),
               ("documents", f'{m["documents"]:,}'), ("misclassified", f"{misclassified_total:,}")]
    summary = "".join(f'<div class="figure"><b data-metric="{k}">{v}</b>{k.replace("_", "-")}</div>'
                      for k, v in figures)
    texts = any(v.text is not None for v in views)
    caps = (f"Shown: the first {len(wrong):,} of {misclassified_total:,} misclassified documents in cache order "
            f"(at most {max_wrong:,}) and a random sample of {len(right):,} of {correct_total:,} correct ones "
            f"(at most {n_correct:,}, seed {SAMPLE_SEED}). ")
    caps += (f"Texts longer than {max_chars:,} characters keep their first {HEAD_CHARS} characters and their top "
             "windows; cuts say how much is left out." if texts else
             "Texts are not shown: run evaluate with --data (the corpus the cache was embedded from) to see them.")
    options = "".join(f'<option value="{E(n)}">{E(n)}</option>' for n in m["label_names"])
    documents = "".join(_document(v, i == 0, max_chars) for i, v in enumerate(wrong))
    documents += "".join(_document(v, False, max_chars) for v in right)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{E(m['head'])} on {E(m['cache'])}</title>
<style>{STYLE}</style><script>{SCRIPT}</script></head><body>
<h1>{E(m['head'])} on {E(m['cache'])}</h1>
<div class="figures" id="summary">{summary}</div>
{_tables(m)}
{calibration_section(m)}
<h2>Documents</h2>
<p class="note">{caps}</p>
<p class="legend note">Window shading: contribution to the predicted class, by leaving the window out
(logit with it minus logit without it): <i style="background:{shade(1, 1)}"></i> for it,
<i style="background:{shade(-1, 1)}"></i> against it. A one-window document's contribution is its logit margin.</p>
<p>Show <select id="show" onchange="filterDocs()"><option value="all">all</option>
<option value="wrong">misclassified</option><option value="right">correct</option></select>
class (true or predicted) <select id="cls" onchange="filterDocs()"><option value="">any</option>{options}</select></p>
<div id="documents">{documents}</div>
</body></html>
"""
