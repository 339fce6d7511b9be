"""Stage two on label sets: which branch, which class weights, which decision, chosen on validation.

    .venv/bin/python bench/label_sets.py --train data/cache/reuters21578/train.h5 \\
        --test data/cache/reuters21578/test.h5 --out docs/bench/label-sets-reuters --seeds 0 1 2

For each `--inputs` in --inputs and with and without `--class-weights`, each seed in --seeds:
`longdoc.train_head.run` with every other setting the command's default (plus --extra
key=value pairs), then `longdoc.evaluate.run` on --test. The table gives, for each, the
head's validation micro- and macro-F1 at its decision (what a default may be chosen by),
the decision validation chose (rule / empty-set rule), and test micro-F1, macro-F1,
samples-F1, subset accuracy, ECE and each branch alone (at probability 0.5): test figures
are reported, never used to choose. The row marked "chosen" is the setting of best mean
validation (micro-F1 + macro-F1) / 2 over the seeds. Writes OUT.json (rewritten after every
head, so a stopped run keeps what it finished) and OUT.md. Heads go to a temporary folder.
Runs heads one after another in this process: time figures here are not the point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from longdoc.configs import EvaluateConfig, TrainConfig  # noqa: E402
from longdoc.evaluate import run as evaluate  # noqa: E402
from longdoc.heads.checkpoint import load_checkpoint  # noqa: E402
from longdoc.runtime.workdir import atomic_write_bytes  # noqa: E402
from longdoc.train_head import run as train_head  # noqa: E402


def value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def one_head(args, folder: Path, inputs: str, weights: bool, seed: int) -> dict:
    out = folder / f"{inputs}-{int(weights)}-{seed}.pt"
    extra = {k: value(v) for k, v in (item.split("=", 1) for item in args.extra)}
    started = time.perf_counter()
    summary = train_head(TrainConfig(train=args.train, out=str(out), inputs=inputs, class_weights=weights, seed=seed,
                                     progress=False, curve=False, overwrite=True, **extra), log=lambda line: None)
    seconds = time.perf_counter() - started
    decision = load_checkpoint(out).decision
    m = evaluate(EvaluateConfig(head=str(out), cache=args.test)).metrics
    return {"inputs": inputs, "class_weights": weights, "seed": seed, "train_seconds": seconds,
            "val_micro_f1": summary.val_micro_f1, "val_macro_f1": summary.val_macro_f1,
            "decision": f"{decision.rule}/{decision.empty}",
            **{f"test_{k}": m[k] for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")},
            "test_ece": m["calibration"]["ece"], "never_predicted": len(m["never_predicted"]),
            "branches": {name.split()[0]: b["micro_f1"] for name, b in m.get("branches", {}).items() if name != "mix"}}


def table(rows: list[dict]) -> str:
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["inputs"], row["class_weights"]), []).append(row)

    def mean(group, key):
        return sum(r[key] for r in group) / len(group)

    def spread(group, key):
        values = [r[key] for r in group]
        return (max(values) - min(values)) / 2

    chosen = max(groups, key=lambda k: mean(groups[k], "val_micro_f1") + mean(groups[k], "val_macro_f1"))
    lines = ["| inputs | class weights | seeds | val micro-F1 | val macro-F1 | decisions | test micro-F1 | "
             "test macro-F1 | samples-F1 | subset acc. | ECE | never predicted | branches alone (micro-F1) |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, group in groups.items():
        branches = ", ".join(f"{name} {sum(r['branches'][name] for r in group) / len(group):.4f}"
                             for name in group[0]["branches"])
        lines.append(
            f"| {key[0]}{' (chosen)' if key == chosen else ''} | {'on' if key[1] else 'off'} | {len(group)} "
            f"| {mean(group, 'val_micro_f1'):.4f} | {mean(group, 'val_macro_f1'):.4f} "
            f"| {', '.join(sorted({r['decision'] for r in group}))} "
            f"| {mean(group, 'test_micro_f1'):.4f} ± {spread(group, 'test_micro_f1'):.4f} "
            f"| {mean(group, 'test_macro_f1'):.4f} ± {spread(group, 'test_macro_f1'):.4f} "
            f"| {mean(group, 'test_samples_f1'):.4f} | {mean(group, 'test_subset_accuracy'):.4f} "
            f"| {mean(group, 'test_ece'):.4f} | {mean(group, 'never_predicted'):.1f} | {branches or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--out", required=True, help="OUT.json and OUT.md")
    parser.add_argument("--inputs", nargs="+", default=["both", "terms", "windows"])
    parser.add_argument("--class-weights", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--extra", nargs="*", default=[], help="train-head settings as key=value (JSON values)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for inputs in args.inputs:
            for weights in args.class_weights:
                for seed in args.seeds:
                    rows.append(one_head(args, Path(folder), inputs, weights == "on", seed))
                    print(json.dumps(rows[-1]), file=sys.stderr)
                    atomic_write_bytes(out.with_suffix(".json"), json.dumps(rows, indent=1).encode())
    atomic_write_bytes(out.with_suffix(".md"), table(rows).encode())
    print(table(rows))


if __name__ == "__main__":
    main()
