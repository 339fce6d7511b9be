"""The rows `predict --data` writes: their format, the block plan, the finished blocks, `--out`.

Writes `<out>.partial/rows-START-END.part` (START, END: 12-digit document numbers, END
exclusive), the rows of documents START..END-1, one block of the plan, in the output's
format without the CSV header; then `--out`: the header followed by every block in order,
streamed from the block files (memory holds a copy buffer, not the output). Each file is
published by `longdoc.runtime.workdir.atomic_path` (private O_EXCL temporary, fsync, rename), so a
planted symlink is never written through and a full disk is one line naming the file.

A resume trusts a finished block only once it is proven (`RowBlocks.resume`): it is the
plan's block at its place, a regular file (not a link) ending in a newline, its rows
parse (the csv module, as a CSV cell may hold newlines; json for JSON lines) into the
format's columns, and their ids are the corpus's ids of that block, in order. A block
that fails is deleted with every block after it, and they are recomputed; an entry named
`rows-*` that is not a block name (a planted `rows-x-y.part`, a link, a folder) is
deleted when found, never read.

Under torchrun the plan is the same (it depends on the corpus alone, never on the number
of ranks): block b is classified by rank b mod N (`owner`), each rank keeps its own
blocks in the one shared work folder (`RowBlocks(owned=...)`), and rank 0 joins them all.
A run resumed on another number of ranks keeps every proven block.

CSV text cells (id, label, true_label, topK_label; labels and true_labels of label sets) that a spreadsheet would evaluate
(OWASP, "CSV injection": starting with `=`, `+`, `-`, `@`, a tab or a carriage return)
get one `'` in front, and so does a cell starting with `'`, so that dropping one leading
`'` from any cell that has one gives the value back exactly. Numbers and the JSON cells
(top_windows, top_terms) are never changed; JSON lines are written as they are.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

from longdoc.reports.label_set_rows import MULTI_LABEL, SINGLE_LABEL, join_cell
from longdoc.runtime.errors import UserError
from longdoc.runtime.workdir import atomic_path, atomic_write_bytes

# A block of --block-docs documents also ends at ~2M characters (~500k tokens, ~2,000
# windows), so a block of very long documents stays as small in memory as a block of posts.
BLOCK_CHARS = 2_000_000
BLOCK_NAME = re.compile(r"rows-(\d{12})-(\d{12})\.part")
# OWASP's list of cell starts a spreadsheet evaluates, and "'" so that the escape can be undone.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_safe(cell: str) -> str:
    """`cell` with one `'` in front when it starts with one of FORMULA_STARTS."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def _one_label(true_label):
    """A single-label row's true label: a multi-label corpus's set is written as one joined cell."""
    return true_label if true_label is None or isinstance(true_label, str) else join_cell(true_label)


def plan_blocks(records, block_docs: int):
    """(start, records) of consecutive runs of `records`: `block_docs` documents, or fewer
    at BLOCK_CHARS characters. The plan depends on the corpus alone, so a resumed run cuts
    the blocks an uninterrupted one cuts."""
    start, block, chars = 0, [], 0
    for record in records:
        block.append(record)
        chars += len(record[1])
        if len(block) >= block_docs or chars >= BLOCK_CHARS:
            yield start, block
            start, block, chars = start + len(block), [], 0
    if block:
        yield start, block


def owner(block: int, world_size: int) -> int:
    """The rank that classifies block number `block` of the plan: round robin, so every
    rank gets blocks from the whole corpus (a corpus sorted by length is shared evenly)
    and the blocks of a rank are a function of the plan and N alone."""
    return block % world_size


