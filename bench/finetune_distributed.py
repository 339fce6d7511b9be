"""finetune on one machine: 1 process x 2 threads against torchrun 2 ranks x 1 thread.

    .venv/bin/python bench/finetune_distributed.py --docs 2000 --unfreeze-top 1 --epochs 1 --rounds 2 \\
        --json docs/bench/finetune_distributed.json --markdown docs/bench/finetune_distributed.md

Fine-tunes the default encoder (MiniLM) on the first `--docs` posts of 20 Newsgroups train,
the top `--unfreeze-top` layers for `--epochs` epochs, through the real command lines
(bench/interleaved.py); the global batch is the same `--batch-tokens` in both:

  (a) python cli.py finetune --limit N --unfreeze-top K --epochs E --out ... --threads 2
  (b) python -m torch.distributed.run --standalone --nproc_per_node 2 cli.py finetune ... --threads 1

Reports wall time of the whole command (start-up, tokenizing, loading, the first epoch's
frozen-layer features, validation, saving), the command's own seconds, peak memory (rank
0's), the validation scores of both, and how far apart the two models' weights are. Only
with every dropout off (`--dropout 0` is the classifier's; the encoder's own, MiniLM's
hidden_dropout_prob 0.1, stays on in its unfrozen layers) and fp32 is that float rounding
alone (tests/test_distributed_finetune.py: within 2e-6); with dropout on, each rank draws
its own masks, so the two runs are two different draws (~6e-4 apart after one epoch of 60
posts at K = 1, with the same validation scores).
Reads 20 Newsgroups and the encoder (through the commands); writes the model folders in
`--workdir` (a temporary folder, deleted, by default) and the results where told.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from interleaved import ONE, RANKS, alternate, methods, publish, table
from safetensors.torch import load_file


def compare(a: Path, b: Path) -> dict:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    diff = max(float((x[n].float() - y[n].float()).abs().max()) for n in x)
    scale = max(float(x[n].float().abs().max()) for n in x)
    scores = [{k: json.loads((f / "finetune.json").read_text())[k] for k in ("val_accuracy", "val_macro_f1")}
              for f in (a, b)]
    return {"weights_max_abs_diff": diff, "weights_max_abs": scale, "val_one_process": scores[0],
            "val_torchrun": scores[1]}


def markdown(results: dict) -> str:
    lines = table(results, "finetune: 1 process x 2 threads vs torchrun 2 ranks x 1 thread",
                  f"{results['docs']:,} posts of 20 Newsgroups train, K = {results['unfreeze_top']}, "
                  f"{results['epochs']} epoch(s), extra options {results['extra'] or 'none'}", "finetune")
    models = results["models"]
    return "\n".join(lines + [f"Weights max abs difference {models['weights_max_abs_diff']:.2e} (largest weight "
                              f"{models['weights_max_abs']:.2f}); validation one process {models['val_one_process']}, "
                              f"torchrun {models['val_torchrun']}.", ""])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--unfreeze-top", default="1")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", default=None, help="finetune's --model  [default: its own]")
    parser.add_argument("--extra", default="", help='more finetune options, one string: --extra="--dropout 0 '
                        '--precision fp32"')
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each method keeps its best")
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--workdir", default=None, help="where the models go  [default: a temporary folder]")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="finetune-distributed-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def command_of(name: str, out: Path) -> list[str]:
        return methods(["finetune", "--limit", str(args.docs), "--unfreeze-top", args.unfreeze_top, "--epochs",
                        str(args.epochs), "--out", str(out), "--no-progress", "--json",
                        *(["--model", args.model] if args.model else []),
                        *(["--data-home", args.data_home] if args.data_home else []), *args.extra.split()])[name]

    best, outs = alternate(args.rounds, command_of, lambda name: workdir / ("one" if name == ONE else "ranks"))
    results = {"docs": args.docs, "unfreeze_top": args.unfreeze_top, "epochs": args.epochs, "rounds": args.rounds,
               "extra": args.extra, "best": best, "models": compare(outs[ONE], outs[RANKS])}
    publish(results, markdown, args.json, args.markdown)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
