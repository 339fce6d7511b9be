"""Stage one under torchrun: the shard plan (stages/longdoc/embedding/shards.py), the rank bookkeeping
(stages/longdoc/runtime/ranks.py), and two CPU ranks end to end on the tiny random BERT (joined cache ==
one-process cache, after a kill and after a failing rank too)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch.distributed as dist
from assertions import error_lines
from checkout import ROOT
from synthetic import make_class_folders

from longdoc.cache.reader import read_attrs
from longdoc.configs import EmbedConfig
from longdoc.embed import run as run_embed
from longdoc.embedding.shards import (
    encoded_tokens,
    even_slice,
    plan_shards,
    shard_path,
    shards_of_other_runs,
)
from longdoc.encoding.windows import SpecialTokens, WindowSpec
from longdoc.runtime.errors import ReportedElsewhere, UserError
from longdoc.runtime.ranks import Ranks, describe_failures, same_as_rank_zero, thread_count, wait_for_reports

# --- the shard plan ------------------------------------------------------------------


def check_plan(plan, n_docs, n_shards):
    assert len(plan) == n_shards
    assert plan[0][0] == 0 and plan[-1][1] == n_docs
    assert all(a[1] == b[0] and a[0] <= a[1] for a, b in zip(plan, plan[1:]))  # contiguous, in order


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_shards", [1, 2, 3, 8])
def test_plan_shards_is_contiguous_covers_every_document_once_and_balances_cost(seed, n_shards):
    costs = np.random.default_rng(seed).integers(1, 5_000, size=200)
    plan = plan_shards(costs, n_shards)
    check_plan(plan, len(costs), n_shards)
    shares = [costs[a:b].sum() for a, b in plan]
    assert max(abs(share - costs.sum() / n_shards) for share in shares) <= costs.max()
    assert plan_shards(costs.copy(), n_shards) == plan  # a function of the costs alone


def test_plan_shards_balances_tokens_not_documents():
    costs = np.array([10_000] * 5 + [100] * 500)  # five long documents, then many short ones
    plan = plan_shards(costs, 2)
    check_plan(plan, len(costs), 2)
    (a0, a1), (b0, b1) = plan
    assert abs(costs[a0:a1].sum() - costs[b0:b1].sum()) <= costs.max()
    assert a1 - a0 < 300 < b1 - b0  # far from an even split by count


@pytest.mark.parametrize("costs,n_shards", [([5, 5], 4), ([7], 3), ([0, 0, 0], 2), ([1, 1_000_000, 1], 3)])
def test_plan_shards_with_more_ranks_than_documents_leaves_some_empty(costs, n_shards):
    plan = plan_shards(np.array(costs), n_shards)
    check_plan(plan, len(costs), n_shards)
    assert sum(b - a for a, b in plan) == len(costs)


def test_encoded_tokens_counts_what_the_encoder_runs():
    spec = WindowSpec(32, 8, SpecialTokens((2,), (3,), 0))
    lengths = np.arange(0, 300)
    expected = [sum(len(w) for w in spec.windows(np.arange(n))) for n in lengths]
    assert encoded_tokens(spec, lengths).tolist() == expected


def test_even_slices_cover_the_corpus():
    for n_docs, world in [(10, 3), (2, 4), (1000, 8)]:
        slices = [even_slice(n_docs, r, world) for r in range(world)]
        check_plan(slices, n_docs, world)


# --- ranks, threads, reports ---------------------------------------------------------


def test_ranks_come_from_torchrun_environment():
    assert Ranks.from_env({}) is None
    assert Ranks.from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    ranks = Ranks.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert ranks == Ranks(rank=3, world_size=4, local_rank=1, local_world_size=2)


def test_each_rank_gets_its_share_of_threads():
    assert thread_count(0, 2, environ={}, cores=16) == 8
    assert thread_count(0, 3, environ={}, cores=2) == 1  # never zero
    assert thread_count(0, 2, environ={"OMP_NUM_THREADS": "1"}, cores=16) == 8  # torchrun's default, not the user's
    assert thread_count(0, 2, environ={"OMP_NUM_THREADS": "3"}, cores=16) == 3
    assert thread_count(5, 2, environ={"OMP_NUM_THREADS": "3"}, cores=16) == 5  # --threads wins


def test_failures_are_described_in_one_line():
    assert describe_failures([(1, "disk full")], 4) == "rank 1 failed: disk full"
    assert describe_failures([(0, "x"), (2, "x")], 4) == "ranks 0, 2 failed: x"
    assert describe_failures([(0, "x"), (1, "x")], 2) == "every rank failed: x"
    assert describe_failures([(0, "x"), (1, "y")], 2) == "rank 0 failed: x; rank 1 failed: y"


def test_a_rank_whose_settings_differ_from_rank_zeros_is_marked_failed_naming_the_setting():
    everyone = [{"settings": {"top_k": 0, "data": "x"}}, {"settings": {"top_k": 2, "data": "x"}},
                {"settings": {"top_k": 0, "data": "x"}}, {"error": "disk full"}]
    same_as_rank_zero("settings", hint="same options")(everyone)
    assert everyone[1]["error"] == "settings differ from rank 0's (top_k: 2 (rank 1) vs 0 (rank 0)); same options"
    assert "error" not in everyone[2] and everyone[3]["error"] == "disk full"


def test_rank_zero_waits_for_reports_and_stops_on_a_failure_or_a_silent_rank():
    store = dist.HashStore()
    for rank in range(3):
        store.set(f"report/{rank}", json.dumps({"tokens": rank}))
    assert [r["tokens"] for r in wait_for_reports(store, 3, poll_s=0.01)] == [0, 1, 2]

    store = dist.HashStore()
    store.set("report/0", json.dumps({"tokens": 1}))
    store.set("report/2", json.dumps({"error": "disk full"}))
    with pytest.raises(ReportedElsewhere, match="rank 2 failed: disk full"):
        wait_for_reports(store, 3, poll_s=0.01, linger_s=0)

    store = dist.HashStore()
    store.set("report/0", json.dumps({"tokens": 1}))  # rank 1 never reports nor finishes a block
    with pytest.raises(UserError, match="rank 1 failed: no block finished"):
        wait_for_reports(store, 2, stall_timeout_s=0.1, poll_s=0.01)


def test_shards_of_a_run_on_other_ranks_are_found(tmp_path):
    out = tmp_path / "c.h5"
    shard_path(out, 0, 2).touch()
    shard_path(out, 1, 3).touch()
    (tmp_path / "c.h5.shard-002-of-004.h5.partial").mkdir()
    (tmp_path / "other.h5.shard-000-of-005.h5").touch()
    assert sorted(count for _, count in shards_of_other_runs(out, 2)) == [3, 4]


# --- two CPU ranks under torchrun ----------------------------------------------------


@pytest.fixture(scope="module")
def corpus_and_reference(tiny_bert, tmp_path_factory):
    """A few dozen documents of very different lengths and their one-process cache."""
    root = tmp_path_factory.mktemp("distributed")
    corpus = make_class_folders(root / "corpus", docs_per_class=20)
    reference = root / "reference.h5"
    run_embed(EmbedConfig(out=reference, **settings(tiny_bert, corpus), progress=False))
    return corpus, reference


def settings(tiny_bert, corpus) -> dict:
    return dict(data=str(corpus), model=str(tiny_bert), chunk_tokens=32, stride=8, batch_tokens=256,
                precision="fp32", device="cpu", block_windows=8)


def torchrun(tiny_bert, corpus, out, **popen):
    """Two ranks on this machine, through torchrun, the way a user starts them."""
    args = ["embed", "--out", out, "--no-progress"]
    for key, value in settings(tiny_bert, corpus).items():
        args += [f"--{key.replace('_', '-')}", value]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "cli.py"), *map(str, args)]
    return command, dict(cwd=ROOT, env={**os.environ}, **popen)


def run_torchrun(tiny_bert, corpus, out) -> subprocess.CompletedProcess:
    command, options = torchrun(tiny_bert, corpus, out, capture_output=True, text=True, timeout=600)
    return subprocess.run(command, **options)


def assert_same_cache(got_path, want_path, labels=("labels",)):
    with h5py.File(got_path, "r") as got, h5py.File(want_path, "r") as want:
        assert set(got) == set(want)
        np.testing.assert_allclose(got["embeddings"][:], want["embeddings"][:], rtol=1e-5, atol=1e-6)
        for name in ("doc_offsets", "window_starts", *labels, "doc_ids", "doc_tokens",
                     "terms/indptr", "terms/indices", "terms/counts"):  # term rows joined in order
            np.testing.assert_array_equal(got[name][:], want[name][:], err_msg=name)
        assert {k: str(v) for k, v in got.attrs.items() if k != "shards"} == \
            {k: str(v) for k, v in want.attrs.items()}
        assert got.attrs["shards"] == 2


def wait_until(condition, process, what, seconds=300):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"torchrun ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.02)


@pytest.mark.slow
def test_two_ranks_join_into_the_one_process_cache(tiny_bert, corpus_and_reference, tmp_path):
    corpus, reference = corpus_and_reference
    out = tmp_path / "c.h5"
    result = run_torchrun(tiny_bert, corpus, out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("embedded 60 documents on 2 ranks") == 1  # rank 0 alone reports
    assert_same_cache(out, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]  # shards and work areas are gone

    again = run_torchrun(tiny_bert, corpus, out)
    assert again.returncode == 0 and "complete already" in again.stdout


@pytest.mark.slow
def test_two_ranks_join_the_label_sets_of_a_multi_label_corpus_into_the_one_process_cache(tiny_bert, tmp_path):
    rng = np.random.default_rng(3)
    words = ["grain", "trade", "oil", "the", "of", "and", "rose", "fell"]
    rows = [{"id": f"d{i}", "text": " ".join(rng.choice(words, int(rng.integers(3, 200)))),
             "labels": sorted({str(x) for x in rng.choice(["grain", "trade", "oil", "ship"], int(rng.integers(0, 3)))})}
            for i in range(24)]
    corpus = tmp_path / "sets.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    reference = tmp_path / "reference.h5"
    run_embed(EmbedConfig(out=reference, **settings(tiny_bert, corpus), progress=False))
    out = tmp_path / "c.h5"
    result = run_torchrun(tiny_bert, corpus, out)
    assert result.returncode == 0, result.stderr
    assert "on 2 ranks" in result.stdout and "multi-label: " in result.stdout
    assert_same_cache(out, reference, labels=("label_sets/indptr", "label_sets/indices"))
    with h5py.File(out, "r") as joined:
        assert joined.attrs["task"] == "multi_label" and "labels" not in joined
        assert len(joined["label_sets/indptr"]) == 25 and np.any(np.diff(joined["label_sets/indptr"][:]) == 0)


@pytest.mark.slow
def test_a_killed_rank_resumes_its_shard_and_a_finished_shard_is_kept(tiny_bert, corpus_and_reference, tmp_path):
    corpus, reference = corpus_and_reference
    out = tmp_path / "c.h5"
    shard0, shard1 = shard_path(out, 0, 2), shard_path(out, 1, 2)
    blocks1 = Path(f"{shard1}.partial")
    command, options = torchrun(tiny_bert, corpus, out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process = subprocess.Popen(command, **options)
    try:
        # Freeze rank 1 once it has saved a block, let rank 0 finish its shard, then kill rank 1.
        wait_until(lambda: any(blocks1.glob("block-*.npy")), process, "a block from rank 1")
        rank1 = int((blocks1 / "lock").read_text().split()[1])  # "pid N", written by its holder
        os.kill(rank1, signal.SIGSTOP)
        wait_until(shard0.exists, process, "rank 0's shard")
        os.kill(rank1, signal.SIGKILL)
        assert process.wait(timeout=300) != 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not out.exists(), "a killed run must leave nothing that looks complete"
    assert not shard1.exists() and read_attrs(shard0) is not None
    shard0_docs = read_attrs(shard0)["shard_doc_end"]

    result = run_torchrun(tiny_bert, corpus, out)
    assert result.returncode == 0, result.stderr
    resumed = re.search(r"\(([\d,]+) resumed from an earlier run, 1 whole shard\)", result.stdout)
    assert resumed and int(resumed.group(1).replace(",", "")) > shard0_docs, result.stdout  # rank 1's blocks too
    assert_same_cache(out, reference)


@pytest.mark.slow
def test_a_failing_rank_fails_the_run_naming_it_and_a_rerun_finishes(tiny_bert, corpus_and_reference, tmp_path):
    corpus, reference = corpus_and_reference
    out = tmp_path / "c.h5"
    obstacle = shard_path(out, 1, 2)
    obstacle.mkdir()  # rank 1 embeds its whole shard, then cannot rename its shard file into place
    result = run_torchrun(tiny_bert, corpus, out)
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 failed: ") and "Is a directory" in lines[0], \
        result.stderr
    assert not out.exists() and shard_path(out, 1, 2).is_dir()

    obstacle.rmdir()
    result = run_torchrun(tiny_bert, corpus, out)
    assert result.returncode == 0, result.stderr
    assert "resumed from an earlier run" in result.stdout  # rank 1's blocks were kept
    assert_same_cache(out, reference)
