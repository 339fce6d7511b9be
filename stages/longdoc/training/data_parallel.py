"""Fine-tuning on several ranks (torchrun): which windows are this rank's, and the sums
that make N ranks compute the step and the validation one process computes.

    share = WindowShare(rank, world_size)       # windows owned by id mod N
    mine = share.of(batch)                      # this rank's windows of a global batch
    loss = share.reduce_gradients(parameters, loss_sum / len(batch))   # after backward

How N ranks take one step of the global batch (`--batch-tokens` whatever N):
`longdoc.training.window_task.epoch_batches` is a function of (seed, epoch), so every rank
cuts the same global batches. Rank r takes the windows of each batch whose id is r mod N
(`WindowShare.of`: a window always lands on the same rank, which is why each rank's
feature store holds only its own share), sums their cross-entropy (label sets: their BCE
summed over labels, divided by the number of labels too, so a window's loss is its mean
over labels, as train-head's and one process's BCE) and divides by the size of the whole batch; `reduce_gradients` then sums the gradients (and that loss) over
the ranks in one all-reduce, which is exactly the gradient of the batch's mean loss one
process takes. Clipping, AdamW and the schedule then run on identical gradients on every
rank, so the replicas stay equal without ever broadcasting weights. This is the
arithmetic of PyTorch's DistributedDataParallel (gradients all-reduced after backward)
done by hand rather than through its wrapper: a rank may own no window of a batch, and
DDP needs every rank to run forward and backward through the wrapped module every step;
here that rank simply adds zeros. One flat all-reduce per step (gloo on CPUs, nccl on GPUs);
a rank that dies makes the others' all-reduce fail, said in one line (`collective`).

Validation: each rank scores its own validation windows; `sum` adds the probability
rows and loss sums over the ranks, so every rank computes the same scores and stops
early at the same epoch. Dropout masks (`step_seed`) are drawn from (seed, step, rank),
so a run resumed on the same ranks draws what the uninterrupted run drew.
Reads and writes nothing on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from longdoc.runtime.ranks import collective


@dataclass(frozen=True)
class WindowShare:
    """Rank `rank` of `world_size`: it owns the windows whose id is `rank` mod `world_size`."""

    rank: int
    world_size: int

    def of(self, window_ids: np.ndarray) -> np.ndarray:
        return window_ids[window_ids % self.world_size == self.rank]

    def positions(self, window_ids: np.ndarray) -> np.ndarray:
        """Where this rank's windows sit in `window_ids`."""
        return np.flatnonzero(window_ids % self.world_size == self.rank)

    def reduce_gradients(self, parameters: list[torch.nn.Parameter], loss: float) -> float:
        """Sum every parameter's gradient (None: zeros, a rank without windows in the batch)
        and `loss` over the ranks, in place; returns the summed loss."""
        device = parameters[0].device
        flat = torch.cat([*(p.grad.reshape(-1).float() if p.grad is not None else
                            torch.zeros(p.numel(), device=device) for p in parameters),
                          torch.tensor([loss], device=device)])
        with collective("a training step"):
            dist.all_reduce(flat)
        offset = 0
        for p in parameters:
            p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        return float(flat[-1])

    def sum(self, probabilities: np.ndarray, loss_sum: float, device: torch.device) -> tuple[np.ndarray, float]:
        """`probabilities` (rows of this rank's windows filled, zeros elsewhere) and
        `loss_sum` added up over the ranks, in float64."""
        flat = torch.from_numpy(np.append(probabilities.reshape(-1), loss_sum)).to(device)
        with collective("validation"):
            dist.all_reduce(flat)
        flat = flat.cpu().numpy()
        return flat[:-1].reshape(probabilities.shape), float(flat[-1])

    def step_seed(self, seed: int, step: int) -> int:
        """The random seed of this rank's dropout at optimizer step `step`."""
        return int(np.random.SeedSequence([seed, step, self.rank]).generate_state(1)[0])
