"""predict --data: whole corpora streamed into JSON lines or CSV, resumable, with explanations."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from checkout import ROOT
from synthetic import cli_error, runners
from test_predict import embed_and_train

from longdoc.configs import PredictConfig
from longdoc.corpus.sources import iter_documents
from longdoc.predict import run as run_predict
from longdoc.runtime.errors import UserError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_bert):
    return embed_and_train(tmp_path_factory.mktemp("tiny-corpus"), str(tiny_bert), chunk_tokens=32, stride=4,
                           pooling="lstm")


@pytest.fixture(scope="module")
def windows_head(tiny, tmp_path_factory):
    """A head of the same cache without a term branch."""
    from longdoc.configs import TrainConfig
    from longdoc.train_head import run as run_train_head

    out = tmp_path_factory.mktemp("windows-head") / "head.pt"
    run_train_head(TrainConfig(train=str(tiny[1]), out=str(out), pooling="mean", inputs="windows", max_epochs=1,
                               val_fraction=0.2, progress=False, curve=False), log=lambda line: None)
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_rows_match_file_mode_with_true_labels(tiny, tmp_path):
    corpus, _, head = tiny
    summary = run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(tmp_path / "p.jsonl"), device="cpu", block_docs=5, progress=False))
    rows = read_jsonl(tmp_path / "p.jsonl")
    assert summary.documents == len(rows) == 18 and not (tmp_path / "p.jsonl.partial").exists()
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids) and all(r["true_label"] == r["id"].split("/")[0] for r in rows)
    singles = run_predict(PredictConfig(head=str(head), files=tuple([str(corpus / i) for i in ids]), device="cpu")).predictions
    assert [r["label"] for r in rows] == [p.label for p in singles]
    np.testing.assert_allclose([r["probability"] for r in rows], [p.probability for p in singles], atol=1e-4)
    for r in rows:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["probabilities"][r["label"]] == pytest.approx(r["probability"], abs=1e-6)


def test_csv_top_k_and_explanations(tiny, tmp_path):
    corpus, _, head = tiny
    out = tmp_path / "p.csv"
    run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(out), device="cpu", top_k=2, explain=True, explain_windows=2, progress=False))
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "label", "probability", "true_label", "windows", "top1_label",
                             "top1_probability", "top2_label", "top2_probability", "top_windows"]
    assert len(rows) == 18
    for row in rows:
        assert row["top1_label"] == row["label"] and float(row["top1_probability"]) >= float(row["top2_probability"])
        windows = json.loads(row["top_windows"])
        assert 1 <= len(windows) <= min(2, int(row["windows"]))
        contributions = [w["contribution"] for w in windows]
        assert contributions == sorted(contributions, reverse=True)
        text = (corpus / row["id"]).read_text()
        for w in windows:
            assert 0 <= w["start"] <= w["end"] <= len(text)
            assert " ".join(text[w["start"]:w["end"]].split())[:100] == w["excerpt"][:100]


def test_term_explanations_name_terms_of_the_text(tiny, tmp_path):
    """A head with a term branch: --explain-terms gives words and bigrams of each document."""
    corpus, _, head = tiny
    run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(tmp_path / "t.jsonl"), device="cpu", explain_terms=True, progress=False))
    rows = read_jsonl(tmp_path / "t.jsonl")
    assert "top_windows" not in rows[0]
    named = 0
    for row in rows:
        text = (corpus / row["id"]).read_text().lower()
        contributions = [t["contribution"] for t in row["top_terms"]]
        assert contributions == sorted(contributions, reverse=True)
        for term in row["top_terms"]:
            # A bigram's words are neighbours once one-letter words are dropped (the token pattern's).
            assert any(set(name.split()) <= set(text.split()) for name in term["term"].split(" | ")), term
            named += 1
    assert named > 0


def test_unlabelled_jsonl_and_file_mode_explain(tiny, tmp_path):
    corpus, _, head = tiny
    texts = [(corpus / "space" / f"00{i}.txt").read_text() for i in range(4)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    run_predict(PredictConfig(head=str(head), data=str(tmp_path / "in.jsonl"), out=str(tmp_path / "out.jsonl"), device="cpu", explain=True, explain_windows=1, progress=False))
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == ["line1", "line2", "line3", "line4"]
    assert all(r["true_label"] is None and len(r["top_windows"]) == 1 for r in rows)
    singles = run_predict(PredictConfig(head=str(head), files=tuple([str(corpus / "space" / f"00{i}.txt") for i in range(4)]), device="cpu", explain=True, explain_windows=1)).predictions
    assert [s.top_windows for s in singles] == [r["top_windows"] for r in rows]


def interrupt_classify_after(monkeypatch, n_blocks: int):
    """Make predict's Predictor.classify raise KeyboardInterrupt once it has classified
    `n_blocks` blocks; returns (the real classify, the sizes of the blocks it classified)."""
    from longdoc import predict as predict_module

    original, calls = predict_module.Predictor.classify, []

    def interrupted(self, sources, texts, explain=0):
        if len(calls) == n_blocks:
            raise KeyboardInterrupt
        calls.append(len(texts))
        return original(self, sources, texts, explain)

    monkeypatch.setattr(predict_module.Predictor, "classify", interrupted)
    return original, calls


def test_resume_after_an_interruption_in_process(tiny, tmp_path, monkeypatch):
    corpus, _, head = tiny
    from longdoc import predict as predict_module

    run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(tmp_path / "whole.csv"), device="cpu", block_docs=4, progress=False))
    original, calls = interrupt_classify_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(tmp_path / "p.csv"), device="cpu", block_docs=4, progress=False))
    monkeypatch.setattr(predict_module.Predictor, "classify", original)
    with pytest.raises(UserError, match="other settings"):
        run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(tmp_path / "p.csv"), device="cpu", block_docs=5, progress=False))
    summary = run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(tmp_path / "p.csv"), device="cpu", block_docs=4, progress=False))
    assert summary.resumed_documents == 8 and summary.documents == 18
    assert (tmp_path / "p.csv").read_text() == (tmp_path / "whole.csv").read_text()


@pytest.mark.slow
def test_resume_after_sigkill_and_an_emptied_block_gives_the_same_file(tiny, tmp_path):
    """Killed after its first block, that block emptied (what a disk without fsync can leave):
    the rerun proves it is not the block's rows, recomputes it, and ends in the uninterrupted file."""
    corpus, _, head = tiny
    lines = [json.dumps({"id": f"d{i}", "text": " ".join(["space rocket orbit"] * (1 + i % 40)), "label": "x"})
             for i in range(300)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    args = ["predict", "--head", head, "--data", tmp_path / "in.jsonl", "--device", "cpu", "--block-docs", "10",
            "--threads", "1"]
    subprocess.run([sys.executable, ROOT / "cli.py", *map(str, args), "--out", tmp_path / "whole.jsonl"],
                   cwd=ROOT, check=True, capture_output=True)
    out = tmp_path / "killed.jsonl"
    process = subprocess.Popen([sys.executable, ROOT / "cli.py", *map(str, args), "--out", out], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "killed.jsonl.partial"
    deadline = time.time() + 120
    while time.time() < deadline and not list(partial.glob("rows-*.part")) and process.poll() is None:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    kept = sorted(partial.glob("rows-*.part"))
    assert not out.exists() and 1 <= len(kept) < 30, kept
    kept[0].write_bytes(b"")
    result = subprocess.run([sys.executable, ROOT / "cli.py", *map(str, args), "--out", out], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("predicted 300 documents in"), result.stdout  # nothing resumed: block 1 failed
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert not partial.exists()


def test_a_million_lines_are_streamed(tmp_path, tiny, monkeypatch):
    """1,000,000 short lines: reading is lazy; predicting (its first pass over the corpus,
    then the blocks) keeps one line, then one block, in memory."""
    path = tmp_path / "million.jsonl"
    with open(path, "w") as f:
        for i in range(1_000_000):
            f.write(f'{{"text": "space rocket {i}"}}\n')
    tracemalloc.start()
    first = next(iter_documents(str(path)))
    assert first == ("line1", "space rocket 0", None)
    assert tracemalloc.get_traced_memory()[1] < 2 * 2**20
    tracemalloc.stop()

    original, calls = interrupt_classify_after(monkeypatch, 3)
    _, _, head = tiny
    tracemalloc.start()  # on 100,000 of the lines: traced, a line takes ~10x longer to read
    with pytest.raises(KeyboardInterrupt):
        run_predict(PredictConfig(head=str(head), data=str(path), out=str(tmp_path / "out.csv"), device="cpu", block_docs=500, limit=100_000, progress=False))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert calls == [500, 500, 500]
    assert peak < 8 * 2**20, peak  # ~2 MB; the 100,000 lines as Python strings would be ~15 MB
    assert len(list((tmp_path / "out.csv.partial").glob("rows-*.part"))) == 3


def test_an_existing_output_needs_overwrite(tiny, tmp_path):
    corpus, _, head = tiny
    (tmp_path / "p.jsonl").write_text("old\n")
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(tmp_path / "p.jsonl"), device="cpu", progress=False))
    run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(tmp_path / "p.jsonl"), device="cpu", progress=False, overwrite=True, limit=3))
    assert len(read_jsonl(tmp_path / "p.jsonl")) == 3


