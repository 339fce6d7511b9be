"""The evaluation report of a multi-label head as one self-contained HTML page (`report.html`).

Reads the figures `evaluate` computed for label sets (the `metrics.json` dict, keys below)
and the documents it shows as `LabelSetView`s (`longdoc.reports.label_set_views` builds
them: labels, probabilities, thresholds, each predicted label's window and term
contributions, text); returns a string, which `evaluate` writes atomically. Shared pieces
(style, window shading, text cuts, the calibration section) are `longdoc.reports.html`'s.

Metrics read (absent optional ones are left out of the page):

    head, cache, documents, label_names                          required
    micro_f1, macro_f1, samples_f1, subset_accuracy, hamming_loss  required (`multilabel_scores`)
    per_label   [{label, precision, recall, f1, support, predicted}], head order (`per_label_scores`)
    by_length   [{windows, documents, micro_f1 | subset_accuracy | ...}]   optional
    branches    {branch name: {figure: value}, mix: [...]}                  optional
    decision    {rule, empty, ...} (`longdoc.training.thresholds.Decision.to_dict`)  optional
    calibration (`longdoc.reports.metrics.calibration`)                   optional

`label_set_html` is evaluate's one call: it picks the documents, maps their windows to text,
explains them and renders the page.

What it shows: the figures, the decision rule, the per-label table and LABEL_F1_PNG (the
`MAX_TABLE_LABELS` most frequent labels; every label is in metrics.json), the labels with
true documents that were never predicted (up to `MAX_LISTED_LABELS` named), calibration,
scores by length, and the documents: each with its label sets as chips, in four styles:
on the "true" row a label that was found (`true`) or `missed`, on the "predicted" row a
label that is right (`pred`) or `extra`; each chip's title has its probability and
threshold. Filters (a few lines of plain JavaScript, no network; the page reads fine with
scripts off): mistakes or exact sets, and a label (the `MAX_FILTER_LABELS` labels most
frequent among the shown documents), as true, predicted, missed or extra. Documents refer
to labels by index (`data-true="3 17"`), so no label string is ever parsed by the script.

Every label string is escaped (`html.escape`, quotes included), isolated from the text
around it (`<bdi>`, `dir="auto"`: a right-to-left name cannot reorder its line), and
invisible characters (zero-width, direction overrides, controls) are shown as their code
(`U+200B`), so two labels that differ only by one never look alike. Long lists are capped
(chips per row, table rows, filter options, named never-predicted labels), so the page
of a head of 10,000 labels is about as large as that of 100.
"""

from __future__ import annotations

import unicodedata

import numpy as np

from longdoc.explain.text import shown_spans
from longdoc.reports.html import (
    HEAD_CHARS,
    MAX_CHARS,
    SAMPLE_SEED,
    STYLE,
    E,
    calibration_section,
    shade,
    shaded_text,
    strip,
)
from longdoc.reports.label_set_views import MAX_EXPLAINED, LabelSetView, build_label_set_views
from longdoc.reports.metrics import LABEL_F1_PNG, by_support

# Rows of the per-label table: the most frequent labels; every label's figures are in metrics.json.
MAX_TABLE_LABELS = 300
# Never-predicted labels named on the page (the count is always given).
MAX_LISTED_LABELS = 200
# Options of the label filter: the labels most frequent among the documents shown.
MAX_FILTER_LABELS = 1000
# Chips per row of a document (a document may carry 500 labels); the rest are counted.
MAX_CHIPS = 40

LABEL_STYLE = """
.chip{display:inline-block;border-radius:9px;padding:0 .5em;margin:1px 2px;font-size:.85em;border:1px solid}
.chip.true{background:#e3f4e3;border-color:#3a3}.chip.missed{background:#fde8e8;border-color:#d33;
text-decoration:line-through}.chip.pred{background:#3a3;border-color:#3a3;color:#fff}
.chip.extra{background:#fff4e0;border-color:#e08a00;border-style:dashed}.chips{margin:.15em 0}
.chips>span.k{display:inline-block;width:5.5em;color:#666}.esc{font:.8em ui-monospace,monospace;color:#a0a}
"""

SCRIPT = """
function filterDocs(){var show=document.getElementById('show').value,l=document.getElementById('label').value,
as=document.getElementById('as').value,n=0;
document.querySelectorAll('.doc').forEach(function(d){var t=d.dataset.true.split(' '),p=d.dataset.pred.split(' '),
inT=t.indexOf(l)>=0,inP=p.indexOf(l)>=0,hit=l==''||(as=='any'?inT||inP:as=='true'?inT:as=='predicted'?inP:
as=='missed'?inT&&!inP:inP&&!inT),ok=(show=='all'||d.classList.contains(show))&&hit;
d.style.display=ok?'':'none';n+=ok;});document.getElementById('shown').textContent=n;}
"""

