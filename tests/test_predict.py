"""Predict: raw text -> windows -> encoder -> head, with the head's recorded settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from checkout import run_cli
from synthetic import cli_error, make_class_folders, runners

from longdoc.cache.reader import open_cache
from longdoc.configs import EmbedConfig, PredictConfig, TrainConfig
from longdoc.embed import run as run_embed
from longdoc.heads.batches import CacheDocuments, predict_logits
from longdoc.heads.checkpoint import load_checkpoint
from longdoc.predict import run as run_predict
from longdoc.runtime.errors import UserError
from longdoc.train_head import run as run_train_head


def embed_and_train(folder, model, chunk_tokens, stride, pooling="attention", precision="fp32"):
    """A corpus, its cache and a head. Embedded in fp32 unless told, whatever the CPU: under bf16
    autocast a document's vectors depend at the 1e-3 level on which windows share its batch, and
    the tests built on this compare predict's numbers with the cache's and across batchings."""
    corpus = make_class_folders(folder / "corpus")
    cache = folder / "train.h5"
    run_embed(EmbedConfig(out=cache, data=str(corpus), model=model, chunk_tokens=chunk_tokens, stride=stride,
                          precision=precision, progress=False, device="cpu"))
    run_train_head(TrainConfig(train=str(cache), out=str(folder / "head.pt"), pooling=pooling, max_epochs=3,
                               val_fraction=0.2, progress=False, curve=False), log=lambda line: None)
    return corpus, cache, folder / "head.pt"


def cache_probabilities(head, cache):
    checkpoint = load_checkpoint(head)
    with open_cache(cache) as c:
        logits = predict_logits(checkpoint.head, CacheDocuments.from_cache(c, term_weights=checkpoint.terms))
        ids = c.doc_ids()
    return ids, torch.from_numpy(logits).softmax(-1).numpy(), checkpoint.label_names


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_bert):
    return embed_and_train(tmp_path_factory.mktemp("tiny-predict"), str(tiny_bert), chunk_tokens=32, stride=4)


def test_predict_matches_the_head_on_the_cache(tiny):
    """Same windows, same encoder, same settings: predictions equal the head applied to the cached vectors."""
    corpus, cache, head = tiny
    ids, probabilities, names = cache_probabilities(head, cache)
    predictions = run_predict(PredictConfig(head=str(head), files=tuple([str(corpus / doc_id) for doc_id in ids]), device="cpu", batch_tokens=2048)).predictions
    got = np.array([p.probability for p in predictions])
    np.testing.assert_allclose(got, probabilities.max(1), atol=2e-3)
    assert [p.label for p in predictions] == [names[k] for k in probabilities.argmax(1)]
    assert [p.windows for p in predictions] == open_cache(cache).window_counts.tolist()


def test_stdin_and_json(tiny, monkeypatch, capsys):
    import io
    import sys

    from longdoc.cli import main

    corpus, _, head = tiny
    text = (corpus / "space" / "004.txt").read_text()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    assert main(["predict", "--head", str(head), "--json", "--device", "cpu", "-",
                 str(corpus / "space" / "004.txt")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in records] == ["-", str(corpus / "space" / "004.txt")]
    assert records[0]["label"] == records[1]["label"]
    assert records[0]["probability"] == pytest.approx(records[1]["probability"], abs=1e-4)


def test_an_encoder_that_changed_is_refused(tiny, tmp_path):
    _, _, head = tiny
    payload = torch.load(head, weights_only=True)
    payload["encoder"]["model_fingerprint"] = "0" * 64
    torch.save(payload, tmp_path / "changed.pt")
    with pytest.raises(UserError, match="fingerprint"):
        run_predict(PredictConfig(head=str(tmp_path / "changed.pt"), files=tuple([str(head)]), device="cpu")).predictions


@pytest.mark.parametrize("runner", runners())
def test_bad_input_is_one_line(runner, tiny, tmp_path):
    corpus, cache, head = tiny
    (tmp_path / "text.pt").write_text("hello")
    for args in (["--head", head, tmp_path / "missing.txt"],
                 ["--head", tmp_path / "text.pt", corpus / "space" / "000.txt"],
                 ["--head", cache, corpus / "space" / "000.txt"]):
        code, lines = cli_error(runner, "predict", "--device", "cpu", *args)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines


@pytest.mark.slow
def test_end_to_end_on_the_packaged_minilm_at_the_machines_precision(tmp_path, minilm):
    """`--precision auto`: bf16 autocast on a CPU with native bf16, else fp32."""
    corpus, cache, head = embed_and_train(tmp_path, minilm, chunk_tokens=128, stride=16, precision="auto")
    ids, probabilities, names = cache_probabilities(head, cache)
    files = [corpus / doc_id for doc_id in ids[:6]]
    result = run_cli("predict", "--head", head, "--json", *files, check=True)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["source"] for r in records] == [str(f) for f in files]
    assert [r["label"] for r in records] == [names[k] for k in probabilities[:6].argmax(1)]
    # bf16 autocast batches windows differently here than during embed: allow its rounding
    np.testing.assert_allclose([r["probability"] for r in records], probabilities[:6].max(1), atol=2e-2)
