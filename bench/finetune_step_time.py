"""Seconds per fine-tuning step, and so per epoch, for each `--unfreeze-top` K, without a full run.

    .venv/bin/python bench/finetune_step_time.py --unfreeze-top 1 2 all      # 20 classes, full posts

A full 20-class epoch on a 2-core CPU takes 15 minutes to over an hour, so this times
`--steps` training steps of the real run instead and multiplies by the epoch's step
count. Per K, in its own process (so its peak memory is its own):
  * the training set's windows, the model, its trainer (`WindowTrainer.step`: AdamW,
    schedule, clipping) and the epoch-1 batches, built by the functions `cli.py
    finetune` calls (`load_inputs`, `FinetuneInputs.task`; defaults: 256-token windows,
    stride 32, 8192-token batches, seed 0);
  * 2 warm-up steps, then `--steps` steps that compute the frozen bottom ("first
    epoch": the bottom runs and its outputs go to the feature store);
  * the same steps again, now reading the bottom's outputs from the store ("later
    epochs", when the store holds every window: at K = all it holds the embedding
    output, 8.9 GiB for 20 Newsgroups, over the 8 GiB default budget, so later
    epochs there recompute part of it).
Validation time (about 10% of a step count's worth of forward passes) is not counted.
Prints one JSON object per K and writes them to `--out`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(k: str, n_steps: int, categories: list[str] | None) -> dict:
    import torch

    from longdoc.configs import FinetuneConfig
    from longdoc.finetune import load_inputs
    from longdoc.runtime.process import peak_memory_bytes

    # The library's own wiring: the inputs, model and trainer `cli.py finetune` builds.
    config = FinetuneConfig(out=Path("unused"), unfreeze_top=k, categories=categories)
    inputs = load_inputs(config)
    task = inputs.task(config)
    encoder, trainer = inputs.encoder, task.trainer
    batches = task.start_epoch(1)
    for batch in batches[:2]:
        trainer.step(batch)

    def timed(steps):
        started = time.perf_counter()
        for batch in steps:
            trainer.step(batch)
        return (time.perf_counter() - started) / len(steps)

    steps = batches[2:2 + n_steps]
    computing = timed(steps)
    from_store = timed(steps)
    return {"unfreeze_top": k, "precision": encoder.precision, "threads": torch.get_num_threads(),
            "train_windows": len(task.train_windows), "steps_per_epoch": len(batches), "steps_timed": len(steps),
            "s_per_step_computing_bottom": round(computing, 3), "s_per_step_from_store": round(from_store, 3),
            "epoch_s_computing_bottom": round(computing * len(batches)),
            "epoch_s_from_store": round(from_store * len(batches)),
            "peak_gib_of_timed_steps": round(peak_memory_bytes(encoder.device) / 2**30, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unfreeze-top", nargs="+", default=["1", "2", "all"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--categories", default=None, help="comma-separated; [default: all 20]")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "finetune-step-time-cpu.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    categories = args.categories.split(",") if args.categories else None
    if args.child:
        print(json.dumps(child(args.child, args.steps, categories)), flush=True)
        return
    results = []
    for k in args.unfreeze_top:
        command = [sys.executable, __file__, "--child", k, "--steps", str(args.steps)]
        if args.categories:
            command += ["--categories", args.categories]
        line = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
        print(line, flush=True)
        results.append(json.loads(line))
    from machine import machine_name  # bench/machine.py, beside this file

    args.out.write_text(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                                    "machine": machine_name(), "command": " ".join(sys.argv),
                                    "results": results}, indent=1))


if __name__ == "__main__":
    main()
