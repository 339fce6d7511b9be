"""Optional stage before stage one: fine-tune the encoder's top layers on windows.

    python cli.py finetune --data 20newsgroups --out runs/finetuned --unfreeze-top 2
    python cli.py embed --model runs/finetuned ...      # then train-head, evaluate

Reads a labelled corpus (`stages.data`) and an encoder (`stages.encoder`). Every
window (`stages.windows`, the same geometry stage one uses) is labelled with its
document's class; the top `--unfreeze-top` layers and a linear window classifier
train on them (`stages.window_model`), everything below stays frozen.

Writes `--out`, a Hugging Face model folder (config, weights, tokenizer) that
`AutoModel.from_pretrained(out)` and `embed --model out` load as is, plus
`finetune.json`: the settings, the base model and its fingerprint, the fine-tuned
fingerprint, the window vector trained (cls or mean), validation scores per epoch.
`embed` copies that lineage into caches. On the generic path the folder also holds
`1_Pooling/config.json`, so `embed --window-vector auto` pools as it was trained.
Inside the folder too (so it is published with the model, atomically): `curve.png`,
training and validation window loss and document accuracy per epoch.

How it stays small and resumable (the pieces: `stages.window_training`; the loop
shared with `train-head`: `stages.train_loop`):
* batches are packed to a token budget, so memory is bounded by `batch_tokens`
  (and `unfreeze_top`), never by a document's length;
* the frozen bottom's features of each window are computed once and kept in memory
  up to `feature_cache_gb`; later epochs run only the top layers (BERT layout; on
  the generic path the whole encoder runs every step, the bottom without gradients);
* validation is a seeded, stratified split of *documents*, so no document has
  windows on both sides; the score is document-level macro-F1 from the mean of
  its windows' probabilities; the best epoch is kept, early stopping after
  `patience` epochs without improvement;
* every `checkpoint_steps` steps and at each epoch's end, the trainable weights,
  optimizer, schedule, random state and history go to `<out>.partial/` (atomically);
  a killed run continues from there. `--out` appears only once training is done.

Supported: BERT-layout encoders (BERT, RoBERTa, MiniLM, ELECTRA, ...) on the fast
path above, trained on [CLS]; any other encoder whose layers form a list (DistilBERT,
MPNet, DeBERTa, ModernBERT, ...) on the generic path, pooled as it was trained
(`stages.window_model`). Not supported: encoders without a layer list (one-line
error); training the embedding tables.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import stages
from stages.data import NEWSGROUPS, Corpus, load_corpus
from stages.encoder import (
    DEFAULT_MODEL,
    LINEAGE_FILE,
    Encoder,
    fingerprint_model,
    load_encoder,
)
from stages.errors import UserError
from stages.runtime import peak_memory_bytes
from stages.settings import (
    CorpusSettings,
    at_least,
    check_batch_holds_window,
    check_settings,
    check_window_fits,
    chunk_tokens_setting,
    device_setting,
    in_range,
    like,
    positive,
    precision_setting,
    progress_setting,
    setting,
    stride_setting,
    threads_setting,
)
from stages.train_loop import (
    LoopOutcome,
    LoopSettings,
    best_entry,
    first_line,
    plot_curve,
    resume,
    run_epochs,
)
from stages.training import ValidationSettings, validation_split
from stages.window_model import WindowClassifier, encoder_depth, parse_unfreeze_top
from stages.window_training import WindowTask
from stages.windows import tokenize
from stages.workdir import WorkDir, atomic_path, check_not_an_input

CURVE_FILE = "curve.png"  # inside --out, beside finetune.json


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
    # The split train-head makes too: stages.training.ValidationSettings.
    val_fraction: float = like(ValidationSettings, "val_fraction")
    val_split: str = like(ValidationSettings, "val_split")
    seed: int = setting(0, "Seeds the split, the batch order, the classifier's weights and dropout.")
    gradient_checkpointing: bool = setting(False, "Recompute the trained layers' activations in backward: "
                                                  "less memory, ~30%% more time.")
    precision: str = precision_setting()
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
class FinetuneSummary(LoopOutcome):
    out: Path
    unfreeze_top: int
    trainable_parameters: int
    n_train_docs: int
    n_val_docs: int
    n_train_windows: int
    resumed_from_step: int = 0

    def line(self) -> str:
        resumed = f" (resumed at step {self.resumed_from_step:,})" if self.resumed_from_step else ""
        return (f"fine-tuned the top {self.unfreeze_top} layers ({self.trainable_parameters:,} trainable "
                f"parameters) on {self.n_train_windows:,} windows of {self.n_train_docs:,} documents{resumed}: "
                f"{self.outcome(self.n_val_docs)}; {self.seconds:,.1f} s, "
                f"peak memory {self.peak_memory_bytes / 2**30:.2f} GiB -> {self.out}")


# --- the run ---------------------------------------------------------------------


def _settings(config: FinetuneConfig, base_fingerprint: str, data_fingerprint: str, k: int) -> dict:
    """What a resumed run must share with the interrupted one."""
    keep = ("data", "split", "model", "chunk_tokens", "stride", "batch_tokens", "max_epochs", "patience", "lr",
            "head_lr", "weight_decay", "warmup_fraction", "dropout", "max_grad_norm", "val_fraction", "val_split",
            "seed", "precision", "categories", "remove", "limit")
    settings = {key: getattr(config, key) for key in keep}
    settings.update(unfreeze_top=k, base_fingerprint=base_fingerprint, data_fingerprint=data_fingerprint,
                    remove=list(config.remove))
    return json.loads(json.dumps(settings))


def check_out_folder(out: Path, overwrite: bool, inputs: dict | None = None):
    check_not_an_input(out, inputs or {})
    if out.exists() and not overwrite:
        raise UserError(f"--out {out} exists; pass --overwrite to replace it (only once the new model is saved), "
                        f"or choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; fine-tuning writes a model folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create {out.parent}: {error.strerror}") from None


@dataclass
class FinetuneInputs:
    """What a fine-tuning run trains on, checked: the corpus, the encoder, how many of its
    layers train, and the seeded, stratified split of documents."""

    corpus: Corpus
    labels: np.ndarray
    encoder: Encoder
    unfreeze_top: int
    train_docs: np.ndarray
    val_docs: np.ndarray

    def task(self, config: FinetuneConfig) -> WindowTask:
        """The training task `run_finetune` runs (and bench/ times): every window labelled
        with its document's class, the model initialised from `config.seed`."""
        return WindowTask.build(self.encoder, tokenize(self.encoder.tokenizer, self.corpus.texts), self.labels,
                                len(self.corpus.label_names), self.unfreeze_top, self.train_docs, self.val_docs,
                                config)


