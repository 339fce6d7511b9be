"""The [CLS] vector of each window without computing the last layer for every token.

Stage one keeps only the last layer's output at position 0. In a BERT-style
encoder the last layer's keys and values need every token, but its query, output
projection and feed-forward block only matter at position 0. So the last layer
runs for [CLS] alone: on MiniLM-L6 (6 layers) that skips about 14% of the encoder's
FLOPs with the same result up to float rounding (tests/encoding/test_cls_forward.py).

Supported: encoders whose layers follow BERT's module layout (BERT, RoBERTa,
ELECTRA, MiniLM, XLM-R, ...) with absolute positions and bidirectional attention.
Anything else falls back to a full forward pass.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def supports_cls_shortcut(model: nn.Module) -> bool:
    config = model.config
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    last = layers[-1]
    needed = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output",
              "intermediate", "output")
    modules = dict(last.named_modules())
    return (all(name in modules for name in needed)
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and not getattr(config, "is_decoder", False)
            and not getattr(config, "add_cross_attention", False)
            and not getattr(modules["attention.self"], "is_causal", False))


def truncated(model: nn.Module, n_layers: int) -> nn.Module:
    """A view of `model` with only its first `n_layers` layers and no pooler, sharing
    all weights: its last_hidden_state is the output of layer `n_layers`."""
    trunk = copy.copy(model)
    trunk._modules = dict(model._modules)
    encoder = copy.copy(model.encoder)
    encoder._modules = dict(model.encoder._modules)
    encoder.layer = nn.ModuleList(list(model.encoder.layer)[:n_layers])
    trunk.encoder = encoder
    if "pooler" in trunk._modules:
        trunk.pooler = None
    return trunk


def without_last_layer(model: nn.Module) -> nn.Module:
    """A view of `model` with its last layer and pooler removed, sharing all weights."""
    return truncated(model, len(model.encoder.layer) - 1)


def bert_layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None,
               cls_only: bool = False) -> torch.Tensor:
    """One BERT-layout layer. hidden [B, T, H]; mask [B, T] (1 = token) or None.

    Returns [B, T, H], or [B, H] at position 0 when `cls_only` (keys and values
    still cover every token). Dropout follows `layer.training`, as in the library's
    own forward; fine-tuning (`longdoc.training.window_model`) runs its top layers through here.
    """
    attention = layer.attention.self
    batch, length, _ = hidden.shape
    heads = attention.num_attention_heads
    head_size = attention.attention_head_size

    def split(x):
        return x.view(batch, -1, heads, head_size).transpose(1, 2)

    queries = hidden[:, :1] if cls_only else hidden
    allowed = None if mask is None else mask[:, None, None, :].bool()
    dropout = attention.dropout.p if layer.training else 0.0
    context = F.scaled_dot_product_attention(  # scale 1/sqrt(head_size)
        split(attention.query(queries)), split(attention.key(hidden)), split(attention.value(hidden)),
        attn_mask=allowed, dropout_p=dropout)
    context = context.transpose(1, 2).reshape(batch, queries.shape[1], heads * head_size)
    attended = layer.attention.output(context, queries)
    out = layer.output(layer.intermediate(attended), attended)
    return out[:, 0] if cls_only else out


def last_layer_at_cls(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Output of `layer` at position 0 only, [B, H]."""
    return bert_layer(layer, hidden, mask, cls_only=True)


class ClsForward:
    """Callable (input_ids, attention_mask) -> [CLS] vectors of the last layer."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.shortcut = supports_cls_shortcut(model)
        if self.shortcut:
            self.trunk = without_last_layer(model)
            self.last = model.encoder.layer[-1]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if not self.shortcut:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return last_layer_at_cls(self.last, hidden, attention_mask)
