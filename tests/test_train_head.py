"""Training: learning, reproducibility, batching, the checkpoint, and bad input through the CLI."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from synthetic import cli_error, lexical_cache, runners, write_synthetic_cache

from longdoc.cache.reader import open_cache
from longdoc.configs import TrainConfig
from longdoc.heads.batches import CacheDocuments, predict_logits
from longdoc.heads.checkpoint import load_checkpoint
from longdoc.runtime.errors import UserError
from longdoc.train_head import run as run_train_head
from longdoc.training.split import latest_split, natural_key, stratified_split

QUIET = dict(progress=False, curve=False)


def train(tmp_path, cache, name="head.pt", log=lambda line: None, **kwargs):
    config = TrainConfig(train=str(cache), out=str(tmp_path / name), **{**QUIET, **kwargs})
    return run_train_head(config, log=log)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    return (write_synthetic_cache(folder / "train.h5", n_docs=150, seed=0),
            write_synthetic_cache(folder / "test.h5", n_docs=60, seed=1))


def test_learns_a_separable_problem(tmp_path, toy):
    from longdoc.configs import EvaluateConfig
    from longdoc.evaluate import run as run_evaluate

    summary = train(tmp_path, toy[0], pooling="attention", max_epochs=30, lr=3e-3)
    assert summary.val_macro_f1 >= 0.9
    assert run_evaluate(EvaluateConfig(head=str(summary.out), cache=str(toy[1]))).metrics["accuracy"] >= 0.9


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, toy):
    runs = [train(tmp_path, toy[0], name=f"{seed}-{i}.pt", pooling="transformer", max_epochs=3, seed=seed)
            for i, seed in enumerate([7, 7, 8])]
    heads = [load_checkpoint(run.out) for run in runs]
    assert heads[0].training["history"] == heads[1].training["history"]
    for name, value in heads[0].head.state_dict().items():
        assert torch.equal(value, heads[1].head.state_dict()[name])
    assert heads[0].training["history"] != heads[2].training["history"]


def test_checkpoint_round_trip(tmp_path, toy):
    summary = train(tmp_path, toy[0], pooling="lstm", max_epochs=2)
    checkpoint = load_checkpoint(summary.out)
    payload = torch.load(summary.out, weights_only=True)  # nothing but plain data and tensors
    assert payload["head"]["pooling"] == "lstm" and payload["head"]["n_classes"] == 3
    assert checkpoint.label_names == ["class0", "class1", "class2"]
    assert checkpoint.encoder["model_fingerprint"] == "f" * 64
    assert (checkpoint.encoder["chunk_tokens"], checkpoint.encoder["stride"]) == (256, 32)
    assert checkpoint.training["best_epoch"] == summary.best_epoch
    assert not checkpoint.head.training
    with open_cache(toy[1]) as cache:
        docs = CacheDocuments.from_cache(cache)
        batch = docs.load(np.arange(10))
        again = load_checkpoint(summary.out).head
        torch.testing.assert_close(checkpoint.head(batch.x, batch.mask), again(batch.x, batch.mask))
    assert (tmp_path / "head-curve.png").exists() is False  # curve=False
    train(tmp_path, toy[0], name="curved.pt", max_epochs=1, curve=True)
    assert (tmp_path / "curved-curve.png").stat().st_size > 1000


def test_stratified_split_is_seeded_disjoint_and_proportional():
    labels = np.repeat([0, 1, 2], [50, 30, 1])
    train_a, val_a = stratified_split(labels, 0.2, np.random.default_rng(3))
    train_b, val_b = stratified_split(labels, 0.2, np.random.default_rng(3))
    assert np.array_equal(val_a, val_b) and np.array_equal(train_a, train_b)
    assert not set(train_a) & set(val_a) and len(train_a) + len(val_a) == len(labels)
    assert np.bincount(labels[val_a], minlength=3).tolist() == [10, 6, 0]  # a lone document stays in train


def test_natural_key_compares_digit_runs_as_numbers():
    ids = ["sci.space/10000", "sci.space/9999", "a/2024-10-1", "a/2024-5-1", "b", "a"]
    assert sorted(ids, key=natural_key) == ["a", "a/2024-5-1", "a/2024-10-1", "b", "sci.space/9999",
                                             "sci.space/10000"]
    # From a planted cache: numbers too long for int(), other digits, leading zeros.
    huge = ["g/" + "9" * 5000, "g/1" + "0" * 5000, "g/²", "g/٣", "g/007", "g/7", "g/8"]
    assert sorted(huge, key=natural_key) == ["g/007", "g/7", "g/8", "g/" + "9" * 5000, "g/1" + "0" * 5000,
                                             "g/²", "g/٣"]


def test_latest_split_holds_out_each_class_newest_ids():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2])
    ids = ["g0/8", "g0/10", "g0/9", "g0/100", "g0/11", "g1/5", "g1/3", "g1/4", "g1/1", "g1/2", "lone/1"]
    train, val = latest_split(labels, ids, 0.4)
    assert sorted(ids[i] for i in val) == ["g0/100", "g0/11", "g1/4", "g1/5"]  # 100 > 11 as numbers
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    # As many per class as the random split holds out, whatever the generator.
    _, random_val = stratified_split(labels, 0.4, np.random.default_rng(0))
    assert np.bincount(labels[val]).tolist() == np.bincount(labels[random_val]).tolist() == [2, 2]


def test_val_split_latest_validates_on_the_newest_documents(tmp_path):
    """Documents doc96 to doc119 of this cache are noise: only the latest split validates on them."""
    import h5py

    shape = dict(n_docs=120, n_classes=2, labels=np.arange(120) % 2, window_counts=np.arange(120) % 5 + 1)
    cache = write_synthetic_cache(tmp_path / "c.h5", seed=0, **shape)
    noise = write_synthetic_cache(tmp_path / "n.h5", seed=1, separable=False, **shape)
    with h5py.File(cache, "r+") as target, h5py.File(noise, "r") as source:
        start = target["doc_offsets"][96]
        target["embeddings"][start:] = source["embeddings"][start:]
    latest = train(tmp_path, cache, "latest.pt", val_split="latest", val_fraction=0.2, max_epochs=3, patience=1)
    random = train(tmp_path, cache, "random.pt", val_fraction=0.2, max_epochs=3, patience=1)
    assert latest.n_val == random.n_val == 24
    assert latest.val_accuracy < 0.7 < 0.8 < random.val_accuracy, (latest.val_accuracy, random.val_accuracy)
    assert load_checkpoint(tmp_path / "latest.pt").training["config"]["val_split"] == "latest"


def test_batches_bound_padded_windows_and_keep_long_documents(tmp_path):
    counts = [1] * 40 + [2, 3, 5, 8, 13] * 4 + [900]
    cache = write_synthetic_cache(tmp_path / "c.h5", n_docs=len(counts), window_counts=counts)
    with open_cache(cache) as c:
        docs = CacheDocuments.from_cache(c)
        plan = docs.plan(batch_docs=16, batch_windows=64, rng=np.random.default_rng(0))
        assert sorted(np.concatenate(plan).tolist()) == list(range(len(counts)))
        for batch in plan:
            widest = docs.counts[batch].max()
            assert len(batch) <= 16 and (len(batch) * widest <= 64 or len(batch) == 1)
        assert [len(b) for b in plan if docs.counts[b].max() == 900] == [1]
    summary = train(tmp_path, cache, pooling="transformer", max_epochs=1, batch_windows=64, batch_docs=16)
    assert summary.n_train + summary.n_val == len(counts)


def test_reading_by_slices_matches_loading_into_memory(tmp_path, toy):
    in_memory = train(tmp_path, toy[0], name="a.pt", pooling="mean", max_epochs=2)
    on_disk = train(tmp_path, toy[0], name="b.pt", pooling="mean", max_epochs=2, memory_budget_mb=0)
    assert load_checkpoint(in_memory.out).training["history"] == load_checkpoint(on_disk.out).training["history"]
    with open_cache(toy[0]) as cache:
        assert not CacheDocuments.from_cache(cache, memory_budget_mb=0).in_memory
        assert CacheDocuments.from_cache(cache).in_memory


def test_validation_cache_must_match(tmp_path, toy):
    other = write_synthetic_cache(tmp_path / "other.h5", n_docs=30, stride=64)
    with pytest.raises(UserError, match="stride: 256|stride"):
        train(tmp_path, toy[0], val=str(other))
    summary = train(tmp_path, toy[0], val=str(toy[1]), max_epochs=1)
    assert summary.n_val == 60 and summary.n_train == 150


def test_class_weights_train_on_inverse_frequency_weighted_loss(tmp_path):
    """On pure noise with 7 documents in 8 of one class, the plain loss teaches the head
    to answer that class; weighted by n / (k * count), it stops doing so. The reported
    validation loss is the one training minimised: weighted or not."""
    labels = np.array([0] * 70 + [1] * 6 + [2] * 4)
    skewed = write_synthetic_cache(tmp_path / "skew.h5", n_docs=80, labels=labels, separable=False, max_windows=3)
    val = write_synthetic_cache(tmp_path / "val.h5", n_docs=80, labels=labels, separable=False, max_windows=3,
                                seed=1)
    weights = torch.tensor(len(labels) / (3 * np.bincount(labels)), dtype=torch.float32)  # 0.38, 4.4, 6.7
    majority = {}
    for weighted in (False, True):
        summary = train(tmp_path, skewed, name=f"weighted-{weighted}.pt", val=str(val), class_weights=weighted,
                        pooling="mean", batch_docs=8, lr=1e-2, max_epochs=10, patience=10)
        checkpoint = load_checkpoint(summary.out)
        with open_cache(val) as cache:
            logits = torch.from_numpy(predict_logits(checkpoint.head, CacheDocuments.from_cache(cache)))
        reported = checkpoint.training["history"][checkpoint.training["best_epoch"] - 1]["val_loss"]
        expected = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels),
                                                     weight=weights if weighted else None)
        assert reported == pytest.approx(float(expected), rel=1e-5)
        majority[weighted] = float((logits.argmax(1) == 0).float().mean())
    assert majority[False] > 0.85 and majority[True] < 0.7, majority


def test_interrupted_training_leaves_the_earlier_checkpoint(tmp_path, toy):
    first = train(tmp_path, toy[0], max_epochs=1)
    before = first.out.read_bytes()

    def interrupt(line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train_head(TrainConfig(train=str(toy[0]), out=str(first.out), seed=5, overwrite=True, **QUIET),
                       log=interrupt)
    assert first.out.read_bytes() == before


def test_failed_save_leaves_the_earlier_checkpoint(tmp_path, toy, monkeypatch):
    first = train(tmp_path, toy[0], max_epochs=1)
    before = first.out.read_bytes()

    real_save = torch.save

    def half_written(obj, path):
        if "progress" in obj:  # the work folder's state.pt: written as usual
            return real_save(obj, path)
        (open(path, "wb") if isinstance(path, (str, Path)) else path).write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, toy[0], max_epochs=1, seed=5, overwrite=True)
    assert first.out.read_bytes() == before
    partial = first.out.name + ".partial"  # the finished epochs, to resume from
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.out.name, partial]  # no temporary left
    assert sorted(p.name for p in (tmp_path / partial).iterdir()) == ["lock", "settings.json", "state.pt"]


# --- resuming ------------------------------------------------------------------------


def interrupted_after(epoch: int, monkeypatch):
    """Stop a run with KeyboardInterrupt just after epoch `epoch` is saved to the work folder."""
    import longdoc.training.loop

    real_save = longdoc.training.loop.TrainingProgress.save

    def save_then_stop(progress, *args):
        real_save(progress, *args)
        if progress.epoch - 1 == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(longdoc.training.loop.TrainingProgress, "save", save_then_stop)


@pytest.mark.parametrize("case", ["windows", "both"])
def test_an_interrupted_run_resumes_to_the_same_head(tmp_path, toy, monkeypatch, case):
    cache = toy[0] if case == "windows" else lexical_cache(tmp_path / "lexical.h5")
    settings = {"pooling": "lstm" if case == "windows" else "mean", "max_epochs": 6, "patience": 3, "lr": 3e-3,
                "seed": 4}

    def run(name, log=lambda line: None, **extra):
        np.random.seed(len(name))  # numpy's global generator differs: the heads must not depend on it
        return run_train_head(TrainConfig(train=str(cache), out=str(tmp_path / name), **QUIET, **settings, **extra),
                              log=log)

    reference = load_checkpoint(run("reference.pt").out)
    assert len(reference.training["history"]) >= 4  # the interruption falls inside the run

    with monkeypatch.context() as patch:
        interrupted_after(2, patch)
        with pytest.raises(KeyboardInterrupt):
            run("head.pt")
    assert not (tmp_path / "head.pt").exists() and (tmp_path / "head.pt.partial" / "state.pt").exists()
    lines = []
    summary = run("head.pt", log=lines.append)
    assert lines[0].startswith(f"resuming from {tmp_path / 'head.pt.partial'} at epoch 3, step 0 of ")
    # The linear branch is not in the saved state: it is fitted again (liblinear, seeded), to
    # the same weights, as the state-dict comparison below shows.
    assert any(line.startswith("linear branch: C") for line in lines) == (case == "both")
    assert not (tmp_path / "head.pt.partial").exists()
    resumed = load_checkpoint(summary.out)
    for key in ("history", "best_epoch", "val_macro_f1", "linear_branch"):
        assert resumed.training[key] == reference.training[key], key
    want = reference.head.state_dict()
    assert resumed.head.state_dict().keys() == want.keys()
    for name, value in resumed.head.state_dict().items():
        assert torch.equal(value, want[name]), name


@pytest.mark.slow
def test_a_killed_process_resumes_to_the_same_head(tmp_path, toy):
    from checkout import kill_cli_once_written, run_cli

    def args(out):
        return ["train-head", "--train", str(toy[0]), "--out", str(out), "--pooling", "transformer", "--epochs", "8",
                "--patience", "8", "--batch-docs", "4", "--seed", "3", "--no-progress"]

    run_cli(*args(tmp_path / "reference.pt"), check=True)
    out, state = tmp_path / "head.pt", tmp_path / "head.pt.partial" / "state.pt"
    kill_cli_once_written(state, *args(out))
    assert not out.exists(), "killed before the end, nothing may look complete"
    result = run_cli(*args(out), check=True)
    assert "resuming from" in result.stderr
    want, got = load_checkpoint(tmp_path / "reference.pt"), load_checkpoint(out)
    assert got.training["history"] == want.training["history"]
    for name, value in got.head.state_dict().items():
        assert torch.equal(value, want.head.state_dict()[name]), name


def test_an_interrupted_run_with_other_settings_is_refused_and_overwrite_starts_afresh(tmp_path, toy, monkeypatch):
    with monkeypatch.context() as patch:
        interrupted_after(1, patch)
        with pytest.raises(KeyboardInterrupt):
            train(tmp_path, toy[0], max_epochs=3)
    with pytest.raises(UserError, match=r"holds an interrupted run with other settings \(lr: 0.01"):
        train(tmp_path, toy[0], max_epochs=3, lr=1e-2)
    fresh = train(tmp_path, toy[0], name="head.pt", max_epochs=3, lr=1e-2, overwrite=True)
    reference = train(tmp_path, toy[0], name="reference.pt", max_epochs=3, lr=1e-2)
    assert load_checkpoint(fresh.out).training["history"] == load_checkpoint(reference.out).training["history"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.pt", "reference.pt"]



def test_overwrite_resumes_an_interrupted_run_of_the_same_settings(tmp_path, toy, monkeypatch):
    """`make train-head` always passes --overwrite: a killed run of the same settings must
    still resume (to the same head), while an earlier finished head is replaced."""
    train(tmp_path, toy[0], max_epochs=1, seed=5)  # an earlier head at head.pt
    with monkeypatch.context() as patch:
        interrupted_after(2, patch)
        with pytest.raises(KeyboardInterrupt):
            train(tmp_path, toy[0], max_epochs=4, overwrite=True)
    lines = []
    resumed = train(tmp_path, toy[0], max_epochs=4, overwrite=True, log=lines.append)
    assert lines[0].startswith("resuming from") and " at epoch 3," in lines[0]
    reference = train(tmp_path, toy[0], name="reference.pt", max_epochs=4)
    assert load_checkpoint(resumed.out).training["history"] == load_checkpoint(reference.out).training["history"]


# --- a state.pt that is not this run's -----------------------------------------------------

PLANTED_RUN = dict(pooling="mean", max_epochs=4, patience=4, seed=4)


def planted_run_args(cache, out, *extra):
    return ["train-head", "--train", cache, "--out", out, "--pooling", "mean", "--epochs", "4", "--patience", "4",
            "--seed", "4", "--no-progress", *extra]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, toy):
    """(the work folder of a run stopped after its second epoch, the head of that run never stopped)."""
    folder = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as patch:
        interrupted_after(2, patch)
        with pytest.raises(KeyboardInterrupt):
            train(folder, toy[0], **PLANTED_RUN)
    return folder / "head.pt.partial", train(folder, toy[0], name="reference.pt", **PLANTED_RUN).out


def first_weight(weights: dict) -> str:
    return next(name for name, value in weights.items() if value.dim() == 2)


# case: (the change to the state, what the error line names)
PLANTED_STATES = {
    "an empty history": (lambda s: s["progress"].update(history=[]), "progress.epoch: 3 after 0 finished epochs"),
    "a history entry without its validation loss": (lambda s: s["progress"]["history"][1].pop("val_loss"),
                                                    "history[1]: not an epoch's record"),
    "a best epoch not in the history": (lambda s: s["progress"].update(best_epoch=7),
                                        "progress.best_epoch: 7 where its history gives"),
    "a missing field": (lambda s: s["progress"].pop("stale_epochs"), "progress.stale_epochs: missing"),
    "weights of another shape": (lambda s: s["weights"].update({first_weight(s["weights"]): torch.zeros(2, 2)}),
                                 "weights."),
    "NaN weights": (lambda s: s["weights"][first_weight(s["weights"])].fill_(float("nan")), "NaN or infinite"),
    "a best state of other keys": (lambda s: s["progress"].update(best_state={"other.weight": torch.zeros(3)}),
                                   "progress.best_state: not the weights this task trains"),
    "a step inside an epoch it never saves in": (lambda s: s["progress"].update(step_in_epoch=10**6),
                                                 "progress.step_in_epoch: 1000000 is no step this run saves at"),
    "a learning rate not the schedule's": (lambda s: s["optimizer"]["param_groups"][0].update(lr=1.0),
                                           "learning rates other than the schedule's"),
    "a schedule of other steps": (lambda s: s["schedule"].update(last_epoch=s["schedule"]["last_epoch"] + 1),
                                  "schedule.last_epoch"),
    "optimizer moments of another shape": (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(1)),
                                           "optimizer.state[0]"),
    "the generator's state of another task": (lambda s: s["progress"].update(task_state={}),
                                              "progress.task_state"),
    "a generator state that is not one": (lambda s: s["progress"]["task_state"].update(rng='{"state": 3}'),
                                          "is not a checkpoint of this run"),
    "not a record": (lambda s: s.clear(), "not a record of progress, weights"),
}


def plant(partial, out, change):
    """`partial` copied to `out`'s work folder, its state.pt changed by `change`."""
    import shutil

    shutil.copytree(partial, Path(f"{out}.partial"))
    state_path = Path(f"{out}.partial") / "state.pt"
    state = torch.load(state_path, weights_only=True)
    change(state)
    torch.save(state, state_path)
    return state_path


