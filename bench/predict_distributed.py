"""predict --data on one machine: 1 process x 2 threads against torchrun 2 ranks x 1 thread.

    .venv/bin/python bench/predict_distributed.py --head runs/head.pt --docs 2000 --rounds 2 \\
        --json docs/bench/predict_distributed.json --markdown docs/bench/predict_distributed.md

Classifies the first `--docs` posts of 20 Newsgroups test with `--head` (without one, a head
is made first: `embed` of the first `--train-docs` train posts, then `train-head` with the
defaults), through the real command lines (bench/interleaved.py):

  (a) python cli.py predict --data 20newsgroups --split test --limit N --out ... --threads 2
  (b) python -m torch.distributed.run --standalone --nproc_per_node 2 cli.py predict ... --threads 1

Reports wall time of the whole command (start-up, the corpus pass, loading, the join),
documents/s over it, the command's own seconds, peak memory (the larger rank's), and
whether the two files are byte-identical (they are in fp32; under bf16 autocast the
thread count can move the sixth decimal) or, else, how many labels agree.
Reads 20 Newsgroups and the head's encoder (through the commands); writes the files in
`--workdir` (a temporary folder, deleted, by default) and the results where told.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from interleaved import ONE, RANKS, ROOT, alternate, methods, publish, table


def make_head(workdir: Path, train_docs: int, data_home: str | None) -> Path:
    cache, head = workdir / "train.h5", workdir / "head.pt"
    home = ["--data-home", data_home] if data_home else []
    for args in (["embed", "--split", "train", "--limit", str(train_docs), "--out", str(cache), "--no-progress", *home],
                 ["train-head", "--train", str(cache), "--out", str(head), "--no-progress"]):
        subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, check=True, capture_output=True)
    return head


def compare(a: Path, b: Path) -> dict:
    x, y = a.read_bytes(), b.read_bytes()
    labels = [[json.loads(line)["label"] for line in f.read_text().splitlines()] for f in (a, b)]
    return {"identical_bytes": x == y, "labels_agree": sum(p == q for p, q in zip(*labels)), "rows": len(labels[0])}


def markdown(results: dict) -> str:
    lines = table(results, "predict --data: 1 process x 2 threads vs torchrun 2 ranks x 1 thread",
                  f"{results['docs']:,} posts of 20 Newsgroups test, head {results['head']}", "predict")
    files = results["files"]
    return "\n".join(lines + [f"Files: {'byte-identical' if files['identical_bytes'] else 'DIFFERENT bytes'}, "
                              f"{files['labels_agree']:,} of {files['rows']:,} labels agree.", ""])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", default=None, help="a head file  [default: made from --train-docs posts]")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--train-docs", type=int, default=1000, help="posts the head is trained on, without --head")
    parser.add_argument("--block-docs", type=int, default=None, help="predict's --block-docs  [default: its own]")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each method keeps its best")
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--workdir", default=None, help="where the files go  [default: a temporary folder]")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="predict-distributed-"))
    workdir.mkdir(parents=True, exist_ok=True)
    head = Path(args.head) if args.head else make_head(workdir, args.train_docs, args.data_home)

    def command_of(name: str, out: Path) -> list[str]:
        return methods(["predict", "--head", str(head), "--data", "20newsgroups", "--split", "test", "--limit",
                        str(args.docs), "--out", str(out), "--no-progress", "--json",
                        *(["--block-docs", str(args.block_docs)] if args.block_docs else []),
                        *(["--data-home", args.data_home] if args.data_home else [])])[name]

    best, outs = alternate(args.rounds, command_of, lambda name: workdir / f"{'one' if name == ONE else 'ranks'}.jsonl")
    for result in best.values():
        result["docs_per_s_wall"] = result["summary"]["documents"] / result["wall_s"]
    results = {"docs": args.docs, "rounds": args.rounds, "head": str(head), "best": best,
               "files": compare(outs[ONE], outs[RANKS])}
    publish(results, markdown, args.json, args.markdown)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
