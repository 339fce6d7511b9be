"""Fine-tuning benchmark: the whole pipeline per `--unfreeze-top` K, scored on the test set.

    .venv/bin/python bench/finetune.py --setting 20class --unfreeze-top 2 --epochs 2
    .venv/bin/python bench/finetune.py --setting 3class --unfreeze-top 0 1 2 all

For each K: `cli.py finetune` on the training split (validation: its own 10% of
training documents) -> `embed --model <fine-tuned>` of train and test -> `train-head`
(lstm, seed 0, the project defaults) -> `evaluate` on the test set (`--no-head` stops after
embedding, for heads of several seeds and inputs from bench/fused.py). Settings are
chosen on validation only; the test set is scored once per K, never used to choose.

Settings:
  20class  all 20 classes of 20 Newsgroups bydate, full posts (headers included)
  3class   alt.atheism, comp.graphics, talk.religion.misc with headers, footers and
           quotes removed: the original prototype's setting

Each step's output is kept under runs/bench-finetune/SETTING/kK/ (`--work`) and a step whose
output exists is skipped, so a killed benchmark reruns from where it stopped.
Results merge into docs/bench/finetune-SETTING.json (one entry per K) and a table
in docs/bench/finetune-SETTING.md; wall times and peak memory come from each
command's own `--json` summary. Reads 20 Newsgroups and the base encoder (through the
commands) and the earlier results it merges into.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from machine import machine_name  # bench/machine.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "20class": [],
    "3class": ["--categories", "alt.atheism,comp.graphics,talk.religion.misc", "--remove", "headers,footers,quotes"],
}


def run(args: list[str], log: Path) -> tuple[dict, float]:
    """Run `cli.py ARGS --json`; returns (its JSON summary, seconds). stderr (epoch lines) goes to `log`."""
    started = time.perf_counter()
    with open(log, "a") as err:
        err.write(f"$ cli.py {' '.join(args)}\n")
        err.flush()
        result = subprocess.run([sys.executable, "cli.py", *args, "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                text=True)
    if result.returncode != 0:
        sys.exit(f"cli.py {' '.join(args)} failed ({result.returncode}); see {log}")
    print(result.stdout.strip(), flush=True)
    return json.loads(result.stdout.strip().splitlines()[-1]), time.perf_counter() - started


def peak_gib(summary: dict) -> float | None:
    return summary["peak_memory_bytes"] / 2**30 if "peak_memory_bytes" in summary else None


def bench_k(setting: str, k: str, epochs: int, extra: list[str], work_root: Path, head: bool = True) -> dict:
    work = work_root / setting / f"k{k}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    data = SETTINGS[setting]
    model = work / "model"
    entry = {"unfreeze_top": k, "epochs_max": epochs, "extra": extra}
    if not model.exists():
        summary, seconds = run(["finetune", *data, "--unfreeze-top", k, "--epochs", str(epochs), "--out", str(model),
                             "--no-progress", *extra], log)
        entry.update(finetune_seconds=seconds, finetune_peak_gib=peak_gib(summary))
    record = json.loads((model / "finetune.json").read_text())
    entry.update(val_accuracy=record["val_accuracy"], val_macro_f1=record["val_macro_f1"],
                 best_epoch=record["best_epoch"], history=record["history"],
                 epoch_seconds=[round(h["seconds"], 1) for h in record["history"]])
    for split in ("train", "test"):
        summary, seconds = run(["embed", *data, "--split", split, "--model", str(model),
                                "--out", str(work / f"{split}.h5"), "--no-progress"], log)
        if not summary["already_complete"]:
            entry[f"embed_{split}_seconds"] = seconds
            entry[f"embed_{split}_peak_gib"] = peak_gib(summary)
    if not head:
        return entry
    head = work / "head.pt"
    if not head.exists():
        _, seconds = run(["train-head", "--train", str(work / "train.h5"), "--out", str(head), "--seed", "0"], log)
        entry.update(train_head_seconds=seconds)
    run(["evaluate", "--head", str(head), "--cache", str(work / "test.h5"), "--report", str(work / "report")], log)
    metrics = json.loads((work / "report" / "metrics.json").read_text())
    entry.update(test_accuracy=metrics["accuracy"], test_macro_f1=metrics["macro_f1"])
    return entry


def _score(value: float | None) -> str:
    return "not scored here" if value is None else f"{value:.4f}"


def _gib(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def write_table(results: dict, path: Path, setting: str):
    lines = [f"# Fine-tuning benchmark: {setting}", "",
             f"`.venv/bin/python bench/finetune.py --setting {setting} ...`; machine and dates per row in the JSON.", "",
             "| K | best epoch | val doc accuracy | val macro-F1 | test accuracy | test macro-F1 | s per epoch "
             "| finetune peak GiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, e in sorted(results.items()):
        lines.append(f"| {k} | {e['best_epoch']}/{len(e['history'])} | {e['val_accuracy']:.4f} | "
                     f"{e['val_macro_f1']:.4f} | {_score(e.get('test_accuracy'))} | {_score(e.get('test_macro_f1'))} | "
                     f"{', '.join(f'{s:,.0f}' for s in e['epoch_seconds'])} | {_gib(e.get('finetune_peak_gib'))} |")
    path.write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--unfreeze-top", nargs="+", default=["2"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="[default: docs/bench/finetune-SETTING.json]")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-finetune",
                        help="where each step's output goes, as WORK/SETTING/kK/  [default: runs/bench-finetune]")
    parser.add_argument("--no-head", action="store_true", help="stop after embedding train and test")
    parser.add_argument("extra", nargs="*", help="more `finetune` options, after --")
    args = parser.parse_args()
    out = args.out or ROOT / "docs" / "bench" / f"finetune-{args.setting}.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for k in args.unfreeze_top:
        entry = bench_k(args.setting, k, args.epochs, args.extra, args.work, head=not args.no_head)
        entry.update(date=datetime.date.today().isoformat(), machine=machine_name(),
                     command=" ".join(sys.argv))
        results[k] = {**results.get(k, {}), **entry}
        out.write_text(json.dumps(results, indent=1))
        write_table(results, out.with_suffix(".md"), args.setting)


if __name__ == "__main__":
    main()