@pytest.mark.parametrize("case", PLANTED_STATES)
def test_a_state_that_is_not_this_runs_is_one_line(case, interrupted, toy, tmp_path):
    change, names = PLANTED_STATES[case]
    out = tmp_path / "head.pt"
    state = plant(interrupted[0], out, change)
    code, lines = cli_error("in-process", *planted_run_args(toy[0], out))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {state} ") and "; pass --overwrite to start again" in lines[0], lines[0]
    assert names in lines[0], lines[0]
    assert not out.exists() and state.exists()


@pytest.mark.parametrize("case", ["an empty history", "a learning rate not the schedule's"])
def test_with_overwrite_a_state_that_is_not_this_runs_starts_afresh_to_the_same_head(case, interrupted, toy,
                                                                                      tmp_path):
    """train-head --overwrite resumes a run of the same settings; a state that is not one is
    then started afresh (the refusal's advice), to the head of a run never stopped."""
    out = tmp_path / "head.pt"
    plant(interrupted[0], out, PLANTED_STATES[case][0])
    code, lines = cli_error("in-process", *planted_run_args(toy[0], out, "--overwrite"))
    assert code == 0, lines
    got, want = load_checkpoint(out), load_checkpoint(interrupted[1])
    assert got.training["history"] == want.training["history"]
    for name, value in want.head.state_dict().items():
        assert torch.equal(got.head.state_dict()[name], value), name


