"""Evaluation: the report, refusal of mismatched caches, bad head files through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from synthetic import cli_error, lexical_cache, runners, write_synthetic_cache

from longdoc.configs import EvaluateConfig, TrainConfig
from longdoc.evaluate import run as run_evaluate
from longdoc.runtime.errors import UserError
from longdoc.train_head import run as run_train_head


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    train = write_synthetic_cache(folder / "train.h5", n_docs=120, seed=0)
    test = write_synthetic_cache(folder / "test.h5", n_docs=60, seed=1, window_counts=[1, 3, 10, 20] * 15)
    config = TrainConfig(train=str(train), out=str(folder / "head.pt"), pooling="mean", max_epochs=15, lr=1e-2,
                         progress=False, curve=False)
    run_train_head(config, log=lambda line: None)
    return folder / "head.pt", test, folder


def test_report_files_and_figures(trained, tmp_path):
    head, test, _ = trained
    result = run_evaluate(EvaluateConfig(head=str(head), cache=str(test), report=str(tmp_path / "report")))
    files = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert files == ["confusion_matrix.png", "metrics.json", "reliability.png", "report.html", "report.md"]
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    # calibration: each document's top probability against whether its top class is right
    assert metrics["calibration"]["predictions"] == 60 and 0.0 <= metrics["calibration"]["ece"] <= 1.0
    assert sum(b["count"] for b in metrics["calibration"]["bins"]) == 60
    assert "expected calibration error" in (tmp_path / "report" / "report.md").read_text()
    assert metrics["accuracy"] == pytest.approx(result.metrics["accuracy"]) and metrics["accuracy"] > 0.8
    assert np.asarray(metrics["confusion_matrix"]).sum() == 60
    assert np.trace(metrics["confusion_matrix"]) / 60 == pytest.approx(metrics["accuracy"])
    assert [c["class"] for c in metrics["per_class"]] == ["class0", "class1", "class2"]
    assert [(b["windows"], b["documents"]) for b in metrics["by_length"]] == [
        ("1", 15), ("2-4", 15), ("5-16", 15), (">16", 15)]
    assert "| class0 |" in (tmp_path / "report" / "report.md").read_text()


def test_macro_f1_matches_sklearn(trained):
    from sklearn.metrics import f1_score

    from longdoc.cache.reader import open_cache
    from longdoc.heads.batches import CacheDocuments, predict_logits
    from longdoc.heads.checkpoint import load_checkpoint

    head, test, _ = trained
    with open_cache(test) as cache:
        pred = predict_logits(load_checkpoint(head).head, CacheDocuments.from_cache(cache)).argmax(1)
        truth = cache.labels
    assert run_evaluate(EvaluateConfig(head=str(head), cache=str(test))).metrics["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"))


def test_a_fused_head_reports_each_branch_alone(tmp_path):
    """The marker word decides the class and the windows are noise: the report says the
    linear branch carries the head, and the head's answers are its branches combined."""
    from longdoc.cache.reader import open_cache
    from longdoc.heads.batches import CacheDocuments, predict_logits
    from longdoc.heads.checkpoint import load_checkpoint

    train, test = lexical_cache(tmp_path / "train.h5", seed=0), lexical_cache(tmp_path / "test.h5", seed=1)
    run_train_head(TrainConfig(train=str(train), out=str(tmp_path / "head.pt"), pooling="mean", max_epochs=3,
                               progress=False, curve=False), log=lambda line: None)
    result = run_evaluate(EvaluateConfig(head=str(tmp_path / "head.pt"), cache=str(test), report=str(tmp_path / "report")))
    branches = result.metrics["branches"]
    checkpoint = load_checkpoint(tmp_path / "head.pt")
    assert branches["mix"] == pytest.approx(checkpoint.head.mix.tolist())
    assert branches["linear (terms and the mean window vector)"]["accuracy"] == 1.0
    assert branches["windows (mean pooling)"]["accuracy"] < 0.7  # noise windows: near chance (1/3)
    with open_cache(test) as cache:
        logits = predict_logits(checkpoint.head, CacheDocuments.from_cache(cache, term_weights=checkpoint.terms))
        assert result.metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == cache.labels))
    assert "linear alone 1.0000" in result.line() and "windows alone" in result.line()
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| linear (terms and the mean window vector) | 1.0000 |" in report
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["branches"] == branches


