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
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longdoc.corpus.builtin import BUILT_IN_CORPORA, LABEL_SEP, NEWSGROUPS, REUTERS
from longdoc.corpus.reuters import load_reuters
from longdoc.runtime.errors import UserError
from longdoc.settings.labels import check_label_names

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
# A long-document tool reads long fields: the csv module stops at 131,072 characters.
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


@dataclass
class Corpus:
    """Documents in a fixed order, with their labels as indices into `label_names`.

    A single-label corpus (class folders, a `label` field, 20 Newsgroups) holds `labels`,
    one index per document, and `label_sets` None. A multi-label corpus (a `labels`
    field, Reuters-21578) holds `label_sets`, one sorted list of indices per document
    (an empty list is a document with no label), and `labels` None; its `label_names` are
    the sorted names of every label that occurs. Two fields rather than one form for both:
    every single-label reader (the cache, heads, finetune) keeps the array it reads today,
    and a reader not yet taught label sets finds no `labels` rather than one label of each
    set (`single_label_only` says so in one line)."""

    doc_ids: list[str]
    texts: list[str]
    labels: np.ndarray | None  # int64 [n_docs]; None for a multi-label corpus
    label_names: list[str]
    source: str  # how to get these documents again, e.g. "20newsgroups:train"
    label_sets: list[list[int]] | None = None  # multi-label: sorted indices per document

    def __post_init__(self):
        if (self.labels is None) == (self.label_sets is None):
            raise ValueError("a Corpus holds either labels (single-label) or label_sets (multi-label)")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def multi_label(self) -> bool:
        return self.label_sets is not None

    def fingerprint(self) -> str:
        """sha256 over label names, ids, labels and texts, in order. A multi-label corpus's
        starts with the words "multi-label" and takes each label set as a JSON list of
        indices ("[0, 3]"), so it never equals a single-label corpus's, whose bytes are
        what they always were (existing caches keep matching their corpus)."""
        digest = hashlib.sha256()
        if self.multi_label:
            digest.update(b"multi-label\0")
            labels = [json.dumps(label_set) for label_set in self.label_sets]
        else:
            labels = self.labels.tolist()
        digest.update(json.dumps(self.label_names).encode())
        for doc_id, label, text in zip(self.doc_ids, labels, self.texts):
            _hash_parts(digest, (doc_id, str(label), text))
        return digest.hexdigest()

    def label_of(self, i: int) -> str | tuple[str, ...]:
        """Document `i`'s label name, or (multi-label) the tuple of its label names."""
        if self.multi_label:
            return tuple(self.label_names[k] for k in self.label_sets[i])
        return self.label_names[int(self.labels[i])]

    def single_label_only(self, command: str) -> None:
        """Refuse, in one line, a multi-label corpus given to a command that reads one label
        per document."""
        if self.multi_label:
            raise UserError(f"{self.source} is a multi-label corpus (a set of labels per document): multi-label "
                            f"corpora are not supported by {command} yet")

    def subset(self, keep: list[int], source: str) -> "Corpus":
        """Documents `keep` (indices, in this order), labels as they are."""
        return Corpus([self.doc_ids[i] for i in keep], [self.texts[i] for i in keep],
                      None if self.labels is None else self.labels[np.asarray(keep, dtype=np.int64)],
                      self.label_names, source,
                      None if self.label_sets is None else [self.label_sets[i] for i in keep])

    def head(self, limit: int | None) -> "Corpus":
        """The first `limit` documents (all of them when `limit` is None)."""
        if limit is None:
            return self
        if limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        return self.subset(list(range(min(limit, len(self)))), f"{self.source}[:{limit}]")


def _hash_parts(digest, parts):
    """Each part length-prefixed, so ("ab", "c") and ("a", "bc") differ; None (a record
    without a label) is its own length, 2**64 - 1, unlike any string."""
    for part in parts:
        if part is None:
            digest.update(b"\xff" * 8)
            continue
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)


