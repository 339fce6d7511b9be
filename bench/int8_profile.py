"""Where stage one's time goes at int8 and at bf16: torch's profiler over the same windows.

    .venv/bin/python bench/int8_profile.py --docs 300 --json docs/bench/int8-profile.json

On the windows of the first `--docs` 20 Newsgroups train posts (embed's defaults: 256-token
windows, stride 32, MiniLM's mean window vector, `--batch-tokens 1024`), for each of
  * bf16 autocast (`auto` on this CPU) and `--precision int8` (`longdoc.encoding.int8`);
  * `int8, bf16 projections`: the int8 Linear layers of the queries, keys, values and the
    feed-forward's first matrix hand their output on in bf16, so attention and GELU run in
    bf16 (the one change to int8 whose profile says it could pay: at int8 they stay fp32);
  * `bf16 autocast, weights cached`: the same autocast under `torch.no_grad` instead of
    `torch.inference_mode`, where autocast keeps its bf16 copy of each weight for the whole
    pass (it caches only tensors that require grad; inference mode turns that off). Since
    2026-12-04 `encode_windows` itself runs under no_grad, so this is the default's path, and
    `bf16 autocast, inference mode` is the one it replaced (BENCHMARKS S1c);
  * `bf16 weights`: the whole model cast to bf16 once and no autocast, so LayerNorm, softmax
    and the residual adds run in bf16 too;
the best of `--rounds` timed passes (the variants interleaved), each window vector's cosine to
fp32, and one profiled pass: each operator's share of the CPU time. `--variants` picks some
(semicolon-separated).
Reads the corpus and MiniLM; writes the JSON to `--json` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from machine import machine_name  # noqa: E402  (bench/machine.py, beside this file)

from longdoc.corpus.sources import load_corpus
from longdoc.encoding.batches import encode_windows, pack_batches, pad_batch
from longdoc.encoding.encoder import load_encoder
from longdoc.encoding.int8 import int8_linear_class
from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize
from longdoc.settings.model import DEFAULT_MODEL


def bf16_projections(encoder):
    """`encoder` (at int8) with the Q, K, V and feed-forward-in Linear layers giving bf16 output,
    and the two Linear layers that read attention's and GELU's output taking bf16 in."""
    linear = int8_linear_class(True)

    class FloatInput(linear):
        def forward(self, x):
            return super().forward(x if x.dtype == torch.float32 else x.float())

    class Bf16Output(FloatInput):
        def forward(self, x):
            return super().forward(x).to(torch.bfloat16)

    for layer in encoder.model.encoder.layer:
        attention = layer.attention.self
        for module in (attention.query, attention.key, attention.value, layer.intermediate.dense):
            module.__class__ = Bf16Output
        for module in (layer.attention.output.dense, layer.output.dense):
            module.__class__ = FloatInput
    return encoder


def encode_under_inference_mode(encoder, windows, batch_tokens: int) -> np.ndarray:
    """`encode_windows` as it was before 2026-12-04: under `torch.inference_mode`, where autocast
    casts every weight again for every batch."""
    lengths = np.array([len(w) for w in windows])
    out = np.empty((len(windows), encoder.hidden_size), dtype=np.float32)
    pad_id = SpecialTokens.of(encoder.tokenizer).pad_id
    with torch.inference_mode(), encoder.autocast():
        for batch in pack_batches(lengths, batch_tokens):
            out[batch] = encoder.window_vectors(*pad_batch(windows, batch, pad_id, encoder.device)).float().numpy()
    return out


def bf16_weights():
    """MiniLM with every weight in bf16 and autocast off (the encoder's mean pooling returns fp32)."""
    encoder = load_encoder(DEFAULT_MODEL, "cpu", "fp32", "mean")
    encoder.model.to(torch.bfloat16)
    return encoder


VARIANTS = {
    "bf16 autocast": lambda: (load_encoder(DEFAULT_MODEL, "cpu", "bf16", "mean"), encode_windows),
    "int8": lambda: (load_encoder(DEFAULT_MODEL, "cpu", "int8", "mean"), encode_windows),
    "int8, bf16 projections": lambda: (bf16_projections(load_encoder(DEFAULT_MODEL, "cpu", "int8", "mean")),
                                       encode_windows),
    # encode_windows itself since 2026-12-04; the name kept for docs/bench/bf16-profile.json
    "bf16 autocast, weights cached": lambda: (load_encoder(DEFAULT_MODEL, "cpu", "bf16", "mean"), encode_windows),
    "bf16 weights": lambda: (bf16_weights(), encode_windows),
    "bf16 autocast, inference mode": lambda: (load_encoder(DEFAULT_MODEL, "cpu", "bf16", "mean"),
                                              encode_under_inference_mode),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8, help="operators shown per variant")
    parser.add_argument("--json", default=None)
    parser.add_argument("--variants", default=";".join(VARIANTS),
                        help="separated by semicolons (some names hold a comma), from: " + "; ".join(VARIANTS))
    args = parser.parse_args()
    unknown = [name for name in args.variants.split(";") if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; choose from: " + "; ".join(VARIANTS))
    from torch.profiler import ProfilerActivity, profile

    corpus = load_corpus("20newsgroups", "train", limit=args.docs)
    fp32 = load_encoder(DEFAULT_MODEL, "cpu", "fp32", "mean")
    spec = WindowSpec(256, 32, SpecialTokens.of(fp32.tokenizer))
    windows = [w for tokens in tokenize(fp32.tokenizer, corpus.texts) for w in spec.windows(tokens)]
    n_tokens = sum(len(w) for w in windows)
    variants = {name: VARIANTS[name]() for name in args.variants.split(";")}
    reference = np.asarray(encode_windows(fp32, windows, 1024), dtype=np.float32)
    rows = {}
    for name, (encoder, encode) in variants.items():
        vectors = np.asarray(encode(encoder, windows, 1024), dtype=np.float32)  # also the warm-up
        cos = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
        rows[name] = {"seconds": float("inf"), "cosine_mean": float(cos.mean()), "cosine_p01": float(np.percentile(cos, 1))}
    for round_ in range(args.rounds):
        for name, (encoder, encode) in variants.items():
            start = time.perf_counter()
            encode(encoder, windows, 1024)
            seconds = time.perf_counter() - start
            rows[name]["seconds"] = min(rows[name]["seconds"], seconds)
            print(f"round {round_ + 1}: {name:24s} {seconds:6.2f} s", flush=True)
    for name, (encoder, encode) in variants.items():
        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            encode(encoder, windows, 1024)
        events = sorted(profiled.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        rows[name]["tokens_per_s"] = n_tokens / rows[name]["seconds"]
        rows[name]["operators"] = [[e.key, e.self_cpu_time_total / total] for e in events[:args.rows]]
    print(f"\n{len(windows):,} windows, {n_tokens:,} tokens, {torch.get_num_threads()} threads; {machine_name()}")
    base_name = "bf16 autocast" if "bf16 autocast" in rows else next(iter(rows))
    base = rows[base_name]["tokens_per_s"]
    for name, row in rows.items():
        print(f"{name}: {row['tokens_per_s']:,.0f} tokens/s ({row['tokens_per_s'] / base:.2f}x {base_name}), cosine to fp32 "
              f"{row['cosine_mean']:.5f} / {row['cosine_p01']:.5f}; CPU time: "
              + ", ".join(f"{key} {share:.0%}" for key, share in row["operators"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"docs": len(corpus), "windows": len(windows), "tokens": n_tokens,
                                               "threads": torch.get_num_threads(), "machine": machine_name(),
                                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                               "variants": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
