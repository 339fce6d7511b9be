"""An encoder with a window classifier on its [CLS] vector, split where fine-tuning freezes it.

Fine-tuning (`stages.finetune`) trains the top `k` layers of the encoder and a
linear classifier; everything below stays frozen. The model is cut in two there:

    bottom  input ids -> embeddings -> layers[:n-k]          eval mode, no gradients
    top     layers[n-k:-1] -> last layer at [CLS] only -> dropout -> linear -> logits

`bottom()` gives a window's *features* (the hidden states entering layer n-k, or,
with k = 0, the finished [CLS] vector); `top()` turns features into logits. Because
the bottom never changes, its features can be computed once and reused every epoch.
The last layer runs for [CLS] alone, as in stage one (`stages.cls_forward`): keys
and values still see every token, but the query, output projection and
feed-forward block run for one position, and so does their backward pass.

The embedding tables stay frozen even with k = all layers: they are over half of
MiniLM's parameters (30,522 x 384 word pieces), and a word piece rare in the
training set would be pulled toward its few documents' classes.

Supported: BERT-layout encoders (`stages.cls_forward.supports_cls_shortcut`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stages.cls_forward import ClsForward, bert_layer, supports_cls_shortcut, truncated
from stages.errors import UserError


def parse_unfreeze_top(value: str | int, depth: int, model: str) -> int:
    """`--unfreeze-top`: a layer count from 0 to the model's depth, or 'all'."""
    if str(value).strip().lower() == "all":
        return depth
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise UserError(f"--unfreeze-top takes a number of layers or 'all'; got {value!r}") from None
    if not 0 <= k <= depth:
        raise UserError(f"--unfreeze-top {k}: {model} has {depth} layers; give 0 to {depth}, or 'all'")
    return k


def encoder_depth(model: nn.Module) -> int:
    return len(model.encoder.layer)


class WindowModel(nn.Module):
    """Encoder (top `unfreeze_top` layers trainable) plus a window classifier."""

    def __init__(self, encoder: nn.Module, n_classes: int, unfreeze_top: int, dropout: float = 0.1,
                 gradient_checkpointing: bool = False):
        super().__init__()
        if not supports_cls_shortcut(encoder):
            raise UserError(f"fine-tuning needs a BERT-layout encoder (BERT, RoBERTa, MiniLM, ELECTRA, ...); "
                            f"{type(encoder).__name__} is not one")
        self.encoder = encoder
        self.unfreeze_top = unfreeze_top
        self.split = encoder_depth(encoder) - unfreeze_top
        self.top_layers = nn.ModuleList(list(encoder.encoder.layer)[self.split:])
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, n_classes)
        self.gradient_checkpointing = gradient_checkpointing
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        for parameter in self.top_layers.parameters():
            parameter.requires_grad_(True)
        # Views sharing the encoder's weights; kept out of the module tree so the
        # state dict and .train() see each weight once.
        self._bottom = ClsForward(encoder) if unfreeze_top == 0 else truncated(encoder, self.split)
        self.train(False)

    def train(self, mode: bool = True):
        """Only the trainable part switches mode: the bottom always runs as in inference,
        without dropout, so its features are the same every epoch and can be reused."""
        super().train(mode)
        self.encoder.eval()
        self.top_layers.train(mode)
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights fine-tuning changes (top layers and classifier), by name."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]):
        parameters = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                parameters[name].copy_(value)

    @torch.no_grad()
    def bottom(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Features of each window: [B, T, H] hidden states, or [B, H] [CLS] vectors if k = 0."""
        if self.unfreeze_top == 0:
            return self._bottom(input_ids, mask)
        return self._bottom(input_ids=input_ids, attention_mask=mask).last_hidden_state

    def top(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits [B, classes] from `bottom()`'s features."""
        return self.classifier(self.dropout(self.cls_vectors(features, mask)))

    def cls_vectors(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The encoder's last-layer [CLS] vectors [B, H] from `bottom()`'s features."""
        if self.unfreeze_top == 0:
            return features
        hidden = features
        for layer in self.top_layers[:-1]:
            if self.gradient_checkpointing and self.training:
                # Keep only each layer's input; recompute its insides during backward.
                hidden = checkpoint(bert_layer, layer, hidden, mask, use_reentrant=False)
            else:
                hidden = bert_layer(layer, hidden, mask)
        return bert_layer(self.top_layers[-1], hidden, mask, cls_only=True)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.top(self.bottom(input_ids, mask), mask)
