"""Stage one: embed every window of every document once and cache the vectors.

Reads a corpus (`longdoc.corpus.sources`) and an encoder (`longdoc.encoding.encoder`); writes one HDF5
cache per split (`longdoc.cache.reader`, format in docs/cache-format.md).

    python cli.py embed --data 20newsgroups --split train --out data/cache/train.h5

How it keeps memory small and independent of document length:
* each document is tokenized once, whole, and cut into windows (`longdoc.encoding.windows`);
* windows are encoded under `torch.inference_mode()`, sorted by length and packed
  into batches of at most `batch_tokens` tokens, so padding is near zero and the
  activations of one batch are the peak, whatever the longest document;
* documents are processed in blocks of about `block_windows` windows, each saved
  as soon as it is done, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from longdoc.cache.writer import PartialCache
from longdoc.configs import EmbedConfig
from longdoc.embedding.job import (
    EmbedSummary,
    complete_already,
    embed_documents,
    label_stats,
    prepare,
    publish,
)
from longdoc.encoding.windows import tokenize
from longdoc.runtime.process import peak_memory_bytes


def run(config: EmbedConfig) -> EmbedSummary:
    """Stage one in one process. Under torchrun, `longdoc.distributed.run`
    runs the same steps on one shard of the documents per rank."""
    started = time.perf_counter()
    out = Path(config.out)
    job = prepare(config)
    corpus = job.corpus
    if complete_already(out, job.attrs, config.overwrite) and not Path(f"{out}.partial").exists():
        return EmbedSummary(out, len(corpus), 0, 0, 0, 0.0, peak_memory_bytes(), already_complete=True,
                            **label_stats(corpus))
    with PartialCache(out, job.identity, fresh=config.overwrite) as partial:
        # Again under the lock: another run may have finished `out` while this one loaded
        # (or was killed between publishing it and removing its blocks, now stale).
        if complete_already(out, job.attrs, config.overwrite):
            partial.discard()
            return EmbedSummary(out, len(corpus), 0, 0, 0, 0.0, peak_memory_bytes(), already_complete=True,
                                **label_stats(corpus))
        token_ids = tokenize(job.encoder.tokenizer, corpus.texts)
        done = embed_documents(job, partial, token_ids, corpus.texts, config.progress)
        publish(job, partial, out, job.attrs, done)
    return EmbedSummary(out, len(corpus), int((done.doc_tokens == 0).sum()), int(done.window_counts.sum()),
                        done.tokens_encoded, time.perf_counter() - started, peak_memory_bytes(job.encoder.device),
                        resumed_documents=done.resumed_documents, **label_stats(corpus))


