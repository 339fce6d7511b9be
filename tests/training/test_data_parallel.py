"""longdoc.training.data_parallel: the shares of a batch and the arithmetic that makes N ranks
take the one-process step (the all-reduce itself runs in tests/test_distributed_finetune.py)."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from longdoc.training.data_parallel import WindowShare


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_shares_of_a_batch_partition_it_and_a_window_always_lands_on_the_same_rank(world):
    batch = np.random.default_rng(0).permutation(50)[:17]
    shares = [WindowShare(r, world).of(batch) for r in range(world)]
    assert sorted(np.concatenate(shares).tolist()) == sorted(batch.tolist())
    assert all((share % world == r).all() for r, share in enumerate(shares))
    assert all((batch[WindowShare(r, world).positions(batch)] == shares[r]).all() for r in range(world))


def test_summed_share_gradients_over_the_batch_size_are_the_gradient_of_the_batch_mean():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    x, y = torch.randn(11, 6), torch.randint(0, 3, (11,))
    batch = np.arange(11)
    nn.functional.cross_entropy(model(x), y).backward()
    want = [p.grad.clone() for p in model.parameters()]
    got = [torch.zeros_like(p) for p in model.parameters()]
    for rank in range(3):  # what reduce_gradients sums, rank by rank
        mine = torch.from_numpy(WindowShare(rank, 3).of(batch))
        model.zero_grad()
        (nn.functional.cross_entropy(model(x[mine]), y[mine], reduction="sum") / len(batch)).backward()
        got = [g + p.grad for g, p in zip(got, model.parameters())]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


def test_reduce_gradients_fills_a_rank_without_windows_with_zeros_and_returns_the_loss(tmp_path):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = nn.Linear(4, 2)
        model.weight.grad = torch.ones_like(model.weight)  # the bias had no backward: None
        share = WindowShare(0, 1)
        assert share.reduce_gradients(list(model.parameters()), 0.25) == 0.25
        assert torch.equal(model.weight.grad, torch.ones_like(model.weight))
        assert torch.equal(model.bias.grad, torch.zeros_like(model.bias))
        probabilities, loss = share.sum(np.eye(3), 1.5, torch.device("cpu"))
        assert np.array_equal(probabilities, np.eye(3)) and loss == 1.5
        assert share.step_seed(0, 5) == WindowShare(0, 2).step_seed(0, 5) != WindowShare(1, 2).step_seed(0, 5)
    finally:
        dist.destroy_process_group()


def test_each_ranks_feature_store_holds_room_for_its_own_windows_only():
    from longdoc.training.window_task import FeatureStore

    lengths = np.array([5, 7, 3, 9, 4], dtype=np.int64)
    whole = FeatureStore(1e9, lengths, 8, torch.float32, per_token=True)
    shares = [FeatureStore(1e9, lengths, 8, torch.float32, per_token=True,
                           owned=WindowShare(r, 2).of(np.arange(5))) for r in range(2)]
    assert len(whole.buffer) == 28 and [len(s.buffer) for s in shares] == [5 + 3 + 4, 7 + 9]
