"""Stage two with and without terms: windows only, terms only, both, beside TF-IDF + LinearSVC.

    .venv/bin/python bench/fused.py --setting 20class --out docs/bench/fused-20class
    .venv/bin/python bench/fused.py --setting 3class --train data/cache/3class-train.h5 \\
        --test data/cache/3class-test.h5 --out docs/bench/fused-3class

Settings (bydate test set), on caches made by `cli.py embed` with its defaults (terms on,
`--window-vector auto`): 20class = all classes, full posts (`make embed`); 3class =
alt.atheism, comp.graphics, talk.religion.misc with headers, footers and quotes removed
(`--categories ... --remove headers,footers,quotes`).

In one invocation, on the same caches:
  * TF-IDF (sublinear tf, max_df 0.5, min_df 2) + LinearSVC (C=1) on the raw texts: the
    reference of ../shared/datasets/README.md, with its own fitted vocabulary;
  * the same TF-IDF + LinearSVC on the cache's hashed term counts (what the term branch reads);
  * `cli.py train-head --inputs terms | windows | both` (each pooling in --poolings for the
    last two), every one with each seed in --seeds, each in its own process (wall time and
    peak memory from its `--json` summary), scored by `cli.py evaluate --json` on test.
Every setting of every head is the command's default unless --extra says otherwise; nothing
is chosen on the test set. Writes OUT.json (every run) and OUT.md (the table); OUT.json is
rewritten after every head, so a run stopped part-way keeps what it finished.

`--jobs N` trains N heads at once (each head uses one torch thread and, when it has a linear
branch, one liblinear thread): for a many-core machine where accuracy is what is measured.
Their wall times then share the machine and are marked so in the table; time heads with
the default, one at a time, on a machine left alone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
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

from longdoc.cache.reader import open_cache  # noqa: E402
from longdoc.corpus.sources import load_corpus  # noqa: E402
from longdoc.reports.metrics import scores  # noqa: E402

SETTINGS = {
    "20class": dict(categories=None, remove=(), train="data/cache/train.h5", test="data/cache/test.h5"),
    "3class": dict(categories=["alt.atheism", "comp.graphics", "talk.religion.misc"],
                   remove=("headers", "footers", "quotes"), train="data/cache/3class-train.h5",
                   test="data/cache/3class-test.h5"),
}


def cli_json(*args: str) -> dict:
    """Run `cli.py ARGS --json` in a child process and return its JSON summary."""
    child = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args, "--json"], cwd=ROOT,
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(f"cli.py {shlex.join(args)} failed:\n{child.stderr}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def head_run(train: Path, test: Path, out: Path, inputs: str, pooling: str, seed: int, extra: list[str]) -> dict:
    trained = cli_json("train-head", "--train", str(train), "--out", str(out), "--inputs", inputs,
                       "--pooling", pooling, "--seed", str(seed), "--no-progress", "--overwrite", *extra)
    metrics = cli_json("evaluate", "--head", str(out), "--cache", str(test))["metrics"]
    return {"inputs": inputs, "pooling": pooling if inputs != "terms" else "-", "seed": seed,
            "val_macro_f1": trained["val_macro_f1"], "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "seconds": trained["seconds"],
            "peak_gib": trained["peak_memory_bytes"] / 2**30, "parameters": trained["parameters"],
            "best_epoch": trained["best_epoch"], "epochs_run": trained["epochs_run"],
            "branches": metrics.get("branches")}  # a fused head's branches scored alone (evaluate)


def hashed_tfidf(train_counts, test_counts):
    """The reference TF-IDF of hashed term counts (CSR, rows: documents): sublinear tf, idf from
    the training rows, terms in at least 2 and at most half of them. Returns (train, test) rows."""
    from sklearn.feature_extraction.text import TfidfTransformer

    df = np.bincount(train_counts.indices, minlength=train_counts.shape[1])
    kept = np.flatnonzero((df >= 2) & (df <= 0.5 * train_counts.shape[0]))
    tfidf = TfidfTransformer(sublinear_tf=True).fit(train_counts[:, kept])
    return tfidf.transform(train_counts[:, kept]), tfidf.transform(test_counts[:, kept])


def svc_rows(setting: dict, train: Path, test: Path) -> list[dict]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    rows = []
    texts = {split: load_corpus("20newsgroups", split, setting["categories"], setting["remove"])
             for split in ("train", "test")}
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(sublinear_tf=True, max_df=0.5, min_df=2)
    model = LinearSVC(C=1.0).fit(vectorizer.fit_transform(texts["train"].texts), texts["train"].labels)
    predicted = model.predict(vectorizer.transform(texts["test"].texts))
    rows.append({"method": "TF-IDF + LinearSVC (C=1), fitted vocabulary, raw texts",
                 **_scored(texts["test"].labels, predicted), "seconds": time.perf_counter() - start})

    with open_cache(train) as c_train, open_cache(test) as c_test:
        x_train, y_train = c_train.term_rows(np.arange(c_train.n_docs)), c_train.labels.copy()
        x_test, y_test = c_test.term_rows(np.arange(c_test.n_docs)), c_test.labels.copy()
    start = time.perf_counter()
    tfidf_train, tfidf_test = hashed_tfidf(x_train, x_test)
    model = LinearSVC(C=1.0).fit(tfidf_train, y_train)
    predicted = model.predict(tfidf_test)
    rows.append({"method": "TF-IDF + LinearSVC (C=1), the cache's hashed unigrams + bigrams",
                 **_scored(y_test, predicted), "seconds": time.perf_counter() - start})
    return rows


def _scored(y_true, y_pred) -> dict:
    result = scores(np.asarray(y_true), np.asarray(y_pred))
    return {"accuracy": result["accuracy"], "macro_f1": result["macro_f1"]}


def table(runs: list[dict], baselines: list[dict], header: str, command: str, jobs: int = 1) -> str:
    spread = (lambda a: float(np.std(a, ddof=1)) if len(a) > 1 else 0.0)
    lines = [header, "",
             "| inputs | pooling | val macro-F1 | test accuracy | test macro-F1 | seeds | train-head s | peak GiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["inputs"], run["pooling"]), []).append(run)
    for (inputs, pooling), group in groups.items():
        acc = [r["accuracy"] for r in group]
        f1 = [r["macro_f1"] for r in group]
        lines.append(f"| {inputs} | {pooling} | {np.mean([r['val_macro_f1'] for r in group]):.4f} | "
                     f"{np.mean(acc):.4f} ± {spread(acc):.4f} | {np.mean(f1):.4f} ± {spread(f1):.4f} | "
                     f"{len(group)} | {np.mean([r['seconds'] for r in group]):.0f} | "
                     f"{max(r['peak_gib'] for r in group):.2f} |")
    for row in baselines:
        lines.append(f"| {row['method']} | - | - | {row['accuracy']:.4f} | {row['macro_f1']:.4f} | - | "
                     f"{row['seconds']:.0f} (fit) | - |")
    shared = (f" The {len(runs)} heads ran {jobs} at a time, so their train-head seconds share the machine "
              "and are not timings of one head alone." if jobs > 1 else "")
    lines += ["", "Mean ± sample standard deviation over seeds; val macro-F1 is the head's own choice of epoch "
              f"on its 10% validation split, never the test set.{shared}", "",
              f"Machine: {machine_name()}; `{command}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--train", type=Path, default=None, help="train cache (default: the setting's)")
    parser.add_argument("--test", type=Path, default=None, help="test cache (default: the setting's)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-fused")
    parser.add_argument("--poolings", default="lstm,mean")
    parser.add_argument("--inputs", default="terms,windows,both")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--extra", default="", help="more train-head options for every head")
    parser.add_argument("--jobs", type=int, default=1, help="heads trained at once (1: one at a time, for timings)")
    args = parser.parse_args()

    setting = SETTINGS[args.setting]
    train = args.train or ROOT / setting["train"]
    test = args.test or ROOT / setting["test"]
    runs_dir = args.runs / args.setting
    runs_dir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    planned = [(inputs, pooling, seed) for inputs in args.inputs.split(",")
               for pooling in (["lstm"] if inputs == "terms" else args.poolings.split(","))
               for seed in seeds]
    command = shlex.join([".venv/bin/python", *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "machine": machine_name(), "jobs": args.jobs, "runs": [], "baselines": []}

    def save():
        Path(f"{args.out}.json").write_text(json.dumps(record, indent=1))

    def one(inputs: str, pooling: str, seed: int) -> dict:
        out = runs_dir / f"{inputs}-{pooling}-seed{seed}.pt"
        return head_run(train, test, out, inputs, pooling, seed, args.extra.split())

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        baselines = pool.submit(svc_rows, setting, train, test)  # in this process, beside the heads
        for future in [pool.submit(one, *plan) for plan in planned]:
            record["runs"].append(future.result())  # in plan order, whichever finishes first
            print(json.dumps(record["runs"][-1]), file=sys.stderr, flush=True)
            save()
        record["baselines"] = baselines.result()
        save()
    runs, baselines = record["runs"], record["baselines"]

    with open_cache(train) as c_train, open_cache(test) as c_test:
        header = (f"Setting `{args.setting}`: {c_train.n_docs:,} train / {c_test.n_docs:,} test documents, "
                  f"{int(c_train.doc_offsets[-1]):,} / {int(c_test.doc_offsets[-1]):,} windows of "
                  f"{c_train.attrs['chunk_tokens']} tokens (stride {c_train.attrs['stride']}), "
                  f"{c_train.attrs['model']} at {c_train.attrs['precision']}, window vector "
                  f"{c_train.attrs.get('window_vector', 'cls')}"
                  f"{', extra options ' + repr(args.extra) if args.extra else ''}.")
    text = table(runs, baselines, header, command, args.jobs)
    Path(f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
