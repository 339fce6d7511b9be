"""Cut tokenized documents into overlapping windows that cover every token.

A window of `chunk_tokens` holds the tokenizer's own special tokens (for BERT,
`[CLS] body [SEP]`) around a body of `chunk_tokens - n_special` document tokens.
Consecutive bodies overlap by `stride` tokens, so they start `body - stride`
tokens apart; the last body ends at the document's last token and may be shorter.
An empty document gets one window with an empty body, so every document has at
least one vector and nothing downstream needs a special case.

    tokens:  t0 ............................................. tn
    bodies:  [---- body ----]
                        [---- body ----]          stride = overlap
                                    [---- body ----]
                                                [-- last --]

Reads texts (`tokenize`, through the tokenizer) and token ids; writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from longdoc.runtime.errors import UserError


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the tokenizer puts before and after a single sequence."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pad_id: int

    @property
    def count(self) -> int:
        return len(self.prefix) + len(self.suffix)

    @classmethod
    def of(cls, tokenizer) -> "SpecialTokens":
        """Read them off the tokenizer: encode one word with and without specials."""
        plain = tokenizer.encode("hello", add_special_tokens=False)
        full = tokenizer.encode("hello", add_special_tokens=True)
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                prefix, suffix = full[:start], full[start + len(plain):]
                break
        else:
            raise UserError(f"cannot locate the special tokens of {type(tokenizer).__name__}")
        pad_id = tokenizer.pad_token_id
        if pad_id is None:  # e.g. GPT-style vocabularies; padded positions are masked anyway
            pad_id = suffix[-1] if suffix else 0
        return cls(tuple(prefix), tuple(suffix), int(pad_id))


@dataclass(frozen=True)
class WindowSpec:
    """Window geometry: `chunk_tokens` in all, bodies overlapping by `stride`."""

    chunk_tokens: int
    stride: int
    special: SpecialTokens

    def __post_init__(self):
        if self.body < 1:
            raise UserError(
                f"--chunk-tokens {self.chunk_tokens} leaves no room for text beside "
                f"{self.special.count} special tokens")
        if not 0 <= self.stride < self.body:
            raise UserError(
                f"--stride must be at least 0 and below the window's {self.body} text tokens "
                f"(--chunk-tokens {self.chunk_tokens} minus {self.special.count} special tokens); "
                f"got {self.stride}")

    @property
    def body(self) -> int:
        return self.chunk_tokens - self.special.count

    @property
    def step(self) -> int:
        return self.body - self.stride

    def count(self, n_tokens: int) -> int:
        """Number of windows for a document of `n_tokens` (at least 1)."""
        if n_tokens <= self.body:
            return 1
        return 1 + -(-(n_tokens - self.body) // self.step)

    def counts(self, doc_tokens) -> np.ndarray:
        """Number of windows of each document (int64), given their lengths in tokens."""
        return np.fromiter((self.count(int(n)) for n in doc_tokens), dtype=np.int64, count=len(doc_tokens))

    def starts(self, n_tokens: int) -> np.ndarray:
        """Start offset of each window's body in the document's tokens."""
        return np.arange(self.count(n_tokens), dtype=np.int64) * self.step

    def window(self, tokens: np.ndarray, start: int) -> np.ndarray:
        """Token ids (int32) of the window whose body starts at `start`, specials included."""
        body = np.asarray(tokens[start:start + self.body], dtype=np.int32)
        return np.concatenate([np.asarray(self.special.prefix, dtype=np.int32), body,
                               np.asarray(self.special.suffix, dtype=np.int32)])

    def windows(self, tokens: np.ndarray) -> list[np.ndarray]:
        return [self.window(tokens, int(s)) for s in self.starts(len(tokens))]

    def pack(self, token_ids: list[np.ndarray]) -> "PackedWindows":
        """Every window of every document, in order, in one int32 array."""
        counts = [self.count(len(tokens)) for tokens in token_ids]
        lengths = np.empty(sum(counts), dtype=np.int64)
        at = 0
        for tokens, count in zip(token_ids, counts):
            bodies = np.minimum(self.body, len(tokens) - self.starts(len(tokens)))
            lengths[at:at + count] = np.maximum(bodies, 0) + self.special.count
            at += count
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        packed = np.empty(int(offsets[-1]), dtype=np.int32)
        window = 0
        for tokens in token_ids:
            for start in self.starts(len(tokens)).tolist():
                packed[offsets[window]:offsets[window + 1]] = self.window(tokens, start)
                window += 1
        return PackedWindows(packed, offsets)


@dataclass(frozen=True)
class PackedWindows:
    """Many windows in one int32 array: window i is `tokens[offsets[i]:offsets[i + 1]]`.

    4 bytes a token, where lists of Python ints took about 44 MiB per million tokens;
    indexing gives a view, so it goes wherever a sequence of windows does."""

    tokens: np.ndarray  # int32 [total tokens, specials included]
    offsets: np.ndarray  # int64 [n_windows + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


# Texts longer than this are tokenized in pieces cut at whitespace, so the
# tokenizer's working memory (offsets, normalisation maps: ~300 bytes per token)
# stays bounded however long a document is. 50k characters is about 12k tokens.
SEGMENT_CHARS = 50_000


def split_at_whitespace(text: str, size: int = SEGMENT_CHARS) -> list[str]:
    """Cut `text` into pieces of at most about `size` characters, each cut made just
    before a whitespace character, so word-level pre-tokenizers see the same words."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = next((i for i in range(start + size, start + size // 2, -1) if text[i].isspace()), start + size)
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def tokenize(tokenizer, texts: list[str], batch_size: int = 256,
             segment_chars: int = SEGMENT_CHARS) -> list[np.ndarray]:
    """Token ids of each whole text, without special tokens and without truncation."""
    ids = []
    for i in range(0, len(texts), batch_size):
        pieces = [split_at_whitespace(text, segment_chars) for text in texts[i:i + batch_size]]
        flat = [piece for doc in pieces for piece in doc]
        encoded = tokenizer(
            flat, add_special_tokens=False, truncation=False,
            return_attention_mask=False, return_token_type_ids=False, verbose=False,
        )["input_ids"]
        at = 0
        for doc in pieces:
            ids.append(np.concatenate([np.asarray(piece, dtype=np.int32) for piece in encoded[at:at + len(doc)]]))
            at += len(doc)
    return ids