class DocumentDigest:
    """The fingerprint of a streamed corpus: sha256 over the (doc_id, text, label or None)
    records `iter_documents` yields, in order, hashed as `Corpus.fingerprint` hashes its
    documents (id, label, text, length-prefixed), and their number. Fed one record at a
    time, so no corpus is held to fingerprint it."""

    def __init__(self):
        self._digest = hashlib.sha256()
        self.documents = 0

    def add(self, record: tuple[str, str, str | tuple[str, ...] | None]):
        """One record; a label set (a tuple of names) is hashed as its JSON list."""
        doc_id, text, label = record
        if isinstance(label, tuple):
            label = json.dumps(list(label))
        _hash_parts(self._digest, (doc_id, label, text))
        self.documents += 1

    def through(self, records):
        """`records`, each added as it passes."""
        for record in records:
            self.add(record)
            yield record

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


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
            corpus = _from_records(list(_user_records(data, remove, labelled=True, label_sep=label_sep)),
                                   str(Path(data)))
        if categories:
            corpus = keep_categories(corpus, categories)
    corpus = corpus.head(limit)
    if len(corpus) == 0:
        raise UserError(f"--data {data}: no documents found")
    check_label_names(corpus.label_names, f"--data {data}")  # every kind; user corpora per record too
    return corpus


# --- 20 Newsgroups -----------------------------------------------------------------


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


# --- Reuters-21578 -----------------------------------------------------------------


def load_reuters21578(split: str, remove, data_home: str | None) -> Corpus:
    """ModApte R90 of Reuters-21578 (`longdoc.corpus.reuters`) from a local `reuters21578.tar.gz`,
    looked for where the 20 Newsgroups archive is: a multi-label corpus."""
    _refuse_remove(remove)
    doc_ids, texts, topics = load_reuters(split, newsgroups_search_path(data_home))
    return _from_records(list(zip(doc_ids, texts, topics)), f"{REUTERS}:{split}")


# --- user corpora ------------------------------------------------------------------


def keep_categories(corpus: Corpus, categories: list[str]) -> Corpus:
    """Keep documents of `categories`, renumbering labels in sorted category order. In a
    multi-label corpus a document is kept when it has at least one of them, and its other
    labels are dropped from its set."""
    unknown = sorted(set(categories) - set(corpus.label_names))
    if unknown:
        raise UserError(f"--categories: unknown {', '.join(unknown)}; known: {', '.join(corpus.label_names)}")
    kept_names = sorted(set(categories), key=corpus.label_names.index)
    old_to_new = {corpus.label_names.index(name): new for new, name in enumerate(kept_names)}
    source = corpus.source + f"[categories={','.join(kept_names)}]"
    if corpus.multi_label:
        sets = [[old_to_new[k] for k in label_set if k in old_to_new] for label_set in corpus.label_sets]
        keep = [i for i, label_set in enumerate(sets) if label_set]
        return Corpus([corpus.doc_ids[i] for i in keep], [corpus.texts[i] for i in keep], None, kept_names, source,
                      [sets[i] for i in keep])
    keep = [i for i, label in enumerate(corpus.labels.tolist()) if label in old_to_new]
    return Corpus(
        [corpus.doc_ids[i] for i in keep], [corpus.texts[i] for i in keep],
        np.asarray([old_to_new[int(corpus.labels[i])] for i in keep], dtype=np.int64),
        kept_names, source,
    )


def _from_records(records: list[tuple[str, str, str | tuple[str, ...]]], source: str) -> Corpus:
    """(doc_id, text, label) records -> Corpus with labels in sorted name order. Labels
    that are tuples of names (a `labels` field; a reader never mixes the two) make a
    multi-label corpus."""
    multi_label = bool(records) and isinstance(records[0][2], tuple)
    label_names = sorted({name for r in records for name in (r[2] if multi_label else (r[2],))})
    index = {name: i for i, name in enumerate(label_names)}
    doc_ids, texts = [r[0] for r in records], [r[1] for r in records]
    if multi_label:
        return Corpus(doc_ids, texts, None, label_names, source, [sorted(index[n] for n in r[2]) for r in records])
    return Corpus(doc_ids, texts, np.asarray([index[r[2]] for r in records], dtype=np.int64), label_names, source)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _refuse_remove(remove) -> None:
    if remove:
        raise UserError(f"--remove applies only to --data {NEWSGROUPS}")