# Characters that would make a label look like another or reorder the text around it.
INVISIBLE = ("Cc", "Cf", "Co", "Cn", "Zl", "Zp")


def visible(name: str) -> str:
    """`name` with every invisible character written as its code point, as plain text."""
    return "".join(f"U+{ord(c):04X}" if unicodedata.category(c) in INVISIBLE else c for c in name)


def label_html(name: str) -> str:
    """A label as HTML: escaped, isolated (bdi), invisible characters shown as codes."""
    parts = [f'<span class="esc">U+{ord(c):04X}</span>' if unicodedata.category(c) in INVISIBLE else E(c)
             for c in name]
    return f"<bdi>{''.join(parts)}</bdi>"


def select_label_set_documents(truth: np.ndarray, predicted: np.ndarray, max_wrong: int, n_correct: int,
                               seed: int = SAMPLE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(shown with a mistake, shown exact) of bool [documents, labels] matrices: the first
    `max_wrong` documents whose predicted set is not the true one, in cache order, and a
    seeded sample of `n_correct` exact ones, in cache order."""
    wrong_rows = (np.asarray(truth, dtype=bool) != np.asarray(predicted, dtype=bool)).any(1)
    wrong, right = np.flatnonzero(wrong_rows)[:max_wrong], np.flatnonzero(~wrong_rows)
    pick = np.random.default_rng(seed).choice(len(right), min(n_correct, len(right)), replace=False)
    return wrong, np.sort(right[pick])


def label_set_html(checkpoint, cache, documents, probabilities: np.ndarray, truth: np.ndarray, metrics: dict,
                   texts: list[str] | None, max_wrong: int, n_correct: int, unseen: np.ndarray | None = None) -> str:
    """report.html of a multi-label head (`checkpoint`: its head, decision and term weights)
    on `cache`: `probabilities` [documents, head labels], `truth` bool [documents, head labels],
    `unseen` bool [documents, labels the head never saw] (missed chips; their names follow the
    head's in `metrics["per_label"]`); with `texts` (the corpus's, by cache document) the
    windows are mapped to text. Explains the documents it shows, then renders the page."""
    predicted = checkpoint.decision.apply(probabilities)
    if unseen is not None and unseen.shape[1]:
        truth = np.concatenate([truth, unseen], 1)
        predicted = np.concatenate([predicted, np.zeros_like(unseen, dtype=bool)], 1)
    wrong, right = select_label_set_documents(truth, predicted, max_wrong, n_correct)
    shown = np.concatenate([wrong, right]).astype(np.int64)
    doc_ids = cache.doc_ids()
    spans, shown_texts = shown_spans(cache, shown, doc_ids, texts)
    views = build_label_set_views(checkpoint.head, documents, shown, probabilities, truth, predicted,
                                  checkpoint.decision.thresholds, doc_ids, spans, shown_texts, checkpoint.terms)
    n_wrong = int((truth != predicted).any(1).sum())
    return render_label_set_report(metrics, views, n_wrong, len(truth) - n_wrong, max_wrong, n_correct)


def _chips(view: LabelSetView, names: list[str]) -> str:
    true, predicted = set(view.true.tolist()), set(view.predicted.tolist())

    def chip(label: int, kind: str) -> str:
        p, t = view.probabilities.get(label), view.thresholds.get(label)
        title = f"{visible(names[label])}: {kind}" + (f", probability {p:.3f}" if p is not None else "") + (
            f", threshold {t:.3f}" if t is not None else "")
        return f'<span class="chip {kind}" data-label="{label}" title="{E(title)}">{label_html(names[label])}</span>'

    def row(key: str, labels: list[int], kind_of) -> str:
        shown = "".join(chip(label, kind_of(label)) for label in labels[:MAX_CHIPS])
        more = f' <span class="note">+{len(labels) - MAX_CHIPS:,} more</span>' if len(labels) > MAX_CHIPS else ""
        return f'<div class="chips {key}"><span class="k">{key}</span>{shown or "<i class=note>none</i>"}{more}</div>'

    by_probability = sorted(predicted, key=lambda label: (-view.probabilities.get(label, 0.0), label))
    return (row("true", sorted(true), lambda label: "true" if label in predicted else "missed")
            + row("predicted", by_probability, lambda label: "pred" if label in true else "extra"))


def _document(view: LabelSetView, names: list[str], opened: bool, max_chars: int) -> str:
    kind = "right" if view.exact else "wrong"
    missed, extra = len(np.setdiff1d(view.true, view.predicted)), len(np.setdiff1d(view.predicted, view.true))
    windows = len(view.explained[0].contributions) if view.explained else view.windows
    head = (f'<summary><code>{E(view.doc_id)}</code> {len(view.true)} true, {len(view.predicted)} predicted: '
            f'{"exact" if view.exact else f"{missed} missed, {extra} extra"}; {windows} '
            f'window{"s" * (windows != 1)}</summary>')
    body = _chips(view, names)
    for explained in view.explained[:MAX_EXPLAINED]:
        body += (f'<div class="why" data-label="{explained.label}"><span class="note">windows for '
                 f'{label_html(names[explained.label])}:</span>{strip(explained.contributions, view.spans)}')
        if explained.terms:
            scale = max(abs(t.contribution) for t in explained.terms) or 1.0
            body += ('<p class="terms">top terms: ' + ", ".join(
                f'<code style="background:{shade(t.contribution, scale)}">{E(visible(t.term or "?"))}</code> '
                f'{t.contribution:+.3f}' for t in explained.terms[:8]) + "</p>")
        body += "</div>"
    unexplained = len(view.predicted) - len(view.explained[:MAX_EXPLAINED])
    if view.explained and unexplained > 0:
        body += f'<p class="note">{unexplained:,} less probable predicted labels not explained</p>'
    if view.text is not None and view.explained:
        first = view.explained[0]
        body += (f'<p class="note">text shaded for {label_html(names[first.label])}, the most probable predicted '
                 f'label</p><pre class="text">{shaded_text(view.text, view.spans, first.contributions, max_chars)}'
                 f'</pre>')
    elif view.text is not None:
        body += f'<pre class="text">{E(view.text[:max_chars])}</pre>'
    data_true, data_pred = " ".join(map(str, view.true.tolist())), " ".join(map(str, view.predicted.tolist()))
    return (f'<details class="doc {kind}" id="doc-{view.index}" data-true="{data_true}" data-pred="{data_pred}"'
            f'{" open" if opened else ""}>{head}{body}</details>')


def label_names(m: dict) -> list[str]:
    """Every label the page names, by index: the head's (`label_names`), then the test labels
    the head never saw, which evaluate appends to `per_label` (scored as missed)."""
    names = list(m["label_names"])
    rows = m.get("per_label") or []
    return names + [str(r.get("label")) for r in rows[len(names):]]


def _per_label(m: dict) -> str:
    names, rows = label_names(m), m.get("per_label")
    if not rows:
        return ""
    f1 = np.array([r["f1"] for r in rows], dtype=np.float64)
    support = np.array([r["support"] for r in rows], dtype=np.int64)
    order = by_support(support, f1)
    shown = order[:MAX_TABLE_LABELS]
    cut = (f"the {len(shown):,} most frequent of {len(rows):,} labels (every label is in metrics.json)"
           if len(shown) < len(rows) else f"all {len(rows):,} labels, most frequent first")
    body = "".join(
        f'<tr data-label="{i}"><td class="l">{label_html(names[i])}</td><td>{rows[i]["precision"]:.3f}</td>'
        f'<td>{rows[i]["recall"]:.3f}</td><td>{rows[i]["f1"]:.3f} <span class="bar" '
        f'style="width:{60 * rows[i]["f1"]:.0f}px"></span></td><td>{rows[i]["support"]:,}</td>'
        f'<td>{rows[i].get("predicted", 0):,}</td></tr>' for i in shown.tolist())
    never = [i for i in order.tolist() if rows[i]["support"] > 0 and rows[i].get("predicted", 0) == 0]
    listed = ", ".join(label_html(names[i]) for i in never[:MAX_LISTED_LABELS])
    more = f" and {len(never) - MAX_LISTED_LABELS:,} more" if len(never) > MAX_LISTED_LABELS else ""
    never_html = (f'<p id="never-predicted"><b>{len(never):,}</b> label{"s" * (len(never) != 1)} with true documents '
                  f'{"were" if len(never) != 1 else "was"} never predicted{": " + listed + more if never else "."}</p>')
    return (f'<h2>Per label</h2><p><img src="{LABEL_F1_PNG}" alt="F1 against support ({LABEL_F1_PNG} beside this '
            f'page)" width="720"></p>{never_html}<p class="note">Shown: {cut}.</p><table id="per-label"><tr>'
            f'<th class="l">label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th>predicted</th>'
            f'</tr>{body}</table>')


def _figure_table(title: str, table_id: str, rows: list[dict], first: str) -> str:
    """A table of dicts: `first` as the left column, every other key a figure."""
    if not rows:
        return ""
    keys = [k for k in rows[0] if k != first]
    cell = (lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else E(str(v)))
    body = "".join(f'<tr><td class="l">{E(str(r.get(first)))}</td>' + "".join(f"<td>{cell(r.get(k))}</td>"
                                                                            for k in keys) + "</tr>" for r in rows)
    head = "".join(f"<th>{E(k.replace('_', '-'))}</th>" for k in keys)
    return f'<h2>{title}</h2><table id="{table_id}"><tr><th class="l">{E(first)}</th>{head}</tr>{body}</table>'


def _decision(m: dict) -> str:
    decision, unseen = m.get("decision"), m.get("unseen_labels") or {}
    note = (f'<p id="unseen">{unseen["labels"]:,} labels of this cache were never seen in training: their '
            f'{unseen.get("missed", 0):,} true (document, label) pairs, in {unseen.get("documents", 0):,} documents, '
            f'count as missed.</p>' if unseen.get("labels") else "")
    if not decision:
        return note
    empty = ("its most probable label" if decision.get("empty") == "best" else "no label")
    return (f'<p id="decision">Decision: <b>{E(str(decision.get("rule")))}</b> thresholds, fitted on validation; '
            f'a document whose labels all stay below their thresholds gets {empty}.</p>{note}')


def render_label_set_report(m: dict, views: list[LabelSetView], wrong_total: int, exact_total: int,
                            max_wrong: int, n_correct: int, max_chars: int = MAX_CHARS) -> str:
    """The whole page."""
    names = label_names(m)
    wrong = [v for v in views if not v.exact]
    right = [v for v in views if v.exact]
    figures = [(k, f"{m[k]:.4f}") for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")
               if m.get(k) is not None]
    figures += [("documents", f'{m["documents"]:,}'), ("labels", f'{len(m["label_names"]):,}'),
                ("with_mistakes", f"{wrong_total:,}")]
    summary = "".join(f'<div class="figure"><b data-metric="{k}">{v}</b>{k.replace("_", "-")}</div>'
                      for k, v in figures)
    texts = any(v.text is not None for v in views)
    caps = (f"Shown: the first {len(wrong):,} of {wrong_total:,} documents whose predicted set is not the true one, "
            f"in cache order (at most {max_wrong:,}), and a random sample of {len(right):,} of {exact_total:,} "
            f"exact ones (at most {n_correct:,}, seed {SAMPLE_SEED}). ")
    caps += (f"Texts longer than {max_chars:,} characters keep their first {HEAD_CHARS} characters and their top "
             "windows; cuts say how much is left out." if texts else
             "Texts are not shown: run evaluate with --data (the corpus the cache was embedded from) to see them.")
    counts: dict[int, int] = {}
    for view in views:
        for label in np.union1d(view.true, view.predicted).tolist():
            counts[label] = counts.get(label, 0) + 1
    offered = sorted(counts, key=lambda label: (-counts[label], label))[:MAX_FILTER_LABELS]
    options = "".join(f'<option value="{label}" dir="auto">{E(visible(names[label]))} ({counts[label]:,})</option>'
                      for label in offered)
    offered_note = (f" (the {MAX_FILTER_LABELS:,} most frequent of the {len(counts):,} labels of these documents)"
                    if len(counts) > MAX_FILTER_LABELS else "")
    documents = "".join(_document(v, names, i == 0, max_chars) for i, v in enumerate(wrong))
    documents += "".join(_document(v, names, False, max_chars) for v in right)
    branches = m.get("branches") or {}
    branch_rows = [{"branch": name, **value} for name, value in branches.items() if isinstance(value, dict)]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{E(m['head'])} on {E(m['cache'])}</title>
<style>{STYLE}{LABEL_STYLE}</style><script>{SCRIPT}</script></head><body>
<h1>{E(m['head'])} on {E(m['cache'])}</h1>
<div class="figures" id="summary">{summary}</div>
{_decision(m)}
{_per_label(m)}
{_figure_table("Each branch alone", "branches", branch_rows, "branch")}
{calibration_section(m)}
{_figure_table("Scores by length", "by-length", m.get("by_length") or [], "windows")}
<h2>Documents</h2>
<p class="note">{caps}</p>
<p class="legend note">Labels: on the true row <span class="chip true">found</span> or
<span class="chip missed">missed</span>; on the predicted row <span class="chip pred">right</span> or
<span class="chip extra">extra</span> (hover for probability and threshold). Window shading: contribution to the
label's logit, by leaving the window out: <i style="background:{shade(1, 1)}"></i> for it,
<i style="background:{shade(-1, 1)}"></i> against it.</p>
<p>Show <select id="show" onchange="filterDocs()"><option value="all">all</option>
<option value="wrong">with mistakes</option><option value="right">exact</option></select>
label <select id="label" onchange="filterDocs()"><option value="">any</option>{options}</select>
as <select id="as" onchange="filterDocs()"><option value="any">true or predicted</option>
<option value="true">true</option><option value="predicted">predicted</option><option value="missed">missed</option>
<option value="extra">extra</option></select> <span class="note"><span id="shown">{len(views)}</span>
shown{offered_note}</span></p>
<div id="documents">{documents}</div>
</body></html>
"""
