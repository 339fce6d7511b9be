"""Fine-tuning encoders that are not BERT-layout: the generic path of `longdoc.training.window_model`.

Tiny random DistilBERT and ModernBERT (plus MPNet and DeBERTa-v2 for the model-level
checks) are built in-process from a config, with the tests' WordPiece tokenizer
(synthetic.build_tiny_bert) saved beside them: nothing is downloaded.
"""

import json

import h5py
import pytest
import torch
from assertions import one_line_error, same_weights
from safetensors.torch import load_file
from synthetic import make_class_folders
from torch import nn

from longdoc import cli
from longdoc.encoding.encoder import load_encoder, resolve_window_vector, write_pooling_config
from longdoc.runtime.errors import UserError
from longdoc.training.window_model import (
    LayerListWindowModel,
    WindowModel,
    build_window_model,
    encoder_depth,
    find_layer_list,
)

# Where each family keeps its layers, as saved weight names (the top one of LAYERS below).
LAYERS = {"distilbert": 2, "modernbert": 3, "mpnet": 2, "deberta-v2": 2}
LAYER_PREFIX = {"distilbert": "transformer.layer.", "modernbert": "layers.", "mpnet": "encoder.layer.",
                "deberta-v2": "encoder.layer."}


def build_tiny_encoder(folder, family: str, tokenizer_folder, layers: int | None = None, seed: int = 0):
    """Save a randomly initialised encoder of `family` and the tiny BERT's tokenizer to `folder`."""
    from transformers import (
        AutoModel,
        AutoTokenizer,
        DebertaV2Config,
        DistilBertConfig,
        ModernBertConfig,
        MPNetConfig,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    layers = LAYERS[family] if layers is None else layers
    common = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "max_position_embeddings": 130}
    sizes = {"hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 4, "intermediate_size": 64}
    if family == "distilbert":
        config = DistilBertConfig(dim=32, n_layers=layers, n_heads=4, hidden_dim=64, **common)
    elif family == "modernbert":  # local attention over 16 tokens in 2 of 3 layers, a final norm after them
        config = ModernBertConfig(**sizes, **common, local_attention=16, cls_token_id=tokenizer.cls_token_id,
                                  sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                                  eos_token_id=tokenizer.sep_token_id)
    elif family == "mpnet":
        config = MPNetConfig(**sizes, **common)
    else:  # DeBERTa-v3's layout: relative positions shared by all layers, none added to the input
        config = DebertaV2Config(**sizes, **common, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                 position_biased_input=False, max_relative_positions=-1)
    torch.manual_seed(seed)
    AutoModel.from_config(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, tiny_bert):
    """family -> model folder; ModernBERT's says it was trained with mean pooling."""
    folders = {family: build_tiny_encoder(tmp_path_factory.mktemp(family), family, tiny_bert)
               for family in LAYERS}
    write_pooling_config(folders["modernbert"], "mean", 32)
    return folders


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("ftg") / "corpus", docs_per_class=8)


def finetune_args(model, corpus, out, *extra):
    return ["finetune", "--data", str(corpus), "--model", str(model), "--out", str(out), "--chunk-tokens", "32",
            "--stride", "4", "--batch-tokens", "256", "--val-fraction", "0.25", "--precision", "fp32",
            "--no-progress", *extra]


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def batch_with_padding():
    torch.manual_seed(3)
    ids = torch.randint(5, 60, (3, 24))
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[1, 14:] = 0
    ids[1, 14:] = 0
    return ids, mask


# --- the model ----------------------------------------------------------------------


def test_the_layer_list_is_found_in_every_family(encoders, tiny_bert):
    for family, folder in encoders.items():
        model = load_encoder(str(folder), "cpu", "fp32").model
        assert find_layer_list(model) is model.get_submodule(LAYER_PREFIX[family].rstrip("."))
        assert encoder_depth(model) == LAYERS[family]
    bert = load_encoder(str(tiny_bert), "cpu", "fp32").model
    assert find_layer_list(bert) is bert.encoder.layer


def test_no_layer_list_is_a_user_error():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.ReLU()])  # not one layer class
            self.dropouts = nn.ModuleList([nn.Dropout(), nn.Dropout()])  # no weights

    with pytest.raises(UserError, match="layers form a list.*Flat has none"):
        encoder_depth(Flat())


