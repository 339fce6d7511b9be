"""`python cli.py embed` end to end: one-line errors, exit codes, help."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from assertions import one_line_error
from checkout import ROOT, SHARED_DATASETS, run_cli

from longdoc import cli


def embed_args(tiny_bert, corpus, out, *extra):
    return ["embed", "--data", str(corpus), "--model", str(tiny_bert), "--out", str(out),
            "--chunk-tokens", "32", "--stride", "8", "--precision", "fp32", "--no-progress", *extra]


@pytest.mark.parametrize("extra,message", [
    (["--chunk-tokens", "4096"], "above the 128 tokens"),
    (["--stride", "32"], "--stride must be"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--remove", "headers"], "--remove applies only to --data 20newsgroups"),
    (["--categories", "nope"], "--categories: unknown nope"),
    (["--precision", "fp8"], "'fp8' is not one of"),
    (["--batch-tokens", "many"], "'many' is not a valid integer"),
])
def test_bad_options_give_one_line_and_exit_2(tiny_bert, folder_corpus, tmp_path, capsys, extra, message):
    code = cli.main(embed_args(tiny_bert, folder_corpus, tmp_path / "c.h5", *extra))
    err = capsys.readouterr().err
    assert code == 2
    one_line_error(err, message)
    assert not (tmp_path / "c.h5").exists()


def test_missing_data_and_unknown_model(tiny_bert, folder_corpus, tmp_path, capsys):
    assert cli.main(embed_args(tiny_bert, tmp_path / "nowhere", tmp_path / "c.h5")) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert cli.main(embed_args("no-such-org/no-such-model", folder_corpus, tmp_path / "c.h5")) == 2
    err = capsys.readouterr().err
    assert one_line_error(err).startswith("error: --model no-such-org/no-such-model: cannot load")


def test_a_real_process_prints_no_traceback(tiny_bert, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli(*embed_args(tiny_bert, tmp_path / "empty", tmp_path / "c.h5"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --data {tmp_path / 'empty'}: no documents found"
    assert "Traceback" not in result.stdout + result.stderr


def test_help_lists_every_option_with_its_default():
    result = run_cli("embed", "--help", check=True)
    for option in ("--data", "--split", "--out", "--model", "--chunk-tokens", "--stride", "--batch-tokens",
                   "--precision", "--device", "--categories", "--remove", "--limit", "--overwrite"):
        assert option in result.stdout
    assert "[default: 256]" in result.stdout and "[default: 32]" in result.stdout


def test_embed_then_rerun_is_a_no_op(tiny_bert, folder_corpus, tmp_path):
    out = tmp_path / "c.h5"
    first = run_cli(*embed_args(tiny_bert, folder_corpus, out), check=True)
    assert "embedded 18 documents (3 empty)" in first.stdout
    second = run_cli(*embed_args(tiny_bert, folder_corpus, out), check=True)
    assert "complete already" in second.stdout


# --- the packaged MiniLM on real data -----------------------------------------------

needs_20news = pytest.mark.skipif(not (SHARED_DATASETS / "20news-bydate.tar.gz").exists(),
                                  reason="needs ../shared/datasets/20news-bydate.tar.gz")


@pytest.mark.slow
@needs_20news
def test_minilm_on_a_few_dozen_posts(tmp_path):
    out = tmp_path / "train.h5"
    result = run_cli("embed", "--limit", "36", "--out", out, "--data-home", SHARED_DATASETS, "--no-progress",
                     check=True)
    assert "embedded 36 documents" in result.stdout and "tokens/s" in result.stdout
    with h5py.File(out) as f:
        assert f["embeddings"].shape[1] == 384 and f.attrs["precision"] in ("bf16-true", "fp32")  # auto on this CPU
        offsets, emb = f["doc_offsets"][:], f["embeddings"][:]
        assert len(offsets) == 37 and offsets[-1] == len(emb)
        assert np.isfinite(emb).all()
        # different posts get different vectors; windows of one post resemble each other more
        norm = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        assert np.abs(norm[0] - norm[-1]).max() > 1e-3


@pytest.mark.slow
@needs_20news
def test_sigkill_at_any_moment_then_rerun_equals_an_uninterrupted_run(tmp_path):
    args = ["embed", "--limit", "60", "--data-home", SHARED_DATASETS, "--block-windows", "24", "--no-progress"]
    reference = tmp_path / "reference.h5"
    run_cli(*args, "--out", reference, check=True)

    out = tmp_path / "killed.h5"
    partial = tmp_path / "killed.h5.partial"
    for kill_after_blocks in (1, 3):  # kill twice, at different points, with SIGKILL
        process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *map(str, args), "--out", str(out)],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ})
        deadline = time.time() + 300
        while len(list(partial.glob("block-*.npy"))) < kill_after_blocks and process.poll() is None:
            assert time.time() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not out.exists(), "killed before the end, nothing may look complete"
    result = run_cli(*args, "--out", out, check=True)
    assert "resumed from an earlier run" in result.stdout
    with h5py.File(out) as got, h5py.File(reference) as want:
        assert set(got) == set(want)
        for name in [*want, "terms/indptr", "terms/indices", "terms/counts"]:
            if name == "embeddings":
                np.testing.assert_allclose(got[name][:], want[name][:], rtol=1e-5, atol=1e-6)
            elif name != "terms":
                np.testing.assert_array_equal(got[name][:], want[name][:], err_msg=name)
    assert not partial.exists()


@pytest.mark.parametrize("command, runner", [("embed", "longdoc.embed.run"),
                                             ("finetune", "longdoc.finetune.run"),
                                             ("train-head", "longdoc.train_head.run")])
def test_an_interrupted_command_exits_130(command, runner, monkeypatch, tmp_path, capsys):
    """Ctrl-C inside a command: its 'interrupted: ... resume' line and exit status 130,
    which scripts and make read (click hands the code back instead of raising it)."""
    import importlib

    module, name = runner.rsplit(".", 1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    out = ["--out", str(tmp_path / ("x.h5" if command == "embed" else "x"))]
    if command == "train-head":
        out = ["--train", str(tmp_path / "t.h5"), "--out", str(tmp_path / "h.pt")]
    assert cli.main([command, *out]) == 130
    assert capsys.readouterr().err.startswith("interrupted")
