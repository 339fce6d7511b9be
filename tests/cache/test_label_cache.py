"""Labels in the window cache (format version 3): one label per document (`labels`) or a set
of labels per document (`label_sets/`, CSR), the `task` attribute naming which; written by
`longdoc.cache.writer` (one process, or shards joined), read by `longdoc.cache.reader`.
Hostile label sets: tests/test_cache_fuzz.py."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from checkout import SHARED_DATASETS
from synthetic import cli_error, read_all, write_multilabel_cache, write_synthetic_cache
from synthetic import tiny_embed_config as config

from longdoc.cache.reader import open_cache, read_attrs
from longdoc.cache.writer import join_caches
from longdoc.corpus.sources import load_corpus
from longdoc.embed import run as run_embed
from longdoc.runtime.errors import UserError

SETS = [[], [0, 2], [1], [0, 1, 2, 3], [3], [], [2]]  # the first and the last-but-one without a label


# --- writer and reader, both tasks -------------------------------------------------------------


def test_a_single_label_cache_round_trips_with_task_single_label(tmp_path):
    path = write_synthetic_cache(tmp_path / "c.h5", n_docs=9, n_classes=3)
    arrays, attrs = read_all(path)
    assert attrs["task"] == "single_label" and attrs["format_version"] == 3
    assert "labels" in arrays and not any(name.startswith("label_sets") for name in arrays)
    assert arrays["labels"].dtype == np.int64
    with open_cache(path) as cache:
        assert cache.task == "single_label" and not cache.multi_label
        np.testing.assert_array_equal(cache.labels, np.arange(9) % 3)
        assert cache.label_sets_of([4, 0]) == [[1], [0]]
        assert cache.label_matrix().tolist() == [[k == i % 3 for k in range(3)] for i in range(9)]
        assert cache.label_matrix([2, 2]).tolist() == [[False, False, True]] * 2
        cache.single_label_only("train-head")  # nothing to refuse


def test_a_multi_label_cache_round_trips_label_sets_as_csr(tmp_path):
    path = write_multilabel_cache(tmp_path / "c.h5", n_labels=4, label_sets=SETS, texts=True)
    arrays, attrs = read_all(path)
    assert attrs["task"] == "multi_label" and attrs["format_version"] == 3 and "labels" not in arrays
    assert arrays["label_sets/indptr"].dtype == np.int64 and arrays["label_sets/indices"].dtype == np.int32
    np.testing.assert_array_equal(arrays["label_sets/indptr"], [0, 0, 2, 3, 7, 8, 8, 9])
    np.testing.assert_array_equal(arrays["label_sets/indices"], [0, 2, 1, 0, 1, 2, 3, 3, 2])
    with open_cache(path) as cache:
        assert cache.task == "multi_label" and cache.multi_label and cache.labels is None
        assert cache.n_docs == 7 and cache.n_labels == 4 and cache.has_terms
        assert cache.label_sets_of() == SETS
        assert cache.label_sets_of(np.array([3, 0, 3])) == [SETS[3], [], SETS[3]]
        matrix = cache.label_matrix()
        assert matrix.dtype == bool and matrix.shape == (7, 4)
        assert [np.flatnonzero(row).tolist() for row in matrix] == SETS
        np.testing.assert_array_equal(cache.label_matrix([6, 1]), matrix[[6, 1]])
        assert cache.label_matrix([]).shape == (0, 4)
        with pytest.raises(UserError, match=r"c.h5: multi-label caches are not yet supported by train-head"):
            cache.single_label_only("train-head")


def test_a_multi_label_cache_of_documents_without_any_label(tmp_path):
    with open_cache(write_multilabel_cache(tmp_path / "c.h5", n_labels=3, label_sets=[[], []])) as cache:
        assert cache.label_sets_of() == [[], []] and not cache.label_matrix().any()


def test_the_writer_refuses_label_sets_that_are_not_sorted_unique_and_in_range(tmp_path):
    for sets, problem in (([[1, 0]], "is not sorted"), ([[2, 2]], "holds label 2 twice"), ([[4]], "outside the 4")):
        with pytest.raises(UserError, match=problem):
            write_synthetic_cache(tmp_path / "c.h5", n_classes=4, label_sets=sets)
        assert not (tmp_path / "c.h5").exists()


def as_version_2(path):
    """The cache as a format-2 writer left it: no task attribute."""
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 2
        del f.attrs["task"]


def test_version_2_caches_read_as_single_label(tmp_path):
    path = write_synthetic_cache(tmp_path / "c.h5", n_docs=6)
    as_version_2(path)
    assert read_attrs(path)["task"] == "single_label"
    with open_cache(path) as cache:
        assert cache.task == "single_label" and cache.attrs["task"] == "single_label"
        assert cache.label_sets_of() == [[i % 3] for i in range(6)]


# --- joining shards ----------------------------------------------------------------------------


def parts_of(tmp_path, sets_per_part, **options):
    return [write_multilabel_cache(tmp_path / f"part{k}.h5", n_labels=4, label_sets=sets, seed=k, **options)
            for k, sets in enumerate(sets_per_part)]


def test_joined_multi_label_shards_hold_their_label_sets_in_order(tmp_path):
    parts = parts_of(tmp_path, [SETS[:3], SETS[3:]], texts=True)
    _, attrs = read_all(parts[0])
    join_caches(tmp_path / "joined.h5", parts, {**attrs, "shards": 2}, rows_per_copy=5)
    with open_cache(tmp_path / "joined.h5") as cache:
        assert cache.task == "multi_label" and cache.label_sets_of() == SETS
    arrays, _ = read_all(tmp_path / "joined.h5")
    assert arrays["label_sets/indptr"].dtype == np.int64 and arrays["label_sets/indices"].dtype == np.int32


def test_a_join_refuses_a_shard_of_the_other_task_or_with_damaged_label_sets(tmp_path):
    parts = parts_of(tmp_path, [SETS[:3], SETS[3:]])
    _, attrs = read_all(parts[0])
    with h5py.File(parts[1], "r+") as f:
        f["label_sets/indices"][0] = 9
    with pytest.raises(UserError, match=r"part1.h5: label_sets/indices holds 9 for document 0, outside the 4"):
        join_caches(tmp_path / "joined.h5", parts, attrs)
    single = write_synthetic_cache(tmp_path / "single.h5", n_docs=3, n_classes=4)
    with pytest.raises(UserError, match=r"single.h5: holds labels of another task than multi_label"):
        join_caches(tmp_path / "joined.h5", [parts[0], single], attrs)
    assert not (tmp_path / "joined.h5").exists()


# --- embed, end to end --------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


MULTI_ROWS = [{"id": "a", "text": "wheat and corn prices rose again " * 6, "labels": ["grain", "corn"]},
              {"id": "b", "text": "nothing to see here", "labels": []},
              {"id": "c", "text": "trade talks, again and again " * 9, "labels": ["trade"]},
              {"id": "d", "text": "grain and trade", "labels": ["trade", "grain"]}]


def test_embed_writes_a_multi_label_corpus_and_says_so(tiny_bert, tmp_path):
    corpus = write_jsonl(tmp_path / "sets.jsonl", MULTI_ROWS)
    out = tmp_path / "c.h5"
    summary = run_embed(config(tiny_bert, corpus, out))
    assert summary.line().endswith("; multi-label: 3 labels, 1.25 per document, 1 document with none")
    assert (summary.task, summary.n_labels, summary.labels_per_document, summary.documents_without_labels) == \
        ("multi_label", 3, 1.25, 1)
    expected = load_corpus(str(corpus))
    with open_cache(out) as cache:
        assert cache.attrs["task"] == "multi_label" and cache.label_names == ["corn", "grain", "trade"]
        assert cache.label_sets_of() == expected.label_sets == [[0, 1], [], [2], [1, 2]]
        assert cache.doc_ids() == ["a", "b", "c", "d"] and cache.window_counts.max() > 1
    assert run_embed(config(tiny_bert, corpus, out)).already_complete  # the same settings: nothing to do
    single = write_jsonl(tmp_path / "one.jsonl", [{"text": r["text"], "label": "x"} for r in MULTI_ROWS])
    with pytest.raises(UserError, match="exists with other settings.*task: 'single_label'"):
        run_embed(config(tiny_bert, single, out))


def test_stage_two_refuses_a_cache_of_the_other_task_in_one_line(tmp_path):
    multi = write_multilabel_cache(tmp_path / "multi.h5", n_docs=20)
    single = write_synthetic_cache(tmp_path / "single.h5", n_docs=30, max_windows=3)
    heads = {}
    for name, cache in (("single", single), ("multi", multi)):
        heads[name] = tmp_path / f"{name}.pt"
        code, lines = cli_error("in-process", "train-head", "--train", cache, "--out", heads[name], "--epochs", "1",
                                "--inputs", "windows", "--no-progress")
        assert code == 0, lines
    refusals = [
        (["train-head", "--train", single, "--val", multi, "--out", tmp_path / "h.pt"],
         f"error: --val {multi} is a multi-label cache and --train {single} a single-label one; validate on a "
         f"cache of the same task"),
        (["train-head", "--train", multi, "--val", single, "--out", tmp_path / "h.pt"],
         f"error: --val {single} is a single-label cache and --train {multi} a multi-label one; validate on a "
         f"cache of the same task"),
        (["evaluate", "--head", heads["single"], "--cache", multi],
         f"error: {multi} is a multi-label cache and the head {heads['single']} a single-label one; score a head "
         f"on a cache of its own task"),
        (["evaluate", "--head", heads["multi"], "--cache", single],
         f"error: {single} is a single-label cache and the head {heads['multi']} a multi-label one; score a head "
         f"on a cache of its own task")]
    for args, want in refusals:
        code, lines = cli_error("in-process", *args)
        assert code == 2 and lines == [want], lines
    assert not (tmp_path / "h.pt").exists()


def test_a_version_2_cache_at_out_is_still_complete_for_embed(tiny_bert, folder_corpus, tmp_path):
    out = tmp_path / "c.h5"
    run_embed(config(tiny_bert, folder_corpus, out))
    as_version_2(out)
    assert run_embed(config(tiny_bert, folder_corpus, out)).already_complete


def test_embed_reads_a_few_reuters_stories_into_label_sets(tiny_bert, tmp_path):
    from synthetic import story, write_archive

    home = tmp_path / "home"
    home.mkdir()
    write_archive(home / "reuters21578.tar.gz", {
        "reut2-000.sgm": story(1, "<D>wheat</D><D>grain</D>") + story(2, "<D>trade</D>", split="TEST")
                         + story(3, "<D>grain</D>") + story(4, "<D>trade</D>") + story(5, "<D>wheat</D>", split="TEST")
                         + story(6, "<D>grain</D>", split="TEST")})
    out = tmp_path / "train.h5"
    code, lines = cli_error("in-process", "embed", "--data", "reuters21578", "--data-home", home, "--split", "train",
                            "--out", out, "--model", tiny_bert, "--chunk-tokens", "32", "--stride", "8",
                            "--precision", "fp32", "--device", "cpu", "--limit", "2", "--no-progress")
    assert code == 0, lines
    with open_cache(out) as cache:
        assert cache.doc_ids() == ["reuters/1", "reuters/3"] and cache.label_names == ["grain", "trade", "wheat"]
        assert cache.label_sets_of() == [[0, 2], [0]] and cache.attrs["data_source"] == "reuters21578:train[:2]"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATASETS / "reuters21578.tar.gz").is_file(), reason="no Reuters-21578 archive")
def test_embed_reads_the_first_stories_of_the_real_reuters_archive(tiny_bert, tmp_path):
    out = tmp_path / "test.h5"
    code, lines = cli_error("in-process", "embed", "--data", "reuters21578", "--data-home", SHARED_DATASETS,
                            "--split", "test", "--out", out, "--model", tiny_bert, "--chunk-tokens", "64",
                            "--stride", "8", "--precision", "fp32", "--device", "cpu", "--limit", "5", "--no-progress")
    assert code == 0, lines
    corpus = load_corpus("reuters21578", "test", data_home=str(SHARED_DATASETS), limit=5)
    with open_cache(out) as cache:
        assert cache.multi_label and cache.label_sets_of() == corpus.label_sets and cache.n_docs == 5
        assert cache.label_names == corpus.label_names and all(corpus.label_sets)  # R90: each has a topic