@pytest.mark.parametrize("runner", runners())
def test_bad_corpus_input_is_one_line(runner, tiny, windows_head, tmp_path):
    corpus, _, head = tiny
    (tmp_path / "notext.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    cases = [
        ["--data", tmp_path / "missing", "--out", tmp_path / "a.jsonl"],
        ["--data", corpus, "--out", tmp_path / "a.txt"],
        ["--data", corpus],
        ["--data", corpus, "--out", tmp_path / "a.jsonl", corpus / "space" / "000.txt"],
        ["--data", tmp_path / "notext.jsonl", "--out", tmp_path / "b.jsonl"],
        ["--data", tmp_path / "empty.jsonl", "--out", tmp_path / "c.jsonl"],
        ["--data", corpus, "--out", tmp_path / "d.jsonl", "--top-k", "7"],
        ["--out", tmp_path / "e.jsonl", corpus / "space" / "000.txt"],
    ]
    no_terms = [["--explain-terms", corpus / "space" / "000.txt"],
                ["--explain-terms", "--data", corpus, "--out", tmp_path / "f.jsonl"]]
    if runner == "subprocess":  # the in-process run checks every case; a real process (~5 s each, most of
        # it importing torch) need only show that each layer's error reaches stderr as one line, no
        # traceback: the corpus reader, the options, an empty corpus, the head
        cases, no_terms = [cases[0], cases[3], cases[5]], no_terms[:1]
    for args in cases:
        code, lines = cli_error(runner, "predict", "--head", head, "--device", "cpu", *args)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, lines)
    for args in no_terms:
        code, lines = cli_error(runner, "predict", "--head", windows_head, "--device", "cpu", *args)
        assert code == 2 and len(lines) == 1 and "has no term branch" in lines[0], (args, lines)
    assert not (tmp_path / "c.jsonl.partial").exists()


