"""Multi-label heads: a sigmoid per label, binary cross-entropy, the stack's weights by BCE, and
the head file's task and decision (format 3), checked when loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import write_multilabel_cache

from longdoc.heads.checkpoint import (
    FORMAT_VERSION,
    label_matrix_by_name,
    load_checkpoint,
    save_checkpoint,
)
from longdoc.heads.decision import Decision
from longdoc.heads.head import Head
from longdoc.runtime.errors import UserError
from longdoc.settings.model import HeadConfig

ENCODER = {"model": "synthetic", "model_fingerprint": "f" * 64, "chunk_tokens": 256, "stride": 32,
           "window_vector": "cls", "precision": "fp32", "hidden_size": 8}


def multi_head(n_labels=4, pooling="mean", **options) -> Head:
    torch.manual_seed(0)
    return Head(HeadConfig(pooling=pooling, hidden_size=8, n_classes=n_labels, task="multi_label", **options))


@pytest.mark.parametrize("pooling", ["mean", "max", "attention", "lstm", "transformer"])
def test_every_pooling_head_gives_a_sigmoid_per_label_and_learns_by_bce(pooling):
    head = multi_head(pooling=pooling)
    x, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)
    logits = head(x, mask)
    assert logits.shape == (3, 4) and head.multi_label
    probabilities = head.probabilities(logits)
    torch.testing.assert_close(probabilities, torch.sigmoid(logits))
    assert not torch.allclose(probabilities.sum(1), torch.ones(3))  # not a softmax
    targets = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    torch.testing.assert_close(head.loss(logits, targets),
                               torch.nn.functional.binary_cross_entropy_with_logits(logits, targets))
    head.loss(logits, targets).backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


def test_a_single_label_head_keeps_its_softmax_and_a_multi_label_head_may_have_one_label():
    single = Head(HeadConfig(pooling="mean", hidden_size=8, n_classes=3))
    logits = single(torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool))
    torch.testing.assert_close(single.probabilities(logits), torch.softmax(logits, -1))
    assert single.config.task == "single_label" and not single.multi_label
    assert multi_head(n_labels=1).config.n_classes == 1
    with pytest.raises(UserError, match="at least 2 classes"):
        HeadConfig(pooling="mean", hidden_size=8, n_classes=1)
    with pytest.raises(UserError, match="task is one of single_label, multi_label"):
        HeadConfig(pooling="mean", hidden_size=8, n_classes=3, task="ranking")


def test_the_stacks_weights_are_fitted_by_bce_to_the_branch_that_knows():
    head = multi_head(inputs="both", n_terms=5)
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(rng.random((200, 4)) < 0.3).float()
    telling = (truth * 2 - 1) * 3.0  # margins of the right sign
    noise = torch.randn(200, 4) * 3.0
    head.fit_mix(torch.stack([noise, telling], 1), truth)
    assert head.mix[1] > 5 * head.mix[0]


def saved_head(tmp_path, decision=None, **changes):
    head = multi_head()
    decision = Decision(np.array([0.3, 0.5, 0.5, 0.9]), "best", "per-label") if decision is None else decision
    path = tmp_path / "head.pt"
    save_checkpoint(path, head, ["a", "b", "c", "d"], ENCODER, {}, decision=decision)
    if changes:
        payload = torch.load(path, weights_only=True)
        for key, value in changes.items():
            if value is None:
                payload.pop(key, None)
            else:
                payload[key] = value
        torch.save(payload, path)
    return path


def test_a_multi_label_head_file_round_trips_its_task_and_decision(tmp_path):
    checkpoint = load_checkpoint(saved_head(tmp_path))
    payload = torch.load(tmp_path / "head.pt", weights_only=True)
    assert payload["format_version"] == FORMAT_VERSION == 3 and payload["head"]["task"] == "multi_label"
    assert checkpoint.head.multi_label and checkpoint.decision.empty == "best"
    assert checkpoint.decision.rule == "per-label" and checkpoint.decision.thresholds.tolist() == [0.3, 0.5, 0.5, 0.9]
    with pytest.raises(ValueError, match="saved with its decision"):
        save_checkpoint(tmp_path / "other.pt", multi_head(), list("abcd"), ENCODER, {})


@pytest.mark.parametrize("decision, problem", [
    (None, "decision: missing"),
    ({"thresholds": [0.5] * 3, "empty": "none", "rule": "global"}, "4 thresholds in [0, 1]"),
    ({"thresholds": [0.5, 0.5, float("nan"), 0.5], "empty": "none", "rule": "global"}, "4 thresholds in [0, 1]"),
    ({"thresholds": [0.5, 0.5, 1.5, 0.5], "empty": "none", "rule": "global"}, "4 thresholds in [0, 1]"),
    ({"thresholds": [0.5] * 4, "empty": "all", "rule": "global"}, "empty rule is one of"),
    ({"thresholds": "abcd", "empty": "none", "rule": "global"}, "decision"),
    ([0.5] * 4, "not a record"),
])
def test_a_damaged_decision_is_one_line(tmp_path, decision, problem):
    path = saved_head(tmp_path, decision=None)
    payload = torch.load(path, weights_only=True)
    if decision is None:
        del payload["decision"]
    else:
        payload["decision"] = decision
    torch.save(payload, path)
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "damaged head checkpoint (decision" in message and problem in message
    assert "\n" not in message


def test_a_single_label_head_holds_no_decision_and_old_heads_load_as_single_label(tmp_path):
    head = Head(HeadConfig(pooling="mean", hidden_size=8, n_classes=3))
    path = tmp_path / "single.pt"
    save_checkpoint(path, head, ["a", "b", "c"], ENCODER, {})
    assert load_checkpoint(path).decision is None
    payload = torch.load(path, weights_only=True)
    payload["decision"] = {"thresholds": [0.5] * 3, "empty": "none", "rule": "global"}
    torch.save(payload, path)
    with pytest.raises(UserError, match="decision: thresholds in a single-label head"):
        load_checkpoint(path)
    del payload["decision"]
    payload["format_version"] = 2  # a head from before label sets: no task in its record
    del payload["head"]["task"]
    torch.save(payload, path)
    old = load_checkpoint(path)
    assert old.head.config.task == "single_label" and old.decision is None
    payload["format_version"] = 3  # a format-3 head must say its task
    torch.save(payload, path)
    with pytest.raises(UserError, match=r"head.task: missing"):
        load_checkpoint(path)


def test_a_caches_label_sets_are_matched_to_the_heads_labels_by_name_and_unseen_ones_kept_apart(tmp_path):
    from longdoc.cache.reader import open_cache

    sets = [[0, 1], [2], [], [3, 4], [4]]
    cache_path = write_multilabel_cache(tmp_path / "c.h5", n_labels=5, label_sets=sets)
    checkpoint = load_checkpoint(saved_head(tmp_path))  # labels a b c d
    checkpoint.label_names = ["class3", "class0", "class1", "class2"]  # the head knows four, in another order
    with open_cache(cache_path) as cache:
        known, unseen, names = label_matrix_by_name(checkpoint, cache)
    assert names == ["class4"] and unseen[:, 0].tolist() == [False, False, False, True, True]
    assert [np.flatnonzero(row).tolist() for row in known] == [[1, 2], [3], [], [0], []]
