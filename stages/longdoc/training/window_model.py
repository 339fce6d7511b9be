"""An encoder with a window classifier on top, split where fine-tuning freezes it.

Fine-tuning (`longdoc.finetune`) trains the top `k` layers of the encoder and a
linear classifier (one logit per class, or per label for label sets: `n_classes` is then
the number of labels, the loss `longdoc.training.window_task`'s); everything below stays frozen. Two models, one interface
(`bottom`, `top`, `top_layers`, `classifier`, `unfreeze_top`, `stores_features`,
`trainable_state`, `load_trainable_state`, `save_pretrained`); `build_window_model`
picks one.

BERT layout, the fast path (`WindowModel`). The model is cut in two:

    bottom  input ids -> embeddings -> layers[:n-k]          eval mode, no gradients
    top     layers[n-k:-1] -> last layer at [CLS] only -> dropout -> linear -> logits

`bottom()` gives a window's *features* (the hidden states entering layer n-k, or,
with k = 0, the finished [CLS] vector); `top()` turns features into logits. Because
the bottom never changes, its features can be computed once and reused every epoch.
The last layer runs for [CLS] alone, as in stage one (`longdoc.encoding.cls_forward`): keys
and values still see every token, but the query, output projection and
feed-forward block run for one position, and so does their backward pass. It trains
the [CLS] vector, and its saved folder embeds with [CLS] (no 1_Pooling: `auto` says cls).

Any other encoder whose layers form a list (`LayerListWindowModel`: DistilBERT, MPNet,
DeBERTa, ModernBERT, ...). The list is found in the module tree (`find_layer_list`),
its top k layers train, and the whole model runs forward every step, since layers of
another family cannot be called one by one without knowing their arguments (masks,
relative or rotary positions). Nothing below the top k layers needs a gradient, so
autograd stores nothing for it: a step costs a full forward plus the top layers'
backward, and memory stays bounded by the token budget of a batch. The window vector
is pooled as the encoder was trained (`longdoc.encoding.encoder.resolve_window_vector` with
`auto`: mean where a sentence-transformers folder says so, else [CLS]), and the saved
folder says so (`1_Pooling/config.json`), so `embed --model` pools the same way.
With k = 0 the encoder is frozen whole and its window vectors are stored as above.
Modules after the last layer (ModernBERT's final norm) stay frozen: their per-dimension
scale and shift is absorbed by the linear classifier (exactly, without dropout), so
training them would add nothing but a rule per family to find them.

The embedding tables stay frozen even with k = all layers: they are over half of
MiniLM's parameters (30,522 x 384 word pieces), and a word piece rare in the
training set would be pulled toward its few documents' classes.

Supported: BERT-layout encoders (`longdoc.encoding.cls_forward.supports_cls_shortcut`) on the
fast path; any encoder with an `nn.ModuleList` of identical layers on the generic
path. Not supported: encoders without such a list (a UserError), training the
embeddings or anything after the last layer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from longdoc.encoding.cls_forward import ClsForward, bert_layer, supports_cls_shortcut, truncated
from longdoc.encoding.encoder import mean_pool, write_pooling_config
from longdoc.runtime.errors import UserError


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


def find_layer_list(model: nn.Module) -> nn.ModuleList:
    """The encoder's layers: its longest `nn.ModuleList` of one layer class with weights
    (`encoder.layer` in BERT, MPNet, DeBERTa; `transformer.layer` in DistilBERT; `layers`
    in ModernBERT); the first one found wins a tie. Refused where the model's config runs
    another number of layers than that list holds (ALBERT, Funnel)."""
    found = None
    for module in model.modules():
        if (isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
                and any(True for _ in module[0].parameters()) and (found is None or len(module) > len(found))):
            found = module
    if found is None:
        raise UserError(f"fine-tuning needs an encoder whose layers form a list (an nn.ModuleList of identical "
                        f"layers); {type(model).__name__} has none")
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if isinstance(depth, int) and depth != len(found):  # ALBERT shares layers, Funnel nests them in blocks
        raise UserError(f"{type(model).__name__} runs {depth} layers but its longest list holds {len(found)} "
                        f"(shared or nested layers), so its top layers cannot be told apart; fine-tuning it "
                        f"is not supported")
    return found


def encoder_depth(model: nn.Module) -> int:
    return len(find_layer_list(model))


def build_window_model(encoder: nn.Module, n_classes: int, unfreeze_top: int, dropout: float = 0.1,
                       gradient_checkpointing: bool = False, window_vector: str = "cls") -> WindowClassifier:
    """The BERT-layout fast path where the encoder has that layout (it trains [CLS], whatever
    `window_vector` says), else the generic path, pooled as `window_vector` says."""
    if supports_cls_shortcut(encoder):
        return WindowModel(encoder, n_classes, unfreeze_top, dropout, gradient_checkpointing)
    return LayerListWindowModel(encoder, n_classes, unfreeze_top, dropout, gradient_checkpointing, window_vector)


class WindowClassifier(nn.Module):
    """What both models share: which weights train, the classifier, train/eval modes, state."""

    # True: `bottom()` gives features worth storing (longdoc.finetune keeps them across epochs);
    # False: they are the ids themselves and the whole encoder runs in `top()`.
    stores_features = True
    window_vector = "cls"

    def __init__(self, encoder: nn.Module, layers: nn.ModuleList, n_classes: int, unfreeze_top: int,
                 dropout: float):
        super().__init__()
        self.encoder = encoder
        self.unfreeze_top = unfreeze_top
        self.split = len(layers) - unfreeze_top
        self.top_layers = nn.ModuleList(list(layers)[self.split:])
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, n_classes)
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        for parameter in self.top_layers.parameters():
            parameter.requires_grad_(True)

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

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.top(self.bottom(input_ids, mask), mask)

    def save_pretrained(self, folder: Path):
        """The encoder as a Hugging Face model folder (`AutoModel.from_pretrained` loads it)."""
        self.encoder.save_pretrained(folder)


class WindowModel(WindowClassifier):
    """BERT-layout encoder (top `unfreeze_top` layers trainable) plus a window classifier."""

    def __init__(self, encoder: nn.Module, n_classes: int, unfreeze_top: int, dropout: float = 0.1,
                 gradient_checkpointing: bool = False):
        if not supports_cls_shortcut(encoder):
            raise UserError(f"the [CLS]-only fast path needs a BERT-layout encoder (BERT, RoBERTa, MiniLM, "
                            f"ELECTRA, ...); {type(encoder).__name__} is not one: use build_window_model")
        super().__init__(encoder, encoder.encoder.layer, n_classes, unfreeze_top, dropout)
        self.gradient_checkpointing = gradient_checkpointing
        # Views sharing the encoder's weights; kept out of the module tree so the
        # state dict and .train() see each weight once.
        self._bottom = ClsForward(encoder) if unfreeze_top == 0 else truncated(encoder, self.split)
        self.train(False)

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


class LayerListWindowModel(WindowClassifier):
    """Any encoder whose layers form a list (top `unfreeze_top` trainable), run whole every
    step and pooled as `window_vector` says ('cls' or 'mean'), plus a window classifier."""

    def __init__(self, encoder: nn.Module, n_classes: int, unfreeze_top: int, dropout: float = 0.1,
                 gradient_checkpointing: bool = False, window_vector: str = "cls"):
        if window_vector not in ("cls", "mean"):
            raise ValueError(f"window_vector is 'cls' or 'mean'; got {window_vector!r}")
        super().__init__(encoder, find_layer_list(encoder), n_classes, unfreeze_top, dropout)
        self.window_vector = window_vector
        self.stores_features = unfreeze_top == 0  # k = 0: the encoder is frozen whole
        if gradient_checkpointing:
            for layer in self.top_layers:
                _checkpoint_in_training(layer)
        self.train(False)

    @torch.no_grad()
    def bottom(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """k = 0: the window vectors [B, H]; otherwise the ids themselves (nothing to store)."""
        return self.window_vectors(input_ids, mask) if self.stores_features else input_ids

    def top(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits [B, classes] from `bottom()`'s output."""
        vectors = features if self.stores_features else self.window_vectors(features, mask)
        return self.classifier(self.dropout(vectors))

    def window_vectors(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[B, H]: the whole encoder, then [CLS] or the mean over tokens, as stage one pools."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden, mask) if self.window_vector == "mean" else hidden[:, 0]

    def save_pretrained(self, folder: Path):
        """The encoder, and the pooling it was trained with (`--window-vector auto` reads it)."""
        super().save_pretrained(folder)
        write_pooling_config(folder, self.window_vector, self.encoder.config.hidden_size)


def _checkpoint_in_training(layer: nn.Module):
    """Make `layer` keep only its inputs while training and recompute its insides during
    backward. It wraps the layer's own forward, so it works for any family's layers."""
    forward = layer.forward

    def checkpointed(*args, **kwargs):
        if layer.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    layer.forward = checkpointed
