"""finetune on a multi-label corpus (label sets): every window learns its document's label
set with train-head's loss for label sets (BCE, pos_weight per label), validated on an
iterative split; the model folder stays a plain encoder that embed reads."""

import json
import random

import numpy as np
import pytest
from assertions import one_line_error, same_weights
from synthetic import TOPICS, WORDS, make_class_folders
from test_finetune import stop_after_first_epoch, weights

from longdoc import cli
from longdoc.configs import FinetuneConfig
from longdoc.finetune import load_inputs
from longdoc.training.split import validation_split

LABELS = (*TOPICS, "rare")  # "rare": a label of one document


def write_label_sets(path, n_docs=36, seed=0):
    """JSONL records whose `labels` lists say which topics' words each text holds; one document
    holds label "rare" (with a topic beside it), a few none."""
    rng = random.Random(seed)
    names = list(TOPICS)
    lines = []
    for i in range(n_docs):
        chosen = [] if i % 9 == 8 else sorted(rng.sample(names, 1 + i % 2))
        if i == 5:
            chosen = sorted({*chosen, "rare"})
        words = [w for label in chosen if label in TOPICS for w in TOPICS[label].split()] or WORDS[20:26]
        text = " ".join(rng.choice(words) for _ in range(20 + 15 * (i % 4)))
        lines.append(json.dumps({"id": f"d{i:03d}", "text": text, "labels": chosen}))
    path.write_text("\n".join(lines) + "\n")
    return path


def args(model, corpus, out, *extra):
    return ["finetune", "--data", str(corpus), "--model", str(model), "--out", str(out), "--chunk-tokens", "32",
            "--stride", "4", "--batch-tokens", "256", "--val-fraction", "0.25", "--precision", "fp32",
            "--no-progress", "--unfreeze-top", "1", "--lr", "3e-3", "--head-lr", "3e-2", *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_label_sets(tmp_path_factory.mktemp("ftml") / "sets.jsonl")


def test_label_sets_are_split_as_train_head_splits_them(tiny_bert, corpus):
    config = FinetuneConfig(data=str(corpus), model=str(tiny_bert), out="unused", val_fraction=0.25, chunk_tokens=32,
                            stride=4, batch_tokens=256, precision="fp32", progress=False)
    inputs = load_inputs(config)
    assert inputs.multi_label and inputs.weighted  # on by default for label sets, as in train-head
    assert inputs.labels.shape == (36, len(LABELS)) and inputs.labels.dtype == bool
    assert inputs.corpus.label_names == sorted(LABELS)
    rare = inputs.corpus.label_names.index("rare")
    assert inputs.labels[inputs.train_docs, rare].sum() == 1  # the label of one document is learned from
    want = validation_split(inputs.labels, inputs.corpus.doc_ids, config, np.random.default_rng(0))
    assert [d.tolist() for d in want] == [inputs.train_docs.tolist(), inputs.val_docs.tolist()]
    task = inputs.task(config)
    assert task.model.classifier.out_features == len(LABELS)
    assert task.trainer.pos_weight.shape == (len(LABELS),) and float(task.trainer.pos_weight.max()) > 1.0


def test_finetune_learns_label_sets_and_writes_a_plain_encoder(tiny_bert, corpus, tmp_path, capsys):
    out = tmp_path / "ft"
    assert cli.main(args(tiny_bert, corpus, out, "--epochs", "4", "--patience", "4", "--seed", "3")) == 0
    captured = capsys.readouterr()
    summary = captured.out.strip().splitlines()[-1]
    assert "label sets" in summary and "micro-F1" in summary, (captured.out, captured.err)
    record = json.loads((out / "finetune.json").read_text())
    assert record["task"] == "multi_label" and record["class_weights"] is True
    history = record["history"]
    assert len(history) == 4 and all(np.isfinite(h["train_loss"]) for h in history)  # it falls: tests/training
    assert {"val_micro_f1", "val_macro_f1", "val_accuracy", "val_window_loss"} <= set(history[0])
    best = history[record["best_epoch"] - 1]
    assert record["val_micro_f1"] == best["val_micro_f1"] and 0.0 <= best["val_micro_f1"] <= 1.0
    assert record["val_macro_f1"] == max(h["val_macro_f1"] for h in history)  # the epoch kept
    assert (out / "curve.png").exists() and (out / "config.json").exists()

    from transformers import AutoModel
    AutoModel.from_pretrained(out)  # a plain encoder: no classifier in the folder
    cache = tmp_path / "c.h5"
    assert cli.main(["embed", "--data", str(corpus), "--model", str(out), "--out", str(cache), "--chunk-tokens",
                     "32", "--stride", "4", "--precision", "fp32", "--no-progress"]) == 0
    # Stage two on that cache holds out the documents finetune held out (its seed 3 and fraction, in
    # the cache's encoder_lineage), whatever its own seed.
    from longdoc.cache.reader import open_cache
    from longdoc.configs import TrainConfig
    from longdoc.train_head import _held_out_by_finetune

    held_out = load_inputs(FinetuneConfig(data=str(corpus), model=str(tiny_bert), out="unused", val_fraction=0.25,
                                          seed=3, chunk_tokens=32, stride=4, precision="fp32")).val_docs
    with open_cache(cache) as opened:
        _, val_docs = _held_out_by_finetune(TrainConfig(train=str(cache), val_fraction=0.25), opened)
    assert val_docs.tolist() == held_out.tolist()
    head = tmp_path / "head.pt"
    assert cli.main(["train-head", "--train", str(cache), "--out", str(head), "--epochs", "2", "--val-fraction",
                     "0.25", "--no-progress"]) == 0
    assert head.exists()


def test_an_interrupted_label_set_run_resumes_to_the_same_model(tiny_bert, corpus, tmp_path, capsys,
                                                                monkeypatch):
    reference, out = tmp_path / "reference", tmp_path / "ft"
    assert cli.main(args(tiny_bert, corpus, reference, "--epochs", "2", "--patience", "2")) == 0
    with monkeypatch.context() as patch:
        stop_after_first_epoch(patch)
        assert cli.main(args(tiny_bert, corpus, out, "--epochs", "2", "--patience", "2")) == 130
    assert not out.exists()
    capsys.readouterr()
    assert cli.main(args(tiny_bert, corpus, out, "--epochs", "2", "--patience", "2")) == 0
    assert "resuming from" in capsys.readouterr().err
    same_weights(weights(out), weights(reference))
    history = [json.loads((d / "finetune.json").read_text())["history"] for d in (reference, out)]
    assert [h["val_micro_f1"] for h in history[0]] == pytest.approx([h["val_micro_f1"] for h in history[1]])


def test_class_weights_are_for_label_sets_and_unlabelled_corpora_are_refused(tiny_bert, tmp_path, capsys):
    folders = make_class_folders(tmp_path / "classes", docs_per_class=4)
    assert cli.main(args(tiny_bert, folders, tmp_path / "a", "--class-weights")) == 2
    one_line_error(capsys.readouterr().err, "--class-weights: finetune weighs label sets only")
    empty = tmp_path / "none.jsonl"
    empty.write_text('{"text": "space rocket", "labels": []}\n{"text": "god church", "labels": []}\n')
    assert cli.main(args(tiny_bert, empty, tmp_path / "b")) == 2
    one_line_error(capsys.readouterr().err, "no document has a label")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
