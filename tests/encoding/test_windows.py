import numpy as np
import pytest

from longdoc.encoding.windows import SpecialTokens, WindowSpec, split_at_whitespace, tokenize
from longdoc.runtime.errors import UserError

SPECIAL = SpecialTokens(prefix=(101,), suffix=(102,), pad_id=0)


@pytest.mark.parametrize("chunk,stride", [(8, 0), (8, 3), (10, 7), (512, 64), (5, 2)])
@pytest.mark.parametrize("n_tokens", [0, 1, 5, 6, 7, 13, 100, 1001])
def test_windows_cover_every_token_with_exact_overlap(chunk, stride, n_tokens):
    spec = WindowSpec(chunk, stride, SPECIAL)
    tokens = np.arange(1000, 1000 + n_tokens)
    windows = [w.tolist() for w in spec.windows(tokens)]
    starts = spec.starts(n_tokens)
    assert len(windows) == spec.count(n_tokens) == len(starts) >= 1
    bodies = [w[1:-1] for w in windows]
    for window, body in zip(windows, bodies):
        assert window[0] == 101 and window[-1] == 102  # specials exactly once, at the ends
        assert 101 not in body and 102 not in body
        assert len(window) <= chunk
    covered = np.concatenate([tokens[s:s + spec.body] for s in starts]) if n_tokens else np.array([])
    assert set(covered.tolist()) == set(tokens.tolist())  # every token lands somewhere
    for (a, b), (s, t) in zip(zip(bodies, bodies[1:]), zip(starts, starts[1:])):
        assert t - s == spec.step
        assert a[-stride:] == b[:stride] if stride else True  # overlap is exactly `stride` tokens
        assert len(a) == spec.body  # only the last window can be short
    assert bodies[-1][-1:] == tokens[-1:].tolist()  # the last window ends at the last token


def test_empty_document_gets_one_window_of_special_tokens():
    spec = WindowSpec(16, 4, SPECIAL)
    assert [w.tolist() for w in spec.windows(np.array([], dtype=np.int32))] == [[101, 102]]


@pytest.mark.parametrize("chunk,stride", [(8, 6), (8, 7), (8, -1), (2, 0), (1, 0)])
def test_bad_geometry_is_refused(chunk, stride):
    with pytest.raises(UserError):
        WindowSpec(chunk, stride, SPECIAL)


def test_special_tokens_come_from_the_tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    special = SpecialTokens.of(tokenizer)
    assert special.prefix == (tokenizer.cls_token_id,)
    assert special.suffix == (tokenizer.sep_token_id,)
    assert special.pad_id == tokenizer.pad_token_id
    # the window a tokenizer would build itself for a short text is exactly ours
    text = "space rocket launch"
    spec = WindowSpec(16, 2, special)
    ids = tokenize(tokenizer, [text])[0]
    assert [w.tolist() for w in spec.windows(ids)] == [tokenizer.encode(text)]


def test_tokenize_never_truncates(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    long_text = "space " * 5000  # far beyond model_max_length
    ids = tokenize(tokenizer, [long_text, ""])
    assert len(ids[0]) == 5000 and len(ids[1]) == 0


def test_long_texts_tokenize_in_pieces_to_the_same_ids(minilm):
    from longdoc.encoding.encoder import load_tokenizer

    tokenizer = load_tokenizer(minilm)
    words = "Space   rocket\n\nlaunch, (orbit) caf\u00e9 -- NASA's moon\tdon't e-mail x@y.org 3.14 ".split(" ")
    text = " ".join(words[i % len(words)] for i in range(20_000))
    whole = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    for segment_chars in (10, 97, 1000):
        assert "".join(split_at_whitespace(text, segment_chars)) == text
        assert tokenize(tokenizer, [text, "short"], segment_chars=segment_chars)[0].tolist() == whole


@pytest.mark.parametrize("chunk,stride", [(8, 0), (8, 3), (512, 64)])
def test_packed_windows_are_the_windows_at_4_bytes_a_token(chunk, stride):
    spec = WindowSpec(chunk, stride, SPECIAL)
    docs = [np.arange(n, dtype=np.int32) + 1000 for n in (0, 1, 5, 7, 13, 1001, 100_000)]
    packed = spec.pack(docs)
    expected = [w.tolist() for doc in docs for w in spec.windows(doc)]
    assert len(packed) == len(expected) and [w.tolist() for w in packed] == expected
    assert packed.lengths().tolist() == [len(w) for w in expected]
    assert packed.tokens.dtype == np.int32 and packed.tokens.nbytes == 4 * sum(len(w) for w in expected)
    assert packed[-1].tolist() == expected[-1]
    with pytest.raises(IndexError):
        packed[len(expected)]
