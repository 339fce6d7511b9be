"""report.html of a multi-label head: label-set chips, filters by label, the per-label table,
hostile label names escaped, bounded size at 10,000 labels; filters in a real browser."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest

from longdoc.reports.html import render_report
from longdoc.reports.label_set_views import LabelExplained, LabelSetView
from longdoc.reports.label_sets_html import (
    MAX_CHIPS,
    MAX_FILTER_LABELS,
    MAX_LISTED_LABELS,
    MAX_TABLE_LABELS,
    render_label_set_report,
    select_label_set_documents,
)
from longdoc.reports.metrics import RELIABILITY_PNG, calibration

HOSTILE = ['say "hi" & \'bye\'', "<script>alert(1)</script>", "שלום", "zero\u200bwidth", "\u202eevil", "grain"]


def label_set_metrics(names: list[str], support=None, predicted=None) -> dict:
    n = len(names)
    support = np.arange(n)[::-1] if support is None else support
    predicted = support if predicted is None else predicted
    return {"head": "<b>head</b>.pt", "cache": "test.h5", "task": "multi_label", "documents": 10, "label_names": names,
            "micro_f1": 0.9, "macro_f1": 0.6, "samples_f1": 0.85, "subset_accuracy": 0.7, "hamming_loss": 0.01,
            "per_label": [{"label": name, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": int(s),
                           "predicted": int(p)} for name, s, p in zip(names, support, predicted)],
            "by_length": [{"windows": "1", "documents": 10, "micro_f1": 0.9}],
            "decision": {"rule": "fallback", "empty": "best"}}


def view(index: int, true, predicted, windows: int = 3, text: str | None = None) -> LabelSetView:
    labels = sorted(set(true) | set(predicted))
    contributions = np.linspace(-1, 1, windows).astype(np.float32)
    spans = np.array([[i * 5, i * 5 + 5] for i in range(windows)]) if text is not None else None
    return LabelSetView(index, f"doc {index}", np.array(sorted(true), dtype=np.int64),
                        np.array(sorted(predicted), dtype=np.int64), {k: 0.5 + 0.01 * k for k in labels},
                        {k: 0.4 for k in labels}, [LabelExplained(k, contributions) for k in predicted], windows,
                        spans, text)


def sample_page() -> str:
    views = [view(0, [0, 1], [1, 3]), view(1, [2], [], text="x" * 15), view(2, [4, 5], [4, 5]),
             view(3, [], []), view(4, [5], [0, 5])]
    return render_label_set_report(label_set_metrics(HOSTILE), views, 3, 2, max_wrong=10, n_correct=10)


class Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.starts = []

    def handle_starttag(self, tag, attrs):
        self.starts.append((tag, dict(attrs)))


def test_chips_show_found_missed_right_and_extra_labels():
    page = sample_page()
    first = page[page.index('id="doc-0"'):]
    first = first[:first.index("</details>")]
    kinds = re.findall(r'<span class="chip (\w+)" data-label="(\d+)"', first)
    assert kinds == [("missed", "0"), ("true", "1"), ("extra", "3"), ("pred", "1")]
    assert 'data-true="0 1" data-pred="1 3"' in page
    assert 'id="doc-3" data-true="" data-pred=""' in page and "0 missed, 0 extra" not in page
    assert page.count('<details class="doc wrong"') == 3 and page.count('<details class="doc right"') == 2


def test_every_label_string_is_escaped_and_isolated():
    page = sample_page()
    assert page.count("<script>") == 1 and "alert(1)</script>" not in page  # only the page's own script
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'say "hi"' not in page and "say &quot;hi&quot; &amp; &#x27;bye&#x27;" in page
    assert "\u200b" not in page and "\u202e" not in page  # invisible characters shown as their codes
    assert "zero<span class=\"esc\">U+200B</span>width" in page and "U+202Eevil" in page
    assert "<bdi>שלום</bdi>" in page and '<option value="2" dir="auto">שלום' in page
    assert "&lt;b&gt;head&lt;/b&gt;.pt" in page
    parser = Elements()
    parser.feed(page)
    for tag, attrs in parser.starts:  # every element the parser finds is one the page means to have
        assert tag in {"html", "head", "meta", "title", "style", "script", "body", "h1", "h2", "div", "b", "p",
                       "img", "table", "tr", "th", "td", "span", "bdi", "select", "option", "details", "summary",
                       "code", "i", "pre", "mark"}, tag
        assert all(value is None or "alert" not in value or name == "title" for name, value in attrs.items())


def test_the_per_label_table_and_never_predicted_labels():
    names = [f"label {i}" for i in range(8)]
    support = np.array([5, 0, 9, 3, 1, 0, 2, 7])
    predicted = np.array([4, 0, 9, 0, 1, 2, 0, 6])
    page = render_label_set_report(label_set_metrics(names, support, predicted), [], 0, 0, 0, 0)
    rows = re.findall(r'<tr data-label="(\d+)">', page)
    assert rows == ["2", "7", "0", "3", "6", "4", "1", "5"]  # most frequent first
    never = page[page.index('id="never-predicted"'):]
    never = never[:never.index("</p>")]
    assert "<b>2</b> labels" in never and "label 3" in never and "label 6" in never and "label 1" not in never
    assert 'data-metric="micro_f1">0.9000<' in page and "fallback" in page and "its most probable label" in page


def test_ten_thousand_labels_and_a_500_label_document_stay_small():
    n = 10_000
    names = [f"topic number {i} of the corpus" for i in range(n)]
    metrics = label_set_metrics(names, np.arange(n) % 50, np.zeros(n, dtype=np.int64))
    big = view(0, list(range(500)), list(range(250, 750)))
    views = [big] + [view(i, [i * 7 % n, i * 13 % n], [i * 7 % n]) for i in range(1, 700)]
    page = render_label_set_report(metrics, views, 700, 0, 700, 0)
    assert len(re.findall(r'<tr data-label="', page)) == MAX_TABLE_LABELS
    assert page.count("<option value=") == MAX_FILTER_LABELS + 9  # labels, and the 9 fixed options of the selects
    never = page[page.index('id="never-predicted"'):]
    never = never[:never.index("</p>")]  # every label of support > 0 is never predicted: 9,800
    assert "<b>9,800</b> labels" in never and f"and {9800 - MAX_LISTED_LABELS:,} more" in never
    first = page[page.index('id="doc-0"'):page.index('id="doc-1"')]
    assert first.count('class="chip ') == 2 * MAX_CHIPS and f"+{500 - MAX_CHIPS} more" in first
    small = render_label_set_report(label_set_metrics(names[:100]), views[1:2], 1, 0, 1, 0)
    assert len(page.encode()) - len(small.encode()) < 700 * 3000 + 200_000  # the documents, not the labels


def test_documents_shown_first_wrong_then_a_sample_of_exact():
    truth = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0]], dtype=bool)
    predicted = np.array([[1, 0], [1, 0], [0, 0], [1, 1], [1, 0]], dtype=bool)
    wrong, right = select_label_set_documents(truth, predicted, max_wrong=1, n_correct=5)
    assert wrong.tolist() == [1] and right.tolist() == [0, 2, 4]


def test_single_label_report_shows_calibration_when_measured():
    from test_report_html import class_metrics

    m = class_metrics(3)
    assert 'id="calibration"' not in render_report(m, [], 0, 3, 0, 0)
    rng = np.random.default_rng(0)
    p = rng.random(100)
    m["calibration"] = calibration(p, rng.random(100) < p)
    page = render_report(m, [], 0, 3, 0, 0)
    assert f'data-metric="ece">{m["calibration"]["ece"]:.4f}<' in page and f'src="{RELIABILITY_PNG}"' in page
    assert page.count("<tr><td class=\"l\">0.") >= 1 and 'id="confusion"' in page


@pytest.mark.slow
def test_label_filters_in_a_real_browser(tmp_path):
    """Chromium opens the page: choosing a label (and how it is held) hides every document
    without it and shows those with it; no request leaves the file."""
    from test_report_html import CHROMIUM, CHROMIUM_ARGS, _chromium_or_skip

    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    path = tmp_path / "report.html"
    path.write_text(sample_page())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.resolve().as_uri())

        def visible_docs():
            return [d.get_attribute("id") for d in page.locator("details.doc").all() if d.is_visible()]

        assert visible_docs() == ["doc-0", "doc-1", "doc-4", "doc-2", "doc-3"]
        page.select_option("#label", "5")
        assert visible_docs() == ["doc-4", "doc-2"] and page.inner_text("#shown") == "2"
        page.select_option("#label", "0")
        assert visible_docs() == ["doc-0", "doc-4"]
        page.select_option("#as", "missed")
        assert visible_docs() == ["doc-0"]
        page.select_option("#as", "extra")
        assert visible_docs() == ["doc-4"]
        page.select_option("#label", "")
        page.select_option("#show", "right")
        assert visible_docs() == ["doc-2", "doc-3"]
        assert page.locator('#doc-0 .chip.missed').first.evaluate("e => getComputedStyle(e).textDecorationLine") \
            == "line-through"
        styles = {kind: page.locator(f".chip.{kind}").first.evaluate("e => getComputedStyle(e).backgroundColor")
                  for kind in ("true", "missed", "pred", "extra")}
        assert len(set(styles.values())) == 4, styles
        browser.close()
    assert all(url.startswith("file://") for url in requests), requests


def test_views_of_a_head_explain_its_most_probable_predicted_labels():
    """From a head's probabilities and decision to the page: each shown document's predicted
    labels explained (most probable first, at most MAX_EXPLAINED), its chips, its terms."""
    import torch

    from longdoc.heads.batches import CacheDocuments, predict_logits
    from longdoc.heads.head import Head
    from longdoc.reports.label_set_views import MAX_EXPLAINED, build_label_set_views
    from longdoc.settings.model import HeadConfig
    from longdoc.training.thresholds import Decision

    counts = [1, 4, 2, 7, 3]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    documents = CacheDocuments(np.random.default_rng(0).normal(size=(offsets[-1], 8)).astype(np.float32), offsets,
                               np.zeros(len(counts), dtype=np.int64))
    torch.manual_seed(0)
    head = Head(HeadConfig("attention", 8, 8, inner_dim=8)).eval()
    probabilities = torch.sigmoid(torch.from_numpy(predict_logits(head, documents))).numpy()
    decision = Decision(np.full(8, 0.3), "best")
    predicted = decision.apply(probabilities)
    truth = np.zeros_like(predicted)
    truth[:, 0] = True
    wrong, right = select_label_set_documents(truth, predicted, 10, 10)
    shown = np.concatenate([wrong, right])
    views = build_label_set_views(head, documents, shown, probabilities, truth, predicted, decision.thresholds,
                                  [f"d{i}" for i in range(5)])
    for v in views:
        assert v.predicted.tolist() == np.flatnonzero(predicted[v.index]).tolist() and v.true.tolist() == [0]
        labels = [e.label for e in v.explained]
        assert len(labels) == min(MAX_EXPLAINED, len(v.predicted))
        assert [v.probabilities[k] for k in labels] == sorted([v.probabilities[k] for k in labels], reverse=True)
        assert all(len(e.contributions) == counts[v.index] for e in v.explained)
    page = render_label_set_report(label_set_metrics([f"l{i}" for i in range(8)]), views, len(wrong), len(right),
                                   10, 10)
    assert page.count('<details class="doc') == 5 and 'class="why" data-label=' in page


def test_the_page_of_a_head_on_a_multi_label_cache_with_unseen_labels(tmp_path):
    """label_set_html, evaluate's one call: a cache's label sets, a head and its decision; the
    test labels the head never saw are missed chips, named after the head's labels."""
    import torch
    from synthetic import random_label_sets, write_synthetic_cache

    from longdoc.cache.reader import open_cache
    from longdoc.heads.batches import CacheDocuments, predict_logits
    from longdoc.heads.head import Head
    from longdoc.reports.label_set_rows import MULTI_LABEL, probabilities
    from longdoc.reports.label_sets_html import label_set_html
    from longdoc.settings.model import HeadConfig
    from longdoc.training.thresholds import Decision

    sets = random_label_sets(30, 6, seed=2)
    path = write_synthetic_cache(tmp_path / "c.h5", n_docs=30, n_classes=6, label_sets=sets)
    torch.manual_seed(0)
    head = Head(HeadConfig("mean", 16, 5)).eval()  # knows labels 0-4; label 5 is unseen
    decision = Decision(np.full(5, 0.5), "best", "global")
    checkpoint = SimpleNamespace(head=head, decision=decision, terms=None)
    truth = np.zeros((30, 6), dtype=bool)
    for d, s in enumerate(sets):
        truth[d, s] = True
    with open_cache(path) as cache:
        documents = CacheDocuments.from_cache(cache, labels=np.zeros(30))
        p = probabilities(predict_logits(head, documents), MULTI_LABEL)
        names = [f"label {i}" for i in range(5)]
        metrics = label_set_metrics(names + ["<unseen>"])
        metrics["label_names"] = names
        page = label_set_html(checkpoint, cache, documents, p, truth[:, :5], metrics, None, 30, 30, truth[:, 5:])
    docs = re.findall(r'<details class="doc (\w+)" id="doc-(\d+)" data-true="([\d ]*)" data-pred="([\d ]*)"', page)
    assert len(docs) == 30
    for kind, d, true, pred in docs:
        assert true.split() == [str(k) for k in sets[int(d)]]
        assert pred.split() == [str(k) for k in np.flatnonzero(decision.apply(p[int(d):int(d) + 1])[0])]
        assert (kind == "right") == (true == pred)
    unseen_doc = next(int(d) for d, s in enumerate(sets) if 5 in s)
    block = page[page.index(f'id="doc-{unseen_doc}"'):]
    assert '<span class="chip missed" data-label="5" title="&lt;unseen&gt;: missed"' in block[:block.index("</details>")]