# --- the rules every command keeps: inputs, atomic files, proven resume, full disk, CSV cells ---


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """`reference(fmt, block_docs)`: the bytes of an uninterrupted run over the tiny corpus."""
    corpus, _, head = tiny
    folder, made = tmp_path_factory.mktemp("reference"), {}

    def bytes_of(fmt: str, block_docs: int = 4) -> bytes:
        if (fmt, block_docs) not in made:
            out = folder / f"whole-{block_docs}.{fmt}"
            run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(out), device="cpu", block_docs=block_docs, progress=False))
            made[fmt, block_docs] = out.read_bytes()
        return made[fmt, block_docs]

    return bytes_of


def interrupted(tiny, out, monkeypatch, n_blocks: int, block_docs: int = 4):
    """Run predict --data into `out` and stop it (KeyboardInterrupt) after `n_blocks` blocks."""
    from longdoc import predict as predict_module

    corpus, _, head = tiny
    original, _ = interrupt_classify_after(monkeypatch, n_blocks)
    with pytest.raises(KeyboardInterrupt):
        run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(out), device="cpu", block_docs=block_docs, progress=False))
    monkeypatch.setattr(predict_module.Predictor, "classify", original)
    return sorted(Path(f"{out}.partial").glob("rows-*.part"))


def test_an_output_never_replaces_an_input(tiny, tmp_path):
    """--out (or its work folder) that is, holds or lies inside --data or --head: refused in one
    line, --overwrite or not, and never with a hint to pass --overwrite."""
    corpus, _, head = tiny
    (tmp_path / "in.jsonl").write_text('{"text": "space rocket"}\n')
    work_named = tmp_path / "p.jsonl.partial"  # a folder corpus named like the work folder of p.jsonl
    (work_named / "space").mkdir(parents=True)
    (work_named / "space" / "1.txt").write_text("space rocket")
    inner_head = tmp_path / "q.jsonl.partial" / "head.pt"
    inner_head.parent.mkdir()
    inner_head.write_bytes(Path(head).read_bytes())
    before = {p: p.read_bytes() for p in [tmp_path / "in.jsonl", inner_head, *corpus.rglob("*.txt")]}
    cases = [(["--data", tmp_path / "in.jsonl", "--out", tmp_path / "in.jsonl"], head, "would replace --data"),
             (["--data", corpus, "--out", corpus / "p.jsonl"], head, "is inside --data"),
             (["--data", corpus, "--out", corpus / "space" / "p.csv"], head, "is inside --data"),
             (["--data", corpus, "--out", head], head, "would replace --head"),
             (["--data", work_named, "--out", tmp_path / "p.jsonl"], head, "would replace --data"),
             (["--data", corpus, "--out", tmp_path / "q.jsonl"], inner_head, "would replace --head")]
    for args, used_head, refusal in cases:
        for extra in ([], ["--overwrite"]):
            code, lines = cli_error("in-process", "predict", "--head", used_head, "--device", "cpu", *args, *extra)
            assert code == 2 and len(lines) == 1 and refusal in lines[0], (args, extra, lines)
            assert "never" in lines[0] or "inside" in lines[0]
            assert "--overwrite" not in lines[0], lines
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in work_named.iterdir()) == ["space"]
    assert not list(corpus.rglob("*.partial")) and not (corpus / "p.jsonl").exists()


