"""Stage-two benchmark: every pooling head beside simple baselines, one setting per run.

    .venv/bin/python bench/heads.py --setting 3class  --out docs/bench/heads-3class.md
    .venv/bin/python bench/heads.py --setting 20class --out docs/bench/heads-20class.md

Settings (bydate test set):
  20class  all 20 classes, full posts; uses data/cache/{train,test}.h5 from `make embed`
           (waits for them with --wait, never makes them: that is a 30-minute job)
  3class   alt.atheism, comp.graphics, talk.religion.misc with headers, footers and
           quotes removed; makes data/cache/3class-{train,test}.h5 itself if missing

For the setting, in one invocation:
  * `cli.py train-head --pooling P --seed 0` for every pooling, each in its own
    process (wall time and peak RSS of that process), scored by `evaluate` on test;
  * logistic regression (standardised features, C=1; C=0.1 for 3class as in
    ../shared/datasets/README.md) on the first window's vector and on the mean of
    the windows of the same caches;
  * TF-IDF (sublinear tf, max_df 0.5, min_df 2) + LinearSVC (C=1) on the raw texts;
  * the best pooling *by validation macro-F1* (never by test) again with seeds 1 and 2:
    mean and sample standard deviation over seeds 0-2.
Writes a markdown table to stdout and to --out.
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

from machine import cpu_name  # noqa: E402  (bench/machine.py, beside this file)

from longdoc.cache.reader import open_cache  # noqa: E402
from longdoc.configs import EvaluateConfig  # noqa: E402
from longdoc.corpus.sources import load_corpus  # noqa: E402
from longdoc.evaluate import run as run_evaluate  # noqa: E402
from longdoc.heads.checkpoint import load_checkpoint  # noqa: E402
from longdoc.reports.metrics import scores  # noqa: E402
from longdoc.settings.model import POOLINGS  # noqa: E402

SETTINGS = {
    "20class": dict(categories=None, remove=(), train="data/cache/train.h5", test="data/cache/test.h5",
                    make=False, lr_c=1.0),
    "3class": dict(categories=["alt.atheism", "comp.graphics", "talk.religion.misc"],
                   remove=("headers", "footers", "quotes"), train="data/cache/3class-train.h5",
                   test="data/cache/3class-test.h5", make=True, lr_c=0.1),
}


def ensure_caches(setting: dict, wait: bool):
    for split in ("train", "test"):
        path = ROOT / setting[split]
        if path.exists():
            continue
        if setting["make"]:
            args = ["embed", "--split", split, "--out", str(path), "--no-progress"]
            if setting["categories"]:
                args += ["--categories", ",".join(setting["categories"])]
            if setting["remove"]:
                args += ["--remove", ",".join(setting["remove"])]
            subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, check=True)
        elif wait:
            print(f"waiting for {path} ...", file=sys.stderr)
            while not path.exists():
                time.sleep(30)
        else:
            sys.exit(f"{path} is missing: run `make embed` first (or pass --wait)")


def train_head(train: Path, out: Path, pooling: str, seed: int, extra: list[str]) -> dict:
    """Run `cli.py train-head` in a child process: its wall time, and the peak RSS it reports."""
    args = [sys.executable, str(ROOT / "cli.py"), "train-head", "--train", str(train), "--out", str(out),
            "--pooling", pooling, "--seed", str(seed), "--no-progress", "--overwrite", *extra]
    start = time.perf_counter()
    child = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"train-head failed:\n{stderr}")
    peak = json.loads(stdout.strip().splitlines()[-1])["peak_memory_bytes"] / 2**30
    print(stdout.strip(), file=sys.stderr)
    return {"seconds": seconds, "peak_gib": peak}


def head_row(name: str, head: Path, test: Path, run: dict) -> dict:
    checkpoint = load_checkpoint(head)
    metrics = run_evaluate(EvaluateConfig(head=str(head), cache=str(test))).metrics
    return {"method": name, "val_f1": checkpoint.training["val_macro_f1"], "acc": metrics["accuracy"],
            "f1": metrics["macro_f1"], "epochs": f"{checkpoint.training['best_epoch']}/"
            f"{len(checkpoint.training['history'])}", "seconds": run["seconds"], "peak_gib": run["peak_gib"],
            "parameters": checkpoint.head.n_parameters()}


def pooled_features(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first-window vectors, mean of window vectors, labels) of a cache."""
    with open_cache(path) as cache:
        vectors = cache.embeddings[:]
        offsets = cache.doc_offsets
        first = vectors[offsets[:-1]]
        mean = np.add.reduceat(vectors, offsets[:-1], axis=0) / cache.window_counts[:, None]
        return first, mean, cache.labels.copy()


def acc_f1(y_true, y_pred) -> dict:
    result = scores(y_true, y_pred)
    return {"acc": result["accuracy"], "f1": result["macro_f1"]}


