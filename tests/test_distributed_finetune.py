"""finetune under torchrun (stages/longdoc/finetune.py, longdoc.training.data_parallel): two CPU
ranks (gloo, fp32, one thread each) train the model one process trains on the same global
batches, on the BERT layout (feature store) and on the generic path (DistilBERT); a run
whose rank is killed resumes from rank 0's last checkpoint on the same number of ranks, and
another number of ranks is refused in one line.

Dropout is off in the encoders and before the classifier: with it, every rank draws its own
masks and no two runs of different rank counts can agree. What remains between two ranks and
one process is the order of float sums (a batch's loss and gradients summed per rank, then
across ranks, instead of in one pass): ~1e-7 relative per step. AdamW divides each step by
the root of the gradient's second moment, so a parameter whose gradient is near zero can see
that rounding amplified up to the size of one step (lr = 1e-4 here); over the few steps of
these runs no weight may move more than `ATOL` from the one-process weights, well under one
step, with `RTOL` for the large ones. Validation scores (accuracy, macro-F1) are equal;
window losses agree to 1e-5.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from assertions import error_lines, one_line_error, same_weights
from checkout import ROOT
from safetensors.torch import load_file
from synthetic import build_tiny_bert, make_class_folders
from test_finetune_generic import build_tiny_encoder

from longdoc import cli
from longdoc.configs import FinetuneConfig
from longdoc.finetune import run as run_finetune

RTOL, ATOL = 1e-4, 2e-6
LR = 1e-4


def without_dropout(folder: Path) -> Path:
    """Set every dropout probability of the saved encoder's config to 0."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({k: (0.0 if "dropout" in k and isinstance(v, float) else v)
                                for k, v in config.items()}))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    bert = without_dropout(build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop")))
    distilbert = without_dropout(build_tiny_encoder(tmp_path_factory.mktemp("distilbert"), "distilbert", bert))
    return {"bert": bert, "distilbert": distilbert}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("dft") / "corpus", docs_per_class=8)


def options(model, corpus) -> dict:
    return dict(data=str(corpus), model=str(model), unfreeze_top="1", chunk_tokens=32, stride=8,
                batch_tokens=256, max_epochs=2, patience=5, lr=LR, head_lr=1e-3, dropout=0.0,
                val_fraction=0.25, precision="fp32", device="cpu", threads=1, checkpoint_steps=2)


def cli_args(model, corpus, **more) -> list[str]:
    """`options` as cli.py's options (the option of max_epochs is --epochs)."""
    args = []
    for key, value in {**options(model, corpus), **more}.items():
        args += [f"--{'epochs' if key == 'max_epochs' else key.replace('_', '-')}", str(value)]
    return args


def torchrun(model, corpus, out, fault: dict | None = None, nproc=2, cwd=ROOT, **more) -> subprocess.CompletedProcess:
    """`nproc` ranks through torchrun, each running cli.py (through tests/rank_fault.py, which
    does nothing unless `fault` names a rank: LONGDOC_FAULT_* as its docstring says)."""
    args = ["finetune", "--out", out, "--no-progress", *cli_args(model, corpus, **more)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(ROOT / "tests" / "rank_fault.py"), *map(str, args)]
    env = {**os.environ, **{f"LONGDOC_FAULT_{k.upper()}": v for k, v in (fault or {}).items()}}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def history(folder: Path) -> list[dict]:
    return json.loads((folder / "finetune.json").read_text())["history"]


def assert_same_training(got: Path, want: Path):
    """The weights within the module docstring's bound; the same validation scores."""
    got_w, want_w = weights(got), weights(want)
    assert sorted(got_w) == sorted(want_w)
    moved = sum(not torch.equal(got_w[name], want_w[name]) for name in want_w)
    for name in want_w:
        torch.testing.assert_close(got_w[name], want_w[name], rtol=RTOL, atol=ATOL, msg=name)
    got_h, want_h = history(got), history(want)
    assert [(h["val_accuracy"], h["val_macro_f1"]) for h in got_h] == \
        [(h["val_accuracy"], h["val_macro_f1"]) for h in want_h]
    for g, w in zip(got_h, want_h):
        assert g["val_window_loss"] == pytest.approx(w["val_window_loss"], rel=1e-5)
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-5)
    return moved


@pytest.fixture(scope="module")
def one_process(models, corpus, tmp_path_factory):
    """family -> the model folder one process trains."""
    root = tmp_path_factory.mktemp("one-process")
    folders = {}
    for family, model in models.items():
        folders[family] = root / family
        run_finetune(FinetuneConfig(**options(model, corpus), out=str(folders[family]), progress=False),
                     log=lambda line: None)
    return folders