def test_planted_symlinks_are_never_written_through(tiny, reference, tmp_path):
    corpus, _, head = tiny
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "p.csv"
    partial = tmp_path / "p.csv.partial"
    partial.mkdir()
    for planted in (tmp_path / "p.csv.tmp", partial / "rows-000000000000-000000000004.part",
                    partial / "rows-000000000000-000000000004.part.tmp",
                    partial / "rows-000000000004-000000000008.part.tmp"):
        planted.symlink_to(victim)
    summary = run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(out), device="cpu", block_docs=4, progress=False))
    assert victim.read_text() == "precious"
    assert summary.resumed_documents == 0 and out.read_bytes() == reference("csv")
    assert (tmp_path / "p.csv.tmp").is_symlink() and not partial.exists()  # not ours: left where it was


def empty(blocks):
    blocks[0].write_bytes(b"")


def cut_inside_a_row(blocks):
    data = blocks[1].read_bytes()
    blocks[1].write_bytes(data[:len(data) // 2])


def cut_after_a_row(blocks):
    lines = blocks[1].read_bytes().splitlines(keepends=True)
    blocks[1].write_bytes(b"".join(lines[:-1]))


def append_a_copy_of_a_row(blocks):
    blocks[0].write_bytes(blocks[0].read_bytes() + blocks[0].read_bytes().splitlines(keepends=True)[0])


def rows_of_other_documents(blocks):
    blocks[1].write_bytes(blocks[0].read_bytes())  # same count, same format, ids of the block before


def a_planted_name_that_does_not_parse(blocks):
    (blocks[0].parent / "rows-x-y.part").write_bytes(blocks[0].read_bytes())


def three_rows_named_for_999(blocks):
    rows = b"".join(blocks[0].read_bytes().splitlines(keepends=True)[:3])
    for block in blocks:
        block.unlink()
    (blocks[0].parent / "rows-000000000000-000000000999.part").write_bytes(rows)


def not_utf8(blocks):
    blocks[1].write_bytes(b"\xff\xfe" + blocks[1].read_bytes()[2:])


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("damage, resumed", [(empty, 0), (cut_inside_a_row, 4), (cut_after_a_row, 4),
                                             (append_a_copy_of_a_row, 0), (rows_of_other_documents, 4),
                                             (a_planted_name_that_does_not_parse, 8), (three_rows_named_for_999, 0),
                                             (not_utf8, 4)])
def test_resume_proves_each_block_and_recomputes_the_rest(tiny, reference, tmp_path, monkeypatch, fmt, damage,
                                                          resumed):
    """A damaged, emptied, truncated or planted block is deleted with every block after it and
    recomputed: the summary counts the rows the file holds, and the file is the uninterrupted one."""
    corpus, _, head = tiny
    out = tmp_path / f"p.{fmt}"
    blocks = interrupted(tiny, out, monkeypatch, 2)
    assert [b.name for b in blocks] == ["rows-000000000000-000000000004.part", "rows-000000000004-000000000008.part"]
    damage(blocks)
    summary = run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(out), device="cpu", block_docs=4, progress=False))
    assert summary.documents == 18 and summary.resumed_documents == resumed
    assert out.read_bytes() == reference(fmt)
    assert not Path(f"{out}.partial").exists()


