"""User corpora: a folder of class folders, a `.csv` or a `.jsonl` file, streamed record by
record as (doc_id, text, label) and checked as they are read (`longdoc.corpus.sources` says
what is accepted and what is refused). Reads, never writes.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from longdoc.corpus.builtin import BUILT_IN_CORPORA, LABEL_SEP, NEWSGROUPS
from longdoc.runtime.errors import UserError
from longdoc.settings.labels import check_label_names

# A long-document tool reads long fields: the csv module stops at 131,072 characters.
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def refuse_remove(remove) -> None:
    if remove:
        raise UserError(f"--remove applies only to --data {NEWSGROUPS}")


def user_records(data: str, remove, labelled: bool, label_sep: str = LABEL_SEP):
    """The (doc_id, text, label) records of a user corpus (folder, .csv, .jsonl), streamed;
    the path is checked now, the records as they are read."""
    path = Path(data)
    refuse_remove(remove)
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



def of_categories(records, keep: set[str]):
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
