"""Classify raw text end to end with a trained head: FILEs, or whole corpora.

    python cli.py predict --head runs/head.pt post1.txt post2.txt
    cat post.txt | python cli.py predict --head runs/head.pt - --json --explain
    python cli.py predict --head runs/head.pt --data corpus.jsonl --out runs/predictions.jsonl --explain

Uses exactly what the head records: the encoder (`model`, checked against its
fingerprint), the window settings and the precision of the cache it was trained
on. Windowing and encoding are stage one's own code (`longdoc.encoding.windows`,
`longdoc.encoding.batches.encode_windows`), so a document is embedded here as it was there.
`--explain` adds each document's top windows by leave-one-out contribution
(`longdoc.explain.contributions`), with their character spans and text; `--explain-terms`, for a
head with a term branch, its terms with the largest contribution.

Corpus mode (`--data`, any corpus `embed` reads, labels optional) streams: documents
are read one at a time (`longdoc.corpus.sources.iter_documents`) and classified in blocks of
`block_docs` documents (fewer when a block reaches `BLOCK_CHARS` characters), so
memory is bounded by a block, not by the corpus. Each finished block's rows are
written to `<out>.partial/rows-START-END.part` (temporary name, then rename); a
rerun of the same command after a kill skips the finished blocks. When all are done
they are joined into `<out>.tmp` (CSV header first), renamed to `<out>`, and the
work folder is deleted. `--out` ending in `.csv` gives CSV rows, `.jsonl` JSON lines.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from longdoc.configs import BLOCK_DOCS
from longdoc.corpus.builtin import LABEL_SEP
from longdoc.corpus.sources import iter_documents
from longdoc.encoding.batches import default_batch_tokens, encode_windows
from longdoc.encoding.encoder import load_encoder
from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize
from longdoc.explain.contributions import EXPLAIN_TERMS, explain_documents, require_term_branch
from longdoc.explain.text import name_terms, tokenize_with_offsets, window_spans
from longdoc.heads.batches import CacheDocuments, predict_logits
from longdoc.heads.checkpoint import load_checkpoint
from longdoc.runtime.errors import UserError
from longdoc.runtime.process import peak_memory_bytes, progress_bar
from longdoc.runtime.workdir import WorkDir, check_output_path
from longdoc.terms.hashing import TermHashing

STDIN = "-"
# A block of --block-docs documents also ends at ~2M characters (~500k tokens, ~2,000
# windows), so a block of very long documents stays as small in memory as a block of posts.
BLOCK_CHARS = 2_000_000
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

    def __init__(self, head_path: str | Path, device: str = "auto", batch_tokens: int | None = None,
                 threads: int = 0, explain_terms: bool = False):
        if threads:
            torch.set_num_threads(threads)
        self.checkpoint = load_checkpoint(head_path)
        self.explain_terms = explain_terms
        if explain_terms:
            require_term_branch(self.checkpoint.head, head_path)
        recorded = self.checkpoint.encoder
        self.encoder = load_encoder(recorded["model"], device, recorded.get("precision") or "auto",
                                    recorded["window_vector"])
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


def predict(head_path: str | Path, sources: list[str], device: str = "auto", batch_tokens: int | None = None,
            threads: int = 0, explain: int = 0, explain_terms: bool = False) -> list[Prediction]:
    """One Prediction per source, in order. `batch_tokens` None: stage one's default for the device."""
    texts = read_texts(list(sources))  # bad files are refused before any encoder is loaded
    predictor = Predictor(head_path, device, batch_tokens, threads, explain_terms)
    return predictor.classify(list(sources), texts, explain)


# --- corpus mode -----------------------------------------------------------------------


@dataclass
class CorpusSummary:
    out: Path
    documents: int
    resumed_documents: int
    seconds: float
    peak_memory_bytes: int

    def line(self) -> str:
        resumed = f" ({self.resumed_documents:,} resumed from an earlier run)" if self.resumed_documents else ""
        return (f"predicted {self.documents:,} documents{resumed} in {self.seconds:,.1f} s, peak memory "
                f"{self.peak_memory_bytes / 2**30:.2f} GiB -> {self.out}")


