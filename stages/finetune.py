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

How it stays small and resumable:
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import stages
from stages.data import NEWSGROUPS, load_corpus
from stages.encoder import DEFAULT_MODEL, LINEAGE_FILE, fingerprint_model, load_encoder
from stages.encoding import pack_batches, pad_batch
from stages.errors import UserError
from stages.metrics import scores
from stages.runtime import peak_memory_bytes, progress_bar
from stages.training import lr_lambda, stratified_split
from stages.window_model import (
    WindowModel,
    build_window_model,
    encoder_depth,
    parse_unfreeze_top,
)
from stages.windows import PackedWindows, SpecialTokens, WindowSpec, tokenize
from stages.workdir import WorkDir, atomic_path, check_not_an_input


@dataclass
class FinetuneConfig:
    out: Path
    data: str = NEWSGROUPS
    split: str = "train"
    model: str = DEFAULT_MODEL
    # 2 of MiniLM's 6 layers: the layers nearest the output adapt most to a new task;
    # the 4 below run once and are reused. 'all' scored best on validation in both
    # benchmarks (20 classes: head macro-F1 0.925 against 0.890-0.904 for 2), but
    # on 2 CPU cores its epochs take ~1 hour against ~13 minutes (docs/BENCHMARKS.md).
    unfreeze_top: str | int = 2
    # The same window geometry as stage one's defaults: fine-tune on what you embed.
    chunk_tokens: int = 256
    stride: int = 32
    # 8192 tokens = 32 full windows per step: a usual fine-tuning batch; activation
    # memory grows with it and with unfreeze_top, never with document length.
    batch_tokens: int = 8192
    # An epoch over 20NG's 29k training windows is 13-21 minutes on 2 CPU cores at
    # K=2. Validation peaked at epoch 2-3 on 3 classes and was still creeping up at
    # epoch 4 on 20 (+0.7 points); 3 keeps a CPU run to about an hour. The best
    # epoch is kept; raise --epochs on a GPU (15-40 s per epoch on an H100).
    max_epochs: int = 3
    patience: int = 1
    # BERT fine-tuning rates (2e-5..1e-4) for pretrained layers; a fresh linear
    # classifier needs a larger one to catch up with them.
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    dropout: float = 0.1
    max_grad_norm: float = 1.0
    # 10% of 20NG's training posts (1,131) score validation; stratified by class.
    val_fraction: float = 0.1
    seed: int = 0
    gradient_checkpointing: bool = False
    precision: str = "auto"
    device: str = "auto"
    # Frozen-bottom features of MiniLM in bf16: 384 x 2 bytes per token, 196 KB per
    # full window; all of 20NG train (7.3M window tokens) takes 5.2 GiB. Windows
    # beyond the budget are recomputed each epoch (2.4x slower epochs at K=2).
    feature_cache_gb: float = 8.0
    # ~200 steps of 8192 tokens is a few minutes on 2 CPU cores: the most a kill loses.
    checkpoint_steps: int = 200
    threads: int = 0  # 0: torch's default
    categories: list[str] | None = None
    remove: tuple[str, ...] = ()
    data_home: str | None = None
    limit: int | None = None
    overwrite: bool = False
    progress: bool | None = None  # None: a bar on a terminal, quiet in logs


@dataclass
class FinetuneSummary:
    out: Path
    unfreeze_top: int
    trainable_parameters: int
    n_train_docs: int
    n_val_docs: int
    n_train_windows: int
    best_epoch: int
    epochs_run: int
    val_accuracy: float
    val_macro_f1: float
    seconds: float
    peak_memory_bytes: int
    resumed_from_step: int = 0

    def line(self) -> str:
        resumed = f" (resumed at step {self.resumed_from_step:,})" if self.resumed_from_step else ""
        return (f"fine-tuned the top {self.unfreeze_top} layers ({self.trainable_parameters:,} trainable "
                f"parameters) on {self.n_train_windows:,} windows of {self.n_train_docs:,} documents{resumed}: "
                f"best epoch {self.best_epoch}/{self.epochs_run}, validation accuracy {self.val_accuracy:.4f}, "
                f"macro-F1 {self.val_macro_f1:.4f} ({self.n_val_docs:,} documents); {self.seconds:,.1f} s, "
                f"peak memory {self.peak_memory_bytes / 2**30:.2f} GiB -> {self.out}")


