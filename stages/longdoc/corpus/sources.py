"""Corpora: turn `--data SRC` into an ordered list of (doc_id, text, label), where a
document's label is one name or, in a multi-label corpus, a set of names.

Reads, never writes. Four kinds of source:

* `20newsgroups`: the bydate train/test split, with `categories` and `remove`
  behaving exactly like `sklearn.datasets.fetch_20newsgroups` (same documents,
  same order, same label numbering). A local `20news-bydate.tar.gz` (or its unpacked
  `20news-bydate-{train,test}/` folders) is looked for in `--data-home`,
  `$SCIKIT_LEARN_DATA`, `data/` and `../shared/datasets`; without one,
  scikit-learn downloads it.
* `reuters21578`: the ModApte "R90" train/test split of Reuters-21578, multi-label
  (`longdoc.corpus.reuters` says which stories and why), read from a local
  `reuters21578.tar.gz` looked for in the same places; nothing is downloaded.
* a directory with one sub-folder per class and one document per file, read as
  UTF-8 with undecodable bytes replaced (never fatal); hidden files and folders
  (`.git/`, `.DS_Store`) are skipped; always single-label;
* a `.csv` or `.jsonl` file with `text` and `label` fields (an `id` field, when
  present, becomes the document id), UTF-8 with or without a byte-order mark; a CSV
  field may be as long as a document gets (the csv module's 128 KiB limit is lifted).
  A `labels` field instead of `label` makes the corpus multi-label: in JSON lines a
  list of strings, in CSV the labels separated by `label_sep` (`--label-sep`, "|"),
  spaces around each one dropped; an empty list or field is a document with no label.
  A file labels every document one way: both fields in one record, both columns, or
  `label` on one line and `labels` on another are refused.

Every document is checked here, before any encoder time is spent: a missing or empty
label, a label name that no consumer could show (`longdoc.settings.labels`), a lone
surrogate in a text, id or label, a file name that is not valid UTF-8, JSON nested too deeply or with an over-long number, and in a label
set a label that is not a string, an empty label, a label given twice, a CSV field of
separators alone, or `labels` that is not a list: each is refused in one line naming
the file and the line or document.

Every corpus carries a fingerprint of its ids, labels and texts, so a cache can
tell whether it was made from the same data.

This module is the entry point (`load_corpus`, `iter_documents`); the readers are beside it:
`newsgroups` (20 Newsgroups), `reuters` (Reuters-21578's SGML), `files` (folders, CSV, JSON
lines) and `documents` (the `Corpus` they build and its fingerprint).
"""

from __future__ import annotations

from pathlib import Path

from longdoc.corpus.builtin import BUILT_IN_CORPORA, LABEL_SEP, NEWSGROUPS, REUTERS
from longdoc.corpus.documents import Corpus, DocumentDigest, from_records, keep_categories  # noqa: F401 (Corpus, DocumentDigest: the corpus types, re-exported)
from longdoc.corpus.files import of_categories, refuse_remove, user_records
from longdoc.corpus.newsgroups import REMOVABLE_PARTS, load_20newsgroups, newsgroups_search_path
from longdoc.corpus.reuters import load_reuters
from longdoc.runtime.errors import UserError
from longdoc.settings.labels import check_label_names


def load_corpus(
    data: str,
    split: str = "train",
    categories: list[str] | None = None,
    remove: tuple[str, ...] = (),
    data_home: str | None = None,
    limit: int | None = None,
    label_sep: str = LABEL_SEP,
) -> Corpus:
    """Load the documents named by `--data`; see the module docstring."""
    unknown = sorted(set(remove) - set(REMOVABLE_PARTS))
    if unknown:
        raise UserError(f"--remove takes {', '.join(REMOVABLE_PARTS)}; got {', '.join(unknown)}")
    if data == NEWSGROUPS:
        corpus = load_20newsgroups(split, categories, remove, data_home)
    else:
        if data == REUTERS:
            corpus = load_reuters21578(split, remove, data_home)
        else:
            corpus = from_records(list(user_records(data, remove, labelled=True, label_sep=label_sep)),
                                   str(Path(data)))
        if categories:
            corpus = keep_categories(corpus, categories)
    corpus = corpus.head(limit)
    if len(corpus) == 0:
        raise UserError(f"--data {data}: no documents found")
    check_label_names(corpus.label_names, f"--data {data}")  # every kind; user corpora per record too
    return corpus


def load_reuters21578(split: str, remove, data_home: str | None) -> Corpus:
    """ModApte R90 of Reuters-21578 (`longdoc.corpus.reuters`) from a local `reuters21578.tar.gz`,
    looked for where the 20 Newsgroups archive is: a multi-label corpus."""
    refuse_remove(remove)
    doc_ids, texts, topics = load_reuters(split, newsgroups_search_path(data_home))
    return from_records(list(zip(doc_ids, texts, topics)), f"{REUTERS}:{split}")


def iter_documents(data: str, split: str = "test", categories: list[str] | None = None,
                   remove: tuple[str, ...] = (), data_home: str | None = None, limit: int | None = None,
                   label_sep: str = LABEL_SEP):
    """(doc_id, text, label) of each document of `--data`, in `load_corpus`'s order, read one
    at a time: memory does not grow with the corpus (the built-in corpora, which are
    small, are loaded whole). The label is a name, a sorted tuple of names (a multi-label
    corpus: a `labels` field, Reuters-21578), or None: labels are optional here, and a
    CSV/JSONL row without a `label` or `labels` field, or a file directly inside the folder,
    yields None. `categories` keeps documents of those labels (of a label set, those with
    at least one of them, the others dropped from the set). Checks the source now; reads
    lazily."""
    import itertools

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if data in BUILT_IN_CORPORA:
        corpus = load_corpus(data, split, categories, remove, data_home, limit)
        return ((corpus.doc_ids[i], corpus.texts[i], corpus.label_of(i)) for i in range(len(corpus)))
    records = user_records(data, remove, labelled=False, label_sep=label_sep)
    if categories:
        records = of_categories(records, set(categories))
    return itertools.islice(records, limit)
