"""Issue 11 ("Trust"): no silent corruption, no code run from a work folder, one-line
refusals. Each test here failed before its fix; docs/RELIABILITY.md names them."""

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from assertions import one_line_error
from checkout import ROOT, run_with_file_size_limit
from synthetic import read_all
from synthetic import tiny_embed_config as config

from longdoc.cache.writer import Block, PartialCache, write_cache
from longdoc.embed import run as run_embed
from longdoc.runtime.errors import UserError
from longdoc.runtime.workdir import WorkDir, atomic_path, atomic_write_bytes, check_output_path


def assert_same_cache(got_path, want_path):
    got, want = read_all(got_path)[0], read_all(want_path)[0]
    assert got.keys() == want.keys()
    for name in want:  # another block size batches windows differently: float rounding only
        if name == "embeddings":
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def interrupt_after(monkeypatch, n_blocks):
    real_save, saved = PartialCache.save, []

    def save_then_die(self, block):
        real_save(self, block)
        saved.append(block)
        if len(saved) == n_blocks:
            raise KeyboardInterrupt

    monkeypatch.setattr(PartialCache, "save", save_then_die)
    return real_save


def embed_killed_after_three_blocks(tiny_bert, corpus, tmp_path, monkeypatch):
    """Embed `corpus` into tmp_path/c.h5, interrupted after its third block; saving works
    normally again afterwards. Returns the output path (its work folder holds 3 blocks)."""
    out = tmp_path / "c.h5"
    real_save = interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_embed(config(tiny_bert, corpus, out))
    monkeypatch.setattr(PartialCache, "save", real_save)
    return out


@pytest.fixture(scope="module")
def reference(tiny_bert, tmp_path_factory):
    from synthetic import make_class_folders

    root = tmp_path_factory.mktemp("ref")
    corpus = make_class_folders(root / "corpus")
    out = root / "reference.h5"
    run_embed(config(tiny_bert, corpus, out))
    return corpus, out


# --- 1. resume with another block size never leaves zeros ---------------------------------


@pytest.mark.parametrize("first,second", [(16, 100_000), (16, 5), (40, 1), (3, 64)])
def test_resume_with_another_block_size_equals_an_uninterrupted_run(tiny_bert, reference, tmp_path, monkeypatch,
                                                                    first, second):
    corpus, want = reference
    out = tmp_path / "c.h5"
    real_save = interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_embed(config(tiny_bert, corpus, out, block_windows=first))
    monkeypatch.setattr(PartialCache, "save", real_save)
    summary = run_embed(config(tiny_bert, corpus, out, block_windows=second))
    assert summary.resumed_documents > 0
    assert_same_cache(out, want)
    with h5py.File(out) as f:
        assert np.abs(f["embeddings"][:]).sum(axis=1).min() > 0  # no all-zero vector


def test_write_cache_refuses_blocks_that_do_not_cover_every_document(tmp_path):
    partial = tmp_path / "p"
    partial.mkdir()
    hidden, counts = 4, np.array([1, 2, 1])
    np.save(partial / "block-000000000-000000002.npy", np.ones((3, hidden), np.float32))
    blocks = [(0, 2, partial / "block-000000000-000000002.npy")]
    kwargs = dict(labels=[0, 1, 0], doc_ids=["a", "b", "c"], doc_tokens=[1, 2, 1], window_counts=counts,
                  window_starts=[0, 0, 1, 0], hidden=hidden)
    with pytest.raises(UserError, match="cover 2 of 3 documents"):
        write_cache(tmp_path / "c.h5", {}, blocks, **kwargs)
    with pytest.raises(UserError, match="do not cover"):
        write_cache(tmp_path / "c.h5", {}, blocks + blocks, **kwargs)
    assert not (tmp_path / "c.h5").exists() and os.listdir(tmp_path) == ["p"]


