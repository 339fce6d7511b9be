"""What one epoch of the window branch costs in `train-head`, by phase, per AdamW implementation.

    .venv/bin/python bench/head_step.py --train CACHE/train.h5 --out docs/bench/head-step-20class

For each of AdamW's CPU implementations (`loop`: one tensor at a time, torch's default on
CPU; `foreach`: grouped ops; `fused`: one kernel, what `train-head` uses), the head
`train-head` builds by default (lstm pooling, the command's defaults, one torch thread)
trains one epoch of the window branch over the training cache's documents in its batches
(32 documents, length-grouped, seed 0), the same batches for every implementation, with
train-head's own step (`HeadTask.load`, `loss`, `backward`, `advance`: AdamW and its
schedule), and the time of each phase is summed: reading the batch, forward, backward,
optimizer step.
The batches are also timed by their width (windows of the longest document), since the
LSTM reads a document's windows one after another. Run it with the machine alone: two
torch jobs on two cores slow each other several-fold.

Reads the cache; writes OUT.json (every phase) and OUT.md (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from machine import machine_name  # noqa: E402  (bench/machine.py, beside this file)

from longdoc.cache.reader import open_cache
from longdoc.configs import TrainConfig
from longdoc.heads.batches import CacheDocuments
from longdoc.heads.head import Head
from longdoc.settings.model import HeadConfig
from longdoc.training.head_task import HeadTask

IMPLEMENTATIONS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
WIDTHS = ((1, 1), (2, 2), (3, 4), (5, 16), (17, None))  # batch widths, in windows, reported apart
BANDS = [f"{lo}-{hi or 'more'}" for lo, hi in WIDTHS]


def band(width: int) -> str:
    """The WIDTHS band of a batch `width` windows wide."""
    return next(name for name, (_, hi) in zip(BANDS, WIDTHS) if hi is None or width <= hi)


def epoch_phases(documents: CacheDocuments, hidden: int, n_classes: int, implementation: str) -> dict:
    """One epoch of train-head's own step (`HeadTask`: load, loss, backward, advance), timed by phase."""
    defaults = TrainConfig()
    torch.manual_seed(0)
    head = Head(HeadConfig(pooling=defaults.pooling, hidden_size=hidden, n_classes=n_classes))
    plan = documents.plan(defaults.batch_docs, defaults.batch_windows, np.random.default_rng(0))
    task = HeadTask(head, documents, documents, defaults, np.random.default_rng(0), torch.nn.CrossEntropyLoss(),
                    len(plan), optimizer_options=IMPLEMENTATIONS[implementation])
    task.start_epoch(1)
    phases = dict.fromkeys(("load", "forward", "backward", "optimizer"), 0.0)
    by_width = dict.fromkeys(BANDS, 0.0)
    for docs in plan:
        t0 = time.perf_counter()
        batch = task.load(docs)
        t1 = time.perf_counter()
        loss = task.loss(batch)
        t2 = time.perf_counter()
        task.backward(loss)
        t3 = time.perf_counter()
        task.advance()
        t4 = time.perf_counter()
        for phase, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            phases[phase] += seconds
        by_width[band(batch.x.shape[1])] += t4 - t0
    return {"implementation": implementation, "steps": len(plan), **phases, "total": sum(phases.values()),
            "by_width": by_width, "final_loss": float(loss)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--repeats", type=int, default=2, help="epochs per implementation; the fastest is kept")
    args = parser.parse_args()
    torch.set_num_threads(TrainConfig().threads)
    with open_cache(args.train) as cache:
        documents = CacheDocuments.from_cache(cache)
        hidden, n_classes, n_windows = cache.hidden_size, len(cache.label_names), int(cache.doc_offsets[-1])
        plan = documents.plan(TrainConfig().batch_docs, TrainConfig().batch_windows)
        counts = dict.fromkeys(BANDS, 0)
        for docs in plan:
            counts[band(int(documents.counts[docs].max()))] += 1
        rows = []
        for _ in range(args.repeats):
            for implementation in IMPLEMENTATIONS:
                rows.append(epoch_phases(documents, hidden, n_classes, implementation))
                print(json.dumps(rows[-1]), flush=True)
    best = {name: min((r for r in rows if r["implementation"] == name), key=lambda r: r["total"])
            for name in IMPLEMENTATIONS}
    command = " ".join([".venv/bin/python bench/head_step.py", *sys.argv[1:]])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = ["| AdamW | steps | load s | forward s | backward s | optimizer s | epoch s | "
             + " | ".join(f"width {name} s" for name in counts) + " |",
             "| --- |" + " ---: |" * (6 + len(counts)),
             "| batches of that width | | | | | | | " + " | ".join(str(n) for n in counts.values()) + " |"]
    for name, row in best.items():
        lines.append(f"| {name} | {row['steps']} | {row['load']:.2f} | {row['forward']:.2f} | {row['backward']:.2f} | "
                     f"{row['optimizer']:.2f} | {row['total']:.2f} | "
                     + " | ".join(f"{row['by_width'][name]:.2f}" for name in counts) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine_name(), "date": when,
                                                    "cache": args.train, "windows": n_windows, "rows": rows},
                                                   indent=1))
    out.with_suffix(".md").write_text(
        f"One epoch of the default head's window branch over all of {args.train} ({len(documents):,} documents, "
        f"{n_windows:,} windows), the fastest of {args.repeats} per AdamW implementation.\n\n"
        + "\n".join(lines) + f"\n\nMachine: {machine_name()}; `{command}`; {when}.\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
