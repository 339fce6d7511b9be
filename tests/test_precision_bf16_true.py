"""--precision bf16-true through the stages: embed records it, a head reads it beside the other
float precisions, predict runs the head's encoder cast to bf16, finetune refuses it (tiny
random BERT, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from assertions import refused
from precision_checks import cache_probabilities, fp32_and_precision_caches

from longdoc.cache.reader import open_cache
from longdoc.configs import EvaluateConfig, FinetuneConfig, PredictConfig
from longdoc.evaluate import run as run_evaluate
from longdoc.inference.predictor import Predictor
from longdoc.predict import run as run_predict
from longdoc.runtime.errors import UserError
from longdoc.settings.model import precision_differences


@pytest.fixture(scope="module")
def caches(tmp_path_factory, tiny_bert):
    """A class-folder corpus embedded at fp32 and at bf16-true, and a head trained on the latter."""
    return fp32_and_precision_caches(tmp_path_factory.mktemp("bf16-true"), tiny_bert, "bf16-true")


def test_the_cache_records_bf16_true_and_holds_fp32_vectors_close_to_fp32s(caches):
    _, fp32, cast, _ = caches
    with open_cache(fp32) as a, open_cache(cast) as b:
        assert b.attrs["precision"] == "bf16-true"
        assert b.attrs["model_fingerprint"] == a.attrs["model_fingerprint"]
        assert b.window_counts.tolist() == a.window_counts.tolist()
        got, want = b.embeddings[:], a.embeddings[:]
    assert got.dtype == np.float32
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= 0.999 and not np.array_equal(got, want)


def test_a_bf16_true_head_reads_a_float_cache_and_is_refused_an_int8_one(caches, tmp_path):
    _, fp32, _, head = caches
    assert run_evaluate(EvaluateConfig(head=str(head), cache=str(fp32))).metrics["accuracy"] >= 0
    assert precision_differences({"precision": "bf16"}, {"precision": "bf16-true"}) == []
    assert precision_differences({"precision": "int8"}, {"precision": "bf16-true"}) == [
        "precision: 'bf16-true' (this run) vs 'int8' (the file), whose vectors a head does not mix"]


def test_predict_runs_the_heads_encoder_cast_to_bf16(caches):
    corpus, _, cast, head = caches
    predictor = Predictor(str(head), "cpu")
    assert predictor.encoder.precision == "bf16-true"
    assert {p.dtype for p in predictor.encoder.model.parameters()} == {torch.bfloat16}
    ids, want = cache_probabilities(head, cast)
    # The same windows in other batches: bf16 rounding depends on the batch's padding and kernels.
    predictions = run_predict(PredictConfig(head=str(head), files=tuple(str(corpus / i) for i in ids),
                                            device="cpu", batch_tokens=256)).predictions
    np.testing.assert_allclose([p.probability for p in predictions], want.max(1), atol=2e-2)


def test_finetune_refuses_bf16_true_in_one_line(capsys):
    with pytest.raises(UserError, match="cannot be bf16-true for finetune: training needs fp32 weights"):
        FinetuneConfig(precision="bf16-true")
    refused(capsys, ["finetune", "--precision", "bf16-true"], "--precision", "training needs fp32 weights")


def test_embed_bf16_true_on_the_command_line(caches, tiny_bert, tmp_path):
    from longdoc import cli

    out = tmp_path / "c.h5"
    assert cli.main(["embed", "--data", str(caches[0]), "--model", str(tiny_bert), "--chunk-tokens", "32",
                     "--stride", "8", "--precision", "bf16-true", "--no-progress", "--out", str(out)]) == 0
    with open_cache(out) as cache:
        assert cache.attrs["precision"] == "bf16-true"
