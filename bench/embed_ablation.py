"""What each stage-one speed choice is worth, on the same windows in one process.

    .venv/bin/python bench/embed_ablation.py --docs 60 --rounds 4

`encode_windows` (bf16 autocast on this CPU) on the windows of the first `--docs`
20 Newsgroups train posts, each variant interleaved over `--rounds` rounds, best kept:
  * default: [CLS]-only last layer, 1024-token batches;
  * full last layer (every token through every layer);
  * 16384-token batches.
Reads the 20 Newsgroups train split and MiniLM; writes nothing, prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from longdoc.corpus.sources import load_corpus
from longdoc.encoding.batches import encode_windows
from longdoc.encoding.cls_forward import ClsForward
from longdoc.encoding.encoder import Encoder, load_encoder
from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize
from longdoc.settings.model import DEFAULT_MODEL


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    corpus = load_corpus("20newsgroups", "train", limit=args.docs)
    encoder = load_encoder(DEFAULT_MODEL, "cpu", "auto")
    spec = WindowSpec(256, 32, SpecialTokens.of(encoder.tokenizer))
    windows = [w for tokens in tokenize(encoder.tokenizer, corpus.texts) for w in spec.windows(tokens)]
    n_tokens = sum(len(w) for w in windows)
    full = Encoder(**{**encoder.__dict__, "_cls_forward": ClsForward(encoder.model)})
    full._cls_forward.shortcut = False
    variants = {"default ([CLS]-only last layer, 1024-token batches)": (encoder, 1024),
                "full last layer, 1024-token batches": (full, 1024),
                "[CLS]-only last layer, 16384-token batches": (encoder, 16384)}
    encode_windows(encoder, windows[:16], 1024)
    best = dict.fromkeys(variants, 0.0)
    for _ in range(args.rounds):
        for name, (enc, batch_tokens) in variants.items():
            start = time.perf_counter()
            encode_windows(enc, windows, batch_tokens)
            best[name] = max(best[name], n_tokens / (time.perf_counter() - start))
    print(f"{len(windows)} windows, {n_tokens:,} tokens, precision {encoder.precision}, "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    for name, rate in best.items():
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
