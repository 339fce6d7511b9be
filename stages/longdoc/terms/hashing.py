"""Hashed term counts of whole documents: the lexical signal a window vector drops.

Reads document texts; returns one sparse row of term counts per document
(`scipy.sparse.csr_matrix`, int32 counts). Stage one stores them in the cache
(`terms/` in docs/cache-format.md), `predict` computes them for new text, and
stage two weights them by TF-IDF (`longdoc.terms.tfidf`).

The hashing is stateless: scikit-learn's `HashingVectorizer` with the settings of
`TermHashing`, so a train and a test cache made independently, the shards of a
torchrun job and a new document in `predict` all land in the same feature space
without a fitted vocabulary. The settings are recorded in the cache and the head and
must match.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np
import scipy.sparse as sp

# scikit-learn's default token pattern: runs of two or more word characters.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
# The only patterns a hashing read from a file may name. A regular expression is code:
# one planted in a cache or head (`(a+)+$`) backtracks for hours on a line of text, so
# a pattern is compared with this list, never compiled, unless it is on it.
TOKEN_PATTERNS = (TOKEN_PATTERN,)
SCHEME = "sklearn-hashing-vectorizer/murmur3/no-sign"
# Stage two allocates per-bucket arrays (document frequencies, int64: 128 MB at 2^24,
# 16 GB at scikit-learn's limit of 2^31 - 1), and at 2^20 collisions already cost
# nothing measurable, so 16x that is the most a file may declare.
MAX_FEATURES = 2**24
NGRAM_MAX_RANGE = (1, 3)  # unigrams to trigrams; more is far more features for no signal measured


@dataclass(frozen=True)
class TermHashing:
    """How texts become hashed term counts; recorded as the cache attribute `term_hashing`."""

    # 2^20 buckets: on 20 Newsgroups' 1.2M distinct unigrams + bigrams, collisions cost
    # nothing measurable (hashed 0.8647 vs a fitted vocabulary's 0.8585, docs/BENCHMARKS.md).
    n_features: int = 2**20
    # Unigrams and bigrams: 0.8647 against 0.8587 for unigrams alone (TF-IDF + LinearSVC).
    ngram_max: int = 2
    lowercase: bool = True
    token_pattern: str = TOKEN_PATTERN
    scheme: str = SCHEME

    def __post_init__(self):
        """Every field of its type and in range; a ValueError naming the field otherwise."""
        for field in fields(self):  # the annotations are names: "int", "bool", "str"
            value = getattr(self, field.name)
            if type(value).__name__ != field.type:  # exactly: True is no int here, 2.0 no int
                raise ValueError(f"term hashing: {field.name} must be of type {field.type}, "
                                 f"got {str(value)[:80]!r}")
        if not 1 <= self.n_features <= MAX_FEATURES:
            raise ValueError(f"term hashing: n_features must be from 1 to {MAX_FEATURES}, got {self.n_features}")
        if not NGRAM_MAX_RANGE[0] <= self.ngram_max <= NGRAM_MAX_RANGE[1]:
            raise ValueError(f"term hashing: ngram_max must be from {NGRAM_MAX_RANGE[0]} to {NGRAM_MAX_RANGE[1]}, "
                             f"got {self.ngram_max}")
        if self.token_pattern not in TOKEN_PATTERNS:
            raise ValueError(f"term hashing: token_pattern {self.token_pattern[:80]!r} is not one this code "
                             f"knows ({', '.join(map(repr, TOKEN_PATTERNS))}); it is never compiled")
        if self.scheme != SCHEME:
            raise ValueError(f"term hashing: scheme must be {SCHEME!r}, got {self.scheme[:80]!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TermHashing":
        """The hashing `to_json` wrote; ValueError naming the key for anything else (not
        JSON, a missing or extra key, a value of another type or out of range)."""
        try:
            record = json.loads(text)
        except (TypeError, ValueError, RecursionError) as error:
            raise ValueError(f"term hashing is not JSON ({type(error).__name__})") from None
        if not isinstance(record, dict):
            raise ValueError(f"term hashing is not a JSON object: {str(text)[:80]!r}")
        names = {field.name for field in fields(cls)}
        missing, extra = sorted(names - set(record)), sorted(set(record) - names)
        if missing or extra:
            raise ValueError("term hashing: " + "; ".join(
                [f"{key} is missing" for key in missing] + [f"unknown key {key[:80]!r}" for key in extra]))
        return cls(**record)

    def vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        # alternate_sign=False: counts stay counts (TF-IDF needs them non-negative);
        # norm=None: raw counts; weighting is stage two's choice, learned on training data.
        return HashingVectorizer(n_features=self.n_features, ngram_range=(1, self.ngram_max),
                                 lowercase=self.lowercase, token_pattern=self.token_pattern,
                                 alternate_sign=False, norm=None, dtype=np.float32)

    def counts(self, texts: list[str]) -> sp.csr_matrix:
        """[len(texts), n_features] int32 term counts, one row per text, sorted indices."""
        matrix = self.vectorizer().transform(texts).tocsr()
        matrix.sort_indices()
        return sp.csr_matrix((matrix.data.astype(np.int32), matrix.indices.astype(np.int32),
                              matrix.indptr.astype(np.int64)), shape=matrix.shape)


NO_TERMS = "{}"  # the attribute value of a cache embedded with --no-terms
