"""Do 20 Newsgroups' post numbers order posts in time? The fact `--val-split latest` rests on.

    .venv/bin/python bench/post_order.py --out docs/bench/post-order

The bydate distribution strips the Date header, but each post keeps the number its
newsgroup gave it on arrival (doc id `sci.space/61422`), and the test set is the later
period. Per newsgroup, this counts how many test posts are numbered above the 90th
percentile of the training posts (the cut `--val-split latest --val-fraction 0.1` makes),
and above the newest training post. Reads 20 Newsgroups (the shared copy or
scikit-learn's download, as `cli.py embed` does); writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np

from longdoc.corpus.sources import load_corpus
from longdoc.training.split import latest_split


def post_numbers(split: str) -> dict[str, np.ndarray]:
    corpus = load_corpus("20newsgroups", split, None, (), None, None)
    groups: dict[str, list[int]] = {}
    for doc_id in corpus.doc_ids:
        group, number = doc_id.rsplit("/", 1)
        groups.setdefault(group, []).append(int(number))
    return {group: np.asarray(numbers) for group, numbers in groups.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    train, test = post_numbers("train"), post_numbers("test")
    rows = []
    for group in sorted(train):
        # The cut latest_split makes in this group: its newest 10% of training posts.
        labels = np.zeros(len(train[group]), dtype=np.int64)
        ids = [f"{group}/{n}" for n in train[group]]
        _, val = latest_split(labels, ids, 0.1)
        cut = train[group][val].min()
        rows.append({"group": group, "train": len(train[group]), "test": len(test[group]),
                     "test_above_latest_cut": float((test[group] >= cut).mean()),
                     "test_above_newest_train": float((test[group] > train[group].max()).mean())})
    n_test = sum(r["test"] for r in rows)
    overall = sum(r["test_above_latest_cut"] * r["test"] for r in rows) / n_test
    newest = sum(r["test_above_newest_train"] * r["test"] for r in rows) / n_test
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "test_above_latest_cut": overall, "test_above_newest_train": newest,
         "date": datetime.date.today().isoformat()}, indent=1) + "\n")
    lines = ["# 20 Newsgroups: are test posts numbered after the training posts?", "",
             f"`.venv/bin/python bench/post_order.py --out {args.out}`; {datetime.date.today().isoformat()}.", "",
             "| newsgroup | train | test | test posts numbered at or above the newest 10% of train "
             "(`--val-split latest`'s cut) | test posts numbered above every training post |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['group']} | {r['train']} | {r['test']} | {r['test_above_latest_cut']:.1%} | "
                     f"{r['test_above_newest_train']:.1%} |")
    lines.append(f"| all | {sum(r['train'] for r in rows)} | {n_test} | {overall:.1%} | {newest:.1%} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
