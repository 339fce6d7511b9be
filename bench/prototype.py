"""The original prototype's approach, the baseline the benchmarks measure ours against,
written once: bench/embed_speed.py, bench/gpu_embed.py and bench/gpu_finetune.py use it.

The prototype ran every window of one document as one batch, each window padded to
512 tokens, through the whole encoder in fp32:
  * embedding: the [CLS] vector of each window, one forward pass per document;
  * training: that pass with gradients through every weight, the document's [CLS]
    vectors averaged, a linear classifier, one AdamW step over every weight.
Reads and writes nothing: token windows and a Hugging Face encoder come in, vectors or
the step's figures go out.
"""

from __future__ import annotations

import torch

# The prototype padded every window to BERT's longest input, whatever its length.
WIDTH = 512


def pad_document(windows, pad_id: int, width: int = WIDTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [windows, width] of every window of one document."""
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, window in enumerate(windows):
        ids[row, :len(window)] = torch.tensor(window)
        mask[row, :len(window)] = 1
    return ids, mask


def embed_padded(model, ids: torch.Tensor, mask: torch.Tensor, device=None) -> torch.Tensor:
    """[CLS] vectors (float32) of a padded document, in one forward pass without gradients."""
    with torch.inference_mode():
        return model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state[:, 0].float()


def embed_documents(model, windows_by_doc, pad_id: int, width: int = WIDTH) -> list[torch.Tensor]:
    """[CLS] vectors of every window of each document, the prototype's way, on the CPU:
    each document padded and run as it comes (padding is part of its cost)."""
    return [embed_padded(model, *pad_document(windows, pad_id, width)) for windows in windows_by_doc]


def train_step(model, windows, pad_id: int, device, width: int = WIDTH, n_classes: int = 20,
               label: int = 3) -> dict:
    """One training step on one document of class `label`, the prototype's way: every
    weight trains, fp32, lr 2e-5. Returns its precision and trainable parameters."""
    ids, mask = pad_document(windows, pad_id, width)
    classifier = torch.nn.Linear(model.config.hidden_size, n_classes).to(device)
    model.train()
    optimizer = torch.optim.AdamW([*model.parameters(), *classifier.parameters()], lr=2e-5)
    cls = model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state[:, 0]
    loss = torch.nn.functional.cross_entropy(classifier(cls.mean(0, keepdim=True)),
                                             torch.tensor([label], device=device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"precision": "fp32", "trainable_parameters": sum(p.numel() for p in model.parameters())}