@pytest.mark.parametrize("damage", ["empty", "truncated", "wrong rows", "garbage"])
def test_a_damaged_block_is_recomputed_on_resume(tiny_bert, reference, tmp_path, monkeypatch, damage):
    corpus, want = reference
    out = embed_killed_after_three_blocks(tiny_bert, corpus, tmp_path, monkeypatch)
    block = sorted((tmp_path / "c.h5.partial").glob("block-*.npy"))[1]
    data = block.read_bytes()
    block.write_bytes({"empty": b"", "truncated": data[:len(data) - 7], "garbage": b"\x93NUMPY nonsense",
                       "wrong rows": data}[damage])
    if damage == "wrong rows":
        np.save(block, np.ones((1, 32), np.float32))
    summary = run_embed(config(tiny_bert, corpus, out))
    assert 0 < summary.resumed_documents
    assert_same_cache(out, want)


# Damage to a block's term counts that keeps its row count: (array, how), applied to the npz.
TERM_DAMAGE = {
    "indptr not from 0": ("indptr", lambda a: np.concatenate([[1], a[1:]])),
    "indptr decreasing": ("indptr", lambda a: np.concatenate([a[:1], a[2:3], a[1:2], a[3:]])),
    "unsorted ids in a row": ("indices", lambda a: a[::-1].copy()),
    "an id outside n_features": ("indices", lambda a: np.concatenate([[2**20], a[1:]]).astype(a.dtype)),
    "negative counts": ("counts", lambda a: -a),
    "zero counts": ("counts", lambda a: 0 * a),
    "n_features of another hashing": ("n_features", lambda a: np.int64(2**18)),
}


