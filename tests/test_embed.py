"""Stage one on a tiny random BERT: layout, order, resume, refusals."""

import fcntl

import numpy as np
import pytest
import torch
from synthetic import read_all
from synthetic import tiny_embed_config as config

from longdoc.cache.reader import open_cache
from longdoc.cache.writer import PartialCache
from longdoc.embed import run as run_embed
from longdoc.embedding.job import plan_blocks
from longdoc.encoding.batches import encode_windows, pack_batches
from longdoc.encoding.encoder import load_encoder
from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize
from longdoc.runtime.errors import UserError
from longdoc.terms.hashing import TermHashing


@pytest.mark.parametrize("seed", range(5))
def test_pack_batches_respects_the_budget_and_takes_each_window_once(seed):
    lengths = np.random.default_rng(seed).integers(1, 300, size=500)
    batches = pack_batches(lengths, 1000)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(500))
    for batch in batches:
        assert len(batch) * lengths[batch].max() <= 1000
    assert np.all(np.diff(lengths[seen]) <= 0)  # longest first: padding only within equal-ish lengths


def test_plan_blocks_closes_a_block_as_soon_as_it_holds_the_budget():
    counts = np.array([1, 5, 1, 1, 40, 2, 2, 2, 1])
    assert plan_blocks(counts, 4) == [(0, 2), (2, 5), (5, 7), (7, 9)]  # a 40-window document ends its block
    assert plan_blocks(np.array([3, 1]), 4) == [(0, 2)]
    assert plan_blocks(np.zeros(0, dtype=np.int64), 4) == []


@pytest.mark.parametrize("seed", range(5))
def test_plan_blocks_is_contiguous_covers_every_document_once_and_fills_each_block(seed):
    counts = np.random.default_rng(seed).integers(1, 50, size=300)
    blocks = plan_blocks(counts, 64)
    assert [start for start, _ in blocks] == [0, *(end for _, end in blocks[:-1])]  # contiguous, from 0
    assert blocks[-1][1] == len(counts) and all(start < end for start, end in blocks)
    for start, end in blocks:
        assert counts[start:end - 1].sum() < 64  # not closed before the budget ...
    for start, end in blocks[:-1]:
        assert counts[start:end].sum() >= 64  # ... and closed once it is reached; the last takes what is left


def test_encode_windows_keeps_order_and_ignores_padding(tiny_bert):
    encoder = load_encoder(str(tiny_bert), "cpu", "fp32")
    rng = np.random.default_rng(0)
    windows = [[2, *rng.integers(5, 60, size=n).tolist(), 3] for n in (30, 1, 7, 30, 0, 12)]
    batched = encode_windows(encoder, windows, batch_tokens=64)
    for window, vector in zip(windows, batched):
        with torch.inference_mode():
            alone = encoder.model(input_ids=torch.tensor([window])).last_hidden_state[0, 0].numpy()
        np.testing.assert_allclose(vector, alone, rtol=1e-4, atol=1e-5)


def test_cache_layout_matches_the_documents(tiny_bert, folder_corpus, tmp_path):
    out = tmp_path / "c.h5"
    summary = run_embed(config(tiny_bert, folder_corpus, out))
    arrays, attrs = read_all(out)
    encoder = load_encoder(str(tiny_bert), "cpu", "fp32")
    spec = WindowSpec(32, 8, SpecialTokens.of(encoder.tokenizer))
    from longdoc.corpus.sources import load_corpus
    corpus = load_corpus(str(folder_corpus))
    tokens = tokenize(encoder.tokenizer, corpus.texts)
    counts = [spec.count(len(t)) for t in tokens]
    assert arrays["doc_offsets"].tolist() == np.concatenate([[0], np.cumsum(counts)]).tolist()
    assert arrays["doc_tokens"].tolist() == [len(t) for t in tokens]
    assert arrays["labels"].tolist() == corpus.labels.tolist()
    assert [x.decode() for x in arrays["doc_ids"]] == corpus.doc_ids
    assert arrays["window_starts"].tolist() == np.concatenate([spec.starts(len(t)) for t in tokens]).tolist()
    assert arrays["embeddings"].shape == (sum(counts), 32) and arrays["embeddings"].dtype == np.float32
    assert attrs["complete"] and attrs["chunk_tokens"] == 32 and attrs["stride"] == 8
    assert attrs["model_fingerprint"] == encoder.fingerprint and attrs["precision"] == "fp32"
    assert summary.documents == len(corpus) and summary.windows == sum(counts)
    assert summary.empty_documents == sum(len(t) == 0 for t in tokens) > 0
    # Each document's vectors are those of its own windows, in order.
    doc = int(np.argmax(counts))
    expected = encode_windows(encoder, spec.windows(tokens[doc]), batch_tokens=10_000)
    lo, hi = arrays["doc_offsets"][doc:doc + 2]
    np.testing.assert_allclose(arrays["embeddings"][lo:hi], expected, rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "c.h5.partial").exists()
    with open_cache(out) as cache:
        assert cache.n_docs == len(corpus) and cache.label_names == corpus.label_names
        # Each document's term row is the hashed counts of its own whole text.
        expected_terms = TermHashing().counts(corpus.texts)
        assert cache.has_terms and attrs["term_hashing"] == TermHashing().to_json()
        assert (cache.term_rows(np.arange(len(corpus))) != expected_terms).nnz == 0
        assert (cache.term_rows([doc, 0]) != expected_terms[[doc, 0]]).nnz == 0


