"""int8 Linear layers on the CPU: what they replace, how close they stay to fp32, when refused."""

import numpy as np
import pytest
import torch
from precision_checks import cosines, lively, random_windows

import longdoc.encoding.encoder as encoder_module
from longdoc.encoding.batches import encode_windows
from longdoc.encoding.cls_forward import ClsForward
from longdoc.encoding.encoder import load_encoder, resolve_precision
from longdoc.encoding.int8 import cpu_has_vnni, int8_problem, quantize_linear_layers
from longdoc.runtime.errors import UserError

pytestmark = pytest.mark.skipif(int8_problem() is not None, reason=f"no int8 kernels here: {int8_problem()}")

# At 10x (`precision_checks.lively`), int8 as run here stays >= 0.9996 of fp32 for every window
# (7-bit activations or per-tensor weights: >= 0.9990), while a skipped layer or a wrong scale
# falls far below; 0.999 takes every engine's rounding.
MIN_COSINE = 0.999


def int8_of(encoder, **options):
    quantize_linear_layers(encoder.model, **options)
    return encoder


def test_every_linear_layer_runs_in_int8_and_the_fingerprint_is_the_float_models(tiny_bert):
    fp32, int8 = load_encoder(str(tiny_bert), "cpu", "fp32"), load_encoder(str(tiny_bert), "cpu", "int8")
    assert int8.precision == "int8" and int8.fingerprint == fp32.fingerprint
    assert torch.nn.Linear not in {type(m) for m in int8.model.modules()}  # none left in float
    linears = [m for m in int8.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(linears) == sum(isinstance(m, torch.nn.Linear) for m in fp32.model.modules())
    assert int8.model.encoder.layer[0].attention.self.query in linears


@pytest.mark.parametrize("window_vector", ["cls", "mean"])
def test_int8_window_vectors_are_close_to_fp32(tiny_bert, window_vector):
    fp32 = lively(load_encoder(str(tiny_bert), "cpu", "fp32", window_vector))
    int8 = int8_of(lively(load_encoder(str(tiny_bert), "cpu", "fp32", window_vector)))
    got, want = encode_windows(int8, random_windows(), 256), encode_windows(fp32, random_windows(), 256)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert cosines(got, want).min() >= MIN_COSINE
    assert not np.array_equal(got, want)  # int8 really ran


def test_load_encoder_at_int8_embeds_like_fp32(tiny_bert):
    fp32, int8 = load_encoder(str(tiny_bert), "cpu", "fp32"), load_encoder(str(tiny_bert), "cpu", "int8")
    got, want = encode_windows(int8, random_windows(), 256), encode_windows(fp32, random_windows(), 256)
    assert cosines(got, want).min() >= 0.9999 and not np.array_equal(got, want)


@pytest.mark.skipif(not cpu_has_vnni(), reason="8-bit activations are for CPUs with VNNI")
@pytest.mark.parametrize("window_vector", ["cls", "mean"])
def test_8_bit_activations_are_closer_to_fp32_than_torchs_7(tiny_bert, window_vector):
    """Why `Int8Linear` exists; at 25x every layer moves the vectors a lot."""
    fp32 = lively(load_encoder(str(tiny_bert), "cpu", "fp32", window_vector), 25)
    want = encode_windows(fp32, random_windows(), 256)
    loss = {}
    for full_range in (True, False):
        int8 = int8_of(lively(load_encoder(str(tiny_bert), "cpu", "fp32", window_vector), 25), full_range=full_range)
        loss[full_range] = 1 - cosines(encode_windows(int8, random_windows(), 256), want)
    assert loss[True].mean() < loss[False].mean() / 2 and loss[True].max() < loss[False].max()


def test_the_cls_only_last_layer_runs_on_int8_layers(tiny_bert):
    """The [CLS]-only last layer quantizes only [CLS]'s activations for Q, the output and the
    feed-forward block, so it matches the full int8 forward to int8 rounding, not to 1e-5."""
    int8 = int8_of(lively(load_encoder(str(tiny_bert), "cpu", "fp32")))
    forward = ClsForward(int8.model)
    assert forward.shortcut
    torch.manual_seed(0)
    ids = torch.randint(5, 60, (5, 40))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    with torch.inference_mode():
        got = forward(ids, mask)
        full = int8.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    assert torch.nn.functional.cosine_similarity(got, full).min() >= MIN_COSINE


def test_torchs_deprecation_notes_are_not_shown(tiny_bert):
    """torch.ao.quantization warns at every call that it is deprecated; a command prints none of it."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_encoder(str(tiny_bert), "cpu", "int8")
    assert not [w for w in caught if "quantiz" in str(w.message)], [str(w.message)[:80] for w in caught]


def test_int8_is_refused_on_cuda_in_one_line():
    with pytest.raises(UserError, match="runs only on CPUs") as error:
        resolve_precision("int8", torch.device("cuda"))
    assert "\n" not in str(error.value)


def test_int8_is_refused_where_the_kernels_do_not_run_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(encoder_module, "int8_problem", lambda: "torch 9.9 has no quantized CPU engine")
    with pytest.raises(UserError, match="cannot run here: torch 9.9 has no quantized CPU engine"):
        resolve_precision("int8", torch.device("cpu"))
    monkeypatch.setattr(encoder_module, "AUTO_PICKS_INT8", True)
    monkeypatch.setattr(encoder_module, "cpu_has_vnni", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "bf16-true", "fp32")


@pytest.mark.parametrize("picks,vnni,bf16,want", [
    (False, True, True, "bf16"),  # bf16 (AUTO_PICKS_BF16_TRUE off here), until int8 is faster
    (False, True, False, "fp32"),
    (True, True, True, "int8"),  # the one-line flip
    (True, False, True, "bf16"),  # without VNNI int8 is no faster: auto never slower than today
    (True, False, False, "fp32"),
])
def test_auto_on_a_cpu(monkeypatch, picks, vnni, bf16, want):
    monkeypatch.setattr(encoder_module, "AUTO_PICKS_INT8", picks)
    monkeypatch.setattr(encoder_module, "AUTO_PICKS_BF16_TRUE", False)  # its own rule: test_bf16_true.py
    monkeypatch.setattr(encoder_module, "cpu_has_vnni", lambda: vnni)
    monkeypatch.setattr(encoder_module, "cpu_has_native_bf16", lambda: bf16)
    assert resolve_precision("auto", torch.device("cpu")) == want


@pytest.mark.slow
def test_int8_minilm_windows_stay_close_to_fp32(minilm):
    """MiniLM on real text: the figure bench/int8_candidates.py reports on 20 Newsgroups."""
    from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize

    fp32, int8 = load_encoder(minilm, "cpu", "fp32", "mean"), load_encoder(minilm, "cpu", "int8", "mean")
    text = ("The shuttle's main engines were throttled down during the ascent, and the crew reported "
            "that the orbit was nominal before the payload bay doors opened. ") * 30
    spec = WindowSpec(256, 32, SpecialTokens.of(fp32.tokenizer))
    wins = spec.windows(tokenize(fp32.tokenizer, [text])[0])
    assert cosines(encode_windows(int8, wins, 1024), encode_windows(fp32, wins, 1024)).min() >= 0.98
