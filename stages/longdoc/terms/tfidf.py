"""TF-IDF weighting of the cached hashed term counts, learned from training documents.

Reads term-count rows (CSR, hashed feature ids from `longdoc.terms.hashing`); returns what the
term branch of a head consumes: for each document the kept features' compact ids and
their weights, sublinear tf x idf, L2-normalised per document. The statistics (which
hashed features are kept, their idf) are fitted on the training documents only and
stored in the head checkpoint, so evaluation and `predict` weight terms exactly as
training did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longdoc.runtime.workdir import tensor_problem
from longdoc.terms.hashing import TermHashing

# The settings of the TF-IDF + LinearSVC reference (shared/datasets/README.md):
# a term must occur in 2 training documents to be learned from (rarer ones are mostly
# typos and ids that never recur), and terms in over half the documents carry no signal.
MIN_DF = 2
MAX_DF = 0.5
# Documents per chunk while counting document frequencies: bounds the rows in memory.
FIT_CHUNK_DOCS = 4096


@dataclass
class TermBatch:
    """The term inputs of a batch of documents, as `nn.EmbeddingBag` takes them."""

    ids: torch.Tensor  # int64 [n], compact feature ids of every document, one after another
    offsets: torch.Tensor  # int64 [docs], where each document's ids start
    weights: torch.Tensor  # float32 [n], TF-IDF weight of each id


@dataclass
class TermWeights:
    hashing: str  # JSON of the longdoc.terms.hashing.TermHashing the counts were made with
    features: np.ndarray  # int64, sorted hashed ids that are kept; position = compact id
    idf: np.ndarray  # float32 [len(features)]

    @property
    def n_terms(self) -> int:
        return len(self.features)

    @classmethod
    def fit(cls, hashing: str, n_features: int, rows, docs: np.ndarray, min_df: int = MIN_DF,
            max_df: float = MAX_DF) -> "TermWeights":
        """Document frequencies over `docs`, read `FIT_CHUNK_DOCS` at a time by `rows(docs)`."""
        df = np.zeros(n_features, dtype=np.int64)
        for lo in range(0, len(docs), FIT_CHUNK_DOCS):
            chunk = rows(docs[lo:lo + FIT_CHUNK_DOCS])
            df += np.bincount(chunk.indices, minlength=n_features)  # a row's ids are distinct
        n = len(docs)
        kept = np.flatnonzero((df >= min_df) & (df <= max_df * n))
        idf = np.log((1.0 + n) / (1.0 + df[kept])) + 1.0  # scikit-learn's smoothed idf
        return cls(hashing, kept.astype(np.int64), idf.astype(np.float32))

    def batch(self, counts) -> TermBatch:
        """TermBatch of CSR count rows (hashed ids): kept terms only, (1 + log tf) x idf, L2 = 1."""
        position = np.searchsorted(self.features, counts.indices)
        position = np.minimum(position, max(len(self.features) - 1, 0))
        kept = (self.features[position] == counts.indices) if len(self.features) else np.zeros(0, bool)
        row = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))[kept]
        ids = position[kept]
        weights = (1.0 + np.log(counts.data[kept].astype(np.float64))) * self.idf[ids]
        norms = np.sqrt(np.bincount(row, weights=weights**2, minlength=counts.shape[0]))
        weights = weights / np.maximum(norms[row], 1e-12)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=counts.shape[0]))[:-1]])
        return TermBatch(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(offsets.astype(np.int64)),
                         torch.from_numpy(weights.astype(np.float32)))

    def to_dict(self) -> dict:
        return {"hashing": self.hashing, "features": torch.from_numpy(self.features),
                "idf": torch.from_numpy(self.idf)}

    @classmethod
    def from_dict(cls, record, n_terms: int) -> "TermWeights":
        """The statistics `to_dict` wrote, read from a file and checked against a term branch
        of `n_terms` rows: ValueError naming the field otherwise."""
        if not isinstance(record, dict) or set(record) != {"hashing", "features", "idf"}:
            raise ValueError("terms: not a record of hashing, features and idf")
        hashing = record["hashing"]
        try:
            n_features = TermHashing.from_json(hashing).n_features
        except (ValueError, TypeError, RecursionError) as error:  # not JSON, not a hashing
            raise ValueError(f"terms.hashing: not a term hashing ({type(error).__name__}: "
                             f"{(str(error).splitlines() or [''])[0][:80]})") from None
        if type(n_features) is not int or n_features < 1:
            raise ValueError(f"terms.hashing: n_features {str(n_features)[:20]!r} is not a positive integer")
        for name, dtype in (("features", torch.int64), ("idf", torch.float32)):
            problem = tensor_problem(record[name], (n_terms,), dtype)
            if problem:
                raise ValueError(f"terms.{name}: {problem}")
        features, idf = record["features"].numpy(), record["idf"].numpy()
        if n_terms and not (features[0] >= 0 and features[-1] < n_features and np.all(np.diff(features) > 0)):
            raise ValueError(f"terms.features: not increasing hashed ids below the hashing's {n_features}")
        # idf = log((1 + n) / (1 + df)) + 1 with df <= n: below 1 (a negative one flips a term's sign) is damage
        if np.any(idf < 1.0):
            raise ValueError("terms.idf: weights below 1, which no fitted idf has")
        return cls(hashing, features.astype(np.int64), idf.astype(np.float32))
