"""--precision int8 through the stages: embed records it, heads keep to it, predict runs it,
finetune refuses it (tiny random BERT, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from assertions import refused
from precision_checks import cache_probabilities, fp32_and_precision_caches
from synthetic import tiny_embed_config as config

from longdoc.cache.reader import open_cache
from longdoc.configs import EvaluateConfig, FinetuneConfig, PredictConfig, TrainConfig
from longdoc.embed import run as run_embed
from longdoc.encoding.int8 import int8_problem
from longdoc.evaluate import run as run_evaluate
from longdoc.inference.predictor import Predictor
from longdoc.predict import run as run_predict
from longdoc.runtime.errors import UserError
from longdoc.train_head import run as run_train_head

needs_int8 = pytest.mark.skipif(int8_problem() is not None, reason=f"no int8 kernels here: {int8_problem()}")
# Window vectors' cosine to fp32 on the tiny BERT, whose layers barely move them: 0.9999999
# measured; tests/encoding/test_int8.py tests the closeness where the layers matter.
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def caches(tmp_path_factory, tiny_bert):
    """A class-folder corpus embedded at fp32 and at int8, and a head trained on the int8 cache."""
    return fp32_and_precision_caches(tmp_path_factory.mktemp("int8"), tiny_bert, "int8",
                                     embed_other=int8_problem() is None)


@needs_int8
def test_int8_cache_records_int8_and_holds_fp32_vectors_close_to_fp32s(caches):
    _, fp32, int8, _ = caches
    with open_cache(fp32) as a, open_cache(int8) as b:
        assert b.attrs["precision"] == "int8" and a.attrs["precision"] == "fp32"
        assert b.attrs["model_fingerprint"] == a.attrs["model_fingerprint"]  # one model, run two ways
        assert b.window_counts.tolist() == a.window_counts.tolist()  # the same windows
        got, want = b.embeddings[:], a.embeddings[:]
    assert got.dtype == np.float32
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= MIN_COSINE and not np.array_equal(got, want)


@needs_int8
def test_a_head_trained_on_int8_is_refused_a_float_cache_and_the_other_way_round(caches, tmp_path):
    _, fp32, int8, head = caches
    with pytest.raises(UserError, match=r"precision: 'int8' \(the head\) vs 'fp32' \(the cache\)"):
        run_evaluate(EvaluateConfig(head=str(head), cache=str(fp32)))
    assert run_evaluate(EvaluateConfig(head=str(head), cache=str(int8))).metrics["accuracy"] >= 0
    with pytest.raises(UserError, match="--val .* was made differently from --train .*precision"):
        run_train_head(TrainConfig(train=str(int8), val=str(fp32), out=str(tmp_path / "h.pt"), pooling="mean",
                                   max_epochs=1, progress=False, curve=False), log=lambda line: None)


def test_float_precisions_stay_interchangeable_for_a_head(caches, tmp_path, tiny_bert):
    """bf16 and fp32 caches agree to cosine >= 0.9999 (README): a head reads either, as before int8."""
    corpus, fp32, _, _ = caches
    bf16 = tmp_path / "bf16.h5"
    run_embed(config(tiny_bert, corpus, bf16, precision="bf16"))
    head = tmp_path / "head.pt"
    run_train_head(TrainConfig(train=str(bf16), out=str(head), pooling="mean", max_epochs=1, val_fraction=0.2,
                               progress=False, curve=False), log=lambda line: None)
    assert run_evaluate(EvaluateConfig(head=str(head), cache=str(fp32))).metrics["accuracy"] >= 0


@needs_int8
def test_predict_embeds_at_the_heads_int8_on_the_cpu(caches):
    corpus, _, int8, head = caches
    assert Predictor(str(head), "auto").encoder.precision == "int8"
    ids, want = cache_probabilities(head, int8)
    # Same windows and int8 kernels, but not the same batches (embed packed 16-window blocks):
    # activations are quantized per batch, so a probability moves by up to 0.026 here (fp32:
    # 2e-3, tests/test_predict.py). The precision itself is checked above: on this tiny BERT
    # int8 and fp32 vectors are too alike for probabilities to tell them apart.
    predictions = run_predict(PredictConfig(head=str(head), files=tuple(str(corpus / i) for i in ids),
                                            device="cpu", batch_tokens=256)).predictions
    np.testing.assert_allclose([p.probability for p in predictions], want.max(1), atol=5e-2)


@needs_int8
def test_predict_refuses_cuda_for_an_int8_head(caches):
    with pytest.raises(UserError, match="embedded at int8, which runs only on CPUs; pass --device cpu"):
        Predictor(str(caches[3]), "cuda")


def test_finetune_refuses_int8_in_one_line(capsys):
    with pytest.raises(UserError, match="training needs fp32 weights"):
        FinetuneConfig(precision="int8")
    refused(capsys, ["finetune", "--precision", "int8"], "--precision", "training needs fp32 weights")


@needs_int8
def test_embed_int8_on_the_command_line(caches, tiny_bert, tmp_path):
    from longdoc import cli

    corpus = caches[0]
    out = tmp_path / "c.h5"
    assert cli.main(["embed", "--data", str(corpus), "--model", str(tiny_bert), "--chunk-tokens", "32",
                     "--stride", "8", "--precision", "int8", "--no-progress", "--out", str(out)]) == 0
    with open_cache(out) as cache:
        assert cache.attrs["precision"] == "int8"


@pytest.mark.slow
@needs_int8
def test_torchrun_shards_at_int8_join_into_the_one_process_cache(caches, tiny_bert, tmp_path):
    """Two CPU ranks embed their shards at int8 as one process does: same documents, order and
    windows, precision int8, vectors alike up to the activation scales of other batches."""
    import os
    import subprocess
    import sys

    from checkout import ROOT

    corpus, _, int8, _ = caches
    out = tmp_path / "joined.h5"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "cli.py"), "embed", "--out", str(out), "--no-progress", "--data", str(corpus), "--model",
               str(tiny_bert), "--chunk-tokens", "32", "--stride", "8", "--batch-tokens", "256", "--precision",
               "int8", "--device", "cpu", "--block-windows", "16"]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    with open_cache(out) as got, open_cache(int8) as want:
        assert got.attrs["precision"] == "int8"
        assert got.doc_ids() == want.doc_ids() and got.window_counts.tolist() == want.window_counts.tolist()
        a, b = got.embeddings[:], want.embeddings[:]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= MIN_COSINE