def test_a_head_of_one_input_reports_no_branches(trained):
    head, test, _ = trained
    result = run_evaluate(EvaluateConfig(head=str(head), cache=str(test)))
    assert "branches" not in result.metrics and "alone" not in result.line()


@pytest.mark.parametrize("change, named", [
    (dict(model_fingerprint="a" * 64), "model_fingerprint"),
    (dict(chunk_tokens=512), "chunk_tokens"),
    (dict(stride=0), "stride"),
])
def test_cache_from_another_encoder_or_windows_is_refused(trained, tmp_path, change, named):
    head, _, _ = trained
    other = write_synthetic_cache(tmp_path / "other.h5", n_docs=12, **change)
    with pytest.raises(UserError, match=named):
        run_evaluate(EvaluateConfig(head=str(head), cache=str(other)))


def test_other_hidden_size_is_refused(trained, tmp_path):
    other = write_synthetic_cache(tmp_path / "wide.h5", n_docs=12, hidden=32)
    with pytest.raises(UserError, match="hidden_size"):
        run_evaluate(EvaluateConfig(head=str(trained[0]), cache=str(other)))


def test_labels_are_matched_by_name(trained, tmp_path):
    """A cache listing the same classes in another order is scored correctly; unknown classes are refused."""
    head, test, _ = trained
    base = run_evaluate(EvaluateConfig(head=str(head), cache=str(test))).metrics["accuracy"]
    import h5py

    reordered = tmp_path / "reordered.h5"
    reordered.write_bytes(test.read_bytes())
    with h5py.File(reordered, "r+") as f:
        f.attrs["label_names"] = json.dumps(["class2", "class0", "class1"])
        f["labels"][:] = np.array([1, 2, 0])[f["labels"][:]]  # same documents, renamed indices
    assert run_evaluate(EvaluateConfig(head=str(head), cache=str(reordered))).metrics["accuracy"] == pytest.approx(base)
    with h5py.File(reordered, "r+") as f:
        f.attrs["label_names"] = json.dumps(["class2", "class0", "sports"])
    with pytest.raises(UserError, match="sports"):
        run_evaluate(EvaluateConfig(head=str(head), cache=str(reordered)))


@pytest.mark.parametrize("runner", runners())
def test_mismatched_cache_is_one_line_naming_the_difference(runner, trained, tmp_path):
    head, _, _ = trained
    other = write_synthetic_cache(tmp_path / "other.h5", n_docs=12, chunk_tokens=128)
    code, lines = cli_error(runner, "evaluate", "--head", head, "--cache", other)
    assert code == 2 and len(lines) == 1 and "chunk_tokens: 256 (the head) vs 128 (the cache)" in lines[0], lines


@pytest.mark.parametrize("runner", runners())
@pytest.mark.parametrize("case", ["missing", "text", "cache", "other-torch-file", "truncated"])
def test_a_head_file_that_is_not_one_is_one_line(runner, case, trained, tmp_path):
    head, test, _ = trained
    path = {"missing": tmp_path / "nope.pt", "cache": test}.get(case, tmp_path / f"{case}.pt")
    if case == "text":
        path.write_text("not a head\n")
    elif case == "other-torch-file":
        torch.save({"weights": torch.zeros(3)}, path)
    elif case == "truncated":
        path.write_bytes(head.read_bytes()[:2000])
    code, lines = cli_error(runner, "evaluate", "--head", path, "--cache", test)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}"), lines