def test_no_terms_and_the_window_vector_are_recorded(tiny_bert, folder_corpus, tmp_path):
    """--no-terms writes no terms/ group; --window-vector mean stores token means, not [CLS]."""
    out = tmp_path / "c.h5"
    run_embed(config(tiny_bert, folder_corpus, out, terms=False, window_vector="mean"))
    with open_cache(out) as cache:
        assert not cache.has_terms and cache.term_hashing == "{}" and cache.attrs["window_vector"] == "mean"
        first = cache.embeddings[0]
    encoder = load_encoder(str(tiny_bert), "cpu", "fp32", "mean")
    from longdoc.corpus.sources import load_corpus
    tokens = tokenize(encoder.tokenizer, load_corpus(str(folder_corpus)).texts)
    window = WindowSpec(32, 8, SpecialTokens.of(encoder.tokenizer)).windows(tokens[0])[0]
    import torch
    with torch.inference_mode():
        hidden = encoder.model(input_ids=torch.from_numpy(np.asarray(window)[None])).last_hidden_state[0]
    np.testing.assert_allclose(first, hidden.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(first, hidden[0].numpy(), atol=1e-3)


def test_interrupted_run_resumes_to_the_same_file(tiny_bert, folder_corpus, tmp_path, monkeypatch):
    reference = tmp_path / "reference.h5"
    run_embed(config(tiny_bert, folder_corpus, reference))

    out = tmp_path / "c.h5"
    real_save, saved = PartialCache.save, []

    def save_then_die(self, block):
        real_save(self, block)
        saved.append(block)
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(PartialCache, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_embed(config(tiny_bert, folder_corpus, out))
    assert not out.exists() and len(list((tmp_path / "c.h5.partial").glob("block-*.npy"))) == 2
    (tmp_path / "c.h5.partial" / "block-000000099-000000100.tmp").write_bytes(b"half a block")
    monkeypatch.setattr(PartialCache, "save", real_save)

    summary = run_embed(config(tiny_bert, folder_corpus, out))
    assert summary.resumed_documents == saved[-1].doc_end > 0
    got, want = read_all(out)[0], read_all(reference)[0]
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_complete_cache_is_reused_refused_or_overwritten(tiny_bert, folder_corpus, tmp_path):
    out = tmp_path / "c.h5"
    run_embed(config(tiny_bert, folder_corpus, out))
    before = out.stat().st_mtime_ns
    assert run_embed(config(tiny_bert, folder_corpus, out)).already_complete
    assert out.stat().st_mtime_ns == before
    with pytest.raises(UserError, match=r"stride: 4 \(this run\) vs 8 \(the file\)"):
        run_embed(config(tiny_bert, folder_corpus, out, stride=4))
    summary = run_embed(config(tiny_bert, folder_corpus, out, stride=4, overwrite=True))
    assert not summary.already_complete and read_all(out)[1]["stride"] == 4


def test_interrupted_run_with_other_settings_is_refused(tiny_bert, folder_corpus, tmp_path):
    out = tmp_path / "c.h5"
    with PartialCache(out, {"stride": 99}):
        pass
    with pytest.raises(UserError, match="interrupted run with other settings"):
        run_embed(config(tiny_bert, folder_corpus, out))
    run_embed(config(tiny_bert, folder_corpus, out, overwrite=True))
    assert out.exists()


def test_second_writer_is_refused(tiny_bert, folder_corpus, tmp_path):
    out = tmp_path / "c.h5"
    partial = tmp_path / "c.h5.partial"
    partial.mkdir()
    with open(partial / "lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 12345")
        held.flush()
        with pytest.raises(UserError, match="being written by pid 12345"):
            run_embed(config(tiny_bert, folder_corpus, out))
    run_embed(config(tiny_bert, folder_corpus, out))  # the lock died with its holder


@pytest.mark.parametrize("overrides,message", [
    (dict(chunk_tokens=129), "above the 128 tokens"),
    (dict(stride=30), "--stride must be"),
    (dict(chunk_tokens=2), "leaves no room"),
    (dict(batch_tokens=16), "at least --chunk-tokens"),
    (dict(model="/nonexistent/model"), "cannot load"),
    (dict(precision="fp16"), "fp16 runs only on CUDA"),
    (dict(block_windows=0), "--block-windows"),
])
def test_bad_settings_are_refused(tiny_bert, folder_corpus, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run_embed(config(tiny_bert, folder_corpus, tmp_path / "c.h5", **overrides))
    assert not (tmp_path / "c.h5").exists()


def test_unwritable_output_is_refused_before_any_work(tiny_bert, folder_corpus, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="cannot create"):
        run_embed(config(tiny_bert, folder_corpus, tmp_path / "a-file" / "c.h5"))
    with pytest.raises(UserError, match="is a directory"):
        run_embed(config(tiny_bert, folder_corpus, tmp_path))