def test_a_missing_block_is_computed_and_the_proven_blocks_after_it_are_kept(tiny, reference, tmp_path, monkeypatch):
    """A gap in the finished blocks is what a killed torchrun leaves when one rank is behind
    another (block b is rank b mod N's): the gap is computed, the blocks after it still resume."""
    corpus, _, head = tiny
    out = tmp_path / "p.jsonl"
    blocks = interrupted(tiny, out, monkeypatch, 2)
    blocks[0].unlink()
    summary = run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(out), device="cpu", block_docs=4,
                                        progress=False))
    assert summary.resumed_documents == 4 and out.read_bytes() == reference("jsonl")


def test_resume_against_an_edited_corpus_is_refused_naming_the_change(tiny, reference, tmp_path, monkeypatch):
    _, _, head = tiny
    data = tmp_path / "in.jsonl"
    texts = [" ".join(["space rocket orbit"] * (1 + i)) for i in range(10)]
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "p.jsonl"
    args = ["predict", "--head", head, "--data", data, "--out", out, "--device", "cpu", "--block-docs", "4"]
    from longdoc import predict as predict_module

    original, _ = interrupt_classify_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_predict(PredictConfig(head=str(head), data=str(data), out=str(out), device="cpu", block_docs=4, progress=False))
    monkeypatch.setattr(predict_module.Predictor, "classify", original)
    texts[7] = "god church faith"  # a document after the finished block
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    code, lines = cli_error("in-process", *args)
    assert code == 2 and len(lines) == 1 and "data_fingerprint" in lines[0] and "other settings" in lines[0], lines
    assert not out.exists()
    code, _ = cli_error("in-process", *args, "--overwrite")
    assert code == 0
    fresh = tmp_path / "fresh.jsonl"
    run_predict(PredictConfig(head=str(head), data=str(data), out=str(fresh), device="cpu", block_docs=4, progress=False))
    assert out.read_bytes() == fresh.read_bytes()


def test_a_corpus_changed_during_the_run_keeps_no_rows(tiny, tmp_path, monkeypatch):
    """The second pass (the one classified) is fingerprinted too: a corpus edited between the
    passes is refused at the end, and the blocks of the mixed run are not kept."""
    from longdoc import predict as predict_module

    corpus, _, head = tiny
    passes = []

    def edited_on_the_second_pass(*args, **kwargs):
        passes.append(1)
        for doc_id, text, label in iter_documents(*args, **kwargs):
            yield doc_id, text + (" edited" if len(passes) == 2 else ""), label

    monkeypatch.setattr(predict_module, "iter_documents", edited_on_the_second_pass)
    out = tmp_path / "p.jsonl"
    with pytest.raises(UserError, match="changed while it was being classified"):
        run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(out), device="cpu", block_docs=4, progress=False))
    assert os.listdir(tmp_path) == []


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_finished_blocks(tiny, reference, tmp_path,
                                                                              monkeypatch):
    import errno

    from longdoc.reports import predictions as prediction_rows

    corpus, _, head = tiny
    out = tmp_path / "p.csv"
    real_copy = prediction_rows.shutil.copyfileobj

    def disk_fills(source, target):
        real_copy(source, target)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prediction_rows.shutil, "copyfileobj", disk_fills)
    args = ["predict", "--head", head, "--data", corpus, "--out", out, "--device", "cpu", "--block-docs", "4"]
    code, lines = cli_error("in-process", *args)
    assert code == 2 and lines == [f"error: cannot write {out}: No space left on device"], lines
    assert os.listdir(tmp_path) == ["p.csv.partial"]
    blocks = sorted(p.name for p in (tmp_path / "p.csv.partial").iterdir() if p.name.startswith("rows-"))
    assert len(blocks) == 5 and not [p for p in (tmp_path / "p.csv.partial").iterdir() if p.suffix == ".tmp"]
    monkeypatch.setattr(prediction_rows.shutil, "copyfileobj", real_copy)
    summary = run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(out), device="cpu", block_docs=4, progress=False))
    assert summary.resumed_documents == 18 and out.read_bytes() == reference("csv")


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_and_leaves_no_temporaries(tiny, reference, tmp_path):
    """RLIMIT_FSIZE in a real process: the blocks (~300 bytes) and settings.json (~500) fit
    under it, the joined file (~1,300) does not."""
    from checkout import run_with_file_size_limit

    corpus, _, head = tiny
    out = tmp_path / "p.csv"
    result = run_with_file_size_limit(len(reference("csv")) - 100, "predict", "--head", head, "--data", corpus, "--out", out,
                                      "--device", "cpu", "--block-docs", "4", "--no-progress")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: cannot write {out}: File too large"], result.stderr
    assert os.listdir(tmp_path) == ["p.csv.partial"]
    partial = tmp_path / "p.csv.partial"
    assert len(list(partial.glob("rows-*.part"))) == 5 and not [p for p in partial.iterdir() if p.suffix == ".tmp"]
    summary = run_predict(PredictConfig(head=str(head), data=str(corpus), out=str(out), device="cpu", block_docs=4, progress=False))
    assert summary.resumed_documents == 18 and out.read_bytes() == reference("csv")


