"""evaluate --report --data: report.html with texts, shaded windows, checks of the corpus; a real browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import cli_error, make_class_folders, runners

from longdoc.cache.reader import open_cache
from longdoc.configs import EvaluateConfig
from longdoc.evaluate import run as run_evaluate
from longdoc.heads.batches import CacheDocuments, predict_logits
from longdoc.heads.checkpoint import encoder_record, load_checkpoint, save_checkpoint
from longdoc.heads.head import Head
from longdoc.reports.html import kept_ranges, render_report, shaded_text
from longdoc.reports.metrics import MAX_PLOTTED_CLASSES
from longdoc.settings.model import HeadConfig

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert):
    """A tiny-BERT cache of a folder corpus and an untrained head: plenty of mistakes to show."""
    from longdoc.configs import EmbedConfig
    from longdoc.embed import run as run_embed

    folder = tmp_path_factory.mktemp("report")
    corpus = make_class_folders(folder / "corpus")
    for path in corpus.rglob("*.txt"):  # every document has text to shade
        if not path.read_text():
            path.write_text("the orbit of the moon")
    cache = folder / "c.h5"
    run_embed(EmbedConfig(out=cache, data=str(corpus), model=str(tiny_bert), chunk_tokens=32, stride=4,
                          progress=False, device="cpu"))
    torch.manual_seed(3)
    with open_cache(cache) as c:
        head = Head(HeadConfig("lstm", c.hidden_size, len(c.label_names), inner_dim=16))
        save_checkpoint(folder / "head.pt", head, c.label_names, encoder_record(c), {})
    return corpus, cache, folder / "head.pt"


def first_misclassified(head, cache):
    with open_cache(cache) as c:
        logits = predict_logits(load_checkpoint(head).head, CacheDocuments.from_cache(c))
        wrong = np.flatnonzero(logits.argmax(1) != c.labels)
        return c.doc_ids()[wrong[0]], len(wrong)


def test_report_html_with_texts(setup, tmp_path):
    corpus, cache, head = setup
    result = run_evaluate(EvaluateConfig(head=str(head), cache=str(cache), report=str(tmp_path / "r"), **{"data": str(corpus)}, report_wrong=5, report_correct=2))
    page = (tmp_path / "r" / "report.html").read_text()
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert f'data-metric="accuracy">{metrics["accuracy"]:.4f}<' in page
    assert f'data-metric="macro_f1">{metrics["macro_f1"]:.4f}<' in page
    doc_id, n_wrong = first_misclassified(head, cache)
    shown = re.findall(r'<details class="doc (wrong|right)" id="doc-\d+"', page)
    assert shown.count("wrong") == min(5, n_wrong) and shown.count("right") == min(2, 18 - n_wrong)
    first = page[page.index('<details class="doc wrong"'):]
    first = first[:first.index("</details>")]
    assert f"<code>{doc_id}</code>" in first and " open>" in first
    assert '<mark class="w"' in first
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must load nothing"
    assert result.metrics["accuracy"] == metrics["accuracy"]


def test_report_shows_the_terms_of_a_term_head(setup, tmp_path):
    from longdoc.configs import TrainConfig
    from longdoc.train_head import run as run_train_head

    corpus, cache, _ = setup
    head = tmp_path / "both.pt"
    run_train_head(TrainConfig(train=str(cache), out=str(head), pooling="mean", inputs="both", max_epochs=2,
                               val_fraction=0.2, progress=False, curve=False), log=lambda line: None)
    run_evaluate(EvaluateConfig(head=str(head), cache=str(cache), report=str(tmp_path / "r"), **{"data": str(corpus)}, report_wrong=3, report_correct=3))
    page = (tmp_path / "r" / "report.html").read_text()
    terms = re.findall(r'<p class="terms">(.*?)</p>', page)
    assert terms and all("<code" in t for t in terms)
    run_evaluate(EvaluateConfig(head=str(head), cache=str(cache), report=str(tmp_path / "r2"), report_wrong=3, report_correct=3))  # no text: no names, no terms shown
    assert 'class="terms"' not in (tmp_path / "r2" / "report.html").read_text()


def test_long_texts_are_cut_around_their_top_windows():
    text = "".join(f"w{i:05d} " for i in range(3000))  # 21,000 characters
    spans = np.array([[i * 1000, i * 1000 + 1200] for i in range(21)])
    contributions = np.zeros(21)
    contributions[15] = 5.0
    ranges = kept_ranges(len(text), spans, np.argsort(-contributions, kind="stable"), 2000)
    assert ranges[0][0] == 0 and (15000, 16200) in ranges and sum(b - a for a, b in ranges) <= 2000
    html = shaded_text(text, spans, contributions, max_chars=2000)
    assert "characters …]" in html and "w02150" in html and "w00500" not in html and "w02999" not in html


def test_report_without_texts_lists_documents(setup, tmp_path):
    _, cache, head = setup
    run_evaluate(EvaluateConfig(head=str(head), cache=str(cache), report=str(tmp_path / "r"), report_wrong=3, report_correct=0))
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Texts are not shown" in page and page.count('class="doc wrong"') == 3 and "<pre" not in page


@pytest.mark.parametrize("runner", runners())
def test_corpus_that_is_not_the_cache_is_one_line(runner, setup, tmp_path):
    corpus, cache, head = setup
    other = tmp_path / "other"
    shutil.copytree(corpus, other)
    (other / "space" / "003.txt").write_text("space space")
    cases = [(["--report", tmp_path / "r1", "--data", other], "not the corpus"),
             (["--data", corpus], "give --report too"),
             (["--report", tmp_path / "r2", "--data", tmp_path / "missing"], "no such file")]
    vanished = tmp_path / "vanished"
    shutil.copytree(corpus, vanished)
    shutil.rmtree(vanished / "religion")
    cases.append((["--report", tmp_path / "r3", "--data", vanished], "is not in --data"))
    for args, message in cases:
        code, lines = cli_error(runner, "evaluate", "--head", head, "--cache", cache, *args)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not any((tmp_path / r / "report.html").exists() for r in ("r1", "r2", "r3"))


def test_evaluate_cli_with_data(setup, tmp_path):
    import contextlib
    import io

    from longdoc.cli import main

    corpus, cache, head = setup
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["evaluate", "--head", str(head), "--cache", str(cache), "--report", str(tmp_path / "r"),
                     "--data", str(corpus), "--report-wrong", "2"]) == 0
    assert (tmp_path / "r" / "report.html").read_text().count('class="doc wrong"') == 2


def _chromium_or_skip():
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (as root; .ci/run does it)")


@pytest.mark.slow
def test_the_report_in_a_real_browser(setup, tmp_path):
    """Chromium opens report.html: the figures shown are metrics.json's, the first misclassified
    document is listed with shaded windows; a screenshot is saved next to the report."""
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    corpus, cache, head = setup
    run_evaluate(EvaluateConfig(head=str(head), cache=str(cache), report=str(tmp_path / "r"), **{"data": str(corpus)}))
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    doc_id, n_wrong = first_misclassified(head, cache)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1600})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto((tmp_path / "r" / "report.html").resolve().as_uri())
        shown = {k: page.inner_text(f'[data-metric="{k}"]') for k in ("accuracy", "macro_f1", "documents")}
        assert float(shown["accuracy"]) == pytest.approx(metrics["accuracy"], abs=5e-5)
        assert float(shown["macro_f1"]) == pytest.approx(metrics["macro_f1"], abs=5e-5)
        assert int(shown["documents"].replace(",", "")) == metrics["documents"]
        first = page.locator("details.doc.wrong").first
        assert first.locator("summary code").inner_text() == doc_id
        marks = first.locator("pre.text mark.w")
        assert marks.count() > 0 and marks.first.is_visible()
        assert "rgba(" in marks.first.evaluate("e => getComputedStyle(e).backgroundColor")
        assert first.locator(".strip i").count() >= 1
        page.select_option("#show", "right")
        assert not first.is_visible()
        assert page.locator("details.doc.wrong:visible").count() == 0
        page.select_option("#show", "all")
        page.screenshot(path=str(tmp_path / "r" / "report.png"), full_page=False)
        browser.close()
    assert (tmp_path / "r" / "report.png").stat().st_size > 10_000
    assert all(url.startswith("file://") for url in requests), requests
    assert n_wrong > 0


def class_metrics(n_classes: int) -> dict:
    """evaluate's figures for `n_classes` classes, one document each, all right."""
    names = [f"class number {i}" for i in range(n_classes)]
    return {"head": "head.pt", "cache": "test.h5", "accuracy": 1.0, "macro_f1": 1.0, "documents": n_classes,
            "label_names": names, "confusion_matrix": np.broadcast_to(np.eye(1, dtype=np.int64), (n_classes,) * 2),
            "per_class": [{"class": n, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1} for n in names],
            "by_length": [{"windows": "1", "documents": n_classes, "accuracy": 1.0}]}


@pytest.mark.parametrize("n_classes", [MAX_PLOTTED_CLASSES + 1, 3000])
def test_the_confusion_table_is_capped_like_the_picture(n_classes):
    """Past MAX_PLOTTED_CLASSES the page says the table is left out instead of drawing
    n_classes^2 cells (2,000 classes made 352 MB of HTML); the per-class table stays, so
    the page grows with the count, not its square."""
    page = render_report(class_metrics(n_classes), [], 0, n_classes, max_wrong=0, n_correct=0)
    assert 'id="confusion"' not in page and f"{n_classes:,} classes, too many to draw" in page
    assert f"class number {n_classes - 1}</td>" in page
    assert len(page.encode()) < 50_000 + 300 * n_classes


def test_the_confusion_table_is_drawn_up_to_the_cap():
    page = render_report(class_metrics(MAX_PLOTTED_CLASSES), [], 0, MAX_PLOTTED_CLASSES, max_wrong=0, n_correct=0)
    assert page.count('title="true ') == MAX_PLOTTED_CLASSES**2 and "too many to draw" not in page
