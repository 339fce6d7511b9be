"""Window-level fine-tuning: what trains, what stays frozen, what is saved, resuming."""

import json

import numpy as np
import pytest
import torch
from assertions import one_line_error, same_weights
from checkout import kill_cli_once_written, run_cli
from safetensors.torch import load_file
from synthetic import make_class_folders
from transformers import AutoModel

from longdoc import cli
from longdoc.encoding.encoder import load_encoder
from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize
from longdoc.runtime.errors import UserError
from longdoc.training.window_model import WindowModel, parse_unfreeze_top
from longdoc.training.window_task import FeatureStore, WindowSet, epoch_batches


def finetune_args(model, corpus, out, *extra):
    return ["finetune", "--data", str(corpus), "--model", str(model), "--out", str(out), "--chunk-tokens", "32",
            "--stride", "4", "--batch-tokens", "256", "--val-fraction", "0.25", "--precision", "fp32",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("ft") / "corpus", docs_per_class=8)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("val_split", ["random", "latest"])
def test_validation_documents_are_held_out_as_asked(tiny_bert, corpus, val_split):
    from longdoc.configs import FinetuneConfig
    from longdoc.finetune import load_inputs
    from longdoc.training.split import natural_key

    inputs = load_inputs(FinetuneConfig(data=str(corpus), model=str(tiny_bert), out="unused", val_fraction=0.25,
                                        val_split=val_split, chunk_tokens=32, stride=4, precision="fp32",
                                        progress=False))
    ids, labels = inputs.corpus.doc_ids, inputs.labels
    assert np.bincount(labels[inputs.val_docs]).tolist() == [2] * len(inputs.corpus.label_names)
    newest = all(max(natural_key(ids[i]) for i in inputs.train_docs if labels[i] == c)
                 < min(natural_key(ids[i]) for i in inputs.val_docs if labels[i] == c) for c in np.unique(labels))
    assert newest == (val_split == "latest")


# --- the split model --------------------------------------------------------------


def test_unfreeze_top_takes_a_count_or_all():
    assert parse_unfreeze_top("all", 6, "m") == 6
    assert parse_unfreeze_top("0", 6, "m") == 0
    assert parse_unfreeze_top(6, 6, "m") == 6
    with pytest.raises(UserError, match="m has 6 layers"):
        parse_unfreeze_top("7", 6, "m")
    with pytest.raises(UserError, match="a number of layers or 'all'"):
        parse_unfreeze_top("top", 6, "m")


@pytest.mark.parametrize("k", [0, 1, 2])
def test_bottom_then_top_is_the_encoder(tiny_bert, k):
    """Split anywhere, the two halves give the encoder's own [CLS] vectors."""
    encoder = load_encoder(str(tiny_bert), "cpu", "fp32")
    model = WindowModel(encoder.model, n_classes=3, unfreeze_top=k).eval()
    ids = torch.randint(5, 60, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 12:] = 0
    reference = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    with torch.no_grad():
        got = model.cls_vectors(model.bottom(ids, mask), mask)
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-5)


def test_only_the_top_layers_and_classifier_train(tiny_bert):
    encoder = load_encoder(str(tiny_bert), "cpu", "fp32")
    model = WindowModel(encoder.model, n_classes=3, unfreeze_top=1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("encoder.encoder.layer.1.", "classifier.")) for name in trainable)
    model.train()
    assert model.top_layers[0].training and not encoder.model.embeddings.training
    assert not encoder.model.encoder.layer[0].training  # the frozen bottom never drops out


def test_gradient_checkpointing_gives_the_same_gradients(tiny_bert):
    grads = []
    for checkpointing in (False, True):
        encoder = load_encoder(str(tiny_bert), "cpu", "fp32")
        torch.manual_seed(0)
        model = WindowModel(encoder.model, n_classes=3, unfreeze_top=2, dropout=0.0,
                            gradient_checkpointing=checkpointing)
        model.train()
        for layer in model.top_layers:  # no dropout: the two runs must see the same function
            for module in layer.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        ids = torch.randint(5, 60, (4, 24))
        torch.manual_seed(1)
        ids = torch.randint(5, 60, (4, 24))
        loss = model(ids, None).logsumexp(-1).sum()
        loss.backward()
        grads.append(model.top_layers[0].attention.self.query.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_batches_cover_every_window_once_and_replay_by_seed():
    lengths = np.array([32, 32, 10, 32, 5, 20, 32, 32, 7] * 5)
    ids = np.arange(len(lengths))[::2]
    batches = epoch_batches(ids, lengths, 64, seed=3, epoch=1)
    assert sorted(np.concatenate(batches).tolist()) == ids.tolist()
    assert all(lengths[b].max() * len(b) <= 64 for b in batches)
    again = epoch_batches(ids, lengths, 64, seed=3, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = epoch_batches(ids, lengths, 64, seed=3, epoch=2)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))