class RowFormat:
    """Rows of one output format: a header (CSV only) and one row per Prediction."""

    def __init__(self, kind: str, label_names: list[str], top_k: int, explain: int, terms: bool = False):
        self.kind, self.names, self.top_k, self.explain, self.terms = kind, label_names, top_k, explain, terms

    def columns(self) -> list[str]:
        classes = ([f"p:{n}" for n in self.names] if not self.top_k else
                   [c for i in range(1, self.top_k + 1) for c in (f"top{i}_label", f"top{i}_probability")])
        return ["id", "label", "probability", "true_label", "windows", *classes,
                *(["top_windows"] if self.explain else []), *(["top_terms"] if self.terms else [])]

    def header(self) -> str:
        return self._csv(self.columns()) if self.kind == "csv" else ""

    def row(self, p: Prediction) -> str:
        ranked = sorted(p.probabilities.items(), key=lambda kv: -kv[1])[:self.top_k or None]
        if self.kind == "jsonl":
            record = {"id": p.source, "label": p.label, "probability": round(p.probability, 6),
                      "true_label": p.true_label, "windows": p.windows}
            if self.top_k:
                record["top"] = [{"label": n, "probability": round(v, 6)} for n, v in ranked]
            else:
                record["probabilities"] = {n: round(v, 6) for n, v in p.probabilities.items()}
            if self.explain:
                record["top_windows"] = p.top_windows
            if self.terms:
                record["top_terms"] = p.top_terms
            return json.dumps(record, ensure_ascii=False) + "\n"
        classes = ([f"{p.probabilities[n]:.6f}" for n in self.names] if not self.top_k else
                   [c for n, v in ranked for c in (n, f"{v:.6f}")])
        cells = [p.source, p.label, f"{p.probability:.6f}", p.true_label or "", p.windows, *classes]
        if self.explain:
            cells.append(json.dumps(p.top_windows, ensure_ascii=False))
        if self.terms:
            cells.append(json.dumps(p.top_terms, ensure_ascii=False))
        return self._csv(cells)

    @staticmethod
    def _csv(cells) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(cells)
        return buffer.getvalue()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _blocks(records, start: int, block_docs: int):
    """Consecutive runs of records: `block_docs` documents, or fewer at BLOCK_CHARS characters."""
    block, chars = [], 0
    for record in records:
        block.append(record)
        chars += len(record[1])
        if len(block) >= block_docs or chars >= BLOCK_CHARS:
            yield start, block
            start, block, chars = start + len(block), [], 0
    if block:
        yield start, block


def _finished(folder: Path) -> list[tuple[int, int, Path]]:
    found = []
    for path in folder.glob("rows-*-*.part"):
        start, end = (int(x) for x in path.stem.split("-")[1:3])
        found.append((start, end, path))
    found.sort()
    at = 0
    for start, end, _ in found:  # blocks are written in order: a gap means damage, not a kill
        if start != at:
            raise UserError(f"{folder} has a gap before rows {start}; pass --overwrite to start again")
        at = end
    return found


def predict_corpus(head_path: str | Path, data: str, out: str | Path, *, split: str = "test",
                   categories: list[str] | None = None, remove: tuple[str, ...] = (), data_home: str | None = None,
                   limit: int | None = None, label_sep: str = LABEL_SEP, top_k: int = 0, explain: int = 0,
                   explain_terms: bool = False, block_docs: int = BLOCK_DOCS,
                   overwrite: bool = False, device: str = "auto", batch_tokens: int | None = None,
                   threads: int = 0, progress: bool | None = None) -> CorpusSummary:
    """Classify every document of `--data` into `out` (CSV or JSON lines), resumably. The
    settings' ranges are checked by `PredictConfig`."""
    started = time.perf_counter()
    out = Path(out)
    kind = OUTPUT_FORMATS.get(out.suffix.lower())
    if kind is None:
        raise UserError(f"--out {out}: name it .jsonl (JSON lines) or .csv")
    check_output_path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    records = iter_documents(data, split, categories, remove, data_home, limit, label_sep)
    predictor = Predictor(head_path, device, batch_tokens, threads, explain_terms)
    if top_k > len(predictor.label_names):
        raise UserError(f"--top-k {top_k} is above the head's {len(predictor.label_names)} classes")
    settings = {"head": str(Path(head_path).resolve()), "head_sha256": _sha256(Path(head_path)), "data": data,
                "split": split, "categories": categories, "remove": list(remove), "limit": limit,
                "label_sep": label_sep, "format": kind, "top_k": top_k, "explain": explain,
                "explain_terms": explain_terms, "block_docs": block_docs}
    rows = RowFormat(kind, predictor.label_names, top_k, explain, explain_terms)
    with WorkDir(out, settings, fresh=overwrite) as work:
        done = _finished(work.dir)
        resumed = done[-1][1] if done else 0
        with progress_bar(None, progress, unit="doc", initial=resumed) as bar:
            for start, block in _blocks(itertools.islice(records, resumed, None), resumed, block_docs):
                predictions = predictor.classify([r[0] for r in block], [r[1] for r in block], explain)
                for prediction, record in zip(predictions, block):
                    prediction.true_label = record[2]
                path = work.dir / f"rows-{start:012d}-{start + len(block):012d}.part"
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(rows.row(p) for p in predictions), encoding="utf-8")
                os.replace(tmp, path)
                bar.update(len(block))
        done = _finished(work.dir)
        if not done:
            work.discard()
            raise UserError(f"--data {data}: no documents found")
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(rows.header())
            for _, _, path in done:
                f.write(path.read_text(encoding="utf-8"))
        os.replace(tmp, out)
        work.discard()
    return CorpusSummary(out, done[-1][1], resumed, time.perf_counter() - started,
                         peak_memory_bytes(predictor.encoder.device))
