"""Synthetic test material: a tiny random BERT, small class-folder corpora, and window caches
written with the real writer (`longdoc.cache.writer.write_cache`)."""

from __future__ import annotations

import io
import json
import random
import string
import tarfile
from pathlib import Path

import numpy as np

from longdoc.cache.term_files import save_terms, terms_path
from longdoc.cache.writer import write_cache
from longdoc.terms.hashing import TermHashing

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



TOPICS = {
    "space": "space rocket orbit nasa launch moon",
    "religion": "god church faith bible jesus belief",
    "graphics": "graphics image pixel render polygon",
}


def make_class_folders(root: Path, docs_per_class: int = 6, seed: int = 0) -> Path:
    """A folder corpus: documents of very different lengths (some empty, some long)."""
    rng = random.Random(seed)
    for label, words in TOPICS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        vocab = words.split() + WORDS[:20]
        for i in range(docs_per_class):
            n_words = [0, 3, 40, 150, 600, 1500][i % 6]
            text = " ".join(rng.choice(vocab) for _ in range(n_words))
            (root / label / f"{i:03d}.txt").write_text(text)
    return root



ATTRS = {"model": "synthetic", "model_fingerprint": "f" * 64, "chunk_tokens": 256, "stride": 32,
         "precision": "fp32", "data_source": "synthetic", "data_fingerprint": "0" * 64,
         "package_version": "0.1.0", "window_vector": "cls", "term_hashing": "{}"}


def write_synthetic_cache(path: Path, n_docs: int = 60, n_classes: int = 3, hidden: int = 16,
                          max_windows: int = 12, seed: int = 0, separable: bool = True,
                          window_counts=None, labels=None, texts=None, label_sets=None, **attrs) -> Path:
    """A cache whose class c documents have windows near a class centre (separable)
    or pure noise; window counts vary from 1 to `max_windows`. With `texts` (one per
    document), it also holds their hashed term counts, as stage one would.

    With `label_sets` (one sorted list of class indices per document, possibly empty) it is
    a multi-label cache, whose documents' windows lie near the mean of their labels' centres
    (plain noise for a document without a label)."""
    centres = np.random.default_rng(1234).normal(size=(n_classes, hidden)) * 3  # shared by all seeds
    rng = np.random.default_rng(seed)
    if label_sets is not None:
        labels = None
        label_sets = [[int(k) for k in s] for s in label_sets]  # as given: the writer checks them
        n_docs = len(label_sets)
    else:
        labels = np.arange(n_docs) % n_classes if labels is None else np.asarray(labels)
    counts = (rng.integers(1, max_windows + 1, n_docs) if window_counts is None
              else np.asarray(window_counts))
    rows = []
    for doc, count in enumerate(counts):
        noise = rng.normal(size=(count, hidden))
        if labels is not None:
            centre = centres[labels[doc]]
        else:
            centre = centres[np.clip(label_sets[doc], 0, n_classes - 1)].mean(0) if label_sets[doc] else 0
        rows.append(noise + (centre if separable else 0))
    embeddings = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, hidden), np.float32)
    block = Path(f"{path}.block.npy")
    np.save(block, embeddings)
    if texts is not None:
        hashing = TermHashing()
        save_terms(terms_path(block), hashing.counts(list(texts)))
        attrs = {"term_hashing": hashing.to_json(), **attrs}
    names = [f"class{i}" for i in range(n_classes)]
    all_attrs = {**ATTRS, "hidden_size": hidden, "label_names": json.dumps(names), **attrs}
    # The geometry of `longdoc.encoding.windows` for a tokenizer of two special tokens: each document
    # exactly fills its windows, whose bodies start `step` tokens apart.
    body = all_attrs["chunk_tokens"] - 2
    step = body - all_attrs["stride"]
    label_data = {"labels": labels} if labels is not None else {"label_sets": label_sets}
    write_cache(Path(path), all_attrs, [(0, n_docs, block)] if n_docs else [], **label_data,
                doc_ids=[f"doc{i}" for i in range(n_docs)], doc_tokens=(counts - 1) * step + body,
                window_counts=counts, window_starts=np.concatenate([np.arange(c) * step for c in counts])
                if n_docs else np.zeros(0, np.int64), hidden=hidden)
    block.unlink()
    terms_path(block).unlink(missing_ok=True)
    return Path(path)