def _user_records(data: str, remove, labelled: bool, label_sep: str = LABEL_SEP):
    """The (doc_id, text, label) records of a user corpus (folder, .csv, .jsonl), streamed;
    the path is checked now, the records as they are read."""
    path = Path(data)
    _refuse_remove(remove)
    if not path.exists():
        raise UserError(f"--data {data}: no such file or directory (nor a known dataset name: "
                        f"{', '.join(BUILT_IN_CORPORA)})")
    if path.is_dir():
        return _stream_folder(path, labelled)
    if path.suffix.lower() == ".csv":
        return _stream_csv(path, labelled, label_sep)
    if path.suffix.lower() == ".jsonl":
        return _stream_jsonl(path, labelled)
    raise UserError(f"--data {data}: expected a folder of class folders, a .csv or a .jsonl file")


def _checked(where: str, doc_id: str, text: str, label: str | tuple[str, ...] | None,
             from_file_names: bool = False) -> tuple[str, str, str | tuple[str, ...] | None]:
    """The record, once it is safe to embed and to print; a UserError naming `where` if not.
    A label of None (an unlabelled record, where labels are optional) is not checked; a
    label set (a tuple, `_label_set`) is checked label by label."""
    labels = label if isinstance(label, tuple) else (label,)
    for name, value in (("id", doc_id), *(("label", one) for one in labels), ("text", text)):
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            what = "a file name that is not UTF-8" if from_file_names and name != "text" else "a lone surrogate"
            raise UserError(f"{where}: the {name} holds {what} ({value[error.start:error.end]!r} at "
                            f"character {error.start})") from None
    for one in labels:
        if one is not None:
            check_label_names([one], where)
    return doc_id, text, label


def _json_kind(value) -> str:
    """What a JSON value is, for a message."""
    if value is None:
        return "null"
    kinds = {bool: "true or false", str: "a string", int: "a number", float: "a number", dict: "an object",
             list: "a list"}
    return kinds.get(type(value), type(value).__name__)


def _label_set(value, where: str, label_sep: str | None) -> tuple[str, ...]:
    """A `labels` field as a sorted tuple of distinct names: a JSON list of strings, or (a CSV
    field, `label_sep` given) names between separators, each stripped of the spaces around it
    (so "a | b" is a and b). An empty list or field is a document with no label."""
    if label_sep is not None:
        if not value.strip():
            return ()
        names = [part.strip() for part in value.split(label_sep)]
        if not any(names):
            raise UserError(f"{where}: the labels {value!r} are nothing but separators ({label_sep!r})")
        if not all(names):
            raise UserError(f"{where}: the labels {value!r} hold an empty label (two separators {label_sep!r} "
                            f"in a row, or one at an end)")
    else:
        if not isinstance(value, list):
            raise UserError(f"{where}: 'labels' must be a list of strings, not {_json_kind(value)}")
        for n, name in enumerate(value, start=1):
            if not isinstance(name, str):
                raise UserError(f"{where}: label {n} of 'labels' is {_json_kind(name)}, not a string")
            if not name.strip():
                raise UserError(f"{where}: label {n} of 'labels' is empty")
        names = value
    seen = set()
    for name in names:
        if name in seen:
            raise UserError(f"{where}: the label {name!r} appears twice in 'labels'")
        seen.add(name)
    return tuple(sorted(names))


