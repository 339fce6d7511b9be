"""Documents' text for a cache: the corpus it came from, and each window's characters.

Reads a corpus (`longdoc.corpus.sources`) and the cache's tokenizer (`longdoc.encoding.encoder.load_tokenizer`:
the tokenizer only, never the encoder's weights); writes nothing. `evaluate
--report --data` and `bench/explain.py` use it to show windows as text; `predict`
uses `tokenize_with_offsets` on new text.

A cache stores, per window, where its text starts in the document's *tokens*
(`window_starts`). Characters are recovered by tokenizing the text again with the
same fast tokenizer and the same whitespace segmentation as stage one
(`longdoc.encoding.windows.tokenize`), asking for each token's character offsets. A window's
span runs from the first character of its first body token to the last character
of its last one. The recomputed token count must equal the cache's `doc_tokens`;
a document whose count differs changed since it was embedded and is refused.

Terms are hashed one way; `name_terms` names a term branch's terms by hashing the
words and bigrams of the text again with the head's recorded hashing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from longdoc.corpus.builtin import LABEL_SEP
from longdoc.corpus.sources import Corpus, load_corpus
from longdoc.encoding.encoder import load_tokenizer
from longdoc.encoding.windows import SEGMENT_CHARS, SpecialTokens, WindowSpec, split_at_whitespace
from longdoc.runtime.errors import UserError
from longdoc.terms.hashing import TermHashing


def tokenize_with_offsets(tokenizer, texts: list[str], batch_size: int = 256,
                          segment_chars: int = SEGMENT_CHARS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids [n], character offsets [n, 2]) of each text: the same ids as
    `longdoc.encoding.windows.tokenize`, with each token's (start, end) in the text."""
    out = []
    for i in range(0, len(texts), batch_size):
        pieces = [split_at_whitespace(text, segment_chars) for text in texts[i:i + batch_size]]
        flat = [piece for doc in pieces for piece in doc]
        encoded = tokenizer(flat, add_special_tokens=False, truncation=False, return_offsets_mapping=True,
                            return_attention_mask=False, return_token_type_ids=False, verbose=False)
        at = 0
        for doc in pieces:
            ids, offsets, shift = [], [], 0
            for piece, piece_ids, piece_offsets in zip(doc, encoded["input_ids"][at:at + len(doc)],
                                                      encoded["offset_mapping"][at:at + len(doc)]):
                ids.append(np.asarray(piece_ids, dtype=np.int32))
                offsets.append(np.asarray(piece_offsets, dtype=np.int64).reshape(-1, 2) + shift)
                shift += len(piece)
            out.append((np.concatenate(ids), np.concatenate(offsets)))
            at += len(doc)
    return out


def window_spans(offsets: np.ndarray, starts: np.ndarray, body: int, text_length: int) -> np.ndarray:
    """Character span [start, end) of each window, from its tokens' offsets.

    An empty document's one window spans the whole (blank) text."""
    starts = np.asarray(starts, dtype=np.int64)
    if len(offsets) == 0:
        return np.tile(np.array([[0, text_length]], dtype=np.int64), (len(starts), 1))
    last = np.minimum(starts + body, len(offsets)) - 1
    return np.stack([offsets[starts, 0], offsets[last, 1]], axis=1).astype(np.int64)


def load_cache_corpus(cache, data: str, split: str = "test", categories=None, remove=(), data_home=None,
                      limit=None, label_sep=LABEL_SEP) -> Corpus:
    """The corpus `--data ...` names, refused unless it is the one `cache` was embedded from
    (same `data_fingerprint`); the message names a missing or changed document when it can."""
    corpus = load_corpus(data, split, categories, remove, data_home, limit, label_sep)
    expected = str(cache.attrs.get("data_fingerprint"))
    if corpus.fingerprint() == expected:
        return corpus
    cache_ids = cache.doc_ids()
    here = {doc_id: i for i, doc_id in enumerate(corpus.doc_ids)}
    missing = [doc_id for doc_id in cache_ids if doc_id not in here]
    where = f"the cache was embedded from {cache.attrs.get('data_source')}"
    if missing:
        more = f" (and {len(missing) - 1:,} more)" if len(missing) > 1 else ""
        raise UserError(f"document {missing[0]} of {cache.path} is not in --data {data}{more}; {where}")
    raise UserError(f"--data {data} is not the corpus {cache.path} was embedded from (data_fingerprint "
                    f"{corpus.fingerprint()[:12]} vs {expected[:12]}: texts, labels or order differ); {where}; "
                    f"pass the same --data, --split, --categories, --remove and --limit as to embed")


