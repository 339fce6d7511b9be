"""A trained head with the encoder and window geometry it was trained with, classifying new text.

Reads the head file (`longdoc.heads.checkpoint`) and loads the encoder it records (checked
against its fingerprint), at the precision of the cache it was trained on; writes nothing.
`Predictor.classify` cuts texts into windows with stage one's own code
(`longdoc.encoding.windows`, `longdoc.encoding.batches.encode_windows`), so a document is
embedded here as it was there, and returns one `Prediction` per text: its class and
probabilities, or for a multi-label head its label set (each label with its probability and
the threshold the head's `Decision` recorded), with `explain` the top windows (character spans,
leave-one-out contributions, `longdoc.explain.contributions`) and top terms. `predict` (FILE
mode and `--data`) prints or writes what this returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from longdoc.encoding.batches import default_batch_tokens, encode_windows
from longdoc.encoding.encoder import load_encoder
from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize
from longdoc.explain.contributions import EXPLAIN_TERMS, explain_documents, explain_label_sets, require_term_branch
from longdoc.explain.text import name_terms, tokenize_with_offsets, window_spans
from longdoc.heads.batches import CacheDocuments, predict_logits
from longdoc.heads.checkpoint import load_checkpoint
from longdoc.heads.decision import Decision
from longdoc.reports.label_set_rows import MULTI_LABEL, chosen_labels, head_task, join_cell, probabilities
from longdoc.runtime.errors import UserError
from longdoc.terms.hashing import TermHashing

# Characters of a window's text shown in --explain output (whitespace collapsed).
EXCERPT_CHARS = 160


@dataclass
class Prediction:
    source: str
    label: str  # the most probable class (multi-label: label)
    probability: float
    windows: int
    probabilities: dict[str, float] = field(default_factory=dict)  # every class, head order
    top_windows: list[dict] | None = None  # with --explain: window, start, end, contribution, excerpt
    true_label: str | tuple | None = None  # a multi-label corpus's: a tuple of names
    top_terms: list[dict] | None = None  # with --explain-terms: term, contribution
    labels: list[dict] | None = None  # multi-label: the predicted set [{label, probability, threshold}]
    explanations: list[dict] | None = None  # multi-label, --explain*: per predicted label, top_windows/top_terms

    def line(self) -> str:
        if self.labels is not None:
            shown = [f"{x['probability']:.4f}" for x in self.labels]
            text = f"{join_cell(x['label'] for x in self.labels)}\t{join_cell(shown)}\t{self.source}"
            for explained in self.explanations or []:
                text += f"\n  {explained['label']}:"
                for w in explained.get("top_windows") or []:
                    text += (f"\n    window {w['window']} [{w['start']}:{w['end']}] {w['contribution']:+.3f} "
                             f"{w['excerpt']}")
                if explained.get("top_terms"):
                    text += "\n    terms " + ", ".join(f"{t['term']} {t['contribution']:+.3f}"
                                                     for t in explained["top_terms"])
            return text
        text = f"{self.label}\t{self.probability:.4f}\t{self.source}"
        for w in self.top_windows or []:
            text += (f"\n  window {w['window']} [{w['start']}:{w['end']}] {w['contribution']:+.3f} "
                     f"{w['excerpt']}")
        if self.top_terms:
            text += "\n  terms " + ", ".join(f"{t['term']} {t['contribution']:+.3f}" for t in self.top_terms)
        return text

    def record(self) -> dict:
        if self.labels is not None:
            record = {"source": self.source, "labels": self.labels, "windows": self.windows}
            if self.explanations is not None:
                record["explanations"] = self.explanations
            return record
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

    def __init__(self, head_path: str, device: str, batch_tokens: int | None = None, threads: int | None = None,
                 explain_terms: bool = False):
        """The head, encoder and window geometry of `head_path`, on `device`, with `batch_tokens`
        (None: stage one's default for the device) and `threads` torch threads (None: torch's);
        `explain_terms` needs a head with a term branch."""
        if threads:
            torch.set_num_threads(threads)
        self.checkpoint = load_checkpoint(head_path)
        self.task = head_task(self.checkpoint)
        self.decision = head_decision(self.checkpoint) if self.task == MULTI_LABEL else None
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
        probability = probabilities(predict_logits(head, documents), self.task)
        best = probability.argmax(1)
        predictions = [Prediction(source, names[k], float(p[k]), int(n), dict(zip(names, p.tolist())))
                       for source, k, p, n in zip(sources, best, probability, counts)]
        explaining = bool(explain or self.explain_terms)
        if self.task == MULTI_LABEL:
            return self._label_sets(predictions, probability, documents, texts, explain,
                                    tokenized if explaining else None)
        if explaining:
            explanations = explain_documents(head, documents, targets=best, terms_k=EXPLAIN_TERMS)
            if self.explain_terms:
                name_terms(explanations, terms, texts)
                for prediction, explanation in zip(predictions, explanations):
                    prediction.top_terms = _terms(explanation)
        if explain:
            for prediction, explanation, text, (ids, offsets) in zip(predictions, explanations, texts, tokenized):
                prediction.top_windows = self._windows(explanation, text, ids, offsets, explain)
        return predictions

    def _label_sets(self, predictions, probability, documents, texts, explain, tokenized) -> list[Prediction]:
        """Multi-label: each prediction's label set, and with --explain* each label's explanation."""
        names, thresholds = self.label_names, self.decision.thresholds
        sets = chosen_labels(probability, self.decision)
        for prediction, p, labels in zip(predictions, probability, sets):
            prediction.labels = [{"label": names[k], "probability": round(float(p[k]), 6),
                                  "threshold": round(float(thresholds[k]), 6)} for k in labels.tolist()]
        if tokenized is None:
            return predictions
        explained = explain_label_sets(self.checkpoint.head, documents, sets, thresholds=thresholds,
                                       terms_k=EXPLAIN_TERMS)
        if self.explain_terms:
            name_terms([e for per_doc in explained for e in per_doc], self.checkpoint.terms,
                       [text for text, per_doc in zip(texts, explained) for _ in per_doc])
        for prediction, per_doc, text, (ids, offsets) in zip(predictions, explained, texts, tokenized):
            prediction.explanations = []
            for explanation in per_doc:
                entry = {"label": names[explanation.target]}
                if explain:
                    entry["top_windows"] = self._windows(explanation, text, ids, offsets, explain)
                if self.explain_terms:
                    entry["top_terms"] = _terms(explanation)
                prediction.explanations.append(entry)
        return predictions

    def _windows(self, explanation, text: str, ids, offsets, k: int) -> list[dict]:
        """The k top windows of an explanation: index, character span, contribution, excerpt."""
        spans = window_spans(offsets, self.spec.starts(len(ids)), self.spec.body, len(text))
        return [{"window": int(i), "start": int(spans[i, 0]), "end": int(spans[i, 1]),
                 "contribution": round(float(explanation.windows[i]), 5),
                 "excerpt": excerpt(text[spans[i, 0]:spans[i, 1]])} for i in explanation.ranked(k)]


def _terms(explanation) -> list[dict]:
    return [{"term": t.term, "contribution": round(t.contribution, 5)} for t in explanation.terms]


def head_decision(checkpoint) -> Decision:
    """The Decision a multi-label head recorded (its checkpoint's `decision`: a Decision or
    its `to_dict` record), checked against its labels: one line naming the file if damaged."""
    decision = getattr(checkpoint, "decision", None)
    if isinstance(decision, Decision):
        decision = decision.to_dict()
    if decision is None:
        raise UserError(f"{checkpoint.path}: a multi-label head without its decision (thresholds fitted on "
                        f"validation); train it again with train-head")
    try:
        return Decision.from_dict(decision, len(checkpoint.label_names))
    except (ValueError, TypeError) as error:
        raise UserError(f"{checkpoint.path}: damaged head checkpoint (decision: {error})") from None
