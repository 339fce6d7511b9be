"""Stage one on one machine: 1 process x 2 threads against torchrun 2 ranks x 1 thread.

    .venv/bin/python bench/embed_distributed.py --docs 2000 --rounds 2 \\
        --json docs/bench/embed_distributed.json --markdown docs/bench/embed_distributed.md

Runs the real command lines a user would, from scratch each time, on the first
`--docs` 20 Newsgroups train posts with the default settings (MiniLM, 256-token
windows, stride 32, precision auto):

  (a) python cli.py embed --threads 2 ...
  (b) python -m torch.distributed.run --standalone --nproc_per_node 2 cli.py embed --threads 1 ...

The two methods alternate within each of `--rounds` rounds and each keeps its best
round, because this shared machine's speed drifts by 10-20% from minute to minute.
Reports wall time of the whole command (start-up, loading and the join included),
tokens/s over that wall time, the command's own embedding time, peak resident memory
of each process (from the summary line), and how close the two caches are (they run
the same windows; only batch composition and thread count differ).
Reads the 20 Newsgroups train split and MiniLM (through the commands); writes the
caches in `--workdir` (a temporary folder, deleted, by default), the results as JSON
to `--json` and as a Markdown table to `--markdown`, and prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def commands(docs: int, out: Path, data_home: str | None) -> dict[str, list[str]]:
    embed = ["cli.py", "embed", "--split", "train", "--limit", str(docs), "--out", str(out), "--no-progress", "--json",
             *(["--data-home", data_home] if data_home else [])]
    return {
        "1 process x 2 threads": [sys.executable, *embed, "--threads", "2"],
        "torchrun 2 ranks x 1 thread": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                        "--nproc_per_node", "2", *embed, "--threads", "1"],
    }


def run_once(command: list[str], out: Path) -> dict:
    for stale in out.parent.glob(out.name + "*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])  # rank 0's `embed --json` summary
    peaks = summary["rank_peak_memory_bytes"] or [summary["peak_memory_bytes"]]
    return {"wall_s": wall, "embed_s": summary["seconds"], "documents": summary["documents"],
            "windows": summary["windows"], "tokens": summary["tokens"], "tokens_per_s_wall": summary["tokens"] / wall,
            "peak_rss_gib_per_process": [p / 2**30 for p in peaks], "summary": summary}


def compare(a: Path, b: Path) -> dict:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        same = {name: bool(np.array_equal(fa[name][:], fb[name][:]))
                for name in ("doc_offsets", "window_starts", "labels", "doc_ids", "doc_tokens")}
        x, y = fa["embeddings"][:], fb["embeddings"][:]
    cosine = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return {"identical_except_embeddings": same, "embeddings_max_abs_diff": float(np.abs(x - y).max()),
            "embeddings_min_cosine": float(cosine.min()),
            "allclose_rtol_1e-5_atol_1e-6": bool(np.allclose(x, y, rtol=1e-5, atol=1e-6)),
            "allclose_rtol_1e-2_atol_1e-2": bool(np.allclose(x, y, rtol=1e-2, atol=1e-2))}


def markdown(results: dict) -> str:
    lines = [f"# Stage one: 1 process x 2 threads vs torchrun 2 ranks x 1 thread ({results['date']})", "",
             f"{results['docs']:,} posts of 20 Newsgroups train, default settings; {results['machine']}; "
             f"best of {results['rounds']} interleaved rounds.", "",
             "| method | wall s | tokens/s (wall) | embed s (own) | peak RSS per process GiB |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, best in results["best"].items():
        rss = ", ".join(f"{x:.2f}" for x in best["peak_rss_gib_per_process"])
        lines.append(f"| {name} | {best['wall_s']:.1f} | {best['tokens_per_s_wall']:,.0f} | "
                     f"{best['embed_s']:.1f} | {rss} |")
    same = results["caches"]
    lines += ["", f"Speed-up of torchrun over one process (wall): **{results['speedup_wall']:.2f}x**. "
              f"Caches: {'same' if all(same['identical_except_embeddings'].values()) else 'DIFFERENT'} "
              f"documents, order and windows; embeddings max abs diff {same['embeddings_max_abs_diff']:.2e}, "
              f"min cosine {same['embeddings_min_cosine']:.6f}.", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each method keeps its best")
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--workdir", default=None, help="where the caches go  [default: a temporary folder]")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="embed-distributed-"))
    workdir.mkdir(parents=True, exist_ok=True)
    outs = {}
    best: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for i, name in enumerate(commands(args.docs, workdir, args.data_home)):
            outs[name] = workdir / f"method{i}.h5"
            result = run_once(commands(args.docs, outs[name], args.data_home)[name], outs[name])
            print(f"round {round_ + 1}: {name:30s} {result['wall_s']:7.1f} s wall  {result['summary']}", flush=True)
            if name not in best or result["wall_s"] < best[name]["wall_s"]:
                best[name] = result
    names = list(best)
    results = {
        "docs": args.docs, "rounds": args.rounds, "best": best,
        "speedup_wall": best[names[0]]["wall_s"] / best[names[1]]["wall_s"],
        "caches": compare(outs[names[0]], outs[names[1]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch {__import__('torch').__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(results, indent=1))
    print(markdown(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(results))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