# --- windows and batches -------------------------------------------------------------


@dataclass
class WindowSet:
    """Every window of a corpus, with the document each belongs to."""

    windows: PackedWindows  # one int32 array: 4 bytes a token, not a Python int list per window
    doc_of_window: np.ndarray  # int64 [n_windows]
    lengths: np.ndarray  # int64 [n_windows], special tokens included

    @classmethod
    def build(cls, token_ids: list[np.ndarray], spec: WindowSpec) -> "WindowSet":
        windows = spec.pack(token_ids)
        counts = [spec.count(len(tokens)) for tokens in token_ids]
        owners = np.repeat(np.arange(len(token_ids), dtype=np.int64), counts)
        return cls(windows, owners, windows.lengths())

    def of_docs(self, docs: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(self.doc_of_window, docs))


def epoch_batches(window_ids: np.ndarray, lengths: np.ndarray, batch_tokens: int, seed: int,
                  epoch: int) -> list[np.ndarray]:
    """This epoch's batches of window ids: shuffled, then packed by length in groups of
    about 64 batches (little padding, yet each batch a random draw), in shuffled order.
    A function of (seed, epoch) alone, so a resumed run replays the same batches."""
    rng = np.random.default_rng([seed, epoch])
    shuffled = rng.permutation(window_ids)
    group = max(1, 64 * batch_tokens // max(1, int(lengths.max(initial=1))))
    batches = []
    for start in range(0, len(shuffled), group):
        members = shuffled[start:start + group]
        batches.extend(members[b] for b in pack_batches(lengths[members], batch_tokens))
    return [batches[i] for i in rng.permutation(len(batches))]


class FeatureStore:
    """Features of the frozen bottom per window, kept in one preallocated buffer.

    One allocation of at most `budget_bytes` (its pages are only touched as they fill)
    instead of a tensor per window: memory is the budget plus one batch, without the
    heap fragmentation of many mid-sized tensors living beside freed activations.
    Windows are placed in the order they are first seen; those that no longer fit
    are recomputed whenever needed.
    """

    def __init__(self, budget_bytes: float, lengths: np.ndarray, width: int, dtype: torch.dtype,
                 per_token: bool):
        self.lengths = lengths if per_token else np.ones_like(lengths)
        self.per_token = per_token
        row_bytes = width * torch.finfo(dtype).bits // 8
        capacity = int(min(self.lengths.sum(), budget_bytes // row_bytes))
        self.buffer = torch.empty((capacity, width), dtype=dtype)
        self.start = np.full(len(lengths), -1, dtype=np.int64)  # first buffer row of each window
        self.used = 0  # rows filled
        self.dtype = dtype

    def __len__(self) -> int:
        return int((self.start >= 0).sum())

    def get(self, model: WindowModel, windows: WindowSet, batch: np.ndarray, pad_id: int,
            device: torch.device):
        """(features [B, T, H] or [B, H], mask) of `batch`, computing what is missing."""
        ids, mask = pad_batch(windows.windows, batch, pad_id, device)
        starts = self.start[batch]
        if (starts >= 0).all():
            if not self.per_token:
                return self.buffer[torch.from_numpy(starts)].to(device), mask
            features = torch.zeros(len(batch), ids.shape[1], self.buffer.shape[1], dtype=self.dtype)
            for row, (start, length) in enumerate(zip(starts.tolist(), self.lengths[batch].tolist())):
                features[row, :length] = self.buffer[start:start + length]
            return features.to(device), mask
        # Rounded to the stored precision even when not stored, so every epoch (and a
        # resumed run) sees the same features whether they come from here or the store.
        features = model.bottom(ids, mask).to(self.dtype)
        for row, i in enumerate(batch.tolist()):
            length = int(self.lengths[i])
            if self.start[i] >= 0 or self.used + length > len(self.buffer):
                continue
            value = features[row, :length] if self.per_token else features[row:row + 1]
            self.buffer[self.used:self.used + length] = value.to("cpu")
            self.start[i] = self.used
            self.used += length
        return features, mask


class WindowTrainer:
    """What one training step needs: the model, AdamW with its schedule, the loss
    scaler (fp16 only) and the store of frozen-bottom features."""

    def __init__(self, model: WindowModel, encoder, windows: WindowSet, window_labels: np.ndarray,
                 config: FinetuneConfig, total_steps: int):
        self.model, self.encoder, self.windows, self.config = model, encoder, windows, config
        self.window_labels = torch.from_numpy(window_labels)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [{"params": list(model.top_layers.parameters()), "lr": config.lr},
             {"params": list(model.classifier.parameters()), "lr": config.head_lr}],
            weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(total_steps, max(1, int(config.warmup_fraction * total_steps))))
        self.scaler = torch.amp.GradScaler(encoder.device.type, enabled=encoder.precision == "fp16")
        store_dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(encoder.precision, torch.bfloat16)
        self.store = FeatureStore(config.feature_cache_gb * 2**30 if model.stores_features else 0,
                                  windows.lengths, encoder.hidden_size,
                                  store_dtype, per_token=model.unfreeze_top > 0)
        self.pad_id = SpecialTokens.of(encoder.tokenizer).pad_id

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters)

    def features(self, batch: np.ndarray):
        if not self.model.stores_features:  # generic encoders: the whole model runs in model.top
            return pad_batch(self.windows.windows, batch, self.pad_id, self.encoder.device)
        return self.store.get(self.model, self.windows, batch, self.pad_id, self.encoder.device)

    def step(self, batch: np.ndarray) -> float:
        """One AdamW step on the windows `batch`; returns the mean loss."""
        with self.encoder.autocast():
            x, mask = self.features(batch)
            logits = self.model.top(x, mask)
        # Cross-entropy on logits, in fp32: it applies log-softmax itself.
        loss = nn.functional.cross_entropy(logits.float(), self.window_labels[batch].to(self.encoder.device))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        return loss.item()


# --- the run ---------------------------------------------------------------------


def _settings(config: FinetuneConfig, base_fingerprint: str, data_fingerprint: str, k: int) -> dict:
    """What a resumed run must share with the interrupted one."""
    keep = ("data", "split", "model", "chunk_tokens", "stride", "batch_tokens", "max_epochs", "patience", "lr",
            "head_lr", "weight_decay", "warmup_fraction", "dropout", "max_grad_norm", "val_fraction", "seed",
            "precision", "categories", "remove", "limit")
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


def run_finetune(config: FinetuneConfig, log=None) -> FinetuneSummary:
    started = time.perf_counter()
    log = log or (lambda line: print(line, file=sys.stderr))
    out = Path(config.out)
    check_out_folder(out, config.overwrite, {"--data": config.data if config.data != NEWSGROUPS else None,
                                             "--model": config.model})
    if config.batch_tokens < config.chunk_tokens:
        raise UserError(f"--batch-tokens {config.batch_tokens} must be at least --chunk-tokens {config.chunk_tokens}")
    if not 0 < config.val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1; got {config.val_fraction}")
    if config.max_epochs < 1 or config.checkpoint_steps < 1:
        raise UserError("--epochs and --checkpoint-steps must be at least 1")
    if config.threads:
        torch.set_num_threads(config.threads)

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
    if config.chunk_tokens > encoder.max_tokens:
        raise UserError(f"--chunk-tokens {config.chunk_tokens} is above the {encoder.max_tokens} "
                        f"tokens {config.model} takes")
    spec = WindowSpec(config.chunk_tokens, config.stride, SpecialTokens.of(encoder.tokenizer))
    train_docs, val_docs = stratified_split(labels, config.val_fraction, np.random.default_rng(config.seed))
    if len(val_docs) == 0:
        raise UserError(f"--val-fraction {config.val_fraction} of {len(labels)} documents leaves no "
                        f"validation documents; raise it or add documents")

    torch.manual_seed(config.seed)
    model = build_window_model(encoder.model, len(corpus.label_names), k, config.dropout,
                               config.gradient_checkpointing, encoder.window_vector)
    model.to(encoder.device)
    data_fingerprint = corpus.fingerprint()  # sha256 over every text: computed once
    settings = _settings(config, encoder.fingerprint, data_fingerprint, k)
    with WorkDir(out, settings, fresh=config.overwrite) as work:
        windows = WindowSet.build(tokenize(encoder.tokenizer, corpus.texts), spec)
        train_windows, val_windows = windows.of_docs(train_docs), windows.of_docs(val_docs)
        steps_per_epoch = len(epoch_batches(train_windows, windows.lengths, config.batch_tokens, config.seed, 0))
        total_steps = steps_per_epoch * config.max_epochs

        trainer = WindowTrainer(model, encoder, windows, labels[windows.doc_of_window], config, total_steps)
        progress = TrainingProgress.load(work.dir, model, trainer.optimizer, trainer.schedule)
        resumed_step = progress.global_step
        if resumed_step:
            log(f"resuming from {work.dir} at epoch {progress.epoch}, step {progress.step_in_epoch:,} "
                f"of {steps_per_epoch:,}")

        while progress.epoch <= config.max_epochs and not progress.stopped:
            epoch = progress.epoch
            batches = epoch_batches(train_windows, windows.lengths, config.batch_tokens, config.seed, epoch)
            epoch_started = time.perf_counter()
            model.train()
            with progress_bar(len(batches), config.progress, f"epoch {epoch}", unit="step",
                              initial=progress.step_in_epoch) as bar:
                for step in range(progress.step_in_epoch, len(batches)):
                    batch = batches[step]
                    loss = trainer.step(batch)
                    progress.record_step(loss, len(batch))
                    bar.update(1)
                    bar.set_postfix(loss=f"{progress.epoch_loss():.4f}", refresh=False)
                    if progress.step_in_epoch % config.checkpoint_steps == 0 and progress.step_in_epoch < len(batches):
                        progress.save(work.dir, model, trainer.optimizer, trainer.schedule)
            progress.epoch_seconds += time.perf_counter() - epoch_started
            scores = validate(model, windows, val_windows, labels, val_docs, trainer.features,
                              config.batch_tokens, encoder)
            improved = progress.end_epoch(scores, model, config.patience)
            log(f"epoch {epoch}  train loss {progress.history[-1]['train_loss']:.4f}  "
                f"val loss {scores['val_window_loss']:.4f}  window accuracy {scores['val_window_accuracy']:.4f}  "
                f"doc accuracy {scores['val_accuracy']:.4f}  macro-F1 {scores['val_macro_f1']:.4f}  "
                f"{progress.history[-1]['seconds']:,.0f} s{'  *' if improved else ''}")
            progress.save(work.dir, model, trainer.optimizer, trainer.schedule)

        best = next(h for h in progress.history if h["epoch"] == progress.best_epoch)
        model.load_trainable_state(progress.best_state)
        record = {
            "format": "longdoc-finetune", "package_version": stages.__version__,
            "base_model": config.model, "base_fingerprint": encoder.fingerprint,
            "fingerprint": fingerprint_model(encoder.model, encoder.tokenizer),
            "unfreeze_top": k, "window_vector": model.window_vector, "label_names": corpus.label_names,
            "data_source": corpus.source,
            "data_fingerprint": data_fingerprint, "n_train_docs": int(len(train_docs)),
            "n_val_docs": int(len(val_docs)), "n_train_windows": int(len(train_windows)),
            "best_epoch": progress.best_epoch, "val_accuracy": best["val_accuracy"],
            "val_macro_f1": best["val_macro_f1"], "history": progress.history,
            "settings": {key: (str(v) if isinstance(v, Path) else v) for key, v in asdict(config).items()},
        }
        save_model_folder(out, model, encoder.tokenizer, record)
        work.discard()
    return FinetuneSummary(out, k, trainer.trainable_parameters(), len(train_docs), len(val_docs), len(train_windows),
                           progress.best_epoch, len(progress.history), best["val_accuracy"], best["val_macro_f1"],
                           time.perf_counter() - started, peak_memory_bytes(encoder.device), resumed_step)


@torch.inference_mode()
def validate(model: WindowModel, windows: WindowSet, val_windows: np.ndarray, labels: np.ndarray,
             val_docs: np.ndarray, features, batch_tokens: int, encoder) -> dict:
    """Window loss and accuracy; document accuracy and macro-F1 (as `evaluate` scores
    them) from the mean of each document's window probabilities."""
    model.eval()
    n_classes = model.classifier.out_features
    probabilities = np.zeros((len(val_windows), n_classes), dtype=np.float64)
    loss_sum = 0.0
    with encoder.autocast():
        for batch in pack_batches(windows.lengths[val_windows], batch_tokens):
            ids = val_windows[batch]
            x, mask = features(ids)
            logits = model.top(x, mask).float()
            target = torch.from_numpy(labels[windows.doc_of_window[ids]]).to(logits.device)
            loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            probabilities[batch] = logits.softmax(-1).cpu().numpy()
    owners = windows.doc_of_window[val_windows]
    window_truth = labels[owners]
    position = np.searchsorted(val_docs, owners)  # val_docs is sorted
    doc_probabilities = np.zeros((len(val_docs), n_classes))
    np.add.at(doc_probabilities, position, probabilities)
    documents = scores(labels[val_docs], doc_probabilities.argmax(1))
    return {"val_window_loss": loss_sum / len(val_windows),
            "val_window_accuracy": float((probabilities.argmax(1) == window_truth).mean()),
            "val_accuracy": documents["accuracy"], "val_macro_f1": documents["macro_f1"]}


@dataclass
class TrainingProgress:
    """Where training stands; saved to `<out>.partial/state.pt` to resume from."""

    epoch: int = 1
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    windows_seen: int = 0
    epoch_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -1.0
    best_state: dict | None = None
    stale_epochs: int = 0
    stopped: bool = False

    def record_step(self, loss: float, windows: int):
        self.step_in_epoch += 1
        self.global_step += 1
        self.loss_sum += loss * windows
        self.windows_seen += windows

    def epoch_loss(self) -> float:
        return self.loss_sum / max(1, self.windows_seen)

    def end_epoch(self, scores: dict, model: WindowModel, patience: int) -> bool:
        self.history.append({"epoch": self.epoch, "train_loss": self.epoch_loss(),
                             "seconds": self.epoch_seconds, **scores})
        improved = scores["val_macro_f1"] > self.best_score + 1e-6
        if improved:
            self.best_epoch, self.best_score, self.stale_epochs = self.epoch, scores["val_macro_f1"], 0
            self.best_state = model.trainable_state()
        else:
            self.stale_epochs += 1
        self.stopped = self.stale_epochs >= patience
        self.epoch += 1
        self.step_in_epoch, self.loss_sum, self.windows_seen, self.epoch_seconds = 0, 0.0, 0, 0.0
        return improved

    def save(self, folder: Path, model: WindowModel, optimizer, schedule):
        state = {"progress": {k: v for k, v in self.__dict__.items()},
                 "weights": model.trainable_state(), "optimizer": optimizer.state_dict(),
                 "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state()}
        path = folder / "state.pt"
        with atomic_path(path) as tmp:
            try:
                torch.save(state, tmp)
            except RuntimeError as error:  # torch's writer reports a failed write (disk full) so
                raise UserError(f"cannot write {path}: {_first_line(error)}") from None

    @classmethod
    def load(cls, folder: Path, model: WindowModel, optimizer, schedule) -> "TrainingProgress":
        path = folder / "state.pt"
        if not path.exists():
            return cls()
        try:
            # weights_only: tensors and plain containers only, so a file planted in a work
            # folder cannot run code; the state `save` writes is exactly that.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise UserError(f"{path} cannot be read as a checkpoint ({type(error).__name__}: "
                            f"{_first_line(error)[:120]}); pass --overwrite to start again") from None
        try:
            model.load_trainable_state(state["weights"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            torch.set_rng_state(state["torch_rng"])
            return cls(**state["progress"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise UserError(f"{path} is not a checkpoint of this run ({type(error).__name__}: "
                            f"{_first_line(error)[:120]}); pass --overwrite to start again") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def save_model_folder(out: Path, model: WindowModel, tokenizer, record: dict):
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
            raise UserError(f"cannot write {out}: {_first_line(error)}") from None
        (tmp / LINEAGE_FILE).write_text(json.dumps(record, indent=1))


