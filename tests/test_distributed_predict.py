"""predict --data under torchrun (stages/longdoc/predict.py, `predict_on_ranks`): two CPU ranks
on the tiny random BERT write the very bytes one process writes, resume after a rank is
killed (on two ranks or on one: the block plan does not depend on the number of ranks), and
refuse, in one line naming the rank, a rank started with other settings or one that does not
see --out's work folder."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from assertions import error_lines
from checkout import ROOT
from test_predict import embed_and_train

from longdoc.configs import PredictConfig
from longdoc.predict import run as run_predict
from longdoc.reports.predictions import owner

BLOCK_DOCS = 3  # 18 documents: 6 blocks, 3 for each rank


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert):
    """A corpus, its head, and the predictions file one process writes (fp32, one thread)."""
    root = tmp_path_factory.mktemp("distributed-predict")
    corpus, _, head = embed_and_train(root, str(tiny_bert), chunk_tokens=32, stride=4)
    out = root / "one-process.jsonl"
    run_predict(PredictConfig(**options(corpus, head), out=str(out), progress=False))
    return corpus, head, out.read_bytes()


def options(corpus, head) -> dict:
    return dict(head=str(head), data=str(corpus), device="cpu", block_docs=BLOCK_DOCS, threads=1, explain=True)


def torchrun(corpus, head, out, fault: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    """Two ranks through torchrun, each running cli.py (through tests/rank_fault.py, which
    does nothing unless `fault` names a rank: LONGDOC_FAULT_* as its docstring says)."""
    args = ["predict", "--out", out, "--no-progress"]
    for key, value in options(corpus, head).items():
        args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [value])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "tests" / "rank_fault.py"), *map(str, args)]
    env = {**os.environ, **{f"LONGDOC_FAULT_{k.upper()}": v for k, v in (fault or {}).items()}}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_blocks_go_round_robin_whatever_the_number_of_ranks():
    assert [owner(b, 2) for b in range(5)] == [0, 1, 0, 1, 0]
    assert [owner(b, 3) for b in range(5)] == [0, 1, 2, 0, 1]
    assert {owner(b, 1) for b in range(7)} == {0}


@pytest.mark.slow
def test_two_ranks_write_the_bytes_one_process_writes(reference, tmp_path):
    corpus, head, want = reference
    out = tmp_path / "p.jsonl"
    result = torchrun(corpus, head, out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("predicted 18 documents on 2 ranks") == 1, result.stdout  # rank 0 alone
    assert out.read_bytes() == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]  # the work folder is gone


@pytest.mark.slow
@pytest.mark.parametrize("resume_on", ["two ranks", "one process"])
def test_a_killed_rank_loses_only_its_block_and_a_rerun_finishes(reference, tmp_path, resume_on):
    """Rank 1 dies right after publishing its second block; rank 0 may have finished its
    three. A rerun on two ranks, or in one process (the plan is the same), proves and keeps
    those blocks and writes the bytes of an uninterrupted run."""
    corpus, head, want = reference
    out = tmp_path / "p.jsonl"
    killed = torchrun(corpus, head, out, fault={"rank": "1", "kill": "rows-*.part:2"})
    assert killed.returncode != 0
    assert not out.exists(), "a killed run must leave nothing that looks complete"
    kept = sorted((tmp_path / "p.jsonl.partial").glob("rows-*.part"))
    assert len(kept) >= 2, kept  # rank 1's two blocks at least

    if resume_on == "two ranks":
        result = torchrun(corpus, head, out)
        assert result.returncode == 0, result.stderr
        resumed = re.search(r"\(([\d,]+) resumed from an earlier run\)", result.stdout)
        assert resumed and int(resumed.group(1)) >= 2 * BLOCK_DOCS, result.stdout
    else:
        summary = run_predict(PredictConfig(**options(corpus, head), out=str(out), progress=False))
        assert summary.resumed_documents >= 2 * BLOCK_DOCS
    assert out.read_bytes() == want


@pytest.mark.slow
def test_a_rank_with_other_settings_is_refused_in_one_line_naming_it(reference, tmp_path):
    corpus, head, _ = reference
    out = tmp_path / "p.jsonl"
    result = torchrun(corpus, head, out, fault={"rank": "1", "args": json.dumps(["--top-k", "2"])})
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 failed: settings differ from rank 0's (top_k: 2 "
                                                   "(rank 1) vs 0 (rank 0))"), result.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()  # refused before any work


@pytest.mark.slow
def test_a_rank_that_does_not_see_the_work_folder_is_refused_in_one_line_naming_it(reference, tmp_path):
    corpus, head, _ = reference
    (tmp_path / "rank0").mkdir()
    (tmp_path / "rank1").mkdir()  # a relative --out names another file for rank 1, as an unshared disk would
    result = torchrun(corpus, head, "p.jsonl", fault={"rank": "1", "cwd": str(tmp_path / "rank1")},
                      cwd=tmp_path / "rank0")
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 failed: --out's work folder p.jsonl.partial is "
                                                   "not the folder rank 0 writes"), result.stderr
    assert not (tmp_path / "rank0" / "p.jsonl").exists()
