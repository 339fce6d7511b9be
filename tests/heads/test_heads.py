"""Every pooling: output shapes, and padded windows change nothing."""

from __future__ import annotations

import pytest
import torch

from longdoc.heads.head import Head
from longdoc.heads.pooling import POOLING_LAYERS, sinusoid_positions
from longdoc.runtime.errors import UserError
from longdoc.settings.model import POOLINGS, HeadConfig

HIDDEN, CLASSES = 24, 5


def make_head(pooling: str, **kwargs) -> Head:
    torch.manual_seed(0)
    return Head(HeadConfig(pooling=pooling, hidden_size=HIDDEN, n_classes=CLASSES, inner_dim=16,
                           transformer_heads=4, **kwargs)).eval()


def padded_batch(lengths: list[int], seed: int = 0, pad_value: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    x = torch.full((len(lengths), width, HIDDEN), pad_value)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, HIDDEN, generator=gen)
        mask[i, :n] = True
    return x, mask


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_shapes(pooling):
    head = make_head(pooling)
    x, mask = padded_batch([1, 3, 7])
    assert head(x, mask).shape == (3, CLASSES)
    assert head.pool(head.norm(x), mask).shape == (3, head.pool.out_dim)


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
@pytest.mark.parametrize("pad_value", [0.0, 1e4])
def test_padding_changes_nothing(pooling, pad_value):
    """A document's logits are the same alone, padded to 9 windows with any values, or in a batch."""
    head = make_head(pooling)
    x, mask = padded_batch([1, 4, 9], pad_value=pad_value)
    batched = head(x, mask)
    for i, n in enumerate([1, 4, 9]):
        alone = head(x[i:i + 1, :n], mask[i:i + 1, :n])
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_gradients_reach_every_parameter(pooling):
    head = make_head(pooling).train()
    x, mask = padded_batch([2, 5])
    torch.nn.functional.cross_entropy(head(x, mask), torch.tensor([0, 3])).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert not missing


def test_mean_and_max_are_what_they_say():
    head = make_head("mean", input_norm=False)
    x, mask = padded_batch([2, 3], pad_value=5.0)
    torch.testing.assert_close(head.pool(x, mask)[0], x[0, :2].mean(0))
    head = make_head("max", input_norm=False)
    torch.testing.assert_close(head.pool(x, mask)[1], x[1, :3].amax(0))


def test_attention_weights_are_zero_on_padding_and_sum_to_one():
    head = make_head("attention")
    x, mask = padded_batch([2, 6])
    weights = head.pool.weights(head.norm(x), mask)
    assert torch.all(weights[0, 2:] == 0)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))


def test_transformer_sees_window_order():
    """With positions, reversing a document's windows changes its vector (mean/max cannot tell)."""
    head = make_head("transformer")
    x, mask = padded_batch([5])
    assert not torch.allclose(head(x, mask), head(x.flip(1), mask), atol=1e-5)


def test_positions_are_defined_for_any_length():
    code = sinusoid_positions(1000, 16)
    assert code.shape == (1000, 16) and torch.isfinite(code).all()


def test_a_document_without_windows_is_refused():
    head = make_head("mean")
    x, mask = padded_batch([2, 2])
    mask[1] = False
    with pytest.raises(ValueError):
        head(x, mask)


@pytest.mark.parametrize("bad", [dict(pooling="median"), dict(n_classes=1), dict(dropout=1.0),
                                 dict(transformer_layers=0)])
def test_config_names_the_bad_field(bad):
    args = dict(pooling="mean", hidden_size=HIDDEN, n_classes=CLASSES) | bad
    with pytest.raises(UserError, match=list(bad)[0].split("_")[0]):
        HeadConfig(**args)


def test_every_pooling_name_has_a_module_and_is_a_cli_choice():
    from longdoc import cli

    assert tuple(POOLING_LAYERS) == POOLINGS
    params = {p.name: p for p in cli.cli.commands["train-head"].params}
    assert list(params["pooling"].type.choices) == list(POOLINGS)
