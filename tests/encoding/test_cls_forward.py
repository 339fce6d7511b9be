"""The [CLS]-only last layer gives the full forward pass's [CLS] vector."""

import numpy as np
import pytest
import torch

from longdoc.encoding.cls_forward import ClsForward, supports_cls_shortcut
from longdoc.encoding.encoder import load_encoder


def full_cls(model, ids, mask):
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]


@pytest.mark.parametrize("padded", [False, True])
def test_shortcut_equals_full_forward(tiny_bert, padded):
    model = load_encoder(str(tiny_bert), "cpu", "fp32").model
    forward = ClsForward(model)
    assert forward.shortcut
    torch.manual_seed(0)
    ids = torch.randint(5, 60, (5, 40))
    mask = None
    if padded:
        mask = torch.ones_like(ids)
        for row, length in enumerate([40, 33, 2, 17, 1]):
            mask[row, length:] = 0
            ids[row, length:] = 0
    with torch.inference_mode():
        got = forward(ids, mask)
    torch.testing.assert_close(got, full_cls(model, ids, mask), rtol=1e-5, atol=1e-5)
    assert len(model.encoder.layer) == model.config.num_hidden_layers  # the model itself is untouched


def test_other_architectures_fall_back_to_the_full_forward(tiny_bert):
    model = load_encoder(str(tiny_bert), "cpu", "fp32").model
    model.config.position_embedding_type = "relative_key"  # attention scores depend on positions
    assert not supports_cls_shortcut(model)
    forward = ClsForward(model)
    ids = torch.randint(5, 60, (2, 9))
    with torch.inference_mode():
        np.testing.assert_array_equal(forward(ids, None).numpy(), full_cls(model, ids, None).numpy())


@pytest.mark.slow
@pytest.mark.parametrize("precision,min_cosine", [("fp32", 0.999999), ("bf16", 0.9999), ("bf16-true", 0.9995)])
def test_shortcut_on_minilm(minilm, precision, min_cosine):
    encoder = load_encoder(minilm, "cpu", precision)
    reference = load_encoder(minilm, "cpu", "fp32").model
    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (4, 256))
    mask = torch.ones_like(ids)
    mask[1, 100:] = 0
    with torch.inference_mode(), encoder.autocast():
        got = encoder.cls_vectors(ids, mask).float()
    want = full_cls(reference, ids, mask)
    assert torch.nn.functional.cosine_similarity(got, want).min() >= min_cosine