@pytest.mark.parametrize("k", [0, 1])
def test_feature_store_gives_what_the_bottom_computes(tiny_bert, corpus, k):
    encoder = load_encoder(str(tiny_bert), "cpu", "fp32")
    model = WindowModel(encoder.model, n_classes=3, unfreeze_top=k).eval()
    spec = WindowSpec(32, 4, SpecialTokens.of(encoder.tokenizer))
    texts = [p.read_text() for p in sorted(corpus.rglob("*.txt"))]
    windows = WindowSet.build(tokenize(encoder.tokenizer, texts), spec)
    full, short = int(np.argmax(windows.lengths)), int(np.argmin(windows.lengths))
    batch = np.array([full, short])
    store = FeatureStore(1e9, windows.lengths, encoder.hidden_size, torch.float32, per_token=k > 0)
    computed, mask = store.get(model, windows, batch, 0, encoder.device)
    assert len(store) == 2 and mask is not None
    stored, stored_mask = store.get(model, windows, batch, 0, encoder.device)
    torch.testing.assert_close(stored_mask, mask)
    if k:  # padded positions are never read (masked); compare the rest
        stored, computed = stored * mask[..., None], computed * mask[..., None]
    torch.testing.assert_close(stored, computed)

    if k:
        row_bytes = encoder.hidden_size * 4
        small = FeatureStore(row_bytes * windows.lengths[full], windows.lengths, encoder.hidden_size, torch.float32,
                             per_token=True)
        small.get(model, windows, batch, 0, encoder.device)
        assert len(small) == 1  # the first window fits; the others are recomputed when needed
        again, _ = small.get(model, windows, batch, 0, encoder.device)
        torch.testing.assert_close(again * mask[..., None], computed)


# --- the command ------------------------------------------------------------------


@pytest.mark.slow  # subprocesses
def test_finetune_trains_the_top_layers_only_and_saves_a_loadable_model(tiny_bert, corpus, tmp_path):
    out = tmp_path / "ft"
    result = run_cli(*finetune_args(tiny_bert, corpus, out, "--unfreeze-top", "1", "--epochs", "4",
                                    "--patience", "4", "--lr", "3e-3", "--head-lr", "1e-2"), check=True)
    assert "fine-tuned the top 1 layers" in result.stdout
    assert "Traceback" not in result.stderr
    base, tuned = weights(tiny_bert), weights(out)
    assert base.keys() == tuned.keys()
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    assert changed and all(name.startswith("encoder.layer.1.") for name in changed), changed
    assert any(name.startswith("encoder.layer.1.") and name.endswith("weight") for name in changed)
    assert all(torch.equal(base[n], tuned[n]) for n in base if n.startswith(("embeddings.", "encoder.layer.0.")))

    record = json.loads((out / "finetune.json").read_text())
    losses = [epoch["train_loss"] for epoch in record["history"]]
    assert losses[-1] < losses[0]  # it learns
    assert record["unfreeze_top"] == 1 and record["base_fingerprint"] != record["fingerprint"]
    assert not (tmp_path / "ft.partial").exists() and not (tmp_path / "ft.tmp").exists()
    assert (out / "curve.png").stat().st_size > 1000  # loss and accuracy per epoch, published with the model

    # Reloads as a plain Hugging Face model; stage one's loader sees the same weights.
    reloaded = load_encoder(str(out), "cpu", "fp32")
    assert reloaded.fingerprint == record["fingerprint"]
    plain = AutoModel.from_pretrained(out).eval()
    ids = torch.randint(5, 60, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.cls_vectors(ids, None),
                                   plain(input_ids=ids).last_hidden_state[:, 0], rtol=1e-4, atol=1e-5)

    # A cache embedded with it records where it came from.
    cache = tmp_path / "c.h5"
    run_cli("embed", "--data", corpus, "--model", out, "--out", cache, "--chunk-tokens", "32", "--stride", "4",
            "--precision", "fp32", "--no-progress", check=True)
    import h5py
    with h5py.File(cache) as f:
        lineage = json.loads(f.attrs["encoder_lineage"])
    assert lineage["base_fingerprint"] == record["base_fingerprint"] and lineage["unfreeze_top"] == 1


@pytest.mark.slow  # a subprocess
def test_head_only_leaves_the_encoder_as_it_was(minilm, tmp_path):
    """K = 0 trains the window classifier alone: the saved encoder is the base encoder,
    fingerprint included (the packaged tokenizer's truncation state must not count)."""
    out = tmp_path / "ft"
    corpus = make_class_folders(tmp_path / "corpus", docs_per_class=4)
    run_cli("finetune", "--data", corpus, "--model", minilm, "--out", out, "--unfreeze-top", "0", "--epochs", "1",
            "--val-fraction", "0.25", "--no-progress", check=True)
    record = json.loads((out / "finetune.json").read_text())
    assert record["fingerprint"] == record["base_fingerprint"] == load_encoder(str(out), "cpu").fingerprint


