"""predict --data: whole corpora streamed into JSON lines or CSV, resumable, with explanations."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from conftest import ROOT
from synthetic import cli_error, runners
from test_predict import embed_and_train

from longdoc.corpus.sources import iter_documents
from longdoc.predict import predict, predict_corpus
from longdoc.runtime.errors import UserError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_bert):
    return embed_and_train(tmp_path_factory.mktemp("tiny-corpus"), str(tiny_bert), chunk_tokens=32, stride=4,
                           pooling="lstm")


@pytest.fixture(scope="module")
def windows_head(tiny, tmp_path_factory):
    """A head of the same cache without a term branch."""
    from longdoc.configs import TrainConfig
    from longdoc.train_head import run_train_head

    out = tmp_path_factory.mktemp("windows-head") / "head.pt"
    run_train_head(TrainConfig(train=str(tiny[1]), out=str(out), pooling="mean", inputs="windows", max_epochs=1,
                               val_fraction=0.2, progress=False, curve=False), log=lambda line: None)
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_rows_match_file_mode_with_true_labels(tiny, tmp_path):
    corpus, _, head = tiny
    summary = predict_corpus(head, str(corpus), tmp_path / "p.jsonl", device="cpu", block_docs=5, progress=False)
    rows = read_jsonl(tmp_path / "p.jsonl")
    assert summary.documents == len(rows) == 18 and not (tmp_path / "p.jsonl.partial").exists()
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids) and all(r["true_label"] == r["id"].split("/")[0] for r in rows)
    singles = predict(head, [str(corpus / i) for i in ids], device="cpu")
    assert [r["label"] for r in rows] == [p.label for p in singles]
    np.testing.assert_allclose([r["probability"] for r in rows], [p.probability for p in singles], atol=1e-4)
    for r in rows:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["probabilities"][r["label"]] == pytest.approx(r["probability"], abs=1e-6)


def test_csv_top_k_and_explanations(tiny, tmp_path):
    corpus, _, head = tiny
    out = tmp_path / "p.csv"
    predict_corpus(head, str(corpus), out, device="cpu", top_k=2, explain=2, progress=False)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "label", "probability", "true_label", "windows", "top1_label",
                             "top1_probability", "top2_label", "top2_probability", "top_windows"]
    assert len(rows) == 18
    for row in rows:
        assert row["top1_label"] == row["label"] and float(row["top1_probability"]) >= float(row["top2_probability"])
        windows = json.loads(row["top_windows"])
        assert 1 <= len(windows) <= min(2, int(row["windows"]))
        contributions = [w["contribution"] for w in windows]
        assert contributions == sorted(contributions, reverse=True)
        text = (corpus / row["id"]).read_text()
        for w in windows:
            assert 0 <= w["start"] <= w["end"] <= len(text)
            assert " ".join(text[w["start"]:w["end"]].split())[:100] == w["excerpt"][:100]


def test_term_explanations_name_terms_of_the_text(tiny, tmp_path):
    """A head with a term branch: --explain-terms gives words and bigrams of each document."""
    corpus, _, head = tiny
    predict_corpus(head, str(corpus), tmp_path / "t.jsonl", device="cpu", explain_terms=True, progress=False)
    rows = read_jsonl(tmp_path / "t.jsonl")
    assert "top_windows" not in rows[0]
    named = 0
    for row in rows:
        text = (corpus / row["id"]).read_text().lower()
        contributions = [t["contribution"] for t in row["top_terms"]]
        assert contributions == sorted(contributions, reverse=True)
        for term in row["top_terms"]:
            # A bigram's words are neighbours once one-letter words are dropped (the token pattern's).
            assert any(set(name.split()) <= set(text.split()) for name in term["term"].split(" | ")), term
            named += 1
    assert named > 0


def test_unlabelled_jsonl_and_file_mode_explain(tiny, tmp_path):
    corpus, _, head = tiny
    texts = [(corpus / "space" / f"00{i}.txt").read_text() for i in range(4)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    predict_corpus(head, str(tmp_path / "in.jsonl"), tmp_path / "out.jsonl", device="cpu", explain=1,
                   progress=False)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == ["line1", "line2", "line3", "line4"]
    assert all(r["true_label"] is None and len(r["top_windows"]) == 1 for r in rows)
    singles = predict(head, [str(corpus / "space" / f"00{i}.txt") for i in range(4)], device="cpu", explain=1)
    assert [s.top_windows for s in singles] == [r["top_windows"] for r in rows]


def interrupt_classify_after(monkeypatch, n_blocks: int):
    """Make predict's Predictor.classify raise KeyboardInterrupt once it has classified
    `n_blocks` blocks; returns (the real classify, the sizes of the blocks it classified)."""
    from longdoc import predict as predict_module

    original, calls = predict_module.Predictor.classify, []

    def interrupted(self, sources, texts, explain=0):
        if len(calls) == n_blocks:
            raise KeyboardInterrupt
        calls.append(len(texts))
        return original(self, sources, texts, explain)

    monkeypatch.setattr(predict_module.Predictor, "classify", interrupted)
    return original, calls


def test_resume_after_an_interruption_in_process(tiny, tmp_path, monkeypatch):
    corpus, _, head = tiny
    from longdoc import predict as predict_module

    predict_corpus(head, str(corpus), tmp_path / "whole.csv", device="cpu", block_docs=4, progress=False)
    original, calls = interrupt_classify_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        predict_corpus(head, str(corpus), tmp_path / "p.csv", device="cpu", block_docs=4, progress=False)
    monkeypatch.setattr(predict_module.Predictor, "classify", original)
    with pytest.raises(UserError, match="other settings"):
        predict_corpus(head, str(corpus), tmp_path / "p.csv", device="cpu", block_docs=5, progress=False)
    summary = predict_corpus(head, str(corpus), tmp_path / "p.csv", device="cpu", block_docs=4, progress=False)
    assert summary.resumed_documents == 8 and summary.documents == 18
    assert (tmp_path / "p.csv").read_text() == (tmp_path / "whole.csv").read_text()


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_file(tiny, tmp_path):
    corpus, _, head = tiny
    lines = [json.dumps({"id": f"d{i}", "text": " ".join(["space rocket orbit"] * (1 + i % 40)), "label": "x"})
             for i in range(300)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    args = ["predict", "--head", head, "--data", tmp_path / "in.jsonl", "--device", "cpu", "--block-docs", "10",
            "--threads", "1"]
    subprocess.run([sys.executable, ROOT / "cli.py", *map(str, args), "--out", tmp_path / "whole.jsonl"],
                   cwd=ROOT, check=True, capture_output=True)
    out = tmp_path / "killed.jsonl"
    process = subprocess.Popen([sys.executable, ROOT / "cli.py", *map(str, args), "--out", out], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "killed.jsonl.partial"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial.glob("rows-*.part"))) < 2 and process.poll() is None:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    kept = len(list(partial.glob("rows-*.part")))
    assert not out.exists() and 2 <= kept < 30, kept
    result = subprocess.run([sys.executable, ROOT / "cli.py", *map(str, args), "--out", out], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert "resumed" in result.stdout
    assert out.read_text() == (tmp_path / "whole.jsonl").read_text()
    assert not partial.exists()


def test_a_million_lines_are_streamed(tmp_path, tiny, monkeypatch):
    """1,000,000 short lines: reading is lazy, and predicting keeps only a block in memory."""
    path = tmp_path / "million.jsonl"
    with open(path, "w") as f:
        for i in range(1_000_000):
            f.write(f'{{"text": "space rocket {i}"}}\n')
    tracemalloc.start()
    first = next(iter_documents(str(path)))
    assert first == ("line1", "space rocket 0", None)
    assert tracemalloc.get_traced_memory()[1] < 2 * 2**20
    tracemalloc.stop()


    original, calls = interrupt_classify_after(monkeypatch, 3)
    _, _, head = tiny
    tracemalloc.start()
    with pytest.raises(KeyboardInterrupt):
        predict_corpus(head, str(path), tmp_path / "out.csv", device="cpu", block_docs=500, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert calls == [500, 500, 500]
    assert peak < 30 * 2**20, peak  # the whole file as Python strings would be ~150 MB
    assert len(list((tmp_path / "out.csv.partial").glob("rows-*.part"))) == 3


def test_an_existing_output_needs_overwrite(tiny, tmp_path):
    corpus, _, head = tiny
    (tmp_path / "p.jsonl").write_text("old\n")
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        predict_corpus(head, str(corpus), tmp_path / "p.jsonl", device="cpu", progress=False)
    predict_corpus(head, str(corpus), tmp_path / "p.jsonl", device="cpu", progress=False, overwrite=True, limit=3)
    assert len(read_jsonl(tmp_path / "p.jsonl")) == 3


@pytest.mark.parametrize("runner", runners())
def test_bad_corpus_input_is_one_line(runner, tiny, windows_head, tmp_path):
    corpus, _, head = tiny
    (tmp_path / "notext.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    cases = [
        ["--data", tmp_path / "missing", "--out", tmp_path / "a.jsonl"],
        ["--data", corpus, "--out", tmp_path / "a.txt"],
        ["--data", corpus],
        ["--data", corpus, "--out", tmp_path / "a.jsonl", corpus / "space" / "000.txt"],
        ["--data", tmp_path / "notext.jsonl", "--out", tmp_path / "b.jsonl"],
        ["--data", tmp_path / "empty.jsonl", "--out", tmp_path / "c.jsonl"],
        ["--data", corpus, "--out", tmp_path / "d.jsonl", "--top-k", "7"],
        ["--out", tmp_path / "e.jsonl", corpus / "space" / "000.txt"],
    ]
    no_terms = [["--explain-terms", corpus / "space" / "000.txt"],
                ["--explain-terms", "--data", corpus, "--out", tmp_path / "f.jsonl"]]
    if runner == "subprocess":  # the in-process run checks every case; a real process (~5 s each, most of
        # it importing torch) need only show that each layer's error reaches stderr as one line, no
        # traceback: the corpus reader, the options, an empty corpus, the head
        cases, no_terms = [cases[0], cases[3], cases[5]], no_terms[:1]
    for args in cases:
        code, lines = cli_error(runner, "predict", "--head", head, "--device", "cpu", *args)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, lines)
    for args in no_terms:
        code, lines = cli_error(runner, "predict", "--head", windows_head, "--device", "cpu", *args)
        assert code == 2 and len(lines) == 1 and "has no term branch" in lines[0], (args, lines)
    assert not (tmp_path / "c.jsonl.partial").exists()