@pytest.mark.parametrize("damage", ["missing", "truncated", "wrong rows", *TERM_DAMAGE])
def test_a_block_whose_terms_are_damaged_is_recomputed_on_resume(tiny_bert, reference, tmp_path, monkeypatch,
                                                                  damage):
    """A finished block needs its term counts beside it: without them, or with damaged or
    malformed ones (`term_rows_problem`), it is recomputed with every block after it, and
    the cache still equals the reference."""
    from longdoc.cache.term_files import save_terms
    from longdoc.terms.hashing import TermHashing

    corpus, want = reference
    out = embed_killed_after_three_blocks(tiny_bert, corpus, tmp_path, monkeypatch)
    terms = sorted((tmp_path / "c.h5.partial").glob("terms-*.npz"))[1]
    if damage == "missing":
        terms.unlink()
    elif damage == "truncated":
        terms.write_bytes(terms.read_bytes()[:-20])
    elif damage == "wrong rows":
        start, end = (int(x) for x in terms.stem.split("-")[1:3])
        save_terms(terms, TermHashing().counts(["a row too many"] * (end - start + 1)))
    else:
        name, how = TERM_DAMAGE[damage]
        with np.load(terms) as z:
            arrays = {key: z[key] for key in z.files}
        assert arrays["indptr"][-1] > 3 and np.diff(arrays["indptr"])[:2].min() > 0  # the damage is one
        arrays[name] = how(arrays[name])
        with open(terms, "wb") as f:
            np.savez(f, **arrays)
    summary = run_embed(config(tiny_bert, corpus, out))
    assert 0 < summary.resumed_documents
    assert_same_cache(out, want)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_block_holding_nan_or_infinity_is_recomputed_on_resume(tiny_bert, reference, tmp_path, monkeypatch, value):
    """A finished block is trusted only when every value is finite: a planted NaN is never
    published in a cache marked complete; the block is computed again, as is every one after it."""
    corpus, want = reference
    out = embed_killed_after_three_blocks(tiny_bert, corpus, tmp_path, monkeypatch)
    block = sorted((tmp_path / "c.h5.partial").glob("block-*.npy"))[1]
    rows = np.load(block)
    rows[len(rows) // 2, 3] = value
    np.save(block, rows)
    summary = run_embed(config(tiny_bert, corpus, out))
    assert 0 < summary.resumed_documents
    assert_same_cache(out, want)


def test_non_finite_vectors_are_never_saved_nor_written_into_a_cache(tmp_path):
    """The last lines of defence: `PartialCache.save` refuses a block the encoder filled
    with NaN, and `write_cache` a finished block holding one."""
    with WorkDir(tmp_path / "c.h5", {"a": 1}) as work:
        with pytest.raises(UserError, match="NaN or infinite vectors for documents 0..1"):
            PartialCache.save(work, Block(0, 2, np.array([[1.0, np.nan], [0.0, 1.0]], np.float32)))
        assert not list(work.dir.glob("block-*"))
    block = tmp_path / "block-000000000-000000002.npy"
    np.save(block, np.array([[1.0, 2.0], [np.inf, 0.0]], np.float32))
    with pytest.raises(UserError, match="block-000000000-000000002.npy: holds NaN or infinite values"):
        write_cache(tmp_path / "out.h5", {}, [(0, 2, block)], labels=[0, 1], doc_ids=["a", "b"], doc_tokens=[1, 1],
                    window_counts=np.array([1, 1]), window_starts=[0, 0], hidden=2)
    assert not (tmp_path / "out.h5").exists()


# --- 10. an existing cache is checked again under the lock -----------------------------------


def test_a_cache_finished_by_another_run_meanwhile_is_not_replaced(tiny_bert, reference, tmp_path, monkeypatch):
    corpus, want = reference
    out = tmp_path / "c.h5"
    other = tmp_path / "other.h5"
    run_embed(config(tiny_bert, corpus, other, stride=4))
    real_enter = PartialCache.__enter__

    def finished_meanwhile(self):  # the other run finishes between our first check and our lock
        shutil.copy(other, out)
        return real_enter(self)

    monkeypatch.setattr(PartialCache, "__enter__", finished_meanwhile)
    with pytest.raises(UserError, match="exists with other settings"):
        run_embed(config(tiny_bert, corpus, out))
    assert read_all(out)[1]["stride"] == 4


# --- 5 and 9. atomic writes: fsync, private names, cleanup, one line ----------------------


def test_atomic_path_publishes_whole_files_only_and_cleans_up(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name != "out.bin.tmp"
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.bin"]
    folder = tmp_path / "model"
    for content in (b"one", b"two"):
        with atomic_path(folder, folder=True) as tmp:
            (tmp / "weights").write_bytes(content)
        assert (folder / "weights").read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["model", "out.bin"]


def test_atomic_path_turns_os_errors_into_one_line(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(UserError, match=r"cannot write .*out.bin: No space left on device"):
        with atomic_path(target):
            raise OSError(28, "No space left on device")
    os.chmod(tmp_path, 0o500)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(UserError, match="Permission denied"):
            atomic_write_bytes(target, b"x")
    finally:
        os.chmod(tmp_path, 0o700)


def test_planted_symlinks_are_never_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "c.h5"
    partial = tmp_path / "c.h5.partial"
    partial.mkdir()
    for name in ("lock", "settings.json.tmp", "block-000000000-000000001.tmp"):
        (partial / name).symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        WorkDir(out, {"a": 1}).__enter__()
    (partial / "lock").unlink()
    with WorkDir(out, {"a": 1}) as work:
        PartialCache.save(work, Block(0, 1, np.ones((1, 2))))
    (tmp_path / f".{out.name}.write-test-{os.getpid()}").symlink_to(victim)
    check_output_path(out)
    shutil.rmtree(partial)
    partial.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="symbolic link"):
        WorkDir(out, {"a": 1}).__enter__()
    assert victim.read_text() == "precious"


def test_file_too_large_while_writing_the_cache_is_one_line_and_leaves_no_temporaries(
        tiny_bert, reference, tmp_path):
    corpus, want = reference
    out = tmp_path / "c.h5"
    out.write_bytes(b"previous output")
    args = ["embed", "--data", corpus, "--model", tiny_bert, "--out", out, "--chunk-tokens", "32", "--stride", "8",
            "--precision", "fp32", "--block-windows", "8", "--no-progress", "--overwrite"]
    # blocks (8 windows, ~1 KB) fit under the limit, the final file does not
    result = run_with_file_size_limit(12_000, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {out}: File too large"), result.stderr
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "c.h5.partial"]
    assert not [p for p in (tmp_path / "c.h5.partial").iterdir() if p.suffix == ".tmp"]


# --- 2. no code runs from a work folder ----------------------------------------------------


class Planted:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('PLANTED_MARKER', '/nonexistent/marker')}",))


def finetune_args(model, corpus, out, *extra):
    return ["finetune", "--data", str(corpus), "--model", str(model), "--out", str(out), "--chunk-tokens", "32",
            "--stride", "4", "--batch-tokens", "256", "--val-fraction", "0.25", "--precision", "fp32",
            "--no-progress", "--epochs", "1", *extra]


def test_a_planted_finetune_checkpoint_runs_no_code(tiny_bert, reference, tmp_path, monkeypatch, capsys):
    import torch

    from longdoc import cli

    corpus, _ = reference
    marker = tmp_path / "marker"
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    out = tmp_path / "ft"
    (tmp_path / "ft.partial").mkdir()
    torch.save({"progress": Planted()}, tmp_path / "ft.partial" / "state.pt")
    assert cli.main(finetune_args(tiny_bert, corpus, out)) == 2
    err = capsys.readouterr().err
    one_line_error(err, "cannot be read as a checkpoint")
    assert not marker.exists() and not out.exists()


def test_a_planted_train_head_state_runs_no_code(tmp_path, monkeypatch, capsys):
    import torch
    from synthetic import write_synthetic_cache

    from longdoc import cli

    train = write_synthetic_cache(tmp_path / "train.h5", n_docs=30)
    marker = tmp_path / "marker"
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    (tmp_path / "head.pt.partial").mkdir()
    torch.save({"progress": Planted()}, tmp_path / "head.pt.partial" / "state.pt")
    assert cli.main(["train-head", "--train", str(train), "--out", str(tmp_path / "head.pt"), "--epochs", "1",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    one_line_error(err, "cannot be read as a checkpoint")
    assert not marker.exists() and not (tmp_path / "head.pt").exists()


class WindowModelTask:
    """What the training loop needs of a task, around a window model of the tiny BERT."""

    score_names = ("val_macro_f1",)

    def __init__(self, model):
        import torch

        from longdoc.training.loop import lr_lambda

        self.model = model
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(10, 2))

    def trainable_state(self):
        return self.model.trainable_state()

    def load_trainable_state(self, state):
        self.model.load_trainable_state(state)

    def state(self):
        return {}

    def load_state(self, state):
        pass


def test_the_finetune_state_round_trips_with_weights_only(tiny_bert, tmp_path):
    import torch

    from longdoc.encoding.encoder import load_encoder
    from longdoc.training.loop import LoopSettings, TrainingProgress
    from longdoc.training.window_model import WindowModel

    encoder = load_encoder(str(tiny_bert), "cpu", "fp32")
    trained = WindowModelTask(WindowModel(encoder.model, n_classes=3, unfreeze_top=1))
    for _ in range(7):
        sum(p.sum() for p in trained.model.parameters() if p.requires_grad).backward()
        trained.optimizer.step()
        trained.schedule.step()
    progress = TrainingProgress(epoch=2, step_in_epoch=3, global_step=7, loss_sum=2.1, windows_seen=12,
                                history=[{"epoch": 1, "train_loss": 0.7, "val_macro_f1": 0.5}],
                                best_epoch=1, best_score=0.5, best_state=trained.trainable_state())
    progress.save(tmp_path, trained)
    torch.load(tmp_path / "state.pt", weights_only=True)  # loads without pickled code
    fresh = WindowModelTask(WindowModel(encoder.model, n_classes=3, unfreeze_top=1))
    again = TrainingProgress.load(tmp_path, fresh, LoopSettings(max_epochs=3, patience=1, checkpoint_steps=3))
    assert again.global_step == 7 and again.history == progress.history and fresh.schedule.last_epoch == 7
    assert fresh.optimizer.param_groups[0]["lr"] == trained.optimizer.param_groups[0]["lr"]
    assert all(torch.equal(value, trained.trainable_state()[name]) for name, value in fresh.trainable_state().items())
    assert os.listdir(tmp_path) == ["state.pt"]


# --- 3. never replace an input; replace an output only with --overwrite -------------------


def test_train_head_never_replaces_its_inputs_and_asks_before_replacing_an_output(tmp_path):
    from synthetic import cli_error, write_synthetic_cache

    train = write_synthetic_cache(tmp_path / "train.h5", n_docs=30)
    val = write_synthetic_cache(tmp_path / "val.h5", n_docs=30, seed=1)
    before = {p: p.read_bytes() for p in (train, val)}
    quick = ["--epochs", "1", "--no-progress"]
    for out, extra in ((train, []), (train, ["--overwrite"]), (val, ["--val", val, "--overwrite"])):
        code, lines = cli_error("in-process", "train-head", "--train", train, "--out", out, *quick, *extra)
        assert code == 2 and len(lines) == 1 and "an output never replaces an input" in lines[0], lines
    # the curve of --out x.pt is x-curve.png: that one is refused too
    curve_named = tmp_path / "h-curve.png"
    train.rename(curve_named)
    code, lines = cli_error("in-process", "train-head", "--train", curve_named, "--out", tmp_path / "h.pt",
                            "--overwrite", *quick)
    assert code == 2 and "the curve" in lines[0] and "never replaces an input" in lines[0], lines
    curve_named.rename(train)
    assert {p: p.read_bytes() for p in (train, val)} == before

    out = tmp_path / "head.pt"
    assert cli_error("in-process", "train-head", "--train", train, "--out", out, *quick)[0] == 0
    first = out.read_bytes()
    code, lines = cli_error("in-process", "train-head", "--train", train, "--out", out, *quick)
    assert code == 2 and len(lines) == 1 and "exists; pass --overwrite" in lines[0], lines
    assert out.read_bytes() == first
    assert cli_error("in-process", "train-head", "--train", train, "--out", out, "--seed", "3", "--overwrite",
                     *quick)[0] == 0
    assert out.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head-curve.png", "head.pt", "train.h5", "val.h5"]


def test_embed_and_finetune_never_replace_their_inputs(tiny_bert, tmp_path, capsys):
    from longdoc import cli

    corpus = tmp_path / "corpus.csv"
    corpus.write_text("text,label\nspace rocket,space\ngod church,religion\n")
    code = cli.main(["embed", "--data", str(corpus), "--model", str(tiny_bert), "--out", str(corpus),
                     "--overwrite", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    one_line_error(err, "never replaces an input")
    folder = tmp_path / "folder"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.txt").write_text("space")
    for out in (folder, tmp_path):  # the corpus itself, or a folder holding it
        code = cli.main(finetune_args(tiny_bert, folder, out, "--overwrite"))
        err = capsys.readouterr().err
        assert code == 2
        one_line_error(err, "never replaces an input")
    assert corpus.read_text().startswith("text,label") and (folder / "a" / "1.txt").read_text() == "space"


def test_evaluate_report_never_replaces_the_head_or_the_cache(tmp_path, capsys):
    from synthetic import write_synthetic_cache

    from longdoc import cli

    cache = write_synthetic_cache(tmp_path / "metrics.json", n_docs=30)
    before = cache.read_bytes()
    code = cli.main(["evaluate", "--head", str(tmp_path / "nohead.pt"), "--cache", str(cache),
                     "--report", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--report" in err and "never replaces an input" in err, err
    assert cache.read_bytes() == before


def test_files_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import longdoc.runtime.workdir as workdir

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(workdir.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(workdir.os, "replace", lambda a, b: events.append(("rename", str(b))) or real_replace(a, b))
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"data")
    assert [kind for kind, _ in events] == ["fsync", "rename", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".out.bin.")) and events[1][1] == str(target)
    assert events[2][1] == str(tmp_path)


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "c.h5"
    (tmp_path / ".c.h5.k1ll3d_x.tmp").write_bytes(b"half a cache")
    (tmp_path / ".other.h5.k1ll3d_x.tmp").write_bytes(b"not ours")
    (tmp_path / "c.h5.partial").mkdir()
    (tmp_path / "c.h5.partial" / ".block-000000000-000000004.npy.abcdefgh.tmp").write_bytes(b"half a block")
    with WorkDir(out, {"a": 1}):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.h5.k1ll3d_x.tmp", "c.h5.partial"]
    assert sorted(p.name for p in (tmp_path / "c.h5.partial").iterdir()) == ["lock", "settings.json"]


def test_file_too_large_while_saving_a_head_is_one_line_and_keeps_the_previous_head(tmp_path):
    from synthetic import write_synthetic_cache

    train = write_synthetic_cache(tmp_path / "train.h5", n_docs=30)
    out = tmp_path / "head.pt"
    out.write_bytes(b"previous head")
    result = run_with_file_size_limit(4_000, "train-head", "--train", train, "--out", out, "--pooling", "lstm",
                                      "--epochs", "1", "--no-progress", "--overwrite")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("epoch")]
    # the first file over the limit is the work folder's state after epoch 1; the head is never reached
    assert lines == [f"error: cannot write {out}.partial/state.pt: File too large"], result.stderr
    assert out.read_bytes() == b"previous head"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.pt", "head.pt.partial", "train.h5"]
    assert sorted(p.name for p in (tmp_path / "head.pt.partial").iterdir()) == ["lock", "settings.json"]


# --- fault injection: SIGKILL at random moments, resume with random block sizes ---------------


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_with_random_block_sizes_equals_an_uninterrupted_run(
        tiny_bert, tmp_path):
    import random
    import signal
    import time

    from synthetic import make_class_folders

    corpus = make_class_folders(tmp_path / "corpus", docs_per_class=24, seed=3)
    reference = tmp_path / "reference.h5"
    run_embed(config(tiny_bert, corpus, reference, batch_tokens=128))
    out, partial = tmp_path / "killed.h5", tmp_path / "killed.h5.partial"
    rng = random.Random(int(os.environ.get("FAULT_SEED", "11")))

    def args(block_windows):
        return [sys.executable, str(ROOT / "cli.py"), "embed", "--data", str(corpus), "--model", str(tiny_bert),
                "--out", str(out), "--chunk-tokens", "32", "--stride", "8", "--batch-tokens", "128",
                "--precision", "fp32", "--block-windows", str(block_windows), "--no-progress"]

    kills = 0
    for _ in range(4):
        process = subprocess.Popen(args(rng.choice([1, 3, 7, 16, 50, 400, 10_000])), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
        wait_for_blocks = rng.randrange(0, 12)
        deadline = time.time() + 120
        while process.poll() is None and len(list(partial.glob("block-*.npy"))) < wait_for_blocks:
            assert time.time() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.2))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        if not out.exists():
            assert not list(tmp_path.glob("killed.h5*")) or partial.exists()
    assert kills >= 2
    final = subprocess.run(args(rng.choice([10_000, rng.randint(1, 64)])), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr
    assert_same_cache(out, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "killed.h5", "reference.h5"]


# --- 11. memory that need not grow with the corpus -------------------------------------------


def test_a_report_of_hundreds_of_classes_keeps_the_numbers_and_skips_the_picture(tmp_path):
    from longdoc.evaluate import write_report

    names = [f"class{i}" for i in range(400)]
    matrix = np.eye(400, dtype=int).tolist()
    metrics = {"head": "h.pt", "cache": "c.h5", "documents": 400, "accuracy": 1.0, "macro_f1": 1.0,
               "per_class": [{"class": n, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1} for n in names],
               "by_length": [], "label_names": names, "confusion_matrix": matrix}
    (tmp_path / "confusion_matrix.png").write_bytes(b"an earlier, smaller report")
    write_report(tmp_path, metrics)
    assert not (tmp_path / "confusion_matrix.png").exists()
    assert "400 classes, too many to draw" in (tmp_path / "report.md").read_text()
    assert json_load(tmp_path / "metrics.json")["confusion_matrix"] == matrix
    write_report(tmp_path, {**metrics, "label_names": names[:3], "confusion_matrix": np.eye(3, dtype=int).tolist(),
                            "per_class": metrics["per_class"][:3]})
    assert (tmp_path / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def fused_head(tmp_path_factory):
    """A cache with terms and a head of both inputs trained on it."""
    from synthetic import lexical_cache

    from longdoc.configs import TrainConfig
    from longdoc.train_head import run as run_train_head

    folder = tmp_path_factory.mktemp("fused")
    cache = lexical_cache(folder / "lexical.h5")
    head = folder / "head.pt"
    run_train_head(TrainConfig(train=str(cache), out=str(head), pooling="mean", max_epochs=1, progress=False,
                               curve=False), log=lambda line: None)
    return cache, head


def out_of_memory(*args, **kwargs):
    raise MemoryError


def cuda_out_of_memory(*args, **kwargs):
    import torch

    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


# step: (what fails (module:attribute), how, the command, what its line says after "error: out of memory")
MEMORY_STEPS = {
    "embedding a block": ("longdoc.embedding.job:encode_windows", out_of_memory, "embed",
                          " while embedding documents 0 to "),
    "loading a cache": ("longdoc.heads.batches:CacheDocuments._check_finite", out_of_memory, "train-head",
                        " while loading CACHE into memory; lower --memory-budget-mb"),
    "a training epoch": ("longdoc.train_head:HeadTask.step", out_of_memory, "train-head",
                         " while training epoch 1; lower --batch-docs or --batch-windows, or --memory-budget-mb"),
    "a training epoch on a GPU": ("longdoc.train_head:HeadTask.step", cuda_out_of_memory, "train-head",
                                  " while training epoch 1; lower --batch-docs"),
    "a validation pass": ("longdoc.train_head:HeadTask.validate", out_of_memory, "train-head",
                          " while validating after epoch 1; lower --batch-docs"),
    "fitting the linear branch": ("longdoc.train_head:fit_linear_branch", out_of_memory, "train-head",
                                  " while fitting the linear branch; pass --inputs windows"),
    "evaluate's pass": ("longdoc.evaluate:predict_logits", out_of_memory, "evaluate",
                        " while scoring CACHE; lower --memory-budget-mb"),
    "predict's files": ("longdoc.predict:Predictor.__init__", out_of_memory, "predict",
                        " while classifying the FILEs; lower --batch-tokens"),
    "predict's corpus": ("longdoc.predict:Predictor.__init__", out_of_memory, "predict --data",
                         " while classifying CORPUS; lower --batch-tokens or --block-docs"),
    "a step that names no setting": ("longdoc.evaluate:load_checkpoint", out_of_memory, "evaluate",
                                     "; `python cli.py COMMAND --help` names the settings that bound it"),
    "a GPU step that names no setting": ("longdoc.evaluate:load_checkpoint", cuda_out_of_memory, "evaluate",
                                         "; `python cli.py COMMAND --help` names the settings that bound it"),
}


@pytest.mark.parametrize("step", MEMORY_STEPS)
def test_out_of_memory_is_one_line_naming_the_step_and_exit_2(step, fused_head, tiny_bert, reference, tmp_path,
                                                              monkeypatch):
    import importlib

    from synthetic import cli_error

    target, failure, command, said = MEMORY_STEPS[step]
    module, _, name = target.partition(":")
    owner, _, attribute = name.rpartition(".")
    monkeypatch.setattr(getattr(importlib.import_module(module), owner) if owner else importlib.import_module(module),
                        attribute, failure)
    cache, head = fused_head
    post = tmp_path / "post.txt"
    post.write_text("marker1x")
    args = {"embed": ["embed", "--data", reference[0], "--model", tiny_bert, "--out", tmp_path / "c.h5",
                      "--chunk-tokens", "32", "--stride", "8", "--precision", "fp32", "--no-progress"],
            "train-head": ["train-head", "--train", cache, "--out", tmp_path / "h.pt", "--epochs", "1",
                           "--no-progress"],
            "evaluate": ["evaluate", "--head", head, "--cache", cache],
            "predict": ["predict", "--head", head, post],
            "predict --data": ["predict", "--head", head, "--data", reference[0], "--out", tmp_path / "p.jsonl"],
            }[command]
    code, lines = cli_error("in-process", *args)  # progress lines (an epoch's) may come before the error
    assert code == 2 and [line for line in lines if line.startswith("error: ")] == lines[-1:], lines
    said = said.replace("CACHE", str(cache)).replace("CORPUS", str(reference[0]))
    assert lines[-1].startswith("error: out of memory" + said), lines[-1]


def json_load(path):
    import json

    return json.loads(path.read_text())


@pytest.mark.parametrize("content", [b"", b"{\"stride\": ", b"\xff\xfe", b"[" * 100_000, b"null", b"[]", b"3"])
def test_a_damaged_settings_file_is_refused_not_trusted(tmp_path, content):
    out = tmp_path / "c.h5"
    (tmp_path / "c.h5.partial").mkdir()
    (tmp_path / "c.h5.partial" / "settings.json").write_bytes(content)
    with pytest.raises(UserError, match="settings.json is damaged; pass --overwrite"):
        WorkDir(out, {"a": 1}).__enter__()
    with WorkDir(out, {"a": 1}, fresh=True):
        pass
