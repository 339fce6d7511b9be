"""How long `cli.py` takes to answer when it does no work: help, and options it refuses.

    .venv/bin/python bench/cli_latency.py --out docs/bench/cli-latency
    .venv/bin/python bench/cli_latency.py --repo ../old-checkout --out docs/bench/cli-latency-old

Each command line below runs `--runs` times as a fresh process (`python cli.py ...` in
--repo, with this interpreter, so both checkouts share one set of packages); the table
gives the median wall time. The refused options are refused by the command's settings
(`longdoc.configs`); the last line, a head file that does not exist, is refused by the stage
itself, so it pays for importing the stage and torch: the cost of any real work's start.
Writes OUT.json and OUT.md; reads nothing else.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from machine import machine_name  # noqa: E402  (bench/machine.py, beside this file)

# (what it shows, the arguments, the exit status it must give)
COMMANDS = (
    ("group help", ["--help"], 0),
    ("a command's help", ["train-head", "--help"], 0),
    ("refused: embed --block-windows 0", ["embed", "--block-windows", "0"], 2),
    ("refused: finetune --epochs 0", ["finetune", "--epochs", "0"], 2),
    ("refused: train-head --val-fraction 1.5", ["train-head", "--val-fraction", "1.5"], 2),
    ("refused: predict --data without --out", ["predict", "--data", "corpus.jsonl"], 2),
    ("refused by the stage: evaluate --head missing.pt", ["evaluate", "--head", "missing.pt"], 2),
)


def median_seconds(repo: Path, args: list[str], expected: int, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "cli.py", *args], cwd=repo, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != expected:
            sys.exit(f"{shlex.join(args)}: exit {done.returncode}, expected {expected}: {done.stderr.strip()}")
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose cli.py runs (default: this one)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.repo, capture_output=True,
                            text=True).stdout.strip()
    rows = [{"what": what, "args": argv, "median_seconds": median_seconds(args.repo, argv, expected, args.runs)}
            for what, argv, expected in COMMANDS]
    command = shlex.join([".venv/bin/python", *sys.argv])
    lines = [f"Median wall time of `python cli.py ...` over {args.runs} fresh processes, checkout {commit}:", "",
             "| command | seconds |", "| --- | ---: |"]
    lines += [f"| {row['what']} | {row['median_seconds']:.2f} |" for row in rows]
    lines += ["", f"Machine: {machine_name()}; `{command}`; {started}."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"command": command, "machine": machine_name(), "date": started,
                                                    "commit": commit, "rows": rows}, indent=1))
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