def logistic_rows(train: Path, test: Path, c: float) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tr_first, tr_mean, y_train = pooled_features(train)
    te_first, te_mean, y_test = pooled_features(test)
    rows = []
    for name, x_train, x_test in (("first window", tr_first, te_first), ("mean of windows", tr_mean, te_mean)):
        start = time.perf_counter()
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
        model.fit(x_train, y_train)
        rows.append({"method": f"logistic regression, {name} (C={c:g})",
                     **acc_f1(y_test, model.predict(x_test)), "seconds": time.perf_counter() - start})
    return rows


def tfidf_row(setting: dict) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    train = load_corpus("20newsgroups", "train", setting["categories"], setting["remove"])
    test = load_corpus("20newsgroups", "test", setting["categories"], setting["remove"])
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(sublinear_tf=True, max_df=0.5, min_df=2)
    model = LinearSVC(C=1.0).fit(vectorizer.fit_transform(train.texts), train.labels)
    predicted = model.predict(vectorizer.transform(test.texts))
    return {"method": "TF-IDF + LinearSVC (C=1), raw texts",
            **acc_f1(test.labels, predicted), "seconds": time.perf_counter() - start}


def fmt(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--poolings", default=",".join(POOLINGS))
    parser.add_argument("--seeds", default="0,1,2", help="seeds for the best pooling (the first is the sweep's)")
    parser.add_argument("--wait", action="store_true", help="wait for missing 20class caches")
    parser.add_argument("--extra", default="", help="more train-head options for every head, e.g. '--dropout 0.3'")
    args = parser.parse_args()

    setting = SETTINGS[args.setting]
    ensure_caches(setting, args.wait)
    train, test = ROOT / setting["train"], ROOT / setting["test"]
    runs = args.runs / args.setting
    runs.mkdir(parents=True, exist_ok=True)
    extra = args.extra.split()
    seeds = [int(s) for s in args.seeds.split(",")]

    heads = []
    for pooling in args.poolings.split(","):
        out = runs / f"{pooling}-seed{seeds[0]}.pt"
        heads.append(head_row(f"head: {pooling}", out, test, train_head(train, out, pooling, seeds[0], extra)))
    best = max(heads, key=lambda row: row["val_f1"])
    best_pooling = best["method"].split(": ")[1]
    seed_rows = [best]
    for seed in seeds[1:]:
        out = runs / f"{best_pooling}-seed{seed}.pt"
        run = train_head(train, out, best_pooling, seed, extra)
        seed_rows.append(head_row(f"head: {best_pooling}", out, test, run))
    baselines = [*logistic_rows(train, test, setting["lr_c"]), tfidf_row(setting)]

    with open_cache(train) as c_train, open_cache(test) as c_test:
        sizes = (f"{c_train.n_docs:,} train / {c_test.n_docs:,} test documents, "
                 f"{int(c_train.doc_offsets[-1]):,} / {int(c_test.doc_offsets[-1]):,} windows of "
                 f"{c_train.attrs['chunk_tokens']} tokens (stride {c_train.attrs['stride']}), "
                 f"{c_train.attrs['model']} at {c_train.attrs['precision']}")
    lines = [f"Setting `{args.setting}`: {sizes}. Heads: seed {seeds[0]}, validation = 10% of train "
             f"(stratified){', extra options ' + repr(args.extra) if args.extra else ''}.", "",
             "| method | val macro-F1 | test accuracy | test macro-F1 | best epoch / run | train-head wall s "
             "| peak RSS GiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in heads:
        lines.append(f"| {row['method']} | {fmt(row['val_f1'])} | {fmt(row['acc'])} | {fmt(row['f1'])} | "
                     f"{row['epochs']} | {row['seconds']:.1f} | {row['peak_gib']:.2f} |")
    for row in baselines:
        lines.append(f"| {row['method']} | - | {fmt(row['acc'])} | {fmt(row['f1'])} | - | "
                     f"{row['seconds']:.1f} (fit) | - |")
    walls = ", ".join(f"{r['seconds']:.1f}" for r in seed_rows)
    acc = np.array([r["acc"] for r in seed_rows])
    f1 = np.array([r["f1"] for r in seed_rows])
    spread = (lambda a: a.std(ddof=1) if len(a) > 1 else 0.0)
    lines += ["", f"Best pooling on validation: **{best_pooling}**. Over seeds {args.seeds}: test accuracy "
              f"{acc.mean():.4f} ± {spread(acc):.4f}, macro-F1 {f1.mean():.4f} ± {spread(f1):.4f} "
              f"(mean ± sample std; per seed: {', '.join(f'{a:.4f}' for a in acc)}); train-head wall "
              f"{walls} s, peak RSS "
              f"{max(r['peak_gib'] for r in seed_rows):.2f} GiB.",
              "", f"Machine: {cpu_name()}, {os.cpu_count()} cores; "
              f"`{shlex.join(['.venv/bin/python', *sys.argv])}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
