"""Many labels: how `train-head` and `predict` grow with the number of labels (200, 2,000, 10,000).

    .venv/bin/python bench/many_labels.py --labels 200,2000,10000 --out docs/bench/many-labels

For each label count L, a synthetic multi-label corpus (JSON lines, `labels` lists) of
--docs documents (default 20,000): each document draws 1 to 4 labels from a Zipf
distribution over the L labels (exponent 1.1: a few labels on thousands of documents, most
on a handful, as in real tagging data), and its text is filler words with three marker words
of each of its labels scattered through it, so the task is learnable and a bag of words can
find every label. Then, each step a whole process timed with its own peak resident memory:

  1. `cli.py embed` of the training corpus (the packaged MiniLM; the documents are short, so
     this measures nothing of interest about labels and is reported once);
  2. `cli.py train-head` with its defaults on that cache: seconds, peak memory, head file size;
  3. `cli.py predict --data` on --predict-docs (default 1,000) new documents of the same kind:
     seconds and peak memory.

Targets (issue 25): at 2,000 labels `train-head` under 6 GB peak and a head file under 1 GB;
`predict` on 1,000 documents under 2 GB. Writes OUT.json (each row as it finishes) and OUT.md.
Everything else (corpora, caches, heads) goes under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from machine import machine_name  # noqa: E402  (bench/machine.py, beside this file)

FILLER = ("the a of and to in is it that for on with as was he be by at this have from or one had "
          "market price report said would year new company group share bank rate trade").split()
ZIPF_EXPONENT = 1.1
WORDS_PER_DOC = 40


def write_corpus(path: Path, n_docs: int, n_labels: int, seed: int) -> dict:
    """A JSON-lines corpus of `n_docs` documents over `n_labels` labels; returns its statistics."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_labels + 1) ** ZIPF_EXPONENT
    weights /= weights.sum()
    used = np.zeros(n_labels, dtype=np.int64)
    with open(path, "w") as out:
        for doc in range(n_docs):
            labels = np.unique(rng.choice(n_labels, size=int(rng.integers(1, 5)), p=weights))
            used[labels] += 1
            words = list(rng.choice(FILLER, WORDS_PER_DOC))
            for label in labels:
                for marker in range(3):
                    words.insert(int(rng.integers(len(words) + 1)), f"tag{label}x{marker}")
            out.write(json.dumps({"id": f"d{doc}", "text": " ".join(words),
                                  "labels": [f"label-{label}" for label in labels]}) + "\n")
    return {"docs": n_docs, "labels_used": int((used > 0).sum()), "labels_per_doc": float(used.sum() / n_docs)}


def timed(*args: str) -> tuple[dict, float, float | None]:
    """Run `cli.py ARGS --json` in a child process: (its summary, seconds, its own peak memory in GiB,
    from the summary's `peak_memory_bytes`, None where the command reports none)."""
    start = time.perf_counter()
    child = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args, "--json"], cwd=ROOT,
                           capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"cli.py {shlex.join(args)} failed:\n{child.stderr}")
    summary = json.loads(child.stdout.strip().splitlines()[-1])
    own = summary.get("peak_memory_bytes")
    return summary, seconds, (own / 2**30 if own else None)


def write_table(record: dict, out: Path, docs: int, predict_docs: int) -> str:
    """OUT.md from the rows so far (written after each label count, so a stopped run keeps its table)."""
    lines = [f"Synthetic multi-label corpora of {docs:,} training documents (Zipf {ZIPF_EXPONENT} over the "
             f"labels, 1-4 per document), `predict --data` on {predict_docs:,} new ones; whole processes.", "",
             "| labels | labels used | labels / doc | train-head s | train-head peak GiB | head MiB | "
             "val micro-F1 | predict s | predict peak GiB |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in record["rows"]:
        f1 = f"{row['val_micro_f1']:.4f}" if row["val_micro_f1"] is not None else "-"
        lines.append(f"| {row['labels']:,} | {row['labels_used']:,} | {row['labels_per_doc']:.2f} | "
                     f"{row['train_head_s']:.0f} | {row['train_head_gib']:.2f} | {row['head_mb']:.1f} | {f1} | "
                     f"{row['predict_s']:.0f} | {row['predict_gib']:.2f} |")
    lines += ["", f"Machine: {record['machine']}; `{record['command']}`; {record['date']}."]
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", default="200,2000,10000")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--predict-docs", type=int, default=1_000)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-many-labels")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--extra", default="", help="more train-head options")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": shlex.join([".venv/bin/python", *sys.argv]), "machine": machine_name(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}
    for n_labels in (int(n) for n in args.labels.split(",")):
        work = args.work / f"labels-{n_labels}"
        work.mkdir(exist_ok=True)
        stats = write_corpus(work / "train.jsonl", args.docs, n_labels, seed=0)
        write_corpus(work / "new.jsonl", args.predict_docs, n_labels, seed=1)
        embedded, embed_s, embed_gib = timed("embed", "--data", str(work / "train.jsonl"), "--out",
                                             str(work / "train.h5"), "--overwrite", "--no-progress")
        trained, train_s, train_gib = timed("train-head", "--train", str(work / "train.h5"), "--out",
                                            str(work / "head.pt"), "--overwrite", "--no-progress", *args.extra.split())
        predicted, predict_s, predict_gib = timed("predict", "--head", str(work / "head.pt"), "--data",
                                                  str(work / "new.jsonl"), "--out", str(work / "new-predictions.jsonl"),
                                                  "--overwrite", "--no-progress")
        record["rows"].append({"labels": n_labels, **stats, "embed_s": embed_s, "embed_gib": embed_gib,
                               "train_head_s": train_s, "train_head_gib": train_gib,
                               "head_mb": (work / "head.pt").stat().st_size / 2**20,
                               "val_micro_f1": trained.get("val_micro_f1"), "predict_s": predict_s,
                               "predict_gib": predict_gib})
        print(json.dumps(record["rows"][-1]), file=sys.stderr, flush=True)
        Path(f"{args.out}.json").write_text(json.dumps(record, indent=1))
        table = write_table(record, args.out, args.docs, args.predict_docs)
    print(table)


if __name__ == "__main__":
    main()
