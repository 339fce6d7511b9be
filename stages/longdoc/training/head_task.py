"""What is particular to training a head, as the loop's task (`longdoc.training.loop.TrainingTask`).

    task = HeadTask(head, train, val, config, rng, loss_fn, steps_per_epoch)
    progress = run_epochs(task, resume(work.dir, task, settings), work, settings, log)

Reads batches of cached documents (`longdoc.heads.batches.CacheDocuments`) and trains the
head's window branch: the seeded generator draws each epoch's batches, a step is
`load` -> `loss` -> `backward` -> `advance` (AdamW and its schedule, `adamw_with_schedule`;
`bench/head_step.py` times these very phases), and validation scores the window branch
(a terms-only head: the linear branch's scores, once). `head_scores` scores the whole head,
weighing its two branches on validation first. Writes nothing: the loop saves its state.

Label sets (a multi-label head, `Head.multi_label`): the batches' labels are rows of the
label matrix, the loss is binary cross-entropy on logits (`positive_weight_tensor` for
`--class-weights`), and validation scores each label at probability 0.5 (micro- and
macro-F1, subset accuracy as the accuracy): the thresholds a head decides with are fitted
on validation after the epochs (`longdoc.training.thresholds`), so epochs are compared by
validation loss.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from longdoc.heads.batches import LOADING_HINT, CacheDocuments, head_branch_logits, predict_logits
from longdoc.heads.head import Head
from longdoc.reports.metrics import multilabel_scores, scores
from longdoc.training.loop import adamw_with_schedule


def class_weight_tensor(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """n / (k * count_c) for the k classes present; 1 for absent ones (never in the loss)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


# A label with few positive documents would get a weight of thousands (Reuters-21578 has
# topics of one training story among 7,770): steps on its one document would swamp the rest.
MAX_POSITIVE_WEIGHT = 100.0


def positive_weight_tensor(label_matrix: np.ndarray) -> torch.Tensor:
    """BCE's pos_weight per label: negatives / positives, as `class_weight="balanced"` weighs
    a binary problem, at most MAX_POSITIVE_WEIGHT; 1 for a label without positive documents."""
    positives = np.asarray(label_matrix, dtype=bool).sum(0).astype(np.float64)
    negatives = len(label_matrix) - positives
    weights = np.ones(len(positives))
    seen = positives > 0
    weights[seen] = np.clip(negatives[seen] / positives[seen], 1.0, MAX_POSITIVE_WEIGHT)
    return torch.tensor(weights, dtype=torch.float32)


def task_loss(multi_label: bool, weights: torch.Tensor | None) -> nn.Module:
    """The window branch's loss on logits: cross-entropy (it applies log-softmax itself),
    `weights` per class; or for label sets binary cross-entropy, `weights` its pos_weight."""
    if multi_label:
        return nn.BCEWithLogitsLoss(pos_weight=weights)
    return nn.CrossEntropyLoss(weight=weights)


def window_logits(head: Head, batch) -> torch.Tensor:
    return head.window_logits(batch.x, batch.mask)