def load_inputs(config: FinetuneConfig) -> FinetuneInputs:
    """Read the corpus, then load the encoder; each refused in one line when unusable."""
    corpus = load_corpus(config.data, config.split, config.categories, config.remove, config.data_home,
                         config.limit)
    labels = np.asarray(corpus.labels, dtype=np.int64)
    present = np.unique(labels)
    if len(present) < 2:
        only = corpus.label_names[present[0]] if len(present) else "none"
        raise UserError(f"--data {config.data}: every document is of class {only!r}; "
                        f"fine-tuning a classifier needs at least two classes")
    encoder = load_encoder(config.model, config.device, config.precision, window_vector="auto")
    k = parse_unfreeze_top(config.unfreeze_top, encoder_depth(encoder.model), config.model)
    check_window_fits(config.chunk_tokens, encoder.max_tokens, config.model)
    train_docs, val_docs = validation_split(labels, corpus.doc_ids, config, np.random.default_rng(config.seed))
    if len(val_docs) == 0:
        raise UserError(f"--val-fraction {config.val_fraction} of {len(labels)} documents leaves no "
                        f"validation documents; raise it or add documents")
    return FinetuneInputs(corpus, labels, encoder, k, train_docs, val_docs)


def run_finetune(config: FinetuneConfig, log=None) -> FinetuneSummary:
    started = time.perf_counter()
    log = log or (lambda line: print(line, file=sys.stderr))
    out = Path(config.out)
    check_out_folder(out, config.overwrite, {"--data": config.data if config.data != NEWSGROUPS else None,
                                             "--model": config.model})
    if config.threads:
        torch.set_num_threads(config.threads)
    inputs = load_inputs(config)
    corpus, encoder, k = inputs.corpus, inputs.encoder, inputs.unfreeze_top
    data_fingerprint = corpus.fingerprint()  # sha256 over every text: computed once
    loop = LoopSettings(max_epochs=config.max_epochs, patience=config.patience,
                        checkpoint_steps=config.checkpoint_steps, timed=True, progress=config.progress)
    with WorkDir(out, _settings(config, encoder.fingerprint, data_fingerprint, k), fresh=config.overwrite) as work:
        task = inputs.task(config)
        progress = resume(work.dir, task, loop)
        resumed_step = progress.global_step
        progress = run_epochs(task, progress, work.dir, loop, log)
        best = best_entry(progress)
        record = {
            "format": "longdoc-finetune", "package_version": stages.__version__,
            "base_model": config.model, "base_fingerprint": encoder.fingerprint,
            "fingerprint": fingerprint_model(encoder.model, encoder.tokenizer),
            "unfreeze_top": k, "window_vector": task.model.window_vector, "label_names": corpus.label_names,
            "data_source": corpus.source,
            "data_fingerprint": data_fingerprint, "n_train_docs": len(inputs.train_docs),
            "n_val_docs": len(inputs.val_docs), "n_train_windows": len(task.train_windows),
            "best_epoch": progress.best_epoch, "val_accuracy": best["val_accuracy"],
            "val_macro_f1": best["val_macro_f1"], "history": progress.history,
            "settings": {key: (str(v) if isinstance(v, Path) else v) for key, v in asdict(config).items()},
        }
        save_model_folder(out, task.model, encoder.tokenizer, record)
        work.discard()
    return FinetuneSummary(
        out=out, unfreeze_top=k, trainable_parameters=task.trainer.trainable_parameters(),
        n_train_docs=len(inputs.train_docs), n_val_docs=len(inputs.val_docs), n_train_windows=len(task.train_windows),
        best_epoch=progress.best_epoch, epochs_run=len(progress.history), val_accuracy=best["val_accuracy"],
        val_macro_f1=best["val_macro_f1"], seconds=time.perf_counter() - started,
        peak_memory_bytes=peak_memory_bytes(encoder.device), resumed_from_step=resumed_step)


def save_model_folder(out: Path, model: WindowClassifier, tokenizer, record: dict):
    """Write the fine-tuned encoder, its tokenizer and `finetune.json` to `out`,
    atomically (`atomic_path`): built in a private folder beside it, every file fsynced,
    then renamed (an old `out` goes only after)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-shard writing bar is noise in a CLI
    with atomic_path(out, folder=True) as tmp:
        try:
            model.save_pretrained(tmp)  # the encoder; on the generic path its pooling too
            tokenizer.save_pretrained(tmp)
        except RuntimeError as error:  # safetensors / torch writers report failed writes so
            raise UserError(f"cannot write {out}: {first_line(error)}") from None
        (tmp / LINEAGE_FILE).write_text(json.dumps(record, indent=1))
        plot_curve(record["history"], record["best_epoch"], tmp / CURVE_FILE, val_loss="val_window_loss")