@dataclass
class WindowMapper:
    """Maps a cached document's windows to character spans of its text."""

    tokenizer: object
    spec: WindowSpec

    @classmethod
    def for_cache(cls, cache) -> "WindowMapper":
        tokenizer = load_tokenizer(str(cache.attrs["model"]))
        spec = WindowSpec(int(cache.attrs["chunk_tokens"]), int(cache.attrs["stride"]),
                          SpecialTokens.of(tokenizer))
        return cls(tokenizer, spec)

    def spans(self, doc_ids: list[str], texts: list[str], doc_tokens: np.ndarray,
              starts: list[np.ndarray]) -> list[np.ndarray]:
        """Spans [n_windows, 2] per document; UserError for a document whose token count
        is not the cache's (it changed since it was embedded)."""
        out = []
        for doc_id, text, n_tokens, window_starts, (ids, offsets) in zip(
                doc_ids, texts, doc_tokens, starts, tokenize_with_offsets(self.tokenizer, texts)):
            if len(ids) != int(n_tokens):
                raise UserError(f"document {doc_id} changed since it was embedded ({len(ids):,} tokens now, "
                                f"{int(n_tokens):,} in the cache); embed the corpus again")
            out.append(window_spans(offsets, window_starts, self.spec.body, len(text)))
        return out


def cached_geometry(cache, docs: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(doc_tokens [len(docs)], window_starts per document) of documents `docs` of a cache."""
    doc_tokens = cache.file["doc_tokens"][:][docs] if "doc_tokens" in cache.file else None
    if doc_tokens is None or "window_starts" not in cache.file:
        raise UserError(f"{cache.path} lacks doc_tokens or window_starts, needed to map windows to text")
    all_starts = cache.file["window_starts"][:]  # 8 bytes a window: read once, not per document
    return doc_tokens, [all_starts[cache.doc_offsets[d]:cache.doc_offsets[d + 1]] for d in docs.tolist()]


def shown_spans(cache, shown: np.ndarray, doc_ids: list[str], texts: list[str] | None):
    """(each window's character span, the texts) of the cache documents `shown`, for a report
    that shows them; (None, None) without `texts` (the corpus's, by cache document)."""
    if texts is None:
        return None, None
    doc_tokens, starts = cached_geometry(cache, shown)
    shown_texts = [texts[i] for i in shown.tolist()]
    spans = WindowMapper.for_cache(cache).spans([doc_ids[i] for i in shown.tolist()], shown_texts, doc_tokens,
                                                starts)
    return spans, shown_texts


def name_terms(explanations, term_weights, texts: list[str]) -> None:
    """Fill in `term` of each explanation's TermContribution with the word or bigram of its
    text that hashes to that feature (several, joined by ' | ', where they collide)."""
    from sklearn.feature_extraction import FeatureHasher

    hashing = TermHashing.from_json(term_weights.hashing)
    analyzer = hashing.vectorizer().build_analyzer()
    hasher = FeatureHasher(n_features=hashing.n_features, input_type="string", alternate_sign=False)
    for explanation, text in zip(explanations, texts):
        if not explanation.terms:
            continue
        grams = sorted(set(analyzer(text)))
        names: dict[int, list[str]] = {}
        if grams:
            rows = hasher.transform([[g] for g in grams]).tocsr()
            for gram, start, end in zip(grams, rows.indptr[:-1], rows.indptr[1:]):
                for feature in rows.indices[start:end].tolist():
                    names.setdefault(feature, []).append(gram)
        for term in explanation.terms:
            feature = int(term_weights.features[term.term_id])
            term.term = " | ".join(names.get(feature, [f"#{feature}"]))