@pytest.mark.parametrize("family", ["albert", "funnel"])
def test_shared_or_nested_layers_are_refused(family):
    from transformers import AlbertConfig, AlbertModel, FunnelConfig, FunnelModel

    sizes = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    if family == "albert":  # one layer module run 3 times
        model = AlbertModel(AlbertConfig(embedding_size=16, num_hidden_layers=3, **sizes))
    else:  # blocks of 2 layers each
        model = FunnelModel(FunnelConfig(vocab_size=64, d_model=32, n_head=4, d_head=8, d_inner=64,
                                         block_sizes=[2, 2], block_repeats=[1, 1]))
    runs = 3 if family == "albert" else 4
    with pytest.raises(UserError, match=f"runs {runs} layers but its longest list holds (1|2) .*not supported"):
        encoder_depth(model)


@pytest.mark.parametrize("family", sorted(LAYERS))
@pytest.mark.parametrize("k", [0, 1])
def test_window_vectors_are_stage_ones(encoders, family, k):
    """Whatever the split, the model pools as stage one does (`Encoder.window_vectors`)."""
    encoder = load_encoder(str(encoders[family]), "cpu", "fp32", window_vector="auto")
    assert encoder.window_vector == ("mean" if family == "modernbert" else "cls")
    model = build_window_model(encoder.model, 3, k, window_vector=encoder.window_vector).eval()
    assert isinstance(model, LayerListWindowModel) and model.stores_features == (k == 0)
    ids, mask = batch_with_padding()
    with torch.no_grad():
        want = encoder.window_vectors(ids, mask)
        features = model.bottom(ids, mask)
        got = features if k == 0 else model.window_vectors(features, mask)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        logits = model(ids, mask)
    assert logits.shape == (3, 3)
    torch.testing.assert_close(logits, model.classifier(want), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["distilbert", "modernbert"])
def test_only_the_top_layers_and_classifier_train(encoders, family):
    encoder = load_encoder(str(encoders[family]), "cpu", "fp32")
    depth = LAYERS[family]
    model = build_window_model(encoder.model, 3, 1)
    top = f"encoder.{LAYER_PREFIX[family]}{depth - 1}."
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith((top, "classifier.")) for name in trainable), trainable
    assert set(model.trainable_state()) == trainable
    model.train()
    layers = find_layer_list(encoder.model)
    assert layers[-1].training and model.classifier.training
    assert not any(layer.training for layer in layers[:-1])  # the frozen bottom never drops out
    everything = build_window_model(load_encoder(str(encoders[family]), "cpu", "fp32").model, 3, depth)
    trainable = {name for name, p in everything.named_parameters() if p.requires_grad}
    assert not any("embeddings" in name or "final_norm" in name for name in trainable)


@pytest.mark.parametrize("family", ["distilbert", "modernbert"])
def test_gradients_reach_the_top_layers_only_and_checkpointing_keeps_them(encoders, family):
    grads = []
    for checkpointing in (False, True):
        encoder = load_encoder(str(encoders[family]), "cpu", "fp32")
        torch.manual_seed(0)
        model = build_window_model(encoder.model, 3, 2, dropout=0.0, gradient_checkpointing=checkpointing)
        model.train()
        for module in model.top_layers.modules():  # no dropout: the two runs must see the same function
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        ids, mask = batch_with_padding()
        model(ids, mask).logsumexp(-1).sum().backward()
        assert all(p.grad is None for p in encoder.model.parameters() if not p.requires_grad)
        grads.append([p.grad.clone() for p in model.top_layers.parameters()])
    assert all(g.abs().sum() > 0 for g in grads[0])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_bert_layout_keeps_the_fast_path(tiny_bert):
    encoder = load_encoder(str(tiny_bert), "cpu", "fp32")
    assert type(build_window_model(encoder.model, 3, 1, window_vector="mean")) is WindowModel


