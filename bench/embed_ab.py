"""Two versions of stage one as whole processes: `cli.py embed` from two `stages/` folders,
or with two sets of options.

    .venv/bin/python bench/embed_ab.py --a stages --b ../other/stages --docs 959 --rounds 3 \\
        --json docs/bench/embed-ab.json
    .venv/bin/python bench/embed_ab.py --a stages --b stages --a-options "--precision bf16" \\
        --b-options "--precision bf16-true" --docs 959 --rounds 4 --json docs/bench/embed-ab-bf16-true.json

For deciding a change to stage one by what a user waits for, not by a kernel profile: each
round runs `cli.py embed --no-terms` on the first `--docs` posts of 20 Newsgroups train from
`--a`'s package, then from `--b`'s (PYTHONPATH set to the folder; the commands alternate,
A first in odd rounds and B first in even ones, so a drift of the machine's speed falls on
both), every run a fresh process. Keeps each side's best and all its seconds, then compares
the two caches' window vectors: equal bit for bit, or the largest difference and the lowest
cosine. Extra `embed` options for both go after `--`; `--a-options` and `--b-options` are one
side's own. Writes `--json` and prints the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine_name  # bench/machine.py, beside this file

from longdoc.cache.reader import open_cache

ROOT = Path(__file__).resolve().parent.parent


def run_embed(stages: Path, out: Path, docs: int, extra: list[str]) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(stages), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", "from longdoc.cli import main; main()", "embed", "--limit", str(docs),
               "--no-terms", "--no-progress", "--overwrite", "--out", str(out), "--json", *extra]
    start = time.perf_counter()
    child = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"embed from {stages} failed:\n{child.stderr}")
    return seconds, json.loads(child.stdout.strip().splitlines()[-1])


def window_vectors(path: Path) -> np.ndarray:
    with open_cache(path) as cache:  # the project's reader: a cache proven complete
        return cache.embeddings[...]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="a stages/ folder holding the longdoc package")
    parser.add_argument("--b", type=Path, required=True)
    parser.add_argument("--docs", type=int, default=959)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--a-options", default="", help="embed options for A alone (one string)")
    parser.add_argument("--b-options", default="", help="embed options for B alone (one string)")
    parser.add_argument("--json", default=None)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then more embed options")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    for side in (args.a, args.b):
        if not (side / "longdoc" / "__init__.py").is_file():
            parser.error(f"{side} holds no longdoc package")
    work = Path(tempfile.mkdtemp(prefix="embed-ab-"))
    sides = {"A": args.a.resolve(), "B": args.b.resolve()}
    options = {"A": shlex.split(args.a_options), "B": shlex.split(args.b_options)}
    seconds = {name: [] for name in sides}
    summaries = {}
    for round_ in range(args.rounds):
        for name in (("A", "B") if round_ % 2 == 0 else ("B", "A")):
            took, summaries[name] = run_embed(sides[name], work / f"{name}.h5", args.docs, extra + options[name])
            seconds[name].append(took)
            print(f"round {round_ + 1}: {name} {took:6.1f} s", flush=True)
    a, b = window_vectors(work / "A.h5"), window_vectors(work / "B.h5")
    if a.shape != b.shape:
        raise SystemExit(f"the two caches hold other windows: {a.shape} against {b.shape}")
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    best = {name: min(values) for name, values in seconds.items()}
    result = {"a": str(args.a), "b": str(args.b), "docs": args.docs, "extra": extra,
              "a_options": options["A"], "b_options": options["B"],
              "windows": int(a.shape[0]), "tokens": summaries["A"].get("tokens"),
              "own_seconds": {name: summaries[name].get("seconds") for name in sides},
              "seconds": seconds, "best": best, "b_speedup": best["A"] / best["B"],
              "bit_identical": bool(np.array_equal(a, b)), "max_abs_difference": float(np.abs(a - b).max()),
              "min_cosine": float(cosine.min()), "machine": machine_name(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
