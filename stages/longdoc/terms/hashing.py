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
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

# scikit-learn's default token pattern: runs of two or more word characters.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"


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
    scheme: str = "sklearn-hashing-vectorizer/murmur3/no-sign"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TermHashing":
        return cls(**json.loads(text))

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
