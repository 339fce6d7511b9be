"""20 Newsgroups, bydate: `--data 20newsgroups`, exactly as `sklearn.datasets.fetch_20newsgroups`
gives it (same documents, same order, same label numbering, `categories` and `remove` too),
read from a local `20news-bydate.tar.gz` (or its unpacked folders) where one is found
(`newsgroups_search_path`, also where `reuters21578.tar.gz` is looked for), else downloaded
by scikit-learn. Reads, never writes.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np

from longdoc.corpus.builtin import NEWSGROUPS
from longdoc.corpus.documents import Corpus, keep_categories
from longdoc.runtime.errors import UserError

NEWSGROUPS_ARCHIVE = "20news-bydate.tar.gz"
NEWSGROUPS_SPLITS = ("train", "test")
REMOVABLE_PARTS = ("headers", "footers", "quotes")
# fetch_20newsgroups shuffles twice: load_files with seed 0, then seed 42.
_LOAD_FILES_SEED, _FETCH_SEED = 0, 42
# A checkout's data/ and the ../shared/datasets beside it: this file is stages/longdoc/corpus/
# in a checkout (an editable install too); an installed wheel has no checkout, so there the
# working directory stands in for it.
_CHECKOUT = Path(__file__).resolve().parents[3]
_PROJECT_ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else Path.cwd()


def newsgroups_search_path(data_home: str | None) -> list[Path]:
    """Where a local copy of the bydate archive (and of `reuters21578.tar.gz`) is looked for,
    in order."""
    places = []
    if data_home:
        places.append(Path(data_home))
    if os.environ.get("SCIKIT_LEARN_DATA"):
        places.append(Path(os.environ["SCIKIT_LEARN_DATA"]))
    places += [_PROJECT_ROOT / "data", _PROJECT_ROOT.parent / "shared" / "datasets"]
    return places


def load_20newsgroups(split, categories, remove, data_home) -> Corpus:
    if split not in NEWSGROUPS_SPLITS:
        raise UserError(f"--split for {NEWSGROUPS} is one of {', '.join(NEWSGROUPS_SPLITS)}; got {split!r}")
    files = _read_local_newsgroups(split, newsgroups_search_path(data_home))
    if files is None:
        return _download_20newsgroups(split, categories, remove, data_home)
    label_names, doc_ids, labels, texts = _order_like_load_files(files)
    labels = np.asarray(labels, dtype=np.int64)
    corpus = Corpus(doc_ids, texts, labels, label_names, f"{NEWSGROUPS}:{split}")
    return _like_fetch_20newsgroups(corpus, categories, remove)


def _read_local_newsgroups(split: str, places: list[Path]) -> dict[tuple[str, str], bytes] | None:
    """{(newsgroup, file name): raw bytes} of one split, or None if no local copy."""
    folder_name = f"20news-bydate-{split}"
    for place in places:
        for folder in (place / folder_name, place / "20news_home" / folder_name):
            if folder.is_dir():
                return {
                    (group.name, post.name): post.read_bytes()
                    for group in folder.iterdir() if group.is_dir()
                    for post in group.iterdir() if post.is_file()
                }
        archive = place / NEWSGROUPS_ARCHIVE
        if archive.is_file():
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    files = {}
                    for member in tar:
                        parts = member.name.split("/")
                        if member.isfile() and len(parts) == 3 and parts[0] == folder_name:
                            files[(parts[1], parts[2])] = tar.extractfile(member).read()
                    return files
            except (OSError, tarfile.TarError, EOFError) as error:
                raise UserError(f"cannot read {archive}: {error}") from None
    return None


def _order_like_load_files(files: dict[tuple[str, str], bytes]):
    """Order posts as `sklearn.datasets.load_files(..., encoding="latin1")` does:
    sorted folders, sorted file names, then a seed-0 shuffle."""
    label_names = sorted({group for group, _ in files})
    keys = [(g, f) for g in label_names for f in sorted(f for gg, f in files if gg == g)]
    order = np.arange(len(keys))
    np.random.RandomState(_LOAD_FILES_SEED).shuffle(order)
    keys = [keys[i] for i in order]
    doc_ids = [f"{group}/{name}" for group, name in keys]
    labels = [label_names.index(group) for group, _ in keys]
    texts = [files[key].decode("latin1") for key in keys]
    return label_names, doc_ids, labels, texts


def _like_fetch_20newsgroups(corpus: Corpus, categories, remove) -> Corpus:
    """Apply `remove`, `categories` and the seed-42 shuffle as fetch_20newsgroups does."""
    from sklearn.datasets._twenty_newsgroups import (
        strip_newsgroup_footer,
        strip_newsgroup_header,
        strip_newsgroup_quoting,
    )

    strip = {"headers": strip_newsgroup_header, "footers": strip_newsgroup_footer,
             "quotes": strip_newsgroup_quoting}
    texts = corpus.texts
    for part in REMOVABLE_PARTS:  # the order fetch_20newsgroups applies them in
        if part in remove:
            texts = [strip[part](text) for text in texts]
    corpus = Corpus(corpus.doc_ids, texts, corpus.labels, corpus.label_names, corpus.source)
    if categories:
        corpus = keep_categories(corpus, categories)
    order = np.arange(len(corpus))
    np.random.RandomState(_FETCH_SEED).shuffle(order)
    source = corpus.source + (f"[remove={','.join(remove)}]" if remove else "")
    return Corpus([corpus.doc_ids[i] for i in order], [corpus.texts[i] for i in order],
                  corpus.labels[order], corpus.label_names, source)


def _download_20newsgroups(split, categories, remove, data_home) -> Corpus:
    from sklearn.datasets import fetch_20newsgroups

    try:
        bunch = fetch_20newsgroups(data_home=data_home, subset=split, categories=categories,
                                   remove=tuple(remove), download_if_missing=True)
    except Exception as error:  # offline, proxy, HTTP errors: all mean "no copy here"
        places = ", ".join(str(p) for p in newsgroups_search_path(data_home))
        raise UserError(
            f"20 Newsgroups is not on disk and could not be downloaded ({type(error).__name__}: {error}); "
            f"put {NEWSGROUPS_ARCHIVE} in one of: {places}"
        ) from None
    doc_ids = ["/".join(Path(name).parts[-2:]) for name in bunch.filenames]
    source = f"{NEWSGROUPS}:{split}" + (f"[remove={','.join(remove)}]" if remove else "")
    return Corpus(doc_ids, list(bunch.data), np.asarray(bunch.target, dtype=np.int64),
                  list(bunch.target_names), source)
