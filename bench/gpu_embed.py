"""Stage one on a GPU: tokens/s and peak GPU memory for a short and a very long document.

    python bench/gpu_embed.py                 # on a CUDA machine, under five minutes
    python bench/gpu_embed.py --device cpu --hidden 64 --layers 2 --long-tokens 5000   # smoke test

A bert-base-sized encoder (768 hidden, 12 layers, random weights: speed and memory do
not depend on the values) embeds the windows of a 512-token and a 138,000-token
document (the longest 20 Newsgroups post has 138,677 tokens) two ways:
  * ours: `longdoc.encoding.batches.encode_windows`, length-sorted batches of at most
    `--batch-tokens` tokens (the CUDA default), bf16 autocast (fp16 where bf16 is missing);
  * the original prototype (bench/prototype.py): all windows of the document padded to
    512 and run as one batch in fp32 (reported as OOM when it does not fit).
Token ids are random (seeded) in the vocabulary: throughput does not depend on which
tokens they are, and the script then needs no dataset on the GPU machine.
Reads MiniLM's tokenizer only; writes nothing: prints one JSON object, whose figures
go into docs/BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np
import prototype  # noqa: E402  (bench/prototype.py, beside this file)
import torch

from longdoc.encoding.batches import default_batch_tokens, encode_windows
from longdoc.encoding.encoder import Encoder, load_tokenizer
from longdoc.encoding.windows import SpecialTokens, WindowSpec
from longdoc.settings.model import DEFAULT_MODEL


def build_encoder(device: torch.device, precision: str, hidden: int, layers: int) -> Encoder:
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                        intermediate_size=4 * hidden)
    torch.manual_seed(0)
    model = BertModel(config).eval().to(device)
    # MiniLM's tokenizer is BERT-base-uncased's WordPiece vocabulary, shipped offline.
    return Encoder("random-bert", model, load_tokenizer(DEFAULT_MODEL), device, precision, "random", 512)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run_ours(encoder, windows, batch_tokens, device):
    encode_windows(encoder, windows[:8], batch_tokens)  # warm-up
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    encode_windows(encoder, windows, batch_tokens)
    synchronize(device)
    return time.perf_counter() - start


def run_prototype(encoder, windows, pad_id, device):
    ids, mask = prototype.pad_document(windows, pad_id)
    prototype.embed_padded(encoder.model, ids[:2], mask[:2], device)  # warm-up, as for ours: kernel selection
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    prototype.embed_padded(encoder.model, ids, mask, device)
    synchronize(device)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--chunk-tokens", type=int, default=512)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--short-tokens", type=int, default=512)
    parser.add_argument("--long-tokens", type=int, default=138_000)
    args = parser.parse_args()

    device = torch.device(args.device)
    precision = "fp32" if device.type == "cpu" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    encoder = build_encoder(device, precision, args.hidden, args.layers)
    batch_tokens = args.batch_tokens or default_batch_tokens(device)
    spec = WindowSpec(args.chunk_tokens, args.stride, SpecialTokens.of(encoder.tokenizer))
    rng = np.random.default_rng(0)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "encoder": f"BERT {args.layers} layers x {args.hidden} (random weights)",
               "precision": precision, "batch_tokens": batch_tokens, "chunk_tokens": args.chunk_tokens,
               "stride": args.stride, "date": time.strftime("%Y-%m-%d", time.gmtime()), "documents": {}}
    for name, n_tokens in (("short", args.short_tokens), ("long", args.long_tokens)):
        windows = spec.windows(rng.integers(1000, 29000, size=n_tokens).astype(np.int32))
        n_window_tokens = sum(len(w) for w in windows)
        row = {"tokens": n_tokens, "windows": len(windows)}
        seconds = run_ours(encoder, windows, batch_tokens, device)
        row["ours"] = {"tokens_per_s": n_window_tokens / seconds, "peak_gpu_gib": peak_gib(device)}
        try:
            seconds = run_prototype(encoder, windows, spec.special.pad_id, device)
            row["prototype"] = {"tokens_per_s": n_window_tokens / seconds, "peak_gpu_gib": peak_gib(device)}
        except torch.OutOfMemoryError:
            row["prototype"] = {"out_of_memory": True, "peak_gpu_gib_before_failing": peak_gib(device)}
        finally:
            reset_peak(device)
        results["documents"][name] = row
        print(name, json.dumps(row), flush=True)
    with contextlib.suppress(Exception):
        results["gpu_total_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
