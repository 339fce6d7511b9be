"""How a head turns a document's window vectors into one vector: the poolings.

Input is a batch of documents, each a sequence of cached window vectors, padded to
the longest in the batch: `x` float [docs, windows, hidden] and `mask` bool
[docs, windows] (True for a real window). Every pooling ignores padded windows
exactly, so a document's vector does not depend on what it was batched with.

    mean         masked mean of the windows
    max          masked element-wise max
    attention    gated attention (Ilse et al. 2018): a learned score per window,
                 softmax over the real windows, weighted sum
    lstm         RoBERT (Pappagari et al. 2019): a bidirectional LSTM over the
                 window sequence (packed, so padding is never seen); last states
    transformer  ToBERT: one or two small encoder layers over the windows with
                 sinusoidal positions (no length limit), then a masked mean

A new pooling is one class with `out_dim` and `forward(x, mask)`, added to
`POOLING_LAYERS`, and its name to `longdoc.settings.model.POOLINGS`
(`longdoc.heads.head.Head` builds one by name). Reads and writes nothing.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from longdoc.settings.model import HeadConfig


class MeanPooling(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.out_dim = config.hidden_size

    def forward(self, x, mask):
        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class MaxPooling(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.out_dim = config.hidden_size

    def forward(self, x, mask):
        return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


class AttentionPooling(nn.Module):
    """Gated attention: score_i = w . (tanh(V x_i) * sigmoid(U x_i)), softmax over real windows."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.value = nn.Linear(config.hidden_size, config.inner_dim)
        self.gate = nn.Linear(config.hidden_size, config.inner_dim)
        self.score = nn.Linear(config.inner_dim, 1)
        self.out_dim = config.hidden_size

    def weights(self, x, mask):
        scores = self.score(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x))).squeeze(-1)
        return scores.masked_fill(~mask, float("-inf")).softmax(-1)

    def forward(self, x, mask):
        return torch.einsum("bw,bwh->bh", self.weights(x, mask), x)


class LSTMPooling(nn.Module):
    """RoBERT: a bidirectional LSTM reads the windows in order; the last forward and
    backward states are the document. Packing by length means padding is never read."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.lstm = nn.LSTM(config.hidden_size, config.inner_dim, batch_first=True, bidirectional=True)
        self.out_dim = 2 * config.inner_dim

    def forward(self, x, mask):
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: [2, docs, inner], already back in input order
        return torch.cat([h[0], h[1]], dim=-1)


def sinusoid_positions(n: int, dim: int, device=None) -> torch.Tensor:
    """The Transformer's fixed position code, [n, dim]; defined for any n."""
    position = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    code = torch.zeros(n, dim, device=device)
    code[:, 0::2] = torch.sin(position * freq)
    code[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return code


class TransformerPooling(nn.Module):
    """ToBERT: project windows to inner_dim, add positions, self-attention over the
    real windows (padding is masked as keys), then a masked mean."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.project = nn.Linear(config.hidden_size, config.inner_dim)
        layer = nn.TransformerEncoderLayer(
            config.inner_dim, config.transformer_heads, dim_feedforward=2 * config.inner_dim,
            dropout=config.dropout, batch_first=True, norm_first=True)
        # enable_nested_tensor=False: the nested fast path returns zeros at padded positions
        # in eval but not in training; the masked mean below makes both paths equal anyway.
        self.encoder = nn.TransformerEncoder(layer, config.transformer_layers, enable_nested_tensor=False)
        self.mean = MeanPooling(config)
        self.out_dim = config.inner_dim

    def forward(self, x, mask):
        h = self.project(x) + sinusoid_positions(x.shape[1], self.out_dim, x.device)
        h = self.encoder(h, src_key_padding_mask=~mask)
        return self.mean(h, mask)


# One module per name of `longdoc.settings.model.POOLINGS` (tests/heads/test_heads.py checks the two agree).
POOLING_LAYERS: dict[str, type[nn.Module]] = {
    "mean": MeanPooling,
    "max": MaxPooling,
    "attention": AttentionPooling,
    "lstm": LSTMPooling,
    "transformer": TransformerPooling,
}
