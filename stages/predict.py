"""Classify raw text end to end with a trained head.

    python cli.py predict --head runs/head.pt post1.txt post2.txt
    cat post.txt | python cli.py predict --head runs/head.pt - --json

Uses exactly what the head records: the encoder (`model`, checked against its
fingerprint), the window settings and the precision of the cache it was trained
on. Windowing and encoding are stage one's own code (`stages.windows`,
`stages.encoding.encode_windows`), so a document is embedded here as it was there.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.cache_dataset import CacheDocuments, predict_logits
from stages.checkpoint import load_checkpoint
from stages.encoder import load_encoder
from stages.encoding import default_batch_tokens, encode_windows
from stages.errors import UserError
from stages.terms import TermHashing
from stages.windows import SpecialTokens, WindowSpec, tokenize

STDIN = "-"


@dataclass
class Prediction:
    source: str
    label: str
    probability: float
    windows: int

    def line(self) -> str:
        return f"{self.label}\t{self.probability:.4f}\t{self.source}"

    def record(self) -> dict:
        return {"source": self.source, "label": self.label, "probability": round(self.probability, 6),
                "windows": self.windows}


def read_texts(sources: list[str]) -> list[str]:
    """Each FILE's text (UTF-8, undecodable bytes replaced); `-` is all of stdin, once."""
    if not sources:
        raise UserError("give at least one FILE to classify, or - for stdin")
    if sources.count(STDIN) > 1:
        raise UserError("- (stdin) can be given only once")
    texts = []
    for source in sources:
        if source == STDIN:
            texts.append(sys.stdin.buffer.read().decode("utf-8", "replace"))
            continue
        path = Path(source)
        if not source.isprintable() or source != source.encode("utf-8", "replace").decode("utf-8"):
            # it is printed back on one tab-separated line: a tab, newline or undecodable byte would break it
            raise UserError(f"{source!r}: a file name with a control character or bytes that are not UTF-8; "
                            f"rename it or pass it on stdin (-)")
        if not path.is_file():
            raise UserError(f"{source}: no such file")
        try:
            texts.append(path.read_bytes().decode("utf-8", "replace"))
        except OSError as error:
            raise UserError(f"{source}: cannot read it ({error.strerror})") from None
    return texts


def predict(head_path: str | Path, sources: list[str], device: str = "auto", batch_tokens: int | None = None,
            threads: int = 0) -> list[Prediction]:
    """One Prediction per source, in order. `batch_tokens` None: stage one's default for the device."""
    if batch_tokens is not None and batch_tokens < 1:
        raise UserError(f"--batch-tokens must be positive; got {batch_tokens}")
    if threads:
        torch.set_num_threads(threads)
    checkpoint = load_checkpoint(head_path)
    texts = read_texts(sources)
    recorded = checkpoint.encoder
    encoder = load_encoder(recorded["model"], device, recorded.get("precision") or "auto", recorded["window_vector"])
    if encoder.fingerprint != recorded["model_fingerprint"]:
        raise UserError(f"{recorded['model']} here is not the encoder {head_path} was trained with "
                        f"(fingerprint {encoder.fingerprint[:12]} vs {str(recorded['model_fingerprint'])[:12]})")
    spec = WindowSpec(int(recorded["chunk_tokens"]), int(recorded["stride"]), SpecialTokens.of(encoder.tokenizer))
    batch_tokens = batch_tokens or default_batch_tokens(encoder.device)
    if batch_tokens < spec.chunk_tokens:
        raise UserError(f"--batch-tokens {batch_tokens} must be at least the head's {spec.chunk_tokens}-token windows")
    token_ids = tokenize(encoder.tokenizer, texts)
    counts = np.array([spec.count(len(tokens)) for tokens in token_ids], dtype=np.int64)
    vectors = encode_windows(encoder, spec.pack(token_ids), batch_tokens)
    term_rows = None
    if checkpoint.terms is not None:  # hashed exactly as stage one hashed the training documents
        term_rows = TermHashing.from_json(checkpoint.terms.hashing).counts(texts).__getitem__
    documents = CacheDocuments(vectors, np.concatenate([[0], np.cumsum(counts)]), np.zeros(len(texts)),
                               term_rows=term_rows, term_weights=checkpoint.terms)
    probabilities = torch.from_numpy(predict_logits(checkpoint.head, documents)).softmax(-1).numpy()
    best = probabilities.argmax(1)
    return [Prediction(source, checkpoint.label_names[k], float(p[k]), int(n))
            for source, k, p, n in zip(sources, best, probabilities, counts)]
