"""Stage one's shards under torchrun: the plan that cuts the documents into one run per
rank, and the shard files that plan names.

Rank R of N embeds documents [start, end) of `plan_shards` into the shard file
`<out>.shard-RRR-of-NNN.h5`, a complete cache (docs/cache-format.md) whose root
attributes also carry its place in the plan (`SHARD_KEYS`), so a rerun can tell
whether a file on disk is the very shard it planned. Reads shard files' attributes
(`longdoc.cache.reader.read_attrs`) and the names of the files beside `--out`; writes nothing:
`longdoc.distributed` writes the shards through `longdoc.cache.writer`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from longdoc.cache.reader import CACHE_IDENTITY, differences, read_attrs
from longdoc.encoding.windows import WindowSpec, tokenize
from longdoc.runtime.errors import UserError

SHARD_KEYS = ("shard_index", "shard_count", "shard_doc_start", "shard_doc_end")
_SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)\.h5(\.partial|\.tmp)?$")


# --- the plan ------------------------------------------------------------------------


def encoded_tokens(spec: WindowSpec, doc_tokens: np.ndarray) -> np.ndarray:
    """Tokens the encoder runs for each document: its text, the `stride` tokens every
    window after the first repeats, and each window's special tokens."""
    counts = spec.counts(doc_tokens)
    return np.asarray(doc_tokens, dtype=np.int64) + (counts - 1) * spec.stride + counts * spec.special.count


def plan_shards(costs: np.ndarray, n_shards: int) -> list[tuple[int, int]]:
    """Cut documents 0..len(costs) into `n_shards` contiguous ranges [start, end) of about
    equal total cost: boundary k is the document boundary nearest to k/n of the total.

    Each shard is within one document's cost of an equal share (a document is never
    split). With more shards than documents some ranges are empty."""
    prefix = np.concatenate([[0], np.cumsum(np.asarray(costs, dtype=np.int64))])
    total = int(prefix[-1])
    bounds = [0]
    for k in range(1, n_shards):
        # exact integer comparison of n * prefix[j] with k * total: no float ties
        j = int(np.searchsorted(prefix * n_shards, k * total, side="left"))
        if j > 0 and (j == len(prefix) or k * total - n_shards * prefix[j - 1] <= n_shards * prefix[j] - k * total):
            j -= 1
        bounds.append(max(bounds[-1], j))
    bounds.append(len(costs))
    return list(pairwise(bounds))


def even_slice(n_docs: int, rank: int, world_size: int) -> tuple[int, int]:
    """The documents rank `rank` tokenizes in setup: an equal count, contiguous."""
    return n_docs * rank // world_size, n_docs * (rank + 1) // world_size


def shard_tokens(tokenizer, texts: list[str], shard: tuple[int, int], counted: tuple[int, int],
                 counted_tokens: list[np.ndarray]) -> list[np.ndarray]:
    """Token ids of documents `shard` = [start, end), reusing `counted_tokens`, those
    of documents `counted` (tokenized in setup), where the two ranges overlap."""
    (start, end), (lo, hi) = shard, counted
    before = tokenize(tokenizer, texts[start:min(end, lo)]) if start < min(end, lo) else []
    reused = counted_tokens[max(start, lo) - lo:min(end, hi) - lo] if max(start, lo) < min(end, hi) else []
    after = tokenize(tokenizer, texts[max(start, hi):end]) if max(start, hi) < end else []
    return [*before, *reused, *after]


# --- the files -----------------------------------------------------------------------


def shard_path(out: Path, rank: int, world_size: int) -> Path:
    return Path(f"{out}.shard-{rank:03d}-of-{world_size:03d}.h5")


def shards_of_other_runs(out: Path, world_size: int) -> list[tuple[Path, int]]:
    """(path, rank count) of shard files or work areas next to `out` left by a run on
    another number of ranks."""
    out = Path(out)
    found = []
    for path in sorted(out.parent.glob(f"{out.name}.shard-*")):
        match = _SHARD_NAME.search(path.name)
        if match and int(match.group(2)) != world_size:
            found.append((path, int(match.group(2))))
    return found


@dataclass(frozen=True)
class Shard:
    """Shard `index` of a plan: documents [start, end), cached in `path` with root
    attributes `attrs` (those of the whole cache plus `SHARD_KEYS`)."""

    path: Path
    start: int
    end: int
    attrs: dict

    @classmethod
    def of(cls, out: Path, plan: list[tuple[int, int]], index: int, cache_attrs: dict) -> Shard:
        start, end = plan[index]
        return cls(shard_path(out, index, len(plan)), start, end,
                   {**cache_attrs, "shard_index": index, "shard_count": len(plan), "shard_doc_start": start,
                    "shard_doc_end": end})

    @property
    def empty(self) -> bool:
        """No documents: more ranks than documents, or a few very long ones."""
        return self.start == self.end

    @property
    def identity(self) -> dict:
        """What the shard's work area must have been started with to be resumed."""
        return {k: self.attrs[k] for k in (*CACHE_IDENTITY, *SHARD_KEYS)}

    def finished(self, overwrite: bool) -> bool:
        """True when the shard file exists, complete, of exactly this plan and settings;
        refuses a shard file of other settings unless `overwrite`."""
        existing = read_attrs(self.path) if self.path.exists() else None
        if existing is None or overwrite:
            return False
        diff = differences(existing, self.attrs, (*CACHE_IDENTITY, *SHARD_KEYS))
        if diff:
            raise UserError(f"{self.path} holds a shard of other settings ({'; '.join(diff)}); "
                            f"rerun with those settings, or pass --overwrite to start again")
        return True

    def checked(self) -> Path:
        """The shard file, once it is complete and exactly the planned shard."""
        existing = read_attrs(self.path)
        if existing is None:
            raise UserError(f"{self.path} is missing or incomplete")
        diff = differences(existing, self.attrs, (*CACHE_IDENTITY, *SHARD_KEYS), names=("the plan", "the file"))
        if diff:
            raise UserError(f"{self.path} is not the planned shard ({'; '.join(diff)})")
        return self.path