class HeadTask:
    """Stage two as a `TrainingTask`: batches of documents drawn by the seeded generator,
    the window branch's loss and validation scores (a terms-only head: the linear branch's,
    once). `config` is train-head's settings (`longdoc.configs.TrainConfig`): its lr,
    weight_decay, warmup_fraction, max_epochs, batch_docs and batch_windows are read."""

    score_names = ("val_loss", "val_accuracy", "val_macro_f1")  # `_scores`
    multi_label_score_names = ("val_loss", "val_accuracy", "val_macro_f1", "val_micro_f1")
    memory_hint = f"lower --batch-docs or --batch-windows, or {LOADING_HINT.removeprefix('lower ')}"

    def __init__(self, head: Head, train: CacheDocuments, val: CacheDocuments, config,
                 rng: np.random.Generator, loss_fn: nn.Module, steps_per_epoch: int, optimizer_options=None):
        self.head, self.train, self.val, self.config, self.rng, self.loss_fn = head, train, val, config, rng, loss_fn
        self.optimizer = self.schedule = None
        if head.multi_label:
            self.score_names = self.multi_label_score_names
        if head.reads_windows:
            # fused: one kernel for all of the head's tensors, ~2.5x faster than AdamW's loop over
            # them on this CPU (a tenth of each epoch; bench/head_step.py, which passes the others)
            options = {"fused": True} if optimizer_options is None else optimizer_options
            self.optimizer, self.schedule = adamw_with_schedule(
                [p for p in head.parameters() if p.requires_grad], config.lr, config.weight_decay,
                steps_per_epoch * config.max_epochs, config.warmup_fraction, **options)

    def start_epoch(self, epoch: int) -> list[np.ndarray]:
        self.head.train()
        return self.train.plan(self.config.batch_docs, self.config.batch_windows, self.rng) if epoch else []

    def step(self, docs: np.ndarray) -> tuple[float, int]:
        batch = self.load(docs)
        loss = self.loss(batch)
        self.backward(loss)
        self.advance()
        return loss.item(), len(batch)

    # The four phases of a step, apart so that bench/head_step.py can time each.
    def load(self, docs: np.ndarray):
        # The window branch learns on its own loss, so it never leans on the linear one
        # (and the batch needs no terms).
        return self.train.load(docs, terms=False)

    def loss(self, batch) -> torch.Tensor:
        return self.loss_fn(window_logits(self.head, batch), batch.labels)

    def backward(self, loss: torch.Tensor):
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def advance(self):
        self.optimizer.step()
        self.schedule.step()

    def validate(self, epoch: int, train_loss: float) -> dict:
        if not self.head.reads_windows:
            return self.head_scores()
        return self._scores(predict_logits(self.head, self.val, window_logits, terms=False))

    def head_scores(self) -> dict:
        """The whole head's validation scores; a head with both inputs first weighs its two
        branches on validation (`Head.fit_mix`), so its linear branch must be in place."""
        head, labels = self.head, torch.from_numpy(self.val.labels[self.val.docs])
        branches = torch.from_numpy(predict_logits(head, self.val, head_branch_logits))  # one pass
        if head.stacked:
            head.fit_mix(branches, labels)
        self.val_logits = head.combine(branches).numpy()  # the decision of label sets is fitted on these
        return self._scores(self.val_logits)

    def _scores(self, logits: np.ndarray) -> dict:
        labels = self.val.labels[self.val.docs]
        if self.head.multi_label:
            loss = nn.functional.binary_cross_entropy_with_logits(
                torch.from_numpy(logits), torch.from_numpy(labels.astype(np.float32)), pos_weight=self.loss_fn.pos_weight)
            found = multilabel_scores(labels, logits >= 0.0)  # probability 0.5
            return {"val_loss": float(loss), "val_accuracy": found["subset_accuracy"],
                    "val_macro_f1": found["macro_f1"], "val_micro_f1": found["micro_f1"]}
        loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), weight=self.loss_fn.weight)
        return {"val_loss": float(loss), **{f"val_{k}": v for k, v in scores(labels, logits.argmax(1)).items()}}

    def describe(self, entry: dict) -> str:
        branch = "window branch: " if self.head.stacked else ""
        if self.head.multi_label:
            return (f"epoch {entry['epoch']:3d}  train loss {entry['train_loss']:.4f}  {branch}val loss "
                    f"{entry['val_loss']:.4f}  at 0.5: micro-F1 {entry['val_micro_f1']:.4f}  "
                    f"macro-F1 {entry['val_macro_f1']:.4f}  subset accuracy {entry['val_accuracy']:.4f}")
        return (f"epoch {entry['epoch']:3d}  train loss {entry['train_loss']:.4f}  {branch}val loss "
                f"{entry['val_loss']:.4f}  val accuracy {entry['val_accuracy']:.4f}  macro-F1 {entry['val_macro_f1']:.4f}")

    def trainable_state(self) -> dict:
        return self.head.window_branch_state()  # the linear branch and the mix are fitted after the epochs

    def load_trainable_state(self, state: dict):
        self.head.load_window_branch_state(state)

    def state(self) -> dict:
        return {"rng": json.dumps(self.rng.bit_generator.state)}

    def load_state(self, state: dict):
        if state:
            self.rng.bit_generator.state = json.loads(state["rng"])
