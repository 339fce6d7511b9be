"""predict with a multi-label head: label sets with probabilities and thresholds, --top-k,
--explain per predicted label, FILE mode and --data (JSON lines, CSV, resume).

The multi-label head is hand-made from a trained tiny-BERT head: its config says
task="multi_label" and it carries a Decision, so its logits are read as sigmoids and
thresholded, exactly what predict does with a head train-head fits for label sets."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_predict import embed_and_train
from test_predict_corpus import interrupt_classify_after, read_jsonl

from longdoc import predict as predict_module
from longdoc.cache.reader import open_cache
from longdoc.configs import PredictConfig
from longdoc.explain.contributions import explain_label_sets
from longdoc.heads.batches import CacheDocuments, predict_logits
from longdoc.heads.checkpoint import load_checkpoint
from longdoc.inference import predictor as predictor_module
from longdoc.predict import Prediction
from longdoc.predict import run as run_predict
from longdoc.reports.label_set_rows import MULTI_LABEL, probabilities, split_cell
from longdoc.training.thresholds import Decision


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_bert):
    return embed_and_train(tmp_path_factory.mktemp("tiny-label-sets"), str(tiny_bert), chunk_tokens=32, stride=4,
                           pooling="mean")


@pytest.fixture(scope="module")
def cached(tiny):
    """The head's sigmoid probabilities of the cached documents, and thresholds at each
    label's median, so that every label is predicted for about half the documents."""
    _, cache, head = tiny
    checkpoint = load_checkpoint(head)
    with open_cache(cache) as c:
        documents = CacheDocuments.from_cache(c, term_weights=checkpoint.terms)
        logits = predict_logits(checkpoint.head, documents)
        ids = c.doc_ids()
    p = probabilities(logits, MULTI_LABEL)
    thresholds = np.median(p, axis=0).astype(np.float64)
    return ids, p, thresholds, documents, checkpoint


@pytest.fixture
def multi_label(cached, monkeypatch):
    """predict loads every head as a multi-label one with the median thresholds."""
    thresholds = cached[2]
    real = predictor_module.load_checkpoint

    def as_multi_label(path):
        checkpoint = real(path)
        checkpoint.head.config.task = MULTI_LABEL
        checkpoint.decision = Decision(thresholds.copy(), "none", "per-label").to_dict()
        return checkpoint

    monkeypatch.setattr(predictor_module, "load_checkpoint", as_multi_label)
    return cached


def test_file_mode_gives_each_document_its_label_set(tiny, multi_label):
    corpus, _, head = tiny
    ids, p, thresholds, _, checkpoint = multi_label
    names = checkpoint.label_names
    predictions = run_predict(PredictConfig(head=str(head), files=tuple(str(corpus / i) for i in ids), device="cpu",
                                            batch_tokens=2048)).predictions
    sizes = set()
    for row, prediction in zip(p, predictions):
        got = {x["label"]: x for x in prediction.labels}
        clear = np.abs(row - thresholds) > 2e-3  # labels too close to their threshold may fall either way
        expected = {names[k] for k in np.flatnonzero((row >= thresholds) & clear)}
        assert expected <= set(got) and set(got) <= {names[k] for k in np.flatnonzero(row >= thresholds - 2e-3)}
        for name, x in got.items():
            k = names.index(name)
            assert x["probability"] == pytest.approx(row[k], abs=2e-3) and x["threshold"] == pytest.approx(
                thresholds[k], abs=1e-6)
        shown = [x["probability"] for x in prediction.labels]
        assert shown == sorted(shown, reverse=True)
        sizes.add(len(got))
    assert len(sizes) > 1  # the sets differ in size: real label sets, not one class each


def test_file_mode_explains_every_predicted_label(tiny, multi_label):
    corpus, _, head = tiny
    ids, _, thresholds, documents, checkpoint = multi_label
    names, doc = checkpoint.label_names, int(np.argmax(documents.counts))  # the longest document
    result = run_predict(PredictConfig(head=str(head), files=(str(corpus / ids[doc]),), device="cpu",
                                       explain=True, explain_windows=2, explain_terms=True))
    prediction = result.predictions[0]
    assert [e["label"] for e in prediction.explanations] == [x["label"] for x in prediction.labels]
    sets = [np.array([names.index(x["label"]) for x in prediction.labels], dtype=np.int64)]
    reference = explain_label_sets(checkpoint.head, documents, sets, docs=np.array([doc]), thresholds=thresholds)[0]
    text = (corpus / ids[doc]).read_text()
    for explained, expected in zip(prediction.explanations, reference):
        windows = explained["top_windows"]
        assert len(windows) == min(2, documents.counts[doc])
        for w in windows:
            assert w["contribution"] == pytest.approx(expected.windows[w["window"]], abs=2e-3)
            assert " ".join(text[w["start"]:w["end"]].split()).startswith(w["excerpt"].rstrip("…"))
        terms = [t["contribution"] for t in explained["top_terms"]]
        assert terms == sorted(terms, reverse=True) and all(t["term"] for t in explained["top_terms"])
    record = json.loads(result.as_json())
    assert list(record) == ["source", "labels", "windows", "explanations"]
    first = result.line().splitlines()
    assert first[0].endswith("\t" + str(corpus / ids[doc])) and first[1] == f"  {prediction.labels[0]['label']}:"


