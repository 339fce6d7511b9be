"""--precision bf16-true: the whole encoder cast to bf16 once, no autocast. What it changes,
how close it stays to fp32, and where `auto` picks it."""

import numpy as np
import pytest
import torch
from precision_checks import cosines, lively, random_windows

import longdoc.encoding.encoder as encoder_module
from longdoc.encoding.batches import encode_windows
from longdoc.encoding.encoder import autocast, load_encoder, resolve_precision
from longdoc.runtime.errors import UserError

# At 10x (`precision_checks.lively`: every layer then changes the vectors), bf16-true (LayerNorm
# and softmax in bf16 too) stays at cosine >= 0.99992 / 0.99996 of fp32 here ([CLS] / mean), measured.
MIN_COSINE = 0.999


def test_every_weight_is_bf16_autocast_is_off_and_the_fingerprint_is_the_fp32_models(tiny_bert):
    fp32, cast = load_encoder(str(tiny_bert), "cpu", "fp32"), load_encoder(str(tiny_bert), "cpu", "bf16-true")
    assert cast.precision == "bf16-true" and cast.fingerprint == fp32.fingerprint
    assert {p.dtype for p in cast.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}
    with cast.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "bf16"):  # bf16 stays autocast over fp32 weights
        assert torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("window_vector", ["cls", "mean"])
def test_bf16_true_window_vectors_are_fp32_arrays_close_to_fp32(tiny_bert, window_vector):
    fp32 = lively(load_encoder(str(tiny_bert), "cpu", "fp32", window_vector))
    cast = load_encoder(str(tiny_bert), "cpu", "fp32", window_vector)
    lively(cast).model.to(torch.bfloat16)  # the same scaled weights, then cast as load_encoder does
    cast.precision = "bf16-true"
    got, want = encode_windows(cast, random_windows(), 256), encode_windows(fp32, random_windows(), 256)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert cosines(got, want).min() >= MIN_COSINE
    assert not np.array_equal(got, want)  # bf16 really ran
    autocast_run = lively(load_encoder(str(tiny_bert), "cpu", "bf16", window_vector))
    assert not np.array_equal(got, encode_windows(autocast_run, random_windows(), 256))  # another precision


@pytest.mark.parametrize("picks,bf16,training,want", [
    (False, True, False, "bf16"),  # autocast, as before the flip
    (True, True, False, "bf16-true"),
    (True, False, False, "fp32"),  # without native bf16: fp32, as before
    (True, True, True, "bf16"),  # finetune trains under autocast, never on a cast model
    (True, False, True, "fp32"),
])
def test_auto_on_a_cpu(monkeypatch, picks, bf16, training, want):
    monkeypatch.setattr(encoder_module, "AUTO_PICKS_INT8", False)
    monkeypatch.setattr(encoder_module, "AUTO_PICKS_BF16_TRUE", picks)
    monkeypatch.setattr(encoder_module, "cpu_has_native_bf16", lambda: bf16)
    assert resolve_precision("auto", torch.device("cpu"), training=training) == want


def test_auto_for_training_never_picks_int8_either(monkeypatch):
    monkeypatch.setattr(encoder_module, "AUTO_PICKS_INT8", True)
    monkeypatch.setattr(encoder_module, "cpu_has_vnni", lambda: True)
    monkeypatch.setattr(encoder_module, "int8_problem", lambda: None)
    monkeypatch.setattr(encoder_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", torch.device("cpu"), training=True) == "bf16"


def test_bf16_true_is_refused_on_a_gpu_without_bf16_in_one_line(monkeypatch, tiny_bert):
    monkeypatch.setattr(encoder_module, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(UserError, match="--precision bf16-true: this GPU has no bf16 support; use fp16") as error:
        load_encoder(str(tiny_bert), "cuda", "bf16-true")
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_bf16_true_minilm_windows_stay_close_to_fp32(minilm):
    """MiniLM on real text: 0.99995 mean on 20 Newsgroups (docs/BENCHMARKS.md S1c)."""
    from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize

    fp32 = load_encoder(minilm, "cpu", "fp32", "mean")
    cast = load_encoder(minilm, "cpu", "bf16-true", "mean")
    text = ("The shuttle's main engines were throttled down during the ascent, and the crew reported "
            "that the orbit was nominal before the payload bay doors opened. ") * 30
    spec = WindowSpec(256, 32, SpecialTokens.of(fp32.tokenizer))
    wins = spec.windows(tokenize(fp32.tokenizer, [text])[0])
    assert cosines(encode_windows(cast, wins, 1024), encode_windows(fp32, wins, 1024)).min() >= 0.9995
