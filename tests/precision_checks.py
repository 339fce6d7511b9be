"""Shared by the precision tests (int8, bf16-true): a tiny BERT whose layers matter, random
windows, cosines, and a head's probabilities computed from a cache's stored vectors."""

from __future__ import annotations

import numpy as np
import torch


def lively(encoder, factor: float = 10.0):
    """`encoder` with every Linear weight times `factor`, in place, before any cast or quantization.

    The tiny random BERT's weights (std 0.02) barely move its residual stream, so any precision
    stays within cosine 0.99999 of fp32 there and a closeness test on it could not fail; scaled,
    every layer changes the vectors."""
    with torch.no_grad():
        for module in encoder.model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(factor)
    return encoder


def random_windows(n: int = 24, seed: int = 0) -> list[list[int]]:
    """`n` windows of the tiny BERT's vocabulary, [CLS]=2 ... [SEP]=3, 2 to 61 tokens long."""
    rng = np.random.default_rng(seed)
    return [[2, *rng.integers(5, 60, size=int(k)).tolist(), 3] for k in rng.integers(0, 60, size=n)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [n, d] arrays."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def cache_probabilities(head, cache_path) -> tuple[list[str], np.ndarray]:
    """The document ids of a single-label cache and the head's softmax over the vectors stored
    in it: what `predict` should give when it embeds the same documents again."""
    from longdoc.cache.reader import open_cache
    from longdoc.heads.batches import CacheDocuments, predict_logits
    from longdoc.heads.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(head)
    with open_cache(cache_path) as cache:
        logits = predict_logits(checkpoint.head, CacheDocuments.from_cache(cache, term_weights=checkpoint.terms))
        ids = cache.doc_ids()
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    return ids, probabilities / probabilities.sum(1, keepdims=True)


def fp32_and_precision_caches(folder, tiny_bert, precision: str, embed_other: bool = True):
    """A class-folder corpus in `folder` embedded at fp32 and, where `embed_other`, at `precision`,
    with a mean-pooling head trained on the `precision` cache. Returns (corpus, fp32 cache,
    `precision` cache, head); the last two do not exist when `embed_other` is false."""
    from synthetic import make_class_folders, tiny_embed_config

    from longdoc.configs import TrainConfig
    from longdoc.embed import run as run_embed
    from longdoc.train_head import run as run_train_head

    corpus = make_class_folders(folder / "corpus")
    fp32, other, head = folder / "fp32.h5", folder / f"{precision}.h5", folder / "head.pt"
    run_embed(tiny_embed_config(tiny_bert, corpus, fp32))
    if embed_other:
        run_embed(tiny_embed_config(tiny_bert, corpus, other, precision=precision))
        run_train_head(TrainConfig(train=str(other), out=str(head), pooling="mean", max_epochs=2, val_fraction=0.2,
                                   progress=False, curve=False), log=lambda line: None)
    return corpus, fp32, other, head
