"""Training on windows: the pieces `finetune` (and its benchmarks) build a run from.

    task = WindowTask.build(encoder, tokenize(encoder.tokenizer, texts), labels, n_classes, k,
                            train_docs, val_docs, config)
    batches = task.start_epoch(1); task.step(batches[0])     # what bench/ times
    run_epochs(task, ...)                                      # what `finetune` runs (longdoc.training.loop)

* `WindowSet`: every window of a corpus (`longdoc.encoding.windows`, the geometry stage one uses)
  with the document each belongs to; a window is labelled with its document's class, or
  (label sets) its document's whole label set.
* `epoch_batches`: an epoch's batches, packed to a token budget, a function of (seed, epoch).
* `FeatureStore`: the frozen bottom's features per window (`model.bottom`), computed
  once and kept in one buffer up to a budget; later epochs run only `model.top`.
* `WindowTrainer`: AdamW over the top layers and the classifier with the warm-up +
  cosine schedule, the fp16 loss scaler, gradient clipping: one step.
* `validate_windows`: window loss and accuracy, and document accuracy and macro-F1 from
  the mean of each document's window probabilities.
* `WindowTask`: the above as a `longdoc.training.loop.TrainingTask`.

Label sets (`labels` a bool matrix [documents, labels], a multi-label corpus): every window's
target is its document's multi-hot row, the classifier has one logit per label, and the loss
is train-head's (`longdoc.training.head_task.task_loss`): binary cross-entropy on logits,
averaged over labels and windows, with `pos_weight` per label (`positive_weight_tensor` of the
training documents) when weighted. Validation (`validate_label_sets`) mirrors the classes':
each document's probabilities are the mean of its windows' sigmoids, and a label is predicted
at 0.5; it reports window loss, micro- and macro-F1 and subset accuracy (as `val_accuracy`),
and the epoch kept is the one of best macro-F1, as for classes (the thresholds a head decides
with are fitted later, by train-head, on the embedded cache).

Under torchrun each of these takes this rank's `WindowShare` (`longdoc.training.data_parallel`,
which says how N ranks take one step of the same global batch).

`config` is the fine-tuning settings (`longdoc.configs.FinetuneConfig`; any object with
its fields). Reads and writes nothing on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from longdoc.encoding.batches import pack_batches, pad_batch
from longdoc.encoding.windows import PackedWindows, SpecialTokens, WindowSpec
from longdoc.reports.metrics import multilabel_scores, scores
from longdoc.training.data_parallel import WindowShare
from longdoc.training.head_task import positive_weight_tensor, task_loss
from longdoc.training.loop import adamw_with_schedule
from longdoc.training.window_model import WindowClassifier, build_window_model


@dataclass
class WindowSet:
    """Every window of a corpus, with the document each belongs to."""

    windows: PackedWindows  # one int32 array: 4 bytes a token, not a Python int list per window
    doc_of_window: np.ndarray  # int64 [n_windows]
    lengths: np.ndarray  # int64 [n_windows], special tokens included

    @classmethod
    def build(cls, token_ids: list[np.ndarray], spec: WindowSpec) -> WindowSet:
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
                 per_token: bool, owned: np.ndarray | None = None):
        """`owned`: the windows this store may hold (under torchrun, this rank's share), all when None."""
        self.lengths = lengths if per_token else np.ones_like(lengths)
        self.per_token = per_token
        row_bytes = width * torch.finfo(dtype).bits // 8
        rows = self.lengths.sum() if owned is None else self.lengths[owned].sum()
        capacity = int(min(rows, budget_bytes // row_bytes))
        self.buffer = torch.empty((capacity, width), dtype=dtype)
        self.start = np.full(len(lengths), -1, dtype=np.int64)  # first buffer row of each window
        self.used = 0  # rows filled
        self.dtype = dtype

    def __len__(self) -> int:
        return int((self.start >= 0).sum())

    def get(self, model: WindowClassifier, windows: WindowSet, batch: np.ndarray, pad_id: int,
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
    scaler (fp16 only) and the store of frozen-bottom features; under torchrun, this
    rank's `share` of the windows (`longdoc.training.data_parallel`). `window_labels`: a class
    per window, or (label sets) a float multi-hot row per window, `pos_weight` BCE's per label."""

    def __init__(self, model: WindowClassifier, encoder, windows: WindowSet, window_labels: np.ndarray,
                 config, total_steps: int, share: WindowShare | None = None, pos_weight: torch.Tensor | None = None):
        self.model, self.encoder, self.windows, self.config, self.share = model, encoder, windows, config, share
        self.window_labels = torch.from_numpy(window_labels)
        self.multi_label = window_labels.ndim == 2
        self.pos_weight = None if pos_weight is None else pos_weight.to(encoder.device)
        self.bce = task_loss(True, self.pos_weight) if self.multi_label else None  # mean over labels and windows
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.schedule = adamw_with_schedule(
            [{"params": list(model.top_layers.parameters()), "lr": config.lr},
             {"params": list(model.classifier.parameters()), "lr": config.head_lr}],
            config.lr, config.weight_decay, total_steps, config.warmup_fraction)
        self.scaler = torch.amp.GradScaler(encoder.device.type, enabled=encoder.precision == "fp16")
        store_dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(encoder.precision, torch.bfloat16)
        self.store = FeatureStore(config.feature_cache_gb * 2**30 if model.stores_features else 0,
                                  windows.lengths, encoder.hidden_size, store_dtype, per_token=model.unfreeze_top > 0,
                                  owned=None if share is None else share.of(np.arange(len(windows.lengths))))
        self.pad_id = SpecialTokens.of(encoder.tokenizer).pad_id

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters)

    def features(self, batch: np.ndarray):
        if not self.model.stores_features:  # generic encoders: the whole model runs in model.top
            return pad_batch(self.windows.windows, batch, self.pad_id, self.encoder.device)
        return self.store.get(self.model, self.windows, batch, self.pad_id, self.encoder.device)

    def step(self, batch: np.ndarray) -> float:
        """One AdamW step on the windows `batch`; returns the mean loss. Under torchrun
        `batch` is the global batch: this rank computes its share, the gradients are summed."""
        if self.share is not None:
            return self._step_of_share(batch)
        with self.encoder.autocast():
            x, mask = self.features(batch)
            logits = self.model.top(x, mask)
        # Cross-entropy on logits, in fp32: it applies log-softmax itself (label sets: BCE, log-sigmoid).
        target = self.window_labels[batch].to(self.encoder.device)
        loss = self.bce(logits.float(), target) if self.multi_label else nn.functional.cross_entropy(logits.float(),
                                                                                                      target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return self._update(loss.item())

    def _step_of_share(self, batch: np.ndarray) -> float:
        """This rank's windows of `batch`: their summed loss over the whole batch's size, so
        that the gradients summed over the ranks are those of the batch's mean loss (label sets:
        a window's loss is its BCE averaged over labels, as in one process)."""
        torch.manual_seed(self.share.step_seed(self.config.seed, self.schedule.last_epoch))  # dropout
        mine = self.share.of(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        if len(mine):
            with self.encoder.autocast():
                x, mask = self.features(mine)
                logits = self.model.top(x, mask)
            target = self.window_labels[mine].to(self.encoder.device)
            if self.multi_label:
                total = nn.functional.binary_cross_entropy_with_logits(
                    logits.float(), target, pos_weight=self.pos_weight, reduction="sum") / (len(batch) * target.shape[1])
            else:
                total = nn.functional.cross_entropy(logits.float(), target, reduction="sum") / len(batch)
            self.scaler.scale(total).backward()
            loss = total.item()
        return self._update(self.share.reduce_gradients(self.parameters, loss))

    def _update(self, loss: float) -> float:
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        return loss


def _score_windows(model: WindowClassifier, windows: WindowSet, val_windows: np.ndarray, features,
                   batch_tokens: int, encoder, share: WindowShare | None, loss_and_probabilities
                   ) -> tuple[np.ndarray, float]:
    """Both validations' one pass over the validation windows, in token-budgeted batches:
    (probabilities [windows, outputs], loss summed over windows), `loss_and_probabilities(logits,
    window ids)` giving a batch's summed loss and its probabilities. Under torchrun each rank
    scores its `share` and the sums are added up, so every rank has the same arrays."""
    model.eval()
    probabilities = np.zeros((len(val_windows), model.classifier.out_features), dtype=np.float64)
    loss_sum = 0.0
    rows = np.arange(len(val_windows)) if share is None else share.positions(val_windows)
    with encoder.autocast():
        for batch in pack_batches(windows.lengths[val_windows[rows]], batch_tokens):
            batch = rows[batch]
            ids = val_windows[batch]
            x, mask = features(ids)
            loss, batch_probabilities = loss_and_probabilities(model.top(x, mask).float(), ids)
            loss_sum += loss
            probabilities[batch] = batch_probabilities.cpu().numpy()
    if share is not None:
        probabilities, loss_sum = share.sum(probabilities, loss_sum, encoder.device)
    return probabilities, loss_sum


@torch.inference_mode()
def validate_windows(model: WindowClassifier, windows: WindowSet, val_windows: np.ndarray,
                     labels: np.ndarray, val_docs: np.ndarray, features, batch_tokens: int, encoder,
                     share: WindowShare | None = None) -> dict:
    """Window loss and accuracy; document accuracy and macro-F1 (as `evaluate` scores
    them) from the mean of each document's window probabilities. Under torchrun each
    rank scores its `share` and the sums are added up, so every rank has the same scores."""
    n_classes = model.classifier.out_features

    def loss_and_probabilities(logits, ids):
        target = torch.from_numpy(labels[windows.doc_of_window[ids]]).to(logits.device)
        return float(nn.functional.cross_entropy(logits, target, reduction="sum")), logits.softmax(-1)

    probabilities, loss_sum = _score_windows(model, windows, val_windows, features, batch_tokens, encoder, share,
                                             loss_and_probabilities)
    owners = windows.doc_of_window[val_windows]
    window_truth = labels[owners]
    position = np.searchsorted(val_docs, owners)  # val_docs is sorted
    doc_probabilities = np.zeros((len(val_docs), n_classes))
    np.add.at(doc_probabilities, position, probabilities)
    documents = scores(labels[val_docs], doc_probabilities.argmax(1))
    return {"val_window_loss": loss_sum / len(val_windows),
            "val_window_accuracy": float((probabilities.argmax(1) == window_truth).mean()),
            "val_accuracy": documents["accuracy"], "val_macro_f1": documents["macro_f1"]}


@torch.inference_mode()
def validate_label_sets(model: WindowClassifier, windows: WindowSet, val_windows: np.ndarray,
                        label_sets: np.ndarray, val_docs: np.ndarray, features, batch_tokens: int, encoder,
                        share: WindowShare | None = None, pos_weight: torch.Tensor | None = None) -> dict:
    """`validate_windows` for label sets (`label_sets` bool [documents, labels]): window loss
    (BCE averaged over labels, `pos_weight` as in training); each document's probabilities
    the mean of its windows' sigmoids, a label predicted at 0.5; micro- and macro-F1 and
    subset accuracy (`val_accuracy`) of those sets. Under torchrun summed as there."""
    n_labels = model.classifier.out_features

    def loss_and_probabilities(logits, ids):
        target = torch.from_numpy(label_sets[windows.doc_of_window[ids]].astype(np.float32)).to(logits.device)
        loss = float(nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight,
                                                                     reduction="sum")) / n_labels
        return loss, logits.sigmoid()

    probabilities, loss_sum = _score_windows(model, windows, val_windows, features, batch_tokens, encoder, share,
                                             loss_and_probabilities)
    position = np.searchsorted(val_docs, windows.doc_of_window[val_windows])  # val_docs is sorted
    doc_probabilities = np.zeros((len(val_docs), n_labels))
    np.add.at(doc_probabilities, position, probabilities)
    doc_probabilities /= np.maximum(np.bincount(position, minlength=len(val_docs)), 1)[:, None]
    found = multilabel_scores(label_sets[val_docs], doc_probabilities >= 0.5)
    return {"val_window_loss": loss_sum / len(val_windows), "val_accuracy": found["subset_accuracy"],
            "val_macro_f1": found["macro_f1"], "val_micro_f1": found["micro_f1"]}


class WindowTask:
    """Fine-tuning as a `longdoc.training.loop.TrainingTask`: the training documents' windows
    in `epoch_batches`, a `WindowTrainer` step, `validate_windows` on the others."""

    score_names = ("val_window_loss", "val_window_accuracy", "val_accuracy", "val_macro_f1")  # `validate_windows`
    label_set_score_names = ("val_window_loss", "val_accuracy", "val_macro_f1", "val_micro_f1")  # `validate_label_sets`
    memory_hint = "lower --batch-tokens or --feature-cache-gb, or pass --gradient-checkpointing"

    def __init__(self, trainer: WindowTrainer, labels: np.ndarray, train_docs: np.ndarray, val_docs: np.ndarray):
        self.trainer, self.model, self.config = trainer, trainer.model, trainer.config
        self.labels, self.train_docs, self.val_docs = labels, train_docs, val_docs
        self.train_windows, self.val_windows = trainer.windows.of_docs(train_docs), trainer.windows.of_docs(val_docs)
        self.optimizer, self.schedule = trainer.optimizer, trainer.schedule
        self.multi_label = trainer.multi_label
        if self.multi_label:
            self.score_names = self.label_set_score_names

    @classmethod
    def build(cls, encoder, token_ids: list[np.ndarray], labels: np.ndarray, n_classes: int, unfreeze_top: int,
              train_docs: np.ndarray, val_docs: np.ndarray, config, share: WindowShare | None = None,
              weighted: bool = False) -> WindowTask:
        """What `finetune` trains: the windows of the documents `token_ids` (`tokenize`), the
        window model (`build_window_model`: the BERT fast path or the generic one) whose top
        `unfreeze_top` layers train, initialised from `config.seed`, and its trainer over
        `config.max_epochs` epochs of the windows of `train_docs`; under torchrun, this
        rank's `share` of every batch (every rank builds the same model from the seed).
        `labels` a class per document, or a bool label matrix [documents, labels] (label sets,
        then `n_classes` is the number of labels); `weighted`: label sets' BCE weighs each
        label's positives (`positive_weight_tensor` of `train_docs`)."""
        torch.manual_seed(config.seed)
        model = build_window_model(encoder.model, n_classes, unfreeze_top, config.dropout,
                                   config.gradient_checkpointing, encoder.window_vector)
        model.to(encoder.device)
        spec = WindowSpec(config.chunk_tokens, config.stride, SpecialTokens.of(encoder.tokenizer))
        windows = WindowSet.build(token_ids, spec)
        steps_per_epoch = len(epoch_batches(windows.of_docs(train_docs), windows.lengths, config.batch_tokens,
                                            config.seed, 0))
        multi_label = labels.ndim == 2
        window_labels = labels[windows.doc_of_window].astype(np.float32) if multi_label else labels[
            windows.doc_of_window]
        pos_weight = positive_weight_tensor(labels[train_docs]) if multi_label and weighted else None
        trainer = WindowTrainer(model, encoder, windows, window_labels, config, steps_per_epoch * config.max_epochs,
                                share, pos_weight)
        return cls(trainer, labels, train_docs, val_docs)

    def start_epoch(self, epoch: int) -> list[np.ndarray]:
        self.model.train()
        return epoch_batches(self.train_windows, self.trainer.windows.lengths, self.config.batch_tokens,
                             self.config.seed, epoch)

    def step(self, batch: np.ndarray) -> tuple[float, int]:
        return self.trainer.step(batch), len(batch)

    def validate(self, epoch: int, train_loss: float) -> dict:
        if self.multi_label:
            return validate_label_sets(self.model, self.trainer.windows, self.val_windows, self.labels, self.val_docs,
                                       self.trainer.features, self.config.batch_tokens, self.trainer.encoder,
                                       self.trainer.share, self.trainer.pos_weight)
        return validate_windows(self.model, self.trainer.windows, self.val_windows, self.labels, self.val_docs,
                                self.trainer.features, self.config.batch_tokens, self.trainer.encoder,
                                self.trainer.share)

    def describe(self, entry: dict) -> str:
        if self.multi_label:
            return (f"epoch {entry['epoch']}  train loss {entry['train_loss']:.4f}  "
                    f"val loss {entry['val_window_loss']:.4f}  at 0.5: micro-F1 {entry['val_micro_f1']:.4f}  "
                    f"macro-F1 {entry['val_macro_f1']:.4f}  subset accuracy {entry['val_accuracy']:.4f}  "
                    f"{entry['seconds']:,.0f} s")
        return (f"epoch {entry['epoch']}  train loss {entry['train_loss']:.4f}  "
                f"val loss {entry['val_window_loss']:.4f}  "
                f"window accuracy {entry['val_window_accuracy']:.4f}  doc accuracy {entry['val_accuracy']:.4f}  "
                f"macro-F1 {entry['val_macro_f1']:.4f}  {entry['seconds']:,.0f} s")

    def trainable_state(self) -> dict:
        return self.model.trainable_state()

    def load_trainable_state(self, state: dict):
        self.model.load_trainable_state(state)

    def state(self) -> dict:
        return {}  # batches are a function of (seed, epoch); torch's random state is the loop's

    def load_state(self, state: dict):
        pass