def write_label_set_corpus(path, corpus, ids):
    """A multi-label JSON lines corpus of the folder corpus's texts: each document's folder and one more label."""
    names = sorted({i.split("/")[0] for i in ids})
    with open(path, "w") as f:
        for n, doc_id in enumerate(ids):
            labels = sorted({doc_id.split("/")[0], names[n % len(names)]})
            f.write(json.dumps({"id": doc_id, "text": (corpus / doc_id).read_text(), "labels": labels}) + "\n")


def test_corpus_mode_jsonl_and_csv_rows_of_label_sets_resume(tiny, multi_label, tmp_path, monkeypatch):
    corpus, _, head = tiny
    ids, _, _, _, checkpoint = multi_label
    data = tmp_path / "sets.jsonl"
    write_label_set_corpus(data, corpus, ids)
    truth = {r["id"]: r["labels"] for r in map(json.loads, data.read_text().splitlines())}
    run_predict(PredictConfig(head=str(head), data=str(data), out=str(tmp_path / "p.jsonl"), device="cpu",
                              top_k=2, explain=True, explain_windows=1, progress=False))
    rows = read_jsonl(tmp_path / "p.jsonl")
    assert [r["id"] for r in rows] == ids and all(r["true_labels"] == truth[r["id"]] for r in rows)
    assert all(list(r) == ["id", "labels", "true_labels", "windows", "top", "explanations"] for r in rows)
    assert all([e["label"] for e in r["explanations"]] == [x["label"] for x in r["labels"]] for r in rows)
    assert all(len(r["top"]) == 2 and r["top"][0]["probability"] >= r["top"][1]["probability"] for r in rows)
    files = run_predict(PredictConfig(head=str(head), files=tuple(str(corpus / i) for i in ids), device="cpu"))
    for r, p in zip(rows, files.predictions):
        assert [x["label"] for x in r["labels"]] == [x["label"] for x in p.labels]
    original, calls = interrupt_classify_after(monkeypatch, 1)
    config = dict(head=str(head), data=str(data), out=str(tmp_path / "p.csv"), device="cpu", block_docs=5,
                  progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_predict(PredictConfig(**config))
    monkeypatch.setattr(predict_module.Predictor, "classify", original)
    assert run_predict(PredictConfig(**config)).resumed_documents == 5
    with open(tmp_path / "p.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    assert [c["id"] for c in cells] == ids
    for c, r in zip(cells, rows):
        assert split_cell(c["labels"]) == [x["label"] for x in r["labels"]]
        assert [float(v) for v in split_cell(c["label_probabilities"])] == pytest.approx(
            [x["probability"] for x in r["labels"]], abs=1e-5)
        assert split_cell(c["true_labels"]) == r["true_labels"]
        assert len(split_cell(c["label_thresholds"])) == len(r["labels"])
        assert sorted(k for k in c if k.startswith("p:")) == sorted(f"p:{n}" for n in checkpoint.label_names)


def test_a_multi_label_heads_decision_is_checked():
    from types import SimpleNamespace

    from longdoc.predict import head_decision
    from longdoc.runtime.errors import UserError

    def checkpoint(decision):
        return SimpleNamespace(decision=decision, label_names=list("abcde"), path="runs/head.pt")

    decision = Decision(np.full(5, 0.4), "best", "per-label")
    assert head_decision(checkpoint(decision)).empty == "best"
    assert head_decision(checkpoint(decision.to_dict())).thresholds.tolist() == [0.4] * 5
    for bad, message in [(None, "without its decision"), ({"thresholds": [0.5] * 4, "empty": "none",
                                                           "rule": "global"}, "5 thresholds"),
                         ({"thresholds": [0.5] * 5, "empty": "all", "rule": "global"}, "empty rule"),
                         ({"thresholds": [0.5, 0.5, 0.5, 0.5, float("nan")], "empty": "none", "rule": "global"},
                          "thresholds in"), ("x", "not a record")]:
        with pytest.raises(UserError, match=message) as error:
            head_decision(checkpoint(bad))
        assert "runs/head.pt" in str(error.value) and "\n" not in str(error.value)


def test_a_single_label_head_is_unchanged(tiny):
    corpus, _, head = tiny
    record = run_predict(PredictConfig(head=str(head), files=(str(corpus / "space" / "001.txt"),),
                                       device="cpu")).predictions[0].record()
    assert list(record) == ["source", "label", "probability", "windows"]
    assert isinstance(Prediction("s", "l", 0.5, 1).line(), str)
