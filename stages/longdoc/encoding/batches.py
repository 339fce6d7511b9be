"""Run an encoder over many windows: length-sorted, token-budgeted batches, no gradients.

Reads token-id windows (`longdoc.encoding.windows`) and a loaded `longdoc.encoding.encoder.Encoder`;
returns one vector per window, in the order given. Stage one, fine-tuning and
`predict` all batch windows with these functions, so a window is padded and
encoded the same way everywhere.
"""

from __future__ import annotations

import numpy as np
import torch

from longdoc.encoding.encoder import Encoder
from longdoc.encoding.windows import SpecialTokens


def default_batch_tokens(device: torch.device) -> int:
    """Token budget of one encoder batch when --batch-tokens is not given.

    CPU: 1024. Larger batches are no faster on CPU (16k-token batches were slower),
    while activation memory grows with the batch; 1024 keeps a 100k-token document
    within 1.1x of a short one's peak memory.
    CUDA: 32768, enough windows to fill a GPU; activations stay near 1 GB for bert-base.
    See docs/BENCHMARKS.md.
    """
    return 32768 if device.type == "cuda" else 1024


def pack_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Group window indices, longest first, into batches of at most `batch_tokens`
    padded tokens (a window longer than the budget goes alone)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, batch_tokens // max(longest, 1))
        batches.append(order[start:start + size])
        start += size
    return batches


def pad_batch(windows, batch: np.ndarray, pad_id: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(input ids [len(batch), longest], attention mask or None) of windows[batch];
    `windows` is any sequence of 1-D token-id arrays or lists (e.g. `PackedWindows`).

    Without padding the mask is all ones: leaving it out (None) lets SDPA take its
    fastest kernel."""
    width = max(len(windows[i]) for i in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, i in enumerate(batch):
        window = windows[i]
        ids[row, :len(window)] = window
        mask[row, :len(window)] = 1
    ids_t = torch.from_numpy(ids).to(device, non_blocking=True)
    return ids_t, None if mask.all() else torch.from_numpy(mask).to(device, non_blocking=True)


def encode_windows(encoder: Encoder, windows, batch_tokens: int,
                   on_batch=None) -> np.ndarray:
    """One vector per window (float32 [n, hidden], `encoder.window_vector`), in the order given;
    `windows` is a sequence of 1-D token-id arrays or lists (`PackedWindows` keeps 4 bytes a token)."""
    lengths = np.fromiter((len(w) for w in windows), dtype=np.int64, count=len(windows))
    out = np.empty((len(windows), encoder.hidden_size), dtype=np.float32)
    pad_id = SpecialTokens.of(encoder.tokenizer).pad_id if windows else 0
    # no_grad, not inference_mode: under inference mode autocast casts each weight again for
    # every batch (it caches only tensors that require grad, and inference mode turns that
    # off); under no_grad it casts each weight once per call. The vectors are the same bit for
    # bit; the encoder alone ran 1.10x faster quiet, whole `embed` processes 1.05x (best of 4,
    # inside this VM's spread) (docs/BENCHMARKS.md S1c).
    with torch.no_grad(), encoder.autocast():
        for batch in pack_batches(lengths, batch_tokens):
            ids_t, mask_t = pad_batch(windows, batch, pad_id, encoder.device)
            vectors = encoder.window_vectors(ids_t, mask_t)
            out[batch] = vectors.float().cpu().numpy()
            if on_batch is not None:
                on_batch(len(batch))
    return out