class RowFormat:
    """Rows of one output format: a header (CSV only) and one row per prediction (a
    `longdoc.predict.Prediction`), and the ids of the rows of a block file.

    Single-label rows: id, label, probability, true_label, windows, then every class's
    probability (or the top K), top_windows, top_terms. Multi-label rows (`task`
    "multi_label"): id, labels (the predicted set: label, probability, threshold, most
    probable first), true_labels, windows, then every label's probability (or the top K),
    explanations (per predicted label: its top_windows and top_terms). In CSV a set is one
    cell (`longdoc.reports.label_set_rows.join_cell`: `|`-joined, `\\|` inside a label), its
    probabilities and thresholds two more cells in the same order."""

    def __init__(self, kind: str, label_names: list[str], top_k: int, explain: int, terms: bool = False,
                 task: str = SINGLE_LABEL):
        self.kind, self.names, self.top_k, self.explain, self.terms = kind, label_names, top_k, explain, terms
        self.sets = task == MULTI_LABEL

    def columns(self) -> list[str]:
        classes = ([f"p:{n}" for n in self.names] if not self.top_k else
                   [c for i in range(1, self.top_k + 1) for c in (f"top{i}_label", f"top{i}_probability")])
        if self.sets:
            return ["id", "labels", "label_probabilities", "label_thresholds", "true_labels", "windows", *classes,
                    *(["explanations"] if self.explain or self.terms else [])]
        return ["id", "label", "probability", "true_label", "windows", *classes,
                *(["top_windows"] if self.explain else []), *(["top_terms"] if self.terms else [])]

    def keys(self) -> list[str]:
        """The keys of a JSON line, in order."""
        classes = "top" if self.top_k else "probabilities"
        if self.sets:
            return ["id", "labels", "true_labels", "windows", classes,
                    *(["explanations"] if self.explain or self.terms else [])]
        return ["id", "label", "probability", "true_label", "windows", classes,
                *(["top_windows"] if self.explain else []), *(["top_terms"] if self.terms else [])]

    def header(self) -> str:
        return self._csv(self.columns()) if self.kind == "csv" else ""

    def row(self, p) -> str:
        ranked = sorted(p.probabilities.items(), key=lambda kv: -kv[1])[:self.top_k or None]
        if self.sets:
            return self._set_row(p, ranked)
        if self.kind == "jsonl":
            record = {"id": p.source, "label": p.label, "probability": round(p.probability, 6),
                      "true_label": _one_label(p.true_label), "windows": p.windows}
            if self.top_k:
                record["top"] = [{"label": n, "probability": round(v, 6)} for n, v in ranked]
            else:
                record["probabilities"] = {n: round(v, 6) for n, v in p.probabilities.items()}
            if self.explain:
                record["top_windows"] = p.top_windows
            if self.terms:
                record["top_terms"] = p.top_terms
            return json.dumps(record, ensure_ascii=False) + "\n"
        safe = spreadsheet_safe
        classes = ([f"{p.probabilities[n]:.6f}" for n in self.names] if not self.top_k else
                   [c for n, v in ranked for c in (safe(n), f"{v:.6f}")])
        cells = [safe(p.source), safe(p.label), f"{p.probability:.6f}", safe(_one_label(p.true_label) or ""),
                 p.windows, *classes]
        if self.explain:
            cells.append(json.dumps(p.top_windows, ensure_ascii=False))
        if self.terms:
            cells.append(json.dumps(p.top_terms, ensure_ascii=False))
        return self._csv(cells)

    def _set_row(self, p, ranked) -> str:
        """A multi-label row; a single-label true label counts as a set of one."""
        true = None if p.true_label is None else [p.true_label] if isinstance(p.true_label, str) else list(
            p.true_label)
        explained = self.explain or self.terms
        if self.kind == "jsonl":
            record = {"id": p.source, "labels": p.labels, "true_labels": true, "windows": p.windows}
            if self.top_k:
                record["top"] = [{"label": n, "probability": round(v, 6)} for n, v in ranked]
            else:
                record["probabilities"] = {n: round(v, 6) for n, v in p.probabilities.items()}
            if explained:
                record["explanations"] = p.explanations
            return json.dumps(record, ensure_ascii=False) + "\n"
        safe = spreadsheet_safe
        classes = ([f"{p.probabilities[n]:.6f}" for n in self.names] if not self.top_k else
                   [c for n, v in ranked for c in (safe(n), f"{v:.6f}")])
        cells = [safe(p.source), safe(join_cell(x["label"] for x in p.labels)),
                 join_cell(f"{x['probability']:.6f}" for x in p.labels),
                 join_cell(f"{x['threshold']:.6f}" for x in p.labels),
                 safe(join_cell(true)) if true is not None else "", p.windows, *classes]
        if explained:
            cells.append(json.dumps(p.explanations, ensure_ascii=False))
        return self._csv(cells)

    def written_id(self, doc_id: str) -> str:
        """A document's id as its row holds it."""
        return spreadsheet_safe(doc_id) if self.kind == "csv" else doc_id

    def ids_in(self, f):
        """The id of each row of the binary file `f`, in order; ValueError (or csv.Error) at
        the first row this format does not write."""
        if self.kind == "jsonl":
            keys = self.keys()
            for line in f:
                record = json.loads(line)
                if (not line.endswith(b"\n") or not isinstance(record, dict) or list(record) != keys
                        or not isinstance(record["id"], str)):
                    raise ValueError("not a row of this format")
                yield record["id"]
            return
        width = len(self.columns())
        for cells in csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline=""), strict=True):
            if len(cells) != width:
                raise ValueError("not a row of this format")
            yield cells[0]

    @staticmethod
    def _csv(cells) -> str:
        """One CSV line ending in a newline. Written with \\r\\n, then cut to \\n: the csv
        module quotes a cell holding a character of its line terminator, so a cell with a lone
        carriage return is quoted too (with \\n alone it is not, and reads back as two rows)."""
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerow(cells)
        return buffer.getvalue()[:-2] + "\n"


