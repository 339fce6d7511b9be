"""Stage two's model: pool a document's window vectors into one, then classify it.

Input is a batch of documents, each a sequence of cached window vectors, padded to
the longest in the batch: `x` float [docs, windows, hidden] and `mask` bool
[docs, windows] (True for a real window). The poolings (`longdoc.heads.pooling`) ignore
padded windows exactly, so a document's logits do not depend on what it was batched with.
`Head` puts a LayerNorm in front (the cached vectors are not standardised), one pooling
(`POOLING_LAYERS`, by name), dropout and one linear layer behind. It returns logits: the
loss applies its own log-softmax (single-label: cross-entropy) or log-sigmoid per label
(multi-label, `HeadConfig.task`: binary cross-entropy); `probabilities` is the one place
logits become probabilities, softmax or sigmoid by the head's task.

The linear branch (`inputs` "terms" or "both") is a linear model over the document's
TF-IDF-weighted hashed terms (`longdoc.terms.tfidf.TermBatch`, an `nn.EmbeddingBag` of
one row per kept term) and, with both inputs, the standardised mean of its window
vectors beside them. It is fitted as a linear SVM (`longdoc.training.linear_fit`), not by the
epoch loop. With both inputs the head's logits are `mix[0] * window logits + mix[1] *
linear logits`, the two weights fitted on validation (`fit_mix`, by the task's loss): the
two branches' logits are stacked, and the more trustworthy one counts for more. For label
sets the same two weights serve every label, and the sigmoid of the mix is the branch's
calibration, as the softmax of the mix is for classes.

Reads and writes no files: `longdoc.heads.checkpoint` saves a head and loads it back.
"""

from __future__ import annotations

import torch
from torch import nn

from longdoc.heads.pooling import POOLING_LAYERS
from longdoc.settings.model import HeadConfig
from longdoc.terms.tfidf import TermBatch

# --- the head ----------------------------------------------------------------------


class Head(nn.Module):
    """Windows: LayerNorm -> pooling -> dropout -> linear; terms: a linear layer over TF-IDF;
    both: the sum of the two. Returns logits [docs, n_classes]."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        if self.reads_windows:
            self.norm = nn.LayerNorm(config.hidden_size) if config.input_norm else nn.Identity()
            self.pool = POOLING_LAYERS[config.pooling](config)
            self.dropout = nn.Dropout(config.dropout)
            self.classifier = nn.Linear(self.pool.out_dim, config.n_classes)
        if self.reads_terms:
            # One weight row per kept term and class: a linear layer over the sparse TF-IDF vector.
            # The linear branch is fitted by liblinear (longdoc.training.linear_fit), never by optimizer steps.
            self.terms = nn.EmbeddingBag(config.n_terms, config.n_classes, mode="sum").requires_grad_(False)
            nn.init.zeros_(self.terms.weight)
            self.terms_bias = nn.Parameter(torch.zeros(config.n_classes), requires_grad=False)
        if self.stacked:  # the mean window vector joins the linear model
            self.terms_dense = nn.Linear(config.hidden_size, config.n_classes, bias=False).requires_grad_(False)
            nn.init.zeros_(self.terms_dense.weight)
            self.register_buffer("dense_shift", torch.zeros(config.hidden_size))
            self.register_buffer("dense_scale", torch.ones(config.hidden_size))
            self.register_buffer("mix", torch.ones(2))  # weights of (window, term) logits; see fit_mix

    @property
    def reads_windows(self) -> bool:
        return self.config.inputs in ("windows", "both")

    @property
    def reads_terms(self) -> bool:
        return self.config.inputs in ("terms", "both")

    @property
    def multi_label(self) -> bool:
        """A sigmoid per label (label sets), not a softmax over classes."""
        return self.config.multi_label

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [docs, n_classes] as probabilities: softmax over classes, or sigmoid per label."""
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, -1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The task's unweighted loss of logits against targets: class indices, or the label
        matrix [docs, n_classes] (0/1)."""
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(logits, targets.float())
        return nn.functional.cross_entropy(logits, targets.long())

    @property
    def stacked(self) -> bool:
        """Both inputs: the window branch and the linear branch, their logits weighed by `mix`."""
        return self.reads_windows and self.reads_terms

    def window_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not mask.any(1).all():
            raise ValueError("every document needs at least one window")
        # Zero the padding so no pooling can pick up garbage from it, even via NaN * 0.
        x = self.norm(x).masked_fill(~mask.unsqueeze(-1), 0.0)
        return self.classifier(self.dropout(self.pool(x, mask)))

    def dense_features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The linear branch's dense inputs: the mean window vector, standardised and scaled."""
        weights = mask.unsqueeze(-1).to(x.dtype)
        mean = (x.masked_fill(~mask.unsqueeze(-1), 0.0) * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return (mean - self.dense_shift) * self.dense_scale

    def term_logits(self, terms: TermBatch, x: torch.Tensor | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """The linear branch: TF-IDF terms (and, with both inputs, the dense mean window vector)."""
        logits = self.terms(terms.ids, terms.offsets, per_sample_weights=terms.weights) + self.terms_bias
        if self.reads_windows:
            logits = logits + self.terms_dense(self.dense_features(x, mask))
        return logits

    def branch_logits(self, x: torch.Tensor, mask: torch.Tensor, terms: TermBatch | None = None) -> torch.Tensor:
        """Each branch's own logits, [docs, branches, n_classes] (windows first)."""
        if self.reads_terms and terms is None:
            raise ValueError("this head needs the documents' terms")
        branches = [self.window_logits(x, mask)] if self.reads_windows else []
        if self.reads_terms:
            branches.append(self.term_logits(terms, x, mask))
        return torch.stack(branches, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, terms: TermBatch | None = None) -> torch.Tensor:
        return self.combine(self.branch_logits(x, mask, terms))

    def combine(self, branches: torch.Tensor) -> torch.Tensor:
        """The head's logits [docs, n_classes] from its branches' [docs, branches, n_classes]."""
        if branches.shape[1] == 1:
            return branches[:, 0]
        return torch.einsum("b,dbc->dc", self.mix, branches)

    @torch.no_grad()
    def fit_mix(self, branches: torch.Tensor, labels: torch.Tensor, steps: int = 100):
        """Set `mix` to the non-negative weights of the branches' logits [docs, 2, classes]
        that minimise the task's loss on `labels` (held-out documents: validation): cross-entropy
        on class indices, or binary cross-entropy on the label matrix [docs, classes]."""
        log_mix = torch.zeros(2, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_mix], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")
        branches = branches.float()

        def loss():
            optimizer.zero_grad()
            with torch.enable_grad():
                value = self.loss(torch.einsum("b,dbc->dc", log_mix.exp(), branches), labels)
                value.backward()
            return value

        optimizer.step(loss)
        if torch.isfinite(log_mix).all():
            self.mix.copy_(log_mix.detach().exp())

    # The window branch's modules: what the epoch loop trains (the linear branch and `mix` are fitted).
    WINDOW_BRANCH = ("norm", "pool", "classifier")

    def window_branch_state(self) -> dict[str, torch.Tensor]:
        """A copy of the window branch's weights, by state_dict name."""
        return {name: value.detach().clone() for name, value in self.state_dict().items()
                if name.split(".")[0] in self.WINDOW_BRANCH}

    def load_window_branch_state(self, state: dict[str, torch.Tensor]):
        want = {name for name in self.state_dict() if name.split(".")[0] in self.WINDOW_BRANCH}
        if set(state) != want:
            raise KeyError(f"not this head's window branch: {sorted(set(state) ^ want)[:3]} differ")
        self.load_state_dict(state, strict=False)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
