"""Corpora: turn `--data SRC` into an ordered list of (doc_id, text, label).

Reads, never writes. Three kinds of source:

* `20newsgroups`: the bydate train/test split, with `categories` and `remove`
  behaving exactly like `sklearn.datasets.fetch_20newsgroups` (same documents,
  same order, same label numbering). A local `20news-bydate.tar.gz` (or its unpacked
  `20news-bydate-{train,test}/` folders) is looked for in `--data-home`,
  `$SCIKIT_LEARN_DATA`, `data/` and `../shared/datasets`; without one,
  scikit-learn downloads it.
* a directory with one sub-folder per class and one document per file, read as
  UTF-8 with undecodable bytes replaced (never fatal); hidden files and folders
  (`.git/`, `.DS_Store`) are skipped;
* a `.csv` or `.jsonl` file with `text` and `label` fields (an `id` field, when
  present, becomes the document id), UTF-8 with or without a byte-order mark; a CSV
  field may be as long as a document gets (the csv module's 128 KiB limit is lifted).

Every document is checked here, before any encoder time is spent: a missing or empty
label, a label name that no consumer could show (`check_label_names`), a lone surrogate
in a text, id or label, a file name that is not valid UTF-8, JSON nested too deeply or
with an over-long number: each is refused in one line naming the file and the line or
document.

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
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.errors import UserError

NEWSGROUPS = "20newsgroups"
NEWSGROUPS_ARCHIVE = "20news-bydate.tar.gz"
NEWSGROUPS_SPLITS = ("train", "test")
REMOVABLE_PARTS = ("headers", "footers", "quotes")
# fetch_20newsgroups shuffles twice: load_files with seed 0, then seed 42.
_LOAD_FILES_SEED, _FETCH_SEED = 0, 42
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A long-document tool reads long fields: the csv module stops at 131,072 characters.
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)
# No class name is longer; a longer "label" is a text in the label column, and a plot's
# axis or a table's column cannot show it.
MAX_LABEL_CHARS = 1000


def check_label_names(names, where: str) -> None:
    """What a class name may be, stated once for every consumer (report.md and report.html,
    the PNG plots, CSV and JSONL rows, the terminal's tab-separated lines); a UserError
    naming `where` and the name otherwise. A name is:

    - a non-empty string, not only whitespace;
    - valid UTF-8 (no lone surrogates);
    - printable (`str.isprintable`): no control character (a newline or tab would break
      one-line output), no invisible format character (zero-width spaces and joiners,
      right-to-left overrides: a name holding one looks like another name, or reorders
      the line around it), no line or paragraph separator;
    - at most MAX_LABEL_CHARS characters;
    - unique, also after Unicode normalisation (NFC): two classes shown alike would be
      scored as one.

    Everything else is shown as given: `$` (plots draw it as text, not as math), `<` and
    `&` (escaped in HTML and Markdown), right-to-left scripts, any language."""
    if not isinstance(names, (list, tuple)):
        raise UserError(f"{where}: the label names are not a list ({type(names).__name__})")
    seen = {}
    for name in names:
        if not isinstance(name, str):
            raise UserError(f"{where}: the label {str(name)[:80]!r} is not a string")
        shown = repr(name[:80]) + ("..." if len(name) > 80 else "")
        if not name.strip():
            raise UserError(f"{where}: the label is empty")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as error:
            raise UserError(f"{where}: the label holds a lone surrogate ({name[error.start:error.end]!r} at "
                            f"character {error.start})") from None
        if not name.isprintable():
            bad = next(c for c in name if not c.isprintable())
            raise UserError(f"{where}: the label {shown} holds a control character such as a newline or tab, "
                            f"or an invisible one (U+{ord(bad):04X} {unicodedata.name(bad, 'unnamed')})")
        if len(name) > MAX_LABEL_CHARS:
            raise UserError(f"{where}: the label {shown} is {len(name):,} characters long, more than the "
                            f"{MAX_LABEL_CHARS:,} a class name may have (is a text in the label field?)")
        key = unicodedata.normalize("NFC", name)
        if key in seen:
            same = "" if seen[key] == name else " (in another Unicode normalisation)"
            raise UserError(f"{where}: the label {shown} appears twice{same}")
        seen[key] = name


@dataclass
class Corpus:
    """Documents in a fixed order, with integer labels indexing `label_names`."""

    doc_ids: list[str]
    texts: list[str]
    labels: np.ndarray  # int64 [n_docs]
    label_names: list[str]
    source: str  # how to get these documents again, e.g. "20newsgroups:train"

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        """sha256 over label names, ids, labels and texts, in order."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.label_names).encode())
        for doc_id, label, text in zip(self.doc_ids, self.labels.tolist(), self.texts):
            for part in (doc_id, str(label), text):
                encoded = part.encode("utf-8", "surrogatepass")
                digest.update(len(encoded).to_bytes(8, "little"))
                digest.update(encoded)
        return digest.hexdigest()

    def head(self, limit: int | None) -> "Corpus":
        """The first `limit` documents (all of them when `limit` is None)."""
        if limit is None:
            return self
        if limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        return Corpus(
            self.doc_ids[:limit], self.texts[:limit], self.labels[:limit],
            self.label_names, f"{self.source}[:{limit}]",
        )


def load_corpus(
    data: str,
    split: str = "train",
    categories: list[str] | None = None,
    remove: tuple[str, ...] = (),
    data_home: str | None = None,
    limit: int | None = None,
) -> Corpus:
    """Load the documents named by `--data`; see the module docstring."""
    unknown = sorted(set(remove) - set(REMOVABLE_PARTS))
    if unknown:
        raise UserError(f"--remove takes {', '.join(REMOVABLE_PARTS)}; got {', '.join(unknown)}")
    if data == NEWSGROUPS:
        corpus = load_20newsgroups(split, categories, remove, data_home)
    else:
        corpus = _from_records(list(_user_records(data, remove, labelled=True)), str(Path(data)))
        if categories:
            corpus = keep_categories(corpus, categories)
    corpus = corpus.head(limit)
    if len(corpus) == 0:
        raise UserError(f"--data {data}: no documents found")
    check_label_names(corpus.label_names, f"--data {data}")  # every kind; user corpora per record too
    return corpus


# --- 20 Newsgroups -----------------------------------------------------------------


def newsgroups_search_path(data_home: str | None) -> list[Path]:
    """Where a local copy of the bydate archive is looked for, in order."""
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


# --- user corpora ------------------------------------------------------------------


def keep_categories(corpus: Corpus, categories: list[str]) -> Corpus:
    """Keep documents of `categories`, renumbering labels in sorted category order."""
    unknown = sorted(set(categories) - set(corpus.label_names))
    if unknown:
        raise UserError(f"--categories: unknown {', '.join(unknown)}; known: {', '.join(corpus.label_names)}")
    kept_names = sorted(set(categories), key=corpus.label_names.index)
    old_to_new = {corpus.label_names.index(name): new for new, name in enumerate(kept_names)}
    keep = [i for i, label in enumerate(corpus.labels.tolist()) if label in old_to_new]
    return Corpus(
        [corpus.doc_ids[i] for i in keep], [corpus.texts[i] for i in keep],
        np.asarray([old_to_new[int(corpus.labels[i])] for i in keep], dtype=np.int64),
        kept_names, corpus.source + f"[categories={','.join(kept_names)}]",
    )


def _from_records(records: list[tuple[str, str, str]], source: str) -> Corpus:
    """(doc_id, text, label name) records -> Corpus with labels in sorted name order."""
    label_names = sorted({label for _, _, label in records})
    index = {name: i for i, name in enumerate(label_names)}
    return Corpus([r[0] for r in records], [r[1] for r in records],
                  np.asarray([index[r[2]] for r in records], dtype=np.int64), label_names, source)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _user_records(data: str, remove, labelled: bool):
    """The (doc_id, text, label) records of a user corpus (folder, .csv, .jsonl), streamed;
    the path is checked now, the records as they are read."""
    path = Path(data)
    if remove:
        raise UserError("--remove applies only to --data 20newsgroups")
    if not path.exists():
        raise UserError(f"--data {data}: no such file or directory (nor a known dataset name: {NEWSGROUPS})")
    if path.is_dir():
        return _stream_folder(path, labelled)
    if path.suffix.lower() == ".csv":
        return _stream_csv(path, labelled)
    if path.suffix.lower() == ".jsonl":
        return _stream_jsonl(path, labelled)
    raise UserError(f"--data {data}: expected a folder of class folders, a .csv or a .jsonl file")


def _checked(where: str, doc_id: str, text: str, label: str | None,
             from_file_names: bool = False) -> tuple[str, str, str | None]:
    """The record, once it is safe to embed and to print; a UserError naming `where` if not.
    A label of None (an unlabelled record, where labels are optional) is not checked."""
    for name, value in (("id", doc_id), ("label", label), ("text", text)):
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            what = "a file name that is not UTF-8" if from_file_names and name != "text" else "a lone surrogate"
            raise UserError(f"{where}: the {name} holds {what} ({value[error.start:error.end]!r} at "
                            f"character {error.start})") from None
    if label is not None:
        check_label_names([label], where)
    return doc_id, text, label


def _record(row, where: str, default_id: str, labelled: bool) -> tuple[str, str, str | None]:
    """A CSV row or JSON object as a checked record. `labelled`: a label is required (training
    corpora); otherwise a missing or empty label is None (`predict --data`)."""
    if not isinstance(row, dict) or "text" not in row or (labelled and "label" not in row):
        raise UserError(f"{where}: each record needs " + ("'text' and 'label' fields" if labelled else "a 'text' field"))
    label = row.get("label")
    if labelled and label is None:
        raise UserError(f"{where}: the label is missing")
    if not labelled and label in (None, ""):
        label = None
    doc_id = row.get("id")
    return _checked(where, default_id if doc_id is None else str(doc_id), str(row["text"] or ""),
                    None if label is None else str(label))


# --- streaming: predict --data on corpora of any size --------------------------------


def iter_documents(data: str, split: str = "test", categories: list[str] | None = None,
                   remove: tuple[str, ...] = (), data_home: str | None = None, limit: int | None = None):
    """(doc_id, text, label name or None) of each document of `--data`, in `load_corpus`'s
    order, read one at a time: memory does not grow with the corpus (20 Newsgroups,
    which is small, is loaded whole). Labels are optional here: a CSV/JSONL row without
    a `label` field, or a file directly inside the folder, yields None. `categories`
    keeps documents of those labels. Checks the source now; reads lazily."""
    import itertools

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if data == NEWSGROUPS:
        corpus = load_corpus(data, split, categories, remove, data_home, limit)
        return ((i, t, corpus.label_names[k]) for i, t, k in zip(corpus.doc_ids, corpus.texts, corpus.labels))
    records = _user_records(data, remove, labelled=False)
    if categories:
        keep = set(categories)
        records = (r for r in records if r[2] in keep)
    return itertools.islice(records, limit)


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


def _stream_csv(path: Path, labelled: bool):
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))  # long documents are the point
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:  # -sig: a BOM is not text
            for n, row in enumerate(csv.DictReader(f), start=1):
                yield _record(row, f"{path} row {n}", f"row{n}", labelled)
    except (OSError, csv.Error) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def _stream_jsonl(path: Path, labelled: bool):
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
                yield _record(row, f"{path} line {n}", f"line{n}", labelled)
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
