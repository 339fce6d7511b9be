"""Classify raw text end to end with a trained head: FILEs, or whole corpora.

    python cli.py predict --head runs/head.pt post1.txt post2.txt
    cat post.txt | python cli.py predict --head runs/head.pt - --json --explain
    python cli.py predict --head runs/head.pt --data corpus.jsonl --out runs/predictions.jsonl --explain

Uses exactly what the head records: the encoder (`model`, checked against its
fingerprint), the window settings and the precision of the cache it was trained
on (int8: on the CPU, whatever --device auto would pick).
Windowing and encoding are stage one's own code (`longdoc.encoding.windows`,
`longdoc.encoding.batches.encode_windows`), so a document is embedded here as it was there.
`--explain` adds each document's top windows by leave-one-out contribution
(`longdoc.explain.contributions`), with their character spans and text; `--explain-terms`, for a
head with a term branch, its terms with the largest contribution.

Corpus mode (`--data`, any corpus `embed` reads, labels optional) streams: documents
are read one at a time (`longdoc.corpus.sources.iter_documents`), twice. The first pass, before the
encoder is loaded, checks every record and fingerprints the corpus (`DocumentDigest`,
kept in the work folder's settings: a resume against an edited corpus is refused); the
second classifies the blocks of `longdoc.reports.predictions.plan_blocks` (`block_docs`
documents, fewer at ~2M characters), so memory is bounded by a block, not by the corpus.
Each finished block's rows are published in `<out>.partial/`; a rerun of the same command
after a kill resumes after the finished blocks it can prove, and `--out` is written from
the blocks at the end (`longdoc.reports.predictions`). `--out` and its work folder may not be,
hold, or lie inside `--data` or `--head`. `--out` ending in `.csv` gives CSV rows (cells a
spreadsheet would evaluate escaped), `.jsonl` JSON lines.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from longdoc.configs import PredictConfig
from longdoc.corpus.builtin import NEWSGROUPS
from longdoc.corpus.sources import DocumentDigest, iter_documents
from longdoc.encoding.batches import default_batch_tokens, encode_windows
from longdoc.encoding.encoder import load_encoder
from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize
from longdoc.explain.contributions import EXPLAIN_TERMS, explain_documents, require_term_branch
from longdoc.explain.text import name_terms, tokenize_with_offsets, window_spans
from longdoc.heads.batches import CacheDocuments, predict_logits
from longdoc.heads.checkpoint import load_checkpoint
from longdoc.reports.predictions import RowBlocks, RowFormat, plan_blocks
from longdoc.runtime.errors import UserError
from longdoc.runtime.process import memory_step, peak_memory_bytes, progress_bar
from longdoc.runtime.workdir import WorkDir, check_not_an_input, check_output_path, work_folder
from longdoc.terms.hashing import TermHashing

STDIN = "-"
# Characters of a window's text shown in --explain output (whitespace collapsed).
EXCERPT_CHARS = 160
OUTPUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}


@dataclass
class Prediction:
    source: str
    label: str
    probability: float
    windows: int
    probabilities: dict[str, float] = field(default_factory=dict)  # every class, head order
    top_windows: list[dict] | None = None  # with --explain: window, start, end, contribution, excerpt
    true_label: str | None = None
    top_terms: list[dict] | None = None  # with --explain-terms: term, contribution

    def line(self) -> str:
        text = f"{self.label}\t{self.probability:.4f}\t{self.source}"
        for w in self.top_windows or []:
            text += (f"\n  window {w['window']} [{w['start']}:{w['end']}] {w['contribution']:+.3f} "
                     f"{w['excerpt']}")
        if self.top_terms:
            text += "\n  terms " + ", ".join(f"{t['term']} {t['contribution']:+.3f}" for t in self.top_terms)
        return text

    def record(self) -> dict:
        record = {"source": self.source, "label": self.label, "probability": round(self.probability, 6),
                  "windows": self.windows}
        if self.top_windows is not None:
            record["top_windows"] = self.top_windows
        if self.top_terms is not None:
            record["top_terms"] = self.top_terms
        return record


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


class Predictor:
    """A head with the encoder and window geometry it was trained with, ready to classify text."""

    def __init__(self, config: PredictConfig):
        """The head, encoder and window geometry of `config.head`, on `config.device`, with
        `config.batch_tokens` (None: stage one's default for the device) and `config.threads`;
        `config.explain_terms` needs a head with a term branch."""
        head_path, batch_tokens, threads, explain_terms = (config.head, config.batch_tokens, config.threads,
                                                           config.explain_terms)
        device = config.device
        if threads:
            torch.set_num_threads(threads)
        self.checkpoint = load_checkpoint(head_path)
        self.explain_terms = explain_terms
        if explain_terms:
            require_term_branch(self.checkpoint.head, head_path)
        recorded = self.checkpoint.encoder
        precision = recorded.get("precision") or "auto"
        if precision == "int8":  # the head's windows came from int8 kernels, which run on CPUs only
            if device not in ("auto", "cpu"):
                raise UserError(f"{head_path} was trained on windows embedded at int8, which runs only on CPUs; "
                                f"pass --device cpu")
            device = "cpu"
        self.encoder = load_encoder(recorded["model"], device, precision, recorded["window_vector"])
        if self.encoder.fingerprint != recorded["model_fingerprint"]:
            raise UserError(f"{recorded['model']} here is not the encoder {head_path} was trained with "
                            f"(fingerprint {self.encoder.fingerprint[:12]} vs "
                            f"{str(recorded['model_fingerprint'])[:12]})")
        self.spec = WindowSpec(int(recorded["chunk_tokens"]), int(recorded["stride"]),
                               SpecialTokens.of(self.encoder.tokenizer))
        self.batch_tokens = batch_tokens or default_batch_tokens(self.encoder.device)
        if self.batch_tokens < self.spec.chunk_tokens:
            raise UserError(f"--batch-tokens {self.batch_tokens} must be at least the head's "
                            f"{self.spec.chunk_tokens}-token windows")

    @property
    def label_names(self) -> list[str]:
        return self.checkpoint.label_names

    def classify(self, sources: list[str], texts: list[str], explain: int = 0) -> list[Prediction]:
        """One Prediction per text; `explain` > 0 adds that many top windows to each (and
        the top terms, when the predictor was made with `explain_terms`)."""
        if explain or self.explain_terms:
            tokenized = tokenize_with_offsets(self.encoder.tokenizer, texts)
            token_ids = [ids for ids, _ in tokenized]
        else:
            token_ids = tokenize(self.encoder.tokenizer, texts)
        counts = np.array([self.spec.count(len(tokens)) for tokens in token_ids], dtype=np.int64)
        vectors = encode_windows(self.encoder, self.spec.pack(token_ids), self.batch_tokens)
        term_rows, terms = None, self.checkpoint.terms
        if terms is not None:  # hashed exactly as stage one hashed the training documents
            term_rows = TermHashing.from_json(terms.hashing).counts(texts).__getitem__
        documents = CacheDocuments(vectors, np.concatenate([[0], np.cumsum(counts)]), np.zeros(len(texts)),
                                   term_rows=term_rows, term_weights=terms)
        head, names = self.checkpoint.head, self.label_names
        probabilities = torch.from_numpy(predict_logits(head, documents)).softmax(-1).numpy()
        best = probabilities.argmax(1)
        predictions = [Prediction(source, names[k], float(p[k]), int(n), dict(zip(names, p.tolist())))
                       for source, k, p, n in zip(sources, best, probabilities, counts)]
        if explain or self.explain_terms:
            explanations = explain_documents(head, documents, targets=best, terms_k=EXPLAIN_TERMS)
            if self.explain_terms:
                name_terms(explanations, terms, texts)
                for prediction, explanation in zip(predictions, explanations):
                    prediction.top_terms = [{"term": t.term, "contribution": round(t.contribution, 5)}
                                            for t in explanation.terms]
        if explain:
            for prediction, explanation, text, (ids, offsets) in zip(predictions, explanations, texts, tokenized):
                spans = window_spans(offsets, self.spec.starts(len(ids)), self.spec.body, len(text))
                prediction.top_windows = [
                    {"window": int(i), "start": int(spans[i, 0]), "end": int(spans[i, 1]),
                     "contribution": round(float(explanation.windows[i]), 5),
                     "excerpt": excerpt(text[spans[i, 0]:spans[i, 1]])}
                    for i in explanation.ranked(explain)]
        return predictions


def read_texts(sources: list[str]) -> list[str]:
    """Each FILE's text (UTF-8, undecodable bytes replaced); `-` is all of stdin, once."""
    if not sources:
        raise UserError("give at least one FILE to classify, or - for stdin, or --data CORPUS --out FILE")
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


@dataclass
class FilePredictions:
    """FILE mode's result: one Prediction per FILE, in order. The summary is a line per
    document (tab-separated) or, with --json, a JSON object per document."""

    predictions: list[Prediction]

    def line(self) -> str:
        return "\n".join(prediction.line() for prediction in self.predictions)

    def as_json(self) -> str:
        return "\n".join(json.dumps(prediction.record(), ensure_ascii=False) for prediction in self.predictions)


def run(config: PredictConfig) -> FilePredictions | CorpusSummary:
    """FILE mode (`config.files`): each file classified, nothing written; --data mode: every
    document of the corpus into `config.out` (`predict_corpus`). Settings checked by `PredictConfig`."""
    if config.data is not None:
        with memory_step(f"classifying {config.data}", "lower --batch-tokens or --block-docs"):
            return predict_corpus(config)
    texts = read_texts(list(config.files))  # bad files are refused before any encoder is loaded
    with memory_step("classifying the FILEs", "lower --batch-tokens, or pass fewer FILEs at once"):
        predictor = Predictor(config)
        return FilePredictions(predictor.classify(list(config.files), texts, config.top_windows))


# --- corpus mode -----------------------------------------------------------------------


@dataclass
class CorpusSummary:
    out: Path
    documents: int
    resumed_documents: int
    seconds: float
    peak_memory_bytes: int
    format: str  # jsonl or csv

    def line(self) -> str:
        resumed = f" ({self.resumed_documents:,} resumed from an earlier run)" if self.resumed_documents else ""
        return (f"predicted {self.documents:,} documents{resumed} in {self.seconds:,.1f} s, peak memory "
                f"{self.peak_memory_bytes / 2**30:.2f} GiB -> {self.out}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def predict_corpus(config: PredictConfig) -> CorpusSummary:
    """Classify every document of `config.data` into `config.out` (CSV or JSON lines),
    resumably. The settings are checked by `PredictConfig`."""
    head_path, data, out, overwrite, progress = config.head, config.data, config.out, config.overwrite, config.progress
    split, categories, remove, data_home, limit, label_sep = (config.split, config.categories, tuple(config.remove),
                                                              config.data_home, config.limit, config.label_sep)
    top_k, explain, explain_terms, block_docs = config.top_k, config.top_windows, config.explain_terms, config.block_docs
    started = time.perf_counter()
    out = Path(out)
    inputs = {"--data": None if data == NEWSGROUPS else data, "--head": head_path}
    for path in (out, work_folder(out)):  # first: an input is refused, never offered to --overwrite
        check_not_an_input(path, inputs, inside=True)
    kind = OUTPUT_FORMATS.get(out.suffix.lower())
    if kind is None:
        raise UserError(f"--out {out}: name it .jsonl (JSON lines) or .csv")
    check_output_path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    # One pass over the corpus before the encoder is loaded: every record is checked, and the
    # fingerprint in the settings refuses a resume against a corpus edited since.
    corpus = DocumentDigest()
    for record in iter_documents(data, split, categories, remove, data_home, limit, label_sep):
        corpus.add(record)
    if not corpus.documents:
        raise UserError(f"--data {data}: no documents found")
    predictor = Predictor(config)
    if top_k > len(predictor.label_names):
        raise UserError(f"--top-k {top_k} is above the head's {len(predictor.label_names)} classes")
    settings = {"head": str(Path(head_path).resolve()), "head_sha256": _sha256(Path(head_path)), "data": data,
                "data_fingerprint": corpus.hexdigest(), "documents": corpus.documents,
                "split": split, "categories": categories, "remove": list(remove), "limit": limit,
                "label_sep": label_sep, "format": kind,
                "top_k": top_k, "explain": explain, "explain_terms": explain_terms, "block_docs": block_docs}
    rows = RowFormat(kind, predictor.label_names, top_k, explain, explain_terms)
    with WorkDir(out, settings, fresh=overwrite) as work:
        blocks, finished, resumed = RowBlocks(work.dir, rows), [], 0
        read_again = DocumentDigest()
        records = read_again.through(iter_documents(data, split, categories, remove, data_home, limit, label_sep))
        with progress_bar(corpus.documents, progress, unit="doc") as bar:
            for start, block in plan_blocks(records, block_docs):
                path = blocks.resume(start, [r[0] for r in block])
                if path is not None:
                    resumed += len(block)
                else:
                    predictions = predictor.classify([r[0] for r in block], [r[1] for r in block], explain)
                    for prediction, record in zip(predictions, block):
                        prediction.true_label = record[2]
                    path = blocks.save(start, predictions)
                finished.append(path)
                bar.update(len(block))
        if read_again.hexdigest() != corpus.hexdigest():
            work.discard()
            raise UserError(f"--data {data} changed while it was being classified; no rows were kept, "
                            f"run the command again")
        blocks.publish(out, finished)
        work.discard()
    return CorpusSummary(out, corpus.documents, resumed, time.perf_counter() - started,
                         peak_memory_bytes(predictor.encoder.device), kind)