def test_evaluate_cli_prints_scores_and_writes_the_report(trained, tmp_path):
    import contextlib
    import io

    from longdoc.cli import main

    head, test, _ = trained
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["evaluate", "--head", str(head), "--cache", str(test), "--report", str(tmp_path / "r")]) == 0
    assert "accuracy" in out.getvalue() and "macro-F1" in out.getvalue()
    assert (tmp_path / "r" / "metrics.json").exists()


# Class names every consumer must show as given (`longdoc.settings.labels.check_label_names` accepts
# them): mathtext's `$`, HTML and Markdown syntax, a right-to-left script, the longest name.
HOSTILE_BUT_LEGAL = ["$x^$ or $y$", "<script>alert(1)</script> & | *b*",
                     "\u0631\u064a\u0627\u0636\u0629 " + "y" * 994]


def test_every_report_file_shows_any_legal_class_name(tmp_path):
    """report.md, report.html and the PNG from names that broke them: `$x^$` made matplotlib
    parse math and raise, a `|` split the Markdown table, a 1,000-character name pushed the
    matrix off the picture."""
    names = json.dumps(HOSTILE_BUT_LEGAL)
    train = write_synthetic_cache(tmp_path / "train.h5", n_docs=60, seed=0, label_names=names)
    test = write_synthetic_cache(tmp_path / "test.h5", n_docs=30, seed=1, label_names=names)
    run_train_head(TrainConfig(train=str(train), out=str(tmp_path / "head.pt"), pooling="mean", max_epochs=5,
                               lr=1e-2, progress=False, curve=False), log=lambda line: None)
    run_evaluate(EvaluateConfig(head=str(tmp_path / "head.pt"), cache=str(test), report=str(tmp_path / "report")))
    report = tmp_path / "report"
    assert (report / "confusion_matrix.png").stat().st_size > 1000
    html = (report / "report.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; | *b*" in html
    table = [line for line in (report / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert all(line.count("|") - line.count("\\|") == 6 for line in table[:5]), table  # five cells each
    assert "\\$x^\\$ or \\$y\\$" in table[2] and "\\<script\\>" in table[3] and "\\*b\\*" in table[3]
    assert [c["class"] for c in json.loads((report / "metrics.json").read_text())["per_class"]] == HOSTILE_BUT_LEGAL


# --- label sets ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multi_trained(tmp_path_factory):
    from synthetic import write_multilabel_cache

    folder = tmp_path_factory.mktemp("eval-multi")
    train = write_multilabel_cache(folder / "train.h5", n_docs=200, n_labels=5, seed=0, texts=True)
    run_train_head(TrainConfig(train=str(train), out=str(folder / "head.pt"), pooling="mean", max_epochs=10, lr=1e-2,
                               progress=False, curve=False), log=lambda line: None)
    return folder / "head.pt", folder


def test_a_multi_label_report_scores_label_sets_as_scikit_learn_does(multi_trained, tmp_path):
    from sklearn.metrics import f1_score, hamming_loss
    from synthetic import write_multilabel_cache

    from longdoc.cache.reader import open_cache
    from longdoc.heads.batches import CacheDocuments, predict_logits
    from longdoc.heads.checkpoint import load_checkpoint

    head, _ = multi_trained
    test = write_multilabel_cache(tmp_path / "test.h5", n_docs=60, n_labels=5, seed=1, texts=True,
                                  window_counts=[1, 3, 10, 20] * 15)
    result = run_evaluate(EvaluateConfig(head=str(head), cache=str(test), report=str(tmp_path / "report")))
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "label_f1.png", "metrics.json", "reliability.png", "report.html", "report.md"]
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    checkpoint = load_checkpoint(head)
    with open_cache(test) as cache:
        truth = cache.label_matrix()
        documents = CacheDocuments.from_cache(cache, term_weights=checkpoint.terms)
        probabilities = torch.sigmoid(torch.from_numpy(predict_logits(checkpoint.head, documents))).numpy()
    predicted = checkpoint.decision.apply(probabilities)
    assert metrics["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro")) and metrics["micro_f1"] > 0.9
    assert metrics["samples_f1"] == pytest.approx(f1_score(truth, predicted, average="samples", zero_division=1))
    assert metrics["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
    assert [c["support"] for c in metrics["per_label"]] == truth.sum(0).tolist()
    assert [c["threshold"] for c in metrics["per_label"]] == pytest.approx(checkpoint.decision.thresholds.tolist())
    assert metrics["calibration"]["predictions"] == truth.size and metrics["unseen_labels"]["labels"] == 0
    assert [(b["windows"], b["documents"]) for b in metrics["by_length"]] == [
        ("1", 15), ("2-4", 15), ("5-16", 15), (">16", 15)]
    assert set(metrics["branches"]) == {"mix", "windows (mean pooling)", "linear (terms and the mean window vector)"}
    report = (tmp_path / "report" / "report.md").read_text()
    assert "micro-F1 **" in report and "| class0 |" in report and "expected calibration error" in report
    assert result.metrics["micro_f1"] == metrics["micro_f1"] and "micro-F1" in result.line()


def test_labels_the_head_never_saw_are_scored_as_missed_and_counted(multi_trained, tmp_path):
    from synthetic import write_multilabel_cache

    head, _ = multi_trained
    sets = [[0], [0, 5], [6], [1, 2], [], [5, 6]] * 5  # labels 5 and 6: class5 and class6, unknown to the head
    test = write_multilabel_cache(tmp_path / "test.h5", n_labels=7, label_sets=sets, texts=True)
    result = run_evaluate(EvaluateConfig(head=str(head), cache=str(test), report=str(tmp_path / "report")))
    unseen = result.metrics["unseen_labels"]
    assert unseen == {"labels": 2, "names": ["class5", "class6"], "documents": 15, "missed": 20}
    per_label = {c["label"]: c for c in result.metrics["per_label"]}
    assert per_label["class5"]["recall"] == 0.0 and per_label["class5"]["support"] == 10
    assert per_label["class5"]["threshold"] is None and "class5" in result.metrics["never_predicted"]
    true_pairs = sum(len(s) for s in sets)
    assert result.metrics["micro_f1"] <= 2 * (true_pairs - 20) / (2 * true_pairs - 20) + 1e-9  # 20 pairs missed
    assert "2 labels unseen in training, scored as missed" in result.line()
    assert "scored as missed" in (tmp_path / "report" / "report.md").read_text()


def test_a_multi_label_report_shows_any_legal_label_name(tmp_path):
    from synthetic import write_multilabel_cache

    names = json.dumps(HOSTILE_BUT_LEGAL)
    n = len(HOSTILE_BUT_LEGAL)
    train = write_multilabel_cache(tmp_path / "train.h5", n_docs=80, n_labels=n, seed=0, label_names=names)
    test = write_multilabel_cache(tmp_path / "test.h5", n_docs=30, n_labels=n, seed=1, label_names=names)
    run_train_head(TrainConfig(train=str(train), out=str(tmp_path / "head.pt"), pooling="mean", max_epochs=3,
                               progress=False, curve=False), log=lambda line: None)
    run_evaluate(EvaluateConfig(head=str(tmp_path / "head.pt"), cache=str(test), report=str(tmp_path / "report")))
    report = tmp_path / "report"
    assert (report / "label_f1.png").stat().st_size > 1000 and (report / "reliability.png").stat().st_size > 1000
    lines = (report / "report.md").read_text().splitlines()
    table = lines[lines.index("| label | precision | recall | F1 | support | predicted | threshold |") + 2:][:n]
    assert all(line.count("|") - line.count("\\|") == 8 for line in table), table  # seven cells each
    assert "\\<script\\>" in "".join(table) and "<script>" not in "".join(lines)
    assert [c["label"] for c in json.loads((report / "metrics.json").read_text())["per_label"]] == HOSTILE_BUT_LEGAL
    html = (report / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