class RowBlocks:
    """The blocks of rows in a work folder (`<out>.partial/` of a `longdoc.runtime.workdir.WorkDir`,
    whose lock the caller holds): found, proven before a resume trusts them, saved, joined.

    `owned`, the (start, end) of the blocks this rank classifies under torchrun (None: every
    block, one process), limits what it finds, proves and deletes to its own blocks; `tidy`
    (one process, or rank 0 before any rank writes) deletes what is planted."""

    def __init__(self, folder: Path, rows: RowFormat, owned: set[tuple[int, int]] | None = None, tidy: bool = True):
        self.folder, self.rows = Path(folder), rows
        self.trusting = True  # until a block fails its proof: from there on every block is recomputed
        self.found: dict[tuple[int, int], Path] = {}
        for path in sorted(self.folder.glob("rows-*")):
            name = BLOCK_NAME.fullmatch(path.name)
            if name and int(name[1]) < int(name[2]) and path.is_file() and not path.is_symlink():
                if owned is None or (int(name[1]), int(name[2])) in owned:
                    self.found[int(name[1]), int(name[2])] = path
            elif tidy:  # a name this module never writes, a link or a folder: planted, never read
                _remove(path)

    def resume(self, start: int, ids: list[str]) -> Path | None:
        """The finished block of the plan's documents `ids` (numbered from `start`), once
        proven; None when it is missing (it is computed now; the blocks after it are still
        proven one by one: under torchrun a gap is a block another rank had not finished) or
        fails its proof, and then it and every block found after it are deleted, to be
        recomputed."""
        path = self.found.pop((start, start + len(ids)), None)
        if path is None:
            return None
        if self.trusting and self._proven(path, ids):
            return path
        self.trusting = False
        for stale in [path, *self.found.values()]:
            if stale is not None:
                _remove(stale)
        self.found.clear()
        return None

    def _proven(self, path: Path, ids: list[str]) -> bool:
        """Whether `path` holds exactly one row for each of `ids`, in order, and nothing else."""
        expected = [self.rows.written_id(doc_id) for doc_id in ids]
        try:
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0 or os.pread(f.fileno(), 1, size - 1) != b"\n":  # empty, or cut inside a row
                    return False
                n = 0
                for n, row_id in enumerate(self.rows.ids_in(f), start=1):
                    if n > len(expected) or row_id != expected[n - 1]:
                        return False
                return n == len(expected)
        except (OSError, ValueError, RecursionError, csv.Error):  # unreadable, not UTF-8, not rows
            return False

    def path(self, start: int, end: int) -> Path:
        """Where the block of documents start..end-1 is kept."""
        return self.folder / f"rows-{start:012d}-{end:012d}.part"

    def save(self, start: int, predictions: list) -> Path:
        """Publish the rows of `predictions` (documents start..) as a finished block."""
        path = self.path(start, start + len(predictions))
        atomic_write_bytes(path, "".join(self.rows.row(p) for p in predictions).encode("utf-8"))
        return path

    def publish(self, out: Path, blocks: list[Path]):
        """`out`: the header, then each block's bytes in order, copied a buffer at a time."""
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            f.write(self.rows.header().encode("utf-8"))
            for path in blocks:
                with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as block:
                    shutil.copyfileobj(block, f)


def _remove(path: Path):
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as error:
        raise UserError(f"cannot remove {path}, a block that cannot be trusted: {error.strerror}; "
                        f"remove it, or pass --overwrite to start again") from None
