"""One process x 2 threads against torchrun 2 ranks x 1 thread: the loop the
bench/*_distributed.py scripts share (bench/embed_distributed.py is the first of them).

Runs real command lines, as a user would, from a clean `--out` each time; the two methods
alternate within each round and each keeps its best round, because this shared machine's
speed drifts by 10-20% from minute to minute. Reads nothing itself; writes the results as
JSON and Markdown where told.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import machine_name  # bench/machine.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
ONE = "1 process x 2 threads"
RANKS = "torchrun 2 ranks x 1 thread"


def methods(cli_args: list[str]) -> dict[str, list[str]]:
    """The two command lines of `cli.py ARGS`: --threads 2 in one process, --threads 1 on each of 2 ranks."""
    return {ONE: [sys.executable, "cli.py", *cli_args, "--threads", "2"],
            RANKS: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "cli.py", *cli_args, "--threads", "1"]}


def run_once(command: list[str], out: Path) -> dict:
    """Run `command` after removing `out` and its work folder; wall seconds and rank 0's --json summary."""
    for stale in out.parent.glob(out.name + "*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return {"wall_s": wall, "summary": json.loads(result.stdout.strip().splitlines()[-1])}


def alternate(rounds: int, command_of, out_of) -> tuple[dict, dict]:
    """Best round of each method (`command_of(name, out)`, output `out_of(name)`), and the outputs."""
    best: dict[str, dict] = {}
    outs = {}
    for round_ in range(rounds):
        for name in (ONE, RANKS):
            outs[name] = out_of(name)
            result = run_once(command_of(name, outs[name]), outs[name])
            print(f"round {round_ + 1}: {name:28s} {result['wall_s']:7.1f} s wall  {result['summary']}", flush=True)
            if name not in best or result["wall_s"] < best[name]["wall_s"]:
                best[name] = result
    return best, outs


def publish(results: dict, markdown, json_path: str | None, markdown_path: str | None):
    """Add the machine, the date and the speed-up (wall, one process over torchrun) to
    `results`; print them and `markdown(results)`, and write both where told."""
    results.update(machine=machine_name(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   speedup_wall=results["best"][ONE]["wall_s"] / results["best"][RANKS]["wall_s"])
    text = markdown(results)
    print(json.dumps(results, indent=1, default=str))
    print(text)
    for path, body in ((json_path, json.dumps(results, indent=1, default=str) + "\n"), (markdown_path, text)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(body)


def table(results: dict, title: str, what: str, own: str) -> list[str]:
    """The Markdown head and one row per method: wall seconds, the command's own seconds (`own`), peak memory."""
    lines = [f"# {title} ({results['date']})", "", f"{what}; {results['machine']}; best of {results['rounds']} "
             f"interleaved rounds.", "", f"| method | wall s | {own} s (own) | peak memory GiB |",
             "| --- | ---: | ---: | ---: |"]
    for name, best in results["best"].items():
        lines.append(f"| {name} | {best['wall_s']:.1f} | {best['summary']['seconds']:.1f} | "
                     f"{best['summary']['peak_memory_bytes'] / 2**30:.2f} |")
    return lines + ["", f"Speed-up of torchrun over one process (wall): **{results['speedup_wall']:.2f}x**."]
