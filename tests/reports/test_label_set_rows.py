"""Label sets from a head's probabilities and Decision, and their rows in JSON lines and CSV."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest

from longdoc.reports.label_set_rows import (
    MULTI_LABEL,
    SINGLE_LABEL,
    chosen_labels,
    head_task,
    join_cell,
    probabilities,
    split_cell,
)
from longdoc.reports.predictions import RowFormat
from longdoc.runtime.errors import UserError
from longdoc.training.thresholds import Decision

NAMES = ["=cmd|' /C calc'!A0", "grain", "a|b\\c", "-trade", "<script>"]


def fake_checkpoint(task=None, decision=None, n=len(NAMES)):
    """What the label-set interface reads of a `longdoc.heads.checkpoint.Checkpoint`."""
    config = SimpleNamespace() if task is None else SimpleNamespace(task=task)
    return SimpleNamespace(head=SimpleNamespace(config=config), decision=decision, label_names=NAMES[:n],
                           path="runs/head.pt")


def test_a_head_without_a_task_is_single_label():
    assert head_task(fake_checkpoint()) == SINGLE_LABEL and head_task(fake_checkpoint(MULTI_LABEL)) == MULTI_LABEL
    with pytest.raises(UserError, match="head.task"):
        head_task(fake_checkpoint("regression"))


def test_sigmoid_and_softmax_probabilities_are_stable():
    logits = np.array([[1000.0, -1000.0, 0.0, 2.0]])
    sig = probabilities(logits, MULTI_LABEL)
    np.testing.assert_allclose(sig, [[1.0, 0.0, 0.5, 1 / (1 + np.exp(-2))]], atol=1e-6)
    soft = probabilities(logits, SINGLE_LABEL)
    assert np.isfinite(soft).all() and soft.sum() == pytest.approx(1.0)


def test_chosen_labels_most_probable_first_and_the_empty_rule():
    p = np.array([[0.9, 0.2, 0.95, 0.1], [0.1, 0.3, 0.2, 0.05], [0.5, 0.5, 0.1, 0.1]])
    none = chosen_labels(p, Decision(np.array([0.5, 0.5, 0.5, 0.5]), "none"))
    assert [s.tolist() for s in none] == [[2, 0], [], [0, 1]]
    best = chosen_labels(p, Decision(np.array([0.5, 0.5, 0.5, 0.5]), "best"))
    assert [s.tolist() for s in best] == [[2, 0], [1], [0, 1]]


@pytest.mark.parametrize("values", [[], ["a"], ["a|b", "c\\", "\\|", "|", "x"], NAMES, ["", "e"]])
def test_a_label_set_fits_one_cell_and_comes_back(values):
    if values == ["", "e"]:
        values = ["e", "\\"]
    assert split_cell(join_cell(values)) == values


def prediction(labels, true_label=("grain", "=cmd|' /C calc'!A0")):
    """What RowFormat reads of a `longdoc.predict.Prediction` of a multi-label head."""
    p = dict(zip(NAMES, [0.9, 0.7, 0.2, 0.4, 0.05]))
    chosen = [{"label": n, "probability": p[n], "threshold": 0.3} for n in labels]
    window = {"window": 0, "start": 0, "end": 4, "contribution": 1.0, "excerpt": "text"}
    return SimpleNamespace(source="-doc", label=labels[0] if labels else NAMES[0], probability=0.9, windows=3,
                           probabilities=p, true_label=true_label, labels=chosen, top_windows=None, top_terms=None,
                           explanations=[{"label": n, "top_windows": [window]} for n in labels])


def test_jsonl_rows_of_label_sets():
    rows = RowFormat("jsonl", NAMES, 2, 1, False, MULTI_LABEL)
    record = json.loads(rows.row(prediction(NAMES[:2])))
    assert list(record) == rows.keys() == ["id", "labels", "true_labels", "windows", "top", "explanations"]
    assert record["labels"] == [{"label": NAMES[0], "probability": 0.9, "threshold": 0.3},
                                {"label": "grain", "probability": 0.7, "threshold": 0.3}]
    assert record["true_labels"] == ["grain", NAMES[0]] and [t["label"] for t in record["top"]] == NAMES[:2]
    assert [e["label"] for e in record["explanations"]] == NAMES[:2]
    empty = json.loads(RowFormat("jsonl", NAMES, 0, 0, False, MULTI_LABEL).row(prediction([], None)))
    assert empty["labels"] == [] and empty["true_labels"] is None and len(empty["probabilities"]) == 5
    assert "explanations" not in empty
    assert list(rows.ids_in(io.BytesIO(rows.row(prediction(NAMES[:2])).encode()))) == ["-doc"]


def test_csv_rows_of_label_sets_join_and_escape_every_cell_a_spreadsheet_would_evaluate():
    rows = RowFormat("csv", NAMES, 0, 1, False, MULTI_LABEL)
    header = next(csv.reader([rows.header()]))
    assert header[:6] == ["id", "labels", "label_probabilities", "label_thresholds", "true_labels", "windows"]
    assert header[6:] == [f"p:{n}" for n in NAMES] + ["explanations"]
    line = rows.row(prediction([NAMES[0], "a|b\\c", "-trade"]))
    cells = next(csv.reader([line]))
    assert cells[0] == "'-doc" and cells[1].startswith("'=cmd")
    assert split_cell(cells[1][1:]) == [NAMES[0], "a|b\\c", "-trade"]
    assert cells[2] == "0.900000|0.200000|0.400000" and cells[3] == "0.300000|0.300000|0.300000"
    assert split_cell(cells[4]) == ["grain", NAMES[0]]  # starts with "grain": nothing to escape
    assert cells[5] == "3" and [float(c) for c in cells[6:11]] == [0.9, 0.7, 0.2, 0.4, 0.05]
    assert [e["label"] for e in json.loads(cells[11])] == [NAMES[0], "a|b\\c", "-trade"]
    first_true_escaped = next(csv.reader([rows.row(prediction(["grain"], ("-x",)))]))
    assert first_true_escaped[4] == "'-x" and first_true_escaped[1] == "grain"
    assert list(rows.ids_in(io.BytesIO(line.encode()))) == ["'-doc"]
    top = next(csv.reader([RowFormat("csv", NAMES, 2, 0, False, MULTI_LABEL).row(prediction(["grain"]))]))
    assert top[6:] == ["'=cmd|' /C calc'!A0", "0.900000", "grain", "0.700000"]


def test_a_single_label_row_of_a_multi_label_corpus_joins_its_true_labels():
    p = prediction(["grain"], ("grain", "-trade"))
    p.labels = None
    assert json.loads(RowFormat("jsonl", NAMES, 0, 0).row(p))["true_label"] == "grain|-trade"