# --- the command ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["distilbert", "modernbert"])
def test_finetune_trains_the_top_layers_and_embeds_as_trained(encoders, corpus, family, tmp_path, capsys):
    base, out = encoders[family], tmp_path / "ft"
    pooling = "mean" if family == "modernbert" else "cls"
    code = cli.main(finetune_args(base, corpus, out, "--unfreeze-top", "1", "--epochs", "3", "--patience", "3",
                                  "--lr", "3e-3", "--head-lr", "1e-2"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "fine-tuned the top 1 layers" in captured.out

    before, after = weights(base), weights(out)
    assert before.keys() == after.keys()
    top = f"{LAYER_PREFIX[family]}{LAYERS[family] - 1}."
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(top) for name in changed), changed
    assert any(name.endswith("weight") for name in changed)

    record = json.loads((out / "finetune.json").read_text())
    losses = [epoch["train_loss"] for epoch in record["history"]]
    assert losses[-1] < losses[0]  # it learns
    assert record["unfreeze_top"] == 1 and record["window_vector"] == pooling
    assert resolve_window_vector("auto", str(out)) == pooling  # the folder says how it was trained

    cache = tmp_path / "c.h5"
    assert cli.main(["embed", "--data", str(corpus), "--model", str(out), "--out", str(cache), "--chunk-tokens",
                     "32", "--stride", "4", "--precision", "fp32", "--no-progress"]) == 0
    with h5py.File(cache) as f:
        assert f.attrs["window_vector"] == pooling
        assert json.loads(f.attrs["encoder_lineage"])["base_fingerprint"] == record["base_fingerprint"]


def test_head_only_leaves_the_encoder_as_it_was(encoders, corpus, tmp_path, capsys):
    out = tmp_path / "ft"
    assert cli.main(finetune_args(encoders["modernbert"], corpus, out, "--unfreeze-top", "0", "--epochs", "1")) == 0
    record = json.loads((out / "finetune.json").read_text())
    assert record["fingerprint"] == record["base_fingerprint"]


def test_an_interrupted_run_resumes_to_the_same_model(encoders, corpus, tmp_path, capsys, monkeypatch):
    def args(out):
        return finetune_args(encoders["distilbert"], corpus, out, "--unfreeze-top", "1", "--epochs", "2",
                             "--patience", "2", "--checkpoint-steps", "2", "--lr", "3e-3", "--head-lr", "1e-2")

    reference, out = tmp_path / "reference", tmp_path / "ft"
    assert cli.main(args(reference)) == 0

    steps, top = [], LayerListWindowModel.top

    def interrupted_at_step_5(self, features, mask):
        if self.training:
            steps.append(1)
            if len(steps) == 5:
                raise KeyboardInterrupt
        return top(self, features, mask)

    monkeypatch.setattr(LayerListWindowModel, "top", interrupted_at_step_5)
    capsys.readouterr()
    assert cli.main(args(out)) == 130  # an interrupt's status, as scripts and make read it
    assert "interrupted: the last checkpoint is in" in capsys.readouterr().err
    assert (tmp_path / "ft.partial" / "state.pt").exists() and not out.exists()
    monkeypatch.undo()
    assert cli.main(args(out)) == 0
    assert "resuming from" in capsys.readouterr().err
    want, got = weights(reference), weights(out)
    same_weights(got, want)
    history = [json.loads((d / "finetune.json").read_text())["history"] for d in (reference, out)]
    assert [h["val_macro_f1"] for h in history[0]] == pytest.approx([h["val_macro_f1"] for h in history[1]])


def test_unfreeze_top_beyond_depth_is_one_line(encoders, corpus, tmp_path, capsys):
    assert cli.main(finetune_args(encoders["distilbert"], corpus, tmp_path / "ft", "--unfreeze-top", "3")) == 2
    err = capsys.readouterr().err
    one_line_error(err, "has 2 layers; give 0 to 2, or 'all'")


def test_a_model_without_a_layer_list_is_one_line(tiny_bert, corpus, tmp_path, capsys):
    flat = build_tiny_encoder(tmp_path / "flat", "distilbert", tiny_bert, layers=0)
    assert cli.main(finetune_args(flat, corpus, tmp_path / "ft")) == 2
    err = capsys.readouterr().err
    assert one_line_error(err).startswith("error: fine-tuning needs an encoder whose layers form a list")
    assert "DistilBertModel has none" in err
    assert not (tmp_path / "ft").exists()


def test_the_bert_path_still_saves_a_cls_folder(tiny_bert, corpus, tmp_path, capsys):
    """The fast path trains [CLS] and writes no 1_Pooling, so `auto` embeds with cls, even
    when the base folder says mean (as the packaged MiniLM's does)."""
    base = tmp_path / "bert-mean"
    base.mkdir()
    for path in tiny_bert.iterdir():
        (base / path.name).write_bytes(path.read_bytes())
    write_pooling_config(base, "mean", 32)
    out = tmp_path / "ft"
    assert cli.main(finetune_args(base, corpus, out, "--unfreeze-top", "1", "--epochs", "1")) == 0
    assert not (out / "1_Pooling").exists() and resolve_window_vector("auto", str(out)) == "cls"
    assert json.loads((out / "finetune.json").read_text())["window_vector"] == "cls"
