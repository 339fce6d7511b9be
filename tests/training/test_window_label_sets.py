"""longdoc.training.window_task on label sets: each window's target is its document's label
set, one logit per label, train-head's BCE (pos_weight per label), the same step in one
process and as the one rank of a torchrun job, and validation by document at 0.5."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
from synthetic import TOPICS

from longdoc.configs import FinetuneConfig
from longdoc.encoding.encoder import load_encoder
from longdoc.encoding.windows import tokenize
from longdoc.training.data_parallel import WindowShare
from longdoc.training.head_task import positive_weight_tensor, task_loss
from longdoc.training.window_task import WindowTask

NAMES = list(TOPICS)


def problem(n_docs=12):
    """Texts made of the words of their labels' topics, the label matrix (label 2 on one document)."""
    rng = np.random.default_rng(0)
    labels = np.zeros((n_docs, len(NAMES)), dtype=bool)
    labels[np.arange(n_docs), np.arange(n_docs) % 2] = True
    labels[3, 2] = True
    texts = [" ".join(rng.choice([w for k in np.flatnonzero(row) for w in TOPICS[NAMES[k]].split()], 30 + 7 * i))
             for i, row in enumerate(labels)]
    return texts, labels


def build(tiny_bert, share=None, weighted=True, **changes):
    texts, labels = problem()
    settings = dict(model=str(tiny_bert), out="unused", chunk_tokens=16, stride=2, batch_tokens=128,
                    precision="fp32", unfreeze_top=1, dropout=0.0, head_lr=1e-2, lr=1e-3, max_epochs=30)
    config = FinetuneConfig(**{**settings, **changes})
    encoder = load_encoder(str(tiny_bert), "cpu", "fp32")
    task = WindowTask.build(encoder, tokenize(encoder.tokenizer, texts), labels, len(NAMES), 1,
                            np.arange(9), np.arange(9, 12), config, share, weighted=weighted)
    for module in task.model.modules():  # the layers' own dropout too: steps comparable draw for draw
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return task, labels


def test_windows_learn_their_documents_label_sets_with_train_heads_loss(tiny_bert):
    task, labels = build(tiny_bert, head_lr=5e-2)
    assert task.model.classifier.out_features == len(NAMES)
    owners = task.trainer.windows.doc_of_window
    assert np.array_equal(task.trainer.window_labels.numpy(), labels[owners].astype(np.float32))
    torch.testing.assert_close(task.trainer.pos_weight, positive_weight_tensor(labels[:9]))
    assert float(task.trainer.pos_weight[2]) == 8.0  # the label of one training document: 8 negatives / 1
    batch = task.start_epoch(1)[0]
    x, mask = task.trainer.features(batch)
    with torch.no_grad():
        logits = task.model.top(x, mask)
    want = task_loss(True, positive_weight_tensor(labels[:9]))(logits, torch.from_numpy(labels[owners[batch]] * 1.0)
                                                                .float())
    first, _ = task.step(batch)
    assert first == pytest.approx(float(want), rel=1e-5)
    losses = [task.step(batch)[0] for _ in range(40)]
    assert losses[-1] < 0.75 * first  # the same batch again and again: learned


def test_unweighted_label_sets_have_no_pos_weight(tiny_bert):
    task, _ = build(tiny_bert, weighted=False)
    assert task.trainer.pos_weight is None


def test_validation_scores_documents_at_half_of_their_windows_mean_probability(tiny_bert):
    task, labels = build(tiny_bert)
    scores = task.validate(0, 0.0)
    assert sorted(scores) == sorted(task.score_names) == sorted(
        ["val_window_loss", "val_accuracy", "val_macro_f1", "val_micro_f1"])
    assert all(0.0 <= scores[k] <= 1.0 for k in ("val_accuracy", "val_macro_f1", "val_micro_f1"))
    assert scores["val_window_loss"] > 0


def test_one_rank_of_a_torchrun_job_takes_the_one_process_step(tiny_bert):
    """The share's loss is summed over windows and labels, then divided by windows x labels:
    with one rank, the step and the validation of one process."""
    alone, _ = build(tiny_bert)
    batch = alone.start_epoch(1)[0]
    want = [alone.step(batch)[0] for _ in range(2)]
    want_scores = alone.validate(1, 0.0)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ranked, _ = build(tiny_bert, share=WindowShare(0, 1))
        ranked.start_epoch(1)
        got = [ranked.step(batch)[0] for _ in range(2)]
        got_scores = ranked.validate(1, 0.0)
    finally:
        dist.destroy_process_group()
    assert got == pytest.approx(want, rel=1e-5)
    assert got_scores == pytest.approx(want_scores, rel=1e-5)
    for name, value in alone.trainable_state().items():
        torch.testing.assert_close(ranked.trainable_state()[name], value, rtol=1e-4, atol=1e-6)