def _record(row, where: str, default_id: str, labelled: bool,
            label_sep: str | None = None) -> tuple[str, str, str | tuple[str, ...] | None]:
    """A CSV row or JSON object as a checked record: its label a name (`label`) or a label set
    (`labels`, a tuple). `labelled`: a label is required (training corpora); otherwise a
    missing or empty `label`, and a missing or null `labels`, is None (`predict --data`).
    `label_sep`: the separator of a CSV `labels` field (None for JSON lines, whose `labels`
    is a list)."""
    has_label = isinstance(row, dict) and ("label" in row or "labels" in row)
    if not isinstance(row, dict) or "text" not in row or (labelled and not has_label):
        raise UserError(f"{where}: each record needs " + ("'text' and 'label' (or 'labels') fields" if labelled
                                                          else "a 'text' field"))
    if "labels" in row:
        if "label" in row:
            raise UserError(f"{where}: both 'label' and 'labels'; a record has one label or a list of labels")
        value = row["labels"]
        if value is None and not labelled:
            label = None  # unlabelled, as a null or missing 'label' is
        elif value is None and label_sep is not None:
            raise UserError(f"{where}: the labels are missing")  # a CSV row shorter than its header
        else:
            label = _label_set(value, where, label_sep)  # JSON null: "not null"
    else:
        label = row.get("label")
        if labelled and label is None:
            raise UserError(f"{where}: the label is missing")
        if not labelled and label in (None, ""):
            label = None
        label = None if label is None else str(label)
    doc_id = row.get("id")
    return _checked(where, default_id if doc_id is None else str(doc_id), str(row["text"] or ""), label)


# --- streaming: predict --data on corpora of any size --------------------------------


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
    records = _user_records(data, remove, labelled=False, label_sep=label_sep)
    if categories:
        records = _of_categories(records, set(categories))
    return itertools.islice(records, limit)


def _of_categories(records, keep: set[str]):
    """The records labelled with one of `keep`; a label set narrowed to those of `keep`."""
    for doc_id, text, label in records:
        if isinstance(label, tuple):
            label = tuple(name for name in label if name in keep)
            if label:
                yield doc_id, text, label
        elif label in keep:
            yield doc_id, text, label


def _stream_folder(root: Path, labelled: bool):
    """Files of the visible class folders (hidden files and folders skipped), sorted; without
    `labelled`, files directly inside `root` come first, unlabelled."""
    try:
        entries = sorted(p for p in root.iterdir() if _visible(p))
        if not labelled:
            for post in (p for p in entries if p.is_file()):
                yield _checked(repr(str(post)), post.name, post.read_bytes().decode("utf-8", "replace"), None,
                               from_file_names=True)
        for folder in (p for p in entries if p.is_dir()):
            for post in sorted(p for p in folder.iterdir() if p.is_file() and _visible(p)):
                yield _checked(repr(str(post)), f"{folder.name}/{post.name}",
                               post.read_bytes().decode("utf-8", "replace"), folder.name, from_file_names=True)
    except OSError as error:
        raise UserError(f"cannot read {error.filename!r}: {error.strerror}") from None


def _stream_csv(path: Path, labelled: bool, label_sep: str):
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))  # long documents are the point
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:  # -sig: a BOM is not text
            reader = csv.DictReader(f)
            if {"label", "labels"} <= set(reader.fieldnames or ()):
                raise UserError(f"{path}: both a 'label' and a 'labels' column; keep 'label' (one label per "
                                f"document) or 'labels' (a set, separated by {label_sep!r})")
            for n, row in enumerate(reader, start=1):
                yield _record(row, f"{path} row {n}", f"row{n}", labelled, label_sep)
    except (OSError, csv.Error) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def _stream_jsonl(path: Path, labelled: bool):
    first_form = None  # ('label' or 'labels', line): the field the file's first labelled record uses
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except RecursionError:
                    raise UserError(f"{path} line {n}: JSON nested too deeply") from None
                except ValueError as error:  # JSONDecodeError, or an integer of thousands of digits
                    raise UserError(f"{path} line {n}: not JSON ({getattr(error, 'msg', None) or error})") from None
                record = _record(row, f"{path} line {n}", f"line{n}", labelled)
                form = "labels" if "labels" in row else "label" if "label" in row else None
                if form and first_form and form != first_form[0]:
                    raise UserError(f"{path} line {n}: '{form}' here but '{first_form[0]}' on line {first_form[1]}; "
                                    f"a file labels every document with 'label' (one) or every one with 'labels' "
                                    f"(a list)")
                if form and first_form is None:
                    first_form = (form, n)
                yield record
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