FORMULAS = ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'quoted"]


def test_csv_cells_a_spreadsheet_would_evaluate_are_escaped(tiny, tmp_path, monkeypatch):
    """Ids and true labels starting with = + - @ tab CR (or ') get one ' in front; numbers do
    not; JSON lines keep them as they are; a resume proves such rows like any other."""
    _, _, head = tiny
    ids = [*FORMULAS, "plain", "a\rb", "x=1"]
    labels = ["=cmd|' /C calc'!A0", "-label", None, "+", "@x", "ok", "'", None, "ok", "ok"]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": "space rocket " * (k + 1), **({"label": l} if l else {})})
                            + "\n" for k, (i, l) in enumerate(zip(ids, labels))))
    run_predict(PredictConfig(head=str(head), data=str(data), out=str(tmp_path / "p.jsonl"), device="cpu", progress=False))
    rows = read_jsonl(tmp_path / "p.jsonl")
    assert [r["id"] for r in rows] == ids and [r["true_label"] for r in rows] == labels

    def escaped(cell):
        return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r", "'") else cell

    from longdoc import predict as predict_module

    original, _ = interrupt_classify_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_predict(PredictConfig(head=str(head), data=str(data), out=str(tmp_path / "p.csv"), device="cpu", block_docs=4, top_k=2, progress=False))
    monkeypatch.setattr(predict_module.Predictor, "classify", original)
    summary = run_predict(PredictConfig(head=str(head), data=str(data), out=str(tmp_path / "p.csv"), device="cpu", block_docs=4, top_k=2, progress=False))
    assert summary.resumed_documents == 4  # the escaped ids were recognised as the corpus's
    with open(tmp_path / "p.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    assert [c["id"] for c in cells] == [escaped(i) for i in ids]
    assert [c["true_label"] for c in cells] == [escaped(l) if l else "" for l in labels]
    for cell, row in zip(cells, rows):
        assert cell["label"] == row["label"] and float(cell["probability"]) == pytest.approx(row["probability"])


def test_csv_rows_escape_the_labels_of_the_head_but_never_numbers():
    from longdoc.predict import Prediction
    from longdoc.reports.predictions import RowFormat

    names = ["-neg", "@at", "=eq", "plain"]
    p = Prediction("-1", "-neg", 0.5, 2, dict(zip(names, [0.5, 0.3, 0.15, 0.05])), true_label="=eq")
    assert next(csv.reader([RowFormat("csv", names, 2, 0).row(p)])) == [
        "'-1", "'-neg", "0.500000", "'=eq", "2", "'-neg", "0.500000", "'@at", "0.300000"]
    header, row = (next(csv.reader([line])) for line in (RowFormat("csv", names, 0, 0).header(),
                                                         RowFormat("csv", names, 0, 0).row(p)))
    assert header[5:] == ["p:-neg", "p:@at", "p:=eq", "p:plain"]
    assert row[5:] == ["0.500000", "0.300000", "0.150000", "0.050000"]
    assert json.loads(RowFormat("jsonl", names, 2, 0).row(p))["id"] == "-1"


def test_json_summary_has_the_fields_a_script_needs(tiny, tmp_path, capsys):
    import cli

    corpus, _, head = tiny
    code = cli.main(["predict", "--head", str(head), "--data", str(corpus), "--out", str(tmp_path / "p.csv"),
                     "--device", "cpu", "--json", "--limit", "5", "--no-progress"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(summary) == {"out", "documents", "resumed_documents", "seconds", "peak_memory_bytes", "format",
                            "ranks"}
    assert summary["out"] == str(tmp_path / "p.csv") and summary["documents"] == 5 and summary["ranks"] == 1
    assert summary["resumed_documents"] == 0 and summary["format"] == "csv"


# --- fuzz: the work folder of an interrupted run, mutated at random ---------------------------


def mutate(partial: Path, rng, victim: Path) -> str:
    """One random change to an interrupted run's work folder; returns what it did."""
    blocks = sorted(p for p in partial.glob("rows-*.part") if p.is_file() and not p.is_symlink())  # not planted
    kind = rng.choice(["delete", "truncate", "append", "rename", "plant", "settings"] if blocks
                      else ["plant", "settings"])
    block = rng.choice(blocks) if blocks else None
    if kind == "delete":
        block.unlink()
    elif kind == "truncate":
        data = block.read_bytes()
        block.write_bytes(data[:rng.randrange(len(data))])
    elif kind == "append":
        garbage = rng.choice([rng.randbytes(rng.randrange(1, 40)), b"\n", b",,,,,,,,,,,,\n",
                              block.read_bytes().splitlines(keepends=True)[0], b'{"id": "x"}\n'])
        block.write_bytes(block.read_bytes() + garbage)
    elif kind == "rename":
        start, end = sorted(rng.sample(range(0, 25), 2))
        block.rename(partial / f"rows-{start:012d}-{end:012d}.part")
    elif kind == "plant":
        start, end = sorted(rng.sample(range(0, 25), 2))
        name = rng.choice([f"rows-{start:012d}-{end:012d}.part", "rows-x-y.part", f"rows-{start}-{end}.part",
                           "junk", f"rows-{start:012d}-{end:012d}.part.tmp"])
        how = rng.choice(["copy", "bytes", "symlink", "folder"] if blocks else ["bytes", "symlink", "folder"])
        target = partial / name
        if target.exists() or target.is_symlink():
            return f"{kind} {name} (there already)"
        if how == "copy":
            target.write_bytes(rng.choice(blocks).read_bytes())
        elif how == "bytes":
            target.write_bytes(rng.randbytes(rng.randrange(0, 200)))
        elif how == "symlink":
            target.symlink_to(victim)
        else:
            target.mkdir()
        return f"{kind} {name} ({how})"
    else:
        (partial / "settings.json").write_bytes(rng.choice([rng.randbytes(30), b"{}", b"[]", b'{"limit": 3}']))
    return f"{kind} {block.name if block else ''}"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_fuzz_the_work_folder_of_an_interrupted_run(tiny, reference, tmp_path, monkeypatch, fmt):
    """Under a fixed seed, 1-3 random changes to `<out>.partial/` of an interrupted run, then
    the same command again: every rerun ends in exactly the uninterrupted file, or exits 2
    with one `error:` line (a damaged settings.json); never a traceback, never another file.
    FUZZ_CASES=N runs N cases per format (default 15)."""
    import random
    import shutil

    corpus, _, head = tiny
    want = reference(fmt, 3)
    snapshot = tmp_path / f"snapshot.{fmt}"
    interrupted(tiny, snapshot, monkeypatch, 4, block_docs=3)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    rng = random.Random(f"predict-work-folder-{fmt}")
    outcomes = {"same file": 0, "refused": 0}
    for case in range(int(os.environ.get("FUZZ_CASES", "15"))):
        out = tmp_path / f"case{case}.{fmt}"
        shutil.copytree(f"{snapshot}.partial", f"{out}.partial", symlinks=True)
        done = [mutate(Path(f"{out}.partial"), rng, victim) for _ in range(rng.randint(1, 3))]
        code, lines = cli_error("in-process", "predict", "--head", head, "--data", corpus, "--out", out,
                                "--device", "cpu", "--block-docs", "3", "--no-progress")
        if code == 0:
            assert out.read_bytes() == want, done
            outcomes["same file"] += 1
        else:
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (done, lines)
            assert "settings" in lines[0] and not out.exists(), (done, lines)
            outcomes["refused"] += 1
        assert victim.read_text() == "precious", done
    assert outcomes["same file"] > 0, outcomes