@pytest.mark.parametrize("extra,message", [
    (["--unfreeze-top", "3"], "has 2 layers; give 0 to 2, or 'all'"),
    (["--unfreeze-top", "some"], "a number of layers or 'all'"),
    (["--chunk-tokens", "4096", "--batch-tokens", "8192"], "above the 128 tokens"),
    (["--batch-tokens", "16"], "--batch-tokens 16 must be at least --chunk-tokens 32"),
    (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    (["--categories", "space"], "every document is of class 'space'"),
])
def test_bad_options_give_one_line_and_exit_2(tiny_bert, corpus, tmp_path, capsys, extra, message):
    code = cli.main(finetune_args(tiny_bert, corpus, tmp_path / "ft", *extra))
    err = capsys.readouterr().err
    assert code == 2
    one_line_error(err, message)
    assert not (tmp_path / "ft").exists()


def test_unknown_model_and_existing_out(tiny_bert, corpus, tmp_path, capsys):
    assert cli.main(finetune_args("no-such-org/no-such-model", corpus, tmp_path / "ft")) == 2
    assert capsys.readouterr().err.startswith("error: --model no-such-org/no-such-model: cannot load")
    out = tmp_path / "ft"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert cli.main(finetune_args(tiny_bert, corpus, out)) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"


@pytest.mark.slow  # subprocesses, one killed
def test_a_killed_run_resumes_to_the_same_model(tiny_bert, corpus, tmp_path):
    args = finetune_args(tiny_bert, corpus, tmp_path / "OUT", "--epochs", "3", "--patience", "3",
                         "--checkpoint-steps", "2", "--lr", "3e-3", "--head-lr", "1e-2")
    reference = tmp_path / "reference"
    run_cli(*[a if a != str(tmp_path / "OUT") else str(reference) for a in args], check=True)

    out = tmp_path / "killed"
    args = [a if a != str(tmp_path / "OUT") else str(out) for a in args]
    state = tmp_path / "killed.partial" / "state.pt"
    kill_cli_once_written(state, *args)
    assert not out.exists(), "killed before the end, nothing may look complete"
    result = run_cli(*args, check=True)
    assert "resuming from" in result.stderr
    want, got = weights(reference), weights(out)
    same_weights(got, want)
    history = [json.loads((d / "finetune.json").read_text())["history"] for d in (reference, out)]
    assert [h["val_macro_f1"] for h in history[0]] == pytest.approx([h["val_macro_f1"] for h in history[1]])


def test_an_interrupted_run_with_other_settings_is_refused(tiny_bert, corpus, tmp_path, capsys):
    out = tmp_path / "ft"
    partial = tmp_path / "ft.partial"
    partial.mkdir()
    (partial / "settings.json").write_text(json.dumps({"lr": 1.0}))
    assert cli.main(finetune_args(tiny_bert, corpus, out)) == 2
    err = capsys.readouterr().err
    one_line_error(err, "holds an interrupted run with other settings")
    assert cli.main(finetune_args(tiny_bert, corpus, out, "--overwrite", "--epochs", "1")) == 0
    assert (out / "finetune.json").exists()


def stop_after_first_epoch(monkeypatch):
    """Stop a run with KeyboardInterrupt once its first epoch's end is saved to the work folder."""
    import longdoc.training.loop

    real_save = longdoc.training.loop.TrainingProgress.save

    def save_then_stop(progress, *args):
        real_save(progress, *args)
        if progress.epoch == 2 and progress.step_in_epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(longdoc.training.loop.TrainingProgress, "save", save_then_stop)


def test_a_planted_step_beyond_the_epoch_is_one_line(tiny_bert, corpus, tmp_path, capsys, monkeypatch):
    """A state consistent in itself (counters, schedule, optimizer: those of the end of epoch 1)
    whose progress says epoch 1 is still running, at a step past its last batch: the loop,
    which knows the epoch's batches, refuses it."""
    out = tmp_path / "ft"
    args = finetune_args(tiny_bert, corpus, out, "--epochs", "2", "--checkpoint-steps", "1")
    with monkeypatch.context() as patch:
        stop_after_first_epoch(patch)
        assert cli.main(args) == 130
    state_path = tmp_path / "ft.partial" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    steps = state["progress"]["global_step"]
    state["progress"].update(epoch=1, step_in_epoch=steps, history=[], best_epoch=0, best_score=float("-inf"),
                             best_state=None, stale_epochs=0, loss_sum=1.0, windows_seen=10 * steps,
                             epoch_seconds=1.0)
    torch.save(state, state_path)
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert one_line_error(err).startswith(f"error: {state_path} is not a checkpoint of this run "
                                          f"(progress.step_in_epoch: {steps} beyond epoch 1's "), err
    assert not out.exists() and state_path.exists()


def test_a_diverging_finetune_saves_nothing(tiny_bert, corpus, tmp_path, capsys, monkeypatch):
    """The loop checks every task's loss: finetune's too (before, only train-head's was)."""
    import longdoc.training.window_task

    monkeypatch.setattr(longdoc.training.window_task.WindowTrainer, "step", lambda self, batch: float("nan"))
    out = tmp_path / "ft"
    assert cli.main(finetune_args(tiny_bert, corpus, out, "--epochs", "2")) == 2
    err = capsys.readouterr().err
    assert err == "error: training diverged at epoch 1, step 1 (loss nan); nothing saved; lower --lr\n", err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
