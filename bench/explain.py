"""Explanations benchmark: explain every document of a cache, and check that they mean something.

    .venv/bin/python bench/explain.py --head runs/head.pt --cache data/cache/test.h5 \\
        --data 20newsgroups --split test --out docs/bench/explain-20class.json

In one process, with the library's own functions:
  * time `longdoc.explain.contributions.explain_documents` on every document of the cache, all windows
    (leave-one-out, the head's predicted class), and the process's peak RSS after it
    (targets on all of 20 Newsgroups' test set, 7,532 posts: under 2 minutes, under 2 GB);
  * with --data: time mapping every window of every document back to its characters
    (`longdoc.explain.text`: the corpus checked against the cache, tokenizer offsets);
  * deletion check: accuracy of the head with each document's top-1 window (by the
    explanation) left out, against leaving out a random window (mean over --seeds
    seeds), and how often the prediction changes either way. One-window documents keep
    their window in both; figures are given over all documents and over the
    multi-window ones only;
  * with --data and --report-dir: `longdoc.evaluate.evaluate` writes the full report,
    and the size of report.html is recorded (target: under 20 MB for the test set).
Reads the head (--head), its cache (--cache) and, with --data, the corpus and the
tokenizer; writes JSON to --out (and the report to --report-dir) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from machine import machine_name  # noqa: E402  (bench/machine.py, beside this file)

from longdoc.cache.reader import open_cache
from longdoc.explain.contributions import explain_documents, logits_without
from longdoc.explain.text import WindowMapper, cached_geometry, load_cache_corpus
from longdoc.heads.batches import CacheDocuments, predict_logits
from longdoc.heads.checkpoint import check_compatible, labels_by_name, load_checkpoint
from longdoc.runtime.process import peak_memory_bytes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", default="runs/head.pt")
    parser.add_argument("--cache", default="data/cache/test.h5")
    parser.add_argument("--data", default=None, help="the cache's corpus (embed's --data), to time the text mapping")
    parser.add_argument("--split", default="test")
    parser.add_argument("--categories", default=None)
    parser.add_argument("--remove", default=None)
    parser.add_argument("--limit", type=int, default=None, help="as given to embed for this cache")
    parser.add_argument("--seeds", type=int, default=3, help="random-window deletions to average")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--report-dir", default=None, help="also write the full evaluate report here (needs --data)")
    parser.add_argument("--out", default="docs/bench/explain.json")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    split_list = (lambda v: [x for x in v.split(",") if x] if v else None)
    corpus_args = None if args.data is None else dict(
        data=args.data, split=args.split, categories=split_list(args.categories),
        remove=tuple(split_list(args.remove) or ()), limit=args.limit)
    result = {"command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]), "machine": machine_name(),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "torch_threads": torch.get_num_threads(), "head": args.head, "cache": args.cache}
    checkpoint = load_checkpoint(args.head)
    with open_cache(args.cache) as cache:
        check_compatible(checkpoint, cache)
        labels = labels_by_name(checkpoint, cache)
        documents = CacheDocuments.from_cache(cache, labels=labels, term_weights=checkpoint.terms)
        counts = cache.window_counts
        result.update(documents=int(cache.n_docs), windows=int(counts.sum()), longest_document_windows=int(counts.max()),
                      pooling=checkpoint.head.config.pooling, inputs=checkpoint.head.config.inputs,
                      rss_before_gib=round(peak_memory_bytes() / 2**30, 3))

        started = time.perf_counter()
        explanations = explain_documents(checkpoint.head, documents)
        result["explain_seconds"] = round(time.perf_counter() - started, 2)
        result["peak_rss_after_explain_gib"] = round(peak_memory_bytes() / 2**30, 3)

        if corpus_args is not None:
            started = time.perf_counter()
            corpus = load_cache_corpus(cache, **corpus_args)
            docs = np.arange(cache.n_docs)
            doc_tokens, starts = cached_geometry(cache, docs)
            WindowMapper.for_cache(cache).spans(corpus.doc_ids, corpus.texts, doc_tokens, starts)
            result["map_to_text_seconds"] = round(time.perf_counter() - started, 2)
            del corpus

    predicted = np.array([e.target for e in explanations])
    full = predict_logits(checkpoint.head, documents).argmax(1)
    assert (full == predicted).all()
    docs = np.arange(len(labels))
    multi = counts > 1
    top1 = np.array([int(e.ranked(1)[0]) for e in explanations])
    top1_pred = logits_without(checkpoint.head, documents, docs, top1).argmax(1)
    random_acc, random_acc_multi, random_changed = [], [], []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        drop = (rng.random(len(counts)) * counts).astype(np.int64)
        pred = logits_without(checkpoint.head, documents, docs, drop).argmax(1)
        random_acc.append(float(np.mean(pred == labels)))
        random_acc_multi.append(float(np.mean(pred[multi] == labels[multi])))
        random_changed.append(float(np.mean(pred[multi] != full[multi])))
    result["deletion"] = {
        "multi_window_documents": int(multi.sum()),
        "accuracy": round(float(np.mean(full == labels)), 4),
        "accuracy_without_top1_window": round(float(np.mean(top1_pred == labels)), 4),
        "accuracy_without_random_window": round(float(np.mean(random_acc)), 4),
        "multi_window_accuracy": round(float(np.mean(full[multi] == labels[multi])), 4),
        "multi_window_accuracy_without_top1_window": round(float(np.mean(top1_pred[multi] == labels[multi])), 4),
        "multi_window_accuracy_without_random_window": round(float(np.mean(random_acc_multi)), 4),
        # the direct test: how often the prediction changes (misclassified documents can turn
        # right when their top window goes, which makes accuracy alone understate it)
        "multi_window_prediction_changed_without_top1_window": round(float(np.mean(top1_pred[multi] != full[multi])), 4),
        "multi_window_prediction_changed_without_random_window": round(float(np.mean(random_changed)), 4),
        "random_seeds": args.seeds,
    }
    if args.report_dir and corpus_args is not None:
        from longdoc.configs import EvaluateConfig
        from longdoc.evaluate import run as run_evaluate

        started = time.perf_counter()
        run_evaluate(EvaluateConfig(head=str(args.head), cache=str(args.cache), report=str(args.report_dir), **corpus_args))
        result["report_seconds"] = round(time.perf_counter() - started, 2)
        result["report_html_mb"] = round((Path(args.report_dir) / "report.html").stat().st_size / 1e6, 2)
    result["peak_rss_gib"] = round(peak_memory_bytes() / 2**30, 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