def random_label_sets(n_docs: int, n_labels: int, seed: int = 0, max_labels: int = 3,
                      unlabelled: float = 0.1) -> list[list[int]]:
    """Label sets as multi-label corpora have them: 1 to `max_labels` labels a document,
    drawn with Zipf-like frequencies (label 0 the most common), and a fraction `unlabelled`
    of documents without any."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_labels + 1)
    sets = []
    for _ in range(n_docs):
        size = 0 if rng.random() < unlabelled else int(rng.integers(1, min(max_labels, n_labels) + 1))
        sets.append(sorted(rng.choice(n_labels, size=size, replace=False, p=weights / weights.sum()).tolist()))
    return sets


def write_multilabel_cache(path: Path, n_docs: int = 60, n_labels: int = 5, seed: int = 0, label_sets=None,
                           texts=None, **options) -> Path:
    """A small multi-label cache for stage-two tests: `label_sets` (or `random_label_sets`),
    windows near the mean of each document's labels' centres (`write_synthetic_cache`),
    label names `class0`...; with `texts=True` it holds term counts of texts that say each
    document's labels (`marker<k>x` for each label k), with a list those of its texts."""
    label_sets = random_label_sets(n_docs, n_labels, seed) if label_sets is None else label_sets
    if texts is True:
        filler = ["the", "a", "of", "and", "to", "in", "is", "it"]
        rng = np.random.default_rng(seed + 1)
        texts = [" ".join([*rng.choice(filler, 4), *(f"marker{k}x" for k in s), *rng.choice(filler, 3)])
                 for s in label_sets]
    return write_synthetic_cache(path, n_classes=n_labels, seed=seed, label_sets=label_sets,
                                 texts=texts or None, **options)


def lexical_cache(path, n_docs=90, seed=0):
    """Noise windows; each document's class is one word of its text: a head with both branches."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_docs) % 3
    filler = ["the", "a", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with"]
    texts = [" ".join([*rng.choice(filler, 5), f"marker{label}x", *rng.choice(filler, 5)]) for label in labels]
    return write_synthetic_cache(path, n_docs=n_docs, seed=seed, separable=False, labels=labels, texts=texts)


def cli_error(runner: str, *args) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of `cli.py ARGS`, in this process or in a subprocess."""
    if runner == "subprocess":
        from checkout import run_cli

        result = run_cli(*args)
        return result.returncode, result.stderr.strip().splitlines()
    import contextlib
    import io

    from longdoc.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    return code, err.getvalue().strip().splitlines()


def runners():
    """Run a CLI test in-process (fast) and, among the slow tests, as a real subprocess."""
    import pytest

    return ["in-process", pytest.param("subprocess", marks=pytest.mark.slow)]


def tiny_embed_config(tiny_bert, corpus, out, **overrides):
    """Stage one's settings for the tiny BERT: small windows, small blocks, fp32 on the CPU."""
    from longdoc.configs import EmbedConfig

    settings = dict(out=out, data=str(corpus), model=str(tiny_bert), chunk_tokens=32, stride=8,
                    batch_tokens=256, precision="fp32", device="cpu", block_windows=16, progress=False)
    return EmbedConfig(**{**settings, **overrides})


def read_all(path):
    """Every dataset of an HDF5 file (by its path, e.g. terms/indptr) and its root attributes."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.update({name: item[:]}) if isinstance(item, h5py.Dataset) else None)
        return arrays, {k: f.attrs[k] for k in f.attrs}


# --- Reuters-21578 SGML, as the original distribution writes it ---------------------------


def story(newid=1, topics="<D>grain</D>", text="<TITLE>GRAIN UP</TITLE><BODY>Grain rose.</BODY>",
          split="TRAIN", has_topics="YES", text_tag="<TEXT>") -> str:
    return (f'<REUTERS TOPICS="{has_topics}" LEWISSPLIT="{split}" CGISPLIT="TRAINING-SET" OLDID="9" NEWID="{newid}">\n'
            f"<DATE>26-FEB-1987 15:01:01.79</DATE>\n<TOPICS>{topics}</TOPICS>\n<PLACES><D>usa</D></PLACES>\n"
            f"<PEOPLE></PEOPLE>\n<ORGS></ORGS>\n<EXCHANGES></EXCHANGES>\n<COMPANIES></COMPANIES>\n"
            f"<UNKNOWN>&#5;&#5;&#5;C T\n&#22;&#22;&#1;f0704&#31;reute</UNKNOWN>\n"
            f"{text_tag}&#2;\n{text}\n</TEXT>\n</REUTERS>\n")


def write_archive(path, files: dict[str, str]):
    """A reuters21578.tar.gz holding `files` (name -> SGML text) under reuters21578/."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            data = content.encode("latin-1")
            info = tarfile.TarInfo(f"reuters21578/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