@pytest.fixture(scope="module")
def two_ranks_bert(models, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("two-ranks") / "bert"
    result = torchrun(models["bert"], corpus, out)
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.mark.slow
def test_two_ranks_train_the_one_process_model_bert_layout(two_ranks_bert, one_process):
    out, result = two_ranks_bert
    assert result.stdout.count(" on 2 ranks") == 1, result.stdout  # rank 0 alone reports
    assert_same_training(out, one_process["bert"])
    assert json.loads((out / "finetune.json").read_text())["ranks"] == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["bert"]  # the work folder is gone


@pytest.mark.slow
def test_two_ranks_train_the_one_process_model_generic_path(models, corpus, one_process, tmp_path):
    out = tmp_path / "distilbert"
    result = torchrun(models["distilbert"], corpus, out)
    assert result.returncode == 0, result.stderr
    assert_same_training(out, one_process["distilbert"])


@pytest.mark.slow
def test_a_killed_rank_resumes_on_the_same_ranks_and_another_number_is_refused(models, corpus, two_ranks_bert,
                                                                                 tmp_path, capsys):
    out = tmp_path / "bert"
    state = Path(f"{out}.partial") / "state.pt"
    killed = torchrun(models["bert"], corpus, out, fault={"rank": "1", "kill_when": str(state)})
    assert killed.returncode != 0
    assert not out.exists() and state.exists(), "a killed run leaves its checkpoint, nothing that looks complete"
    lines = error_lines(killed)
    # rank 0 says it in one line, unless torchrun, seeing rank 1 gone, stops rank 0 before its all-reduce fails
    assert len(lines) <= 1 and all(line.startswith("error: another rank stopped during ") for line in lines), \
        killed.stderr
    assert "longdoc" not in killed.stderr.replace(str(ROOT), ""), killed.stderr  # no traceback of ours

    code = cli.main(["finetune", "--out", str(out), "--no-progress", *cli_args(models["bert"], corpus)])
    assert code == 2
    one_line_error(capsys.readouterr().err, "ranks: 1 (this run) vs 2 (the interrupted run)")

    result = torchrun(models["bert"], corpus, out)
    assert result.returncode == 0, result.stderr
    resumed = re.search(r"resumed at step (\d+)", result.stdout)
    assert resumed and int(resumed.group(1)) > 0, result.stdout
    same_weights(weights(out), weights(two_ranks_bert[0]))  # what the uninterrupted two ranks trained
    assert [h["val_macro_f1"] for h in history(out)] == [h["val_macro_f1"] for h in history(two_ranks_bert[0])]


@pytest.mark.slow
def test_two_ranks_train_the_one_process_model_on_label_sets(models, tmp_path):
    """Label sets: each rank's BCE summed over its windows and labels, over the batch's windows
    x labels, makes the one-process step (longdoc.training.data_parallel)."""
    from test_finetune_label_sets import write_label_sets

    corpus = write_label_sets(tmp_path / "sets.jsonl")
    want = tmp_path / "one"
    run_finetune(FinetuneConfig(**options(models["bert"], corpus), out=str(want), progress=False),
                 log=lambda line: None)
    out = tmp_path / "two"
    result = torchrun(models["bert"], corpus, out)
    assert result.returncode == 0, result.stderr
    assert_same_training(out, want)
    got_h, want_h = history(out), history(want)
    assert [h["val_micro_f1"] for h in got_h] == [h["val_micro_f1"] for h in want_h]
    assert json.loads((out / "finetune.json").read_text())["task"] == "multi_label"


@pytest.mark.slow
def test_a_rank_with_other_settings_is_refused_in_one_line_naming_it(models, corpus, tmp_path):
    out = tmp_path / "bert"
    result = torchrun(models["bert"], corpus, out, fault={"rank": "1", "args": json.dumps(["--lr", "0.001"])})
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 failed: settings differ from rank 0's (lr: 0.001 "
                                                   "(rank 1) vs 0.0001 (rank 0))"), result.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()  # refused before any work


@pytest.mark.slow
def test_a_full_disk_on_rank_0_while_saving_is_one_line_and_a_rerun_finishes(models, corpus, two_ranks_bert,
                                                                             tmp_path):
    """Rank 0 alone writes; under a limit below the finished model's size its first checkpoint
    (the trained layers with their AdamW moments, larger than the whole tiny model) does not fit."""
    out = tmp_path / "bert"
    limit = (two_ranks_bert[0] / "model.safetensors").stat().st_size - 1
    full = torchrun(models["bert"], corpus, out, fault={"rank": "0", "file_size": str(limit)})
    assert full.returncode != 0
    lines = error_lines(full)
    partial = Path(f"{out}.partial")
    assert lines == [f"error: rank 0 failed: cannot write {partial / 'state.pt'}: File too large"], full.stderr
    assert "longdoc" not in full.stderr.replace(str(ROOT), ""), full.stderr  # no traceback of ours (torchrun's own)
    assert not out.exists(), "nothing half-written is taken for complete"
    assert sorted(p.name for p in partial.iterdir()) == ["lock", "settings.json", "visible"]  # no half checkpoint

    result = torchrun(models["bert"], corpus, out)
    assert result.returncode == 0, result.stderr
    same_weights(weights(out), weights(two_ranks_bert[0]))


@pytest.mark.slow
def test_a_rank_that_does_not_see_the_work_folder_is_refused_in_one_line_naming_it(models, corpus, tmp_path):
    (tmp_path / "rank0").mkdir()
    (tmp_path / "rank1").mkdir()  # a relative --out names another folder for rank 1, as an unshared disk would
    result = torchrun(models["bert"], corpus, "ft", fault={"rank": "1", "cwd": str(tmp_path / "rank1")},
                      cwd=tmp_path / "rank0")
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 failed: --out's work folder ft.partial is "
                                                   "not the folder rank 0 writes"), result.stderr
    assert not (tmp_path / "rank0" / "ft").exists() and not (tmp_path / "rank1" / "ft").exists()