def test_an_untouched_planted_copy_resumes_to_the_same_head(interrupted, toy, tmp_path):
    """The copy the cases above change, unchanged, is accepted: what they refuse is the change."""
    out = tmp_path / "head.pt"
    plant(interrupted[0], out, lambda state: None)
    code, lines = cli_error("in-process", *planted_run_args(toy[0], out))
    assert code == 0, lines
    got, want = load_checkpoint(out), load_checkpoint(interrupted[1])
    assert got.training["history"] == want.training["history"]
    for name, value in want.head.state_dict().items():
        assert torch.equal(got.head.state_dict()[name], value), name


# --- bad input, through the CLI -------------------------------------------------------


def bad_caches(folder):
    """{case: path} for each kind of bad train cache."""
    good = write_synthetic_cache(folder / "good.h5", n_docs=20)
    truncated = folder / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:3000])
    foreign = folder / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    return {
        "missing": folder / "nope.h5",
        "truncated": truncated,
        "foreign": foreign,
        "not-hdf5": _write(folder / "text.h5", b"just text\n"),
        "empty": empty_cache(good, folder / "empty.h5"),
        "single-class": write_synthetic_cache(folder / "one.h5", n_docs=10, labels=[1] * 10),
    }


def empty_cache(like, path):
    """A complete cache with no documents (write_cache cannot chunk an empty dataset)."""
    with h5py.File(like) as src, h5py.File(path, "w") as f:
        f.create_dataset("embeddings", shape=(0, src["embeddings"].shape[1]), dtype="float32")
        f["doc_offsets"] = np.zeros(1, np.int64)
        for name in ("labels", "doc_tokens", "window_starts"):
            f[name] = np.zeros(0, np.int64)
        f.create_dataset("doc_ids", shape=(0,), dtype=h5py.string_dtype("utf-8"))
        f.attrs.update(dict(src.attrs))
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return bad_caches(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("runner", runners())
@pytest.mark.parametrize("case", ["missing", "truncated", "foreign", "not-hdf5", "empty", "single-class"])
def test_bad_train_cache_is_one_line(runner, case, bad, tmp_path):
    code, lines = cli_error(runner, "train-head", "--train", bad[case], "--out", tmp_path / "h.pt")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert str(bad[case]) in lines[0] or case == "single-class"
    assert not (tmp_path / "h.pt").exists()


@pytest.mark.parametrize("runner", runners())
@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.1"])
def test_val_fraction_out_of_range_is_one_line(runner, fraction, toy, tmp_path):
    code, lines = cli_error(runner, "train-head", "--train", toy[0], "--val-fraction", fraction,
                            "--out", tmp_path / "h.pt")
    assert code == 2 and len(lines) == 1 and "--val-fraction" in lines[0], lines


def test_train_head_cli_writes_checkpoint_and_curve(tmp_path, toy):
    code, lines = cli_error("in-process", "train-head", "--train", toy[0], "--out", tmp_path / "h.pt",
                            "--epochs", "2", "--no-progress")
    assert code == 0 and any(line.startswith("epoch   1") for line in lines)
    assert (tmp_path / "h.pt").exists() and (tmp_path / "h-curve.png").exists()


def test_a_fine_tuned_encoders_cache_is_validated_on_the_documents_finetune_held_out(tmp_path):
    """Whatever the head's seed, its validation documents are those `finetune` held out
    (seed 7 here), never ones the encoder trained on; a cache of other data is split as usual."""
    import json

    from longdoc.train_head import _held_out_by_finetune
    from longdoc.training.split import validation_split

    def lineage(data_fingerprint, **settings):
        return json.dumps({"data_fingerprint": data_fingerprint,
                           "settings": {"seed": 7, "val_fraction": 0.1, "val_split": "random", **settings}})

    tuned = write_synthetic_cache(tmp_path / "tuned.h5", n_docs=150, encoder_lineage=lineage("0" * 64))
    other = write_synthetic_cache(tmp_path / "other.h5", n_docs=150, encoder_lineage=lineage("1" * 64))
    with open_cache(tuned) as cache:
        expected = validation_split(cache.labels, cache.doc_ids(), TrainConfig(train=str(tuned)),
                                    np.random.default_rng(7))
        for seed in (0, 1):
            train_docs, val_docs = _held_out_by_finetune(TrainConfig(train=str(tuned), seed=seed), cache)
            assert val_docs.tolist() == expected[1].tolist() and train_docs.tolist() == expected[0].tolist()
    with open_cache(other) as cache:
        assert _held_out_by_finetune(TrainConfig(train=str(other)), cache) is None
    assert train(tmp_path, tuned, seed=1, max_epochs=1).n_val == len(expected[1])

    code, lines = cli_error("in-process", "train-head", "--train", tuned, "--out", tmp_path / "h.pt",
                            "--val-fraction", "0.2")
    assert code != 0 and len(lines) == 1 and "--val-fraction 0.1 --val-split random" in lines[0], lines


@pytest.mark.parametrize("lineage", ["{not json", "[1, 2]", '{"settings": 3}', '{"settings": {"seed": "x"}}',
                                     '{"settings": {"seed": -1}}'])
def test_a_damaged_encoder_lineage_is_one_line(tmp_path, lineage):
    cache = write_synthetic_cache(tmp_path / "c.h5", n_docs=30, encoder_lineage=lineage)
    code, lines = cli_error("in-process", "train-head", "--train", cache, "--out", tmp_path / "h.pt")
    assert code != 0 and len(lines) == 1 and "encoder_lineage" in lines[0], lines


# --- building blocks ------------------------------------------------------------------


def test_background_work_returns_its_value_or_raises_its_error_in_the_caller():
    import threading

    from longdoc.runtime.process import Background

    started = threading.Event()

    def work():
        started.set()
        return threading.current_thread().name

    job = Background(work, name="linear branch")
    assert started.wait(5) and job.result() == "linear branch" and job.result() == "linear branch"
    failing = Background(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result()


def test_the_loop_keeps_the_epoch_of_the_lowest_loss_when_told_to_minimize():
    from longdoc.training.loop import LoopSettings, TrainingProgress

    class Task:
        value = 0

        def trainable_state(self):
            return {"epoch": self.value}

    task, settings = Task(), LoopSettings(max_epochs=9, patience=2, monitor="val_loss", minimize=True)
    progress = TrainingProgress()
    for epoch, loss in enumerate([0.9, 0.5, 0.7, 0.4, 0.6, 0.45], start=1):
        task.value = epoch
        progress.end_epoch({"val_loss": loss, "val_macro_f1": 1.0 - epoch / 10}, task, settings)
        if progress.stopped:
            break
    assert (progress.best_epoch, progress.best_state, len(progress.history)) == (4, {"epoch": 4}, 6)


# --- label sets ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def label_sets(tmp_path_factory):
    """A separable multi-label problem: windows near the mean of their labels' centres, texts
    naming the labels; a tenth of the documents have no label."""
    from synthetic import write_multilabel_cache

    folder = tmp_path_factory.mktemp("label-sets")
    return (write_multilabel_cache(folder / "train.h5", n_docs=240, n_labels=5, seed=0, texts=True),
            write_multilabel_cache(folder / "test.h5", n_docs=80, n_labels=5, seed=1, texts=True))


@pytest.mark.parametrize("inputs", ["windows", "both"])
def test_learns_separable_label_sets_end_to_end(tmp_path, label_sets, inputs):
    from longdoc.configs import EvaluateConfig
    from longdoc.evaluate import run as run_evaluate

    lines = []
    summary = train(tmp_path, label_sets[0], inputs=inputs, pooling="mean", max_epochs=30, lr=1e-2, log=lines.append)
    assert summary.task == "multi_label" and summary.val_micro_f1 >= 0.9
    assert "validation micro-F1" in summary.line()
    assert any(line.startswith("decision: ") for line in lines)
    checkpoint = load_checkpoint(summary.out)
    assert checkpoint.head.multi_label and checkpoint.decision is not None
    assert checkpoint.training["val_micro_f1"] == summary.val_micro_f1
    metrics = run_evaluate(EvaluateConfig(head=str(summary.out), cache=str(label_sets[1]))).metrics
    assert metrics["micro_f1"] >= 0.95 and metrics["macro_f1"] >= 0.9, metrics
    if inputs == "both":  # the texts name the labels: the linear branch alone is right
        assert metrics["branches"]["linear (terms and the mean window vector)"]["micro_f1"] >= 0.95


def test_a_multi_label_runs_validation_is_iterative_and_class_weights_weigh_both_branches(tmp_path, label_sets,
                                                                                          monkeypatch):
    import longdoc.train_head
    from longdoc.training.split import iterative_split

    calls = []
    real = longdoc.train_head.fit_decision

    def spy(probabilities, truth, rng):
        calls.append(truth)
        return real(probabilities, truth, rng)

    monkeypatch.setattr(longdoc.train_head, "fit_decision", spy)
    summary = train(tmp_path, label_sets[0], inputs="both", pooling="mean", max_epochs=2, class_weights=True, seed=3)
    with open_cache(label_sets[0]) as cache:
        _, val = iterative_split(cache.label_matrix(), 0.1, np.random.default_rng(3))
        np.testing.assert_array_equal(calls[0], cache.label_matrix(val))
    record = load_checkpoint(summary.out).training["linear_branch"]
    assert record["balanced"] is True and "val_micro_macro_f1" in record
    by_default = train(tmp_path, label_sets[0], name="default.pt", inputs="terms")  # on for label sets
    assert load_checkpoint(by_default.out).training["linear_branch"]["balanced"] is True
    off = train(tmp_path, label_sets[0], name="off.pt", inputs="terms", class_weights=False)
    assert load_checkpoint(off.out).training["linear_branch"]["balanced"] is False


def test_class_weights_default_to_off_for_classes_and_on_for_label_sets_from_the_command_line(tmp_path, label_sets):
    from synthetic import cli_error

    for cache, name in ((label_sets[0], "multi.pt"), (lexical_cache(tmp_path / "single.h5"), "single.pt")):
        code, lines = cli_error("in-process", "train-head", "--train", cache, "--out", tmp_path / name, "--epochs",
                                "1", "--no-progress")
        assert code == 0, lines
    multi, single = load_checkpoint(tmp_path / "multi.pt"), load_checkpoint(tmp_path / "single.pt")
    assert multi.training["config"]["class_weights"] is None and multi.training["linear_branch"]["balanced"] is True
    assert single.training["config"]["class_weights"] is None and "balanced" not in single.training["linear_branch"]


def test_a_label_of_one_document_and_documents_without_labels_train(tmp_path):
    from synthetic import random_label_sets, write_multilabel_cache

    sets = random_label_sets(80, 4, seed=2)
    sets[5] = [4]  # label 4: one document
    cache = write_multilabel_cache(tmp_path / "rare.h5", label_sets=sets, n_labels=5, texts=True)
    summary = train(tmp_path, cache, inputs="both", pooling="lstm", max_epochs=2)
    assert len(load_checkpoint(summary.out).decision.thresholds) == 5


def test_an_interrupted_multi_label_run_resumes_to_the_same_head(tmp_path, label_sets, monkeypatch):
    settings = {"pooling": "attention", "inputs": "both", "max_epochs": 5, "patience": 3, "lr": 3e-3, "seed": 4}
    reference = load_checkpoint(train(tmp_path, label_sets[0], name="reference.pt", **settings).out)
    with monkeypatch.context() as patch:
        interrupted_after(2, patch)
        with pytest.raises(KeyboardInterrupt):
            train(tmp_path, label_sets[0], **settings)
    resumed = load_checkpoint(train(tmp_path, label_sets[0], **settings).out)
    for key in ("history", "best_epoch", "val_micro_f1", "val_macro_f1", "linear_branch"):
        assert resumed.training[key] == reference.training[key], key
    assert resumed.decision.to_dict() == reference.decision.to_dict()
    for name, value in resumed.head.state_dict().items():
        assert torch.equal(value, reference.head.state_dict()[name]), name


def test_a_multi_label_cache_where_no_document_has_a_label_is_one_line(tmp_path):
    from synthetic import write_multilabel_cache

    cache = write_multilabel_cache(tmp_path / "none.h5", label_sets=[[]] * 20, n_labels=3)
    with pytest.raises(UserError, match="no document has a label"):
        train(tmp_path, cache, max_epochs=1)
