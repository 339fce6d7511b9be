"""Stage-one speed, side by side on identical windows, same model, same machine, one run.

    .venv/bin/python bench/embed_speed.py --docs 150 --repeats 3 --json docs/bench/embed_speed.json
    .venv/bin/python bench/embed_speed.py --processes --docs 959 --json docs/bench/embed_processes.json

Compares, on the windows of the first `--docs` 20 Newsgroups train posts (default
window settings, MiniLM):
  * ours: `longdoc.encoding.batches.encode_windows` (length-sorted, token-budget batches) at fp32
    and at bf16 autocast (the default on this CPU);
  * sentence-transformers `encode()` on the same windows as text (its defaults:
    batch 32, fp32), also under bf16 autocast and with bf16 weights;
  * stage one as `embed` now runs it for MiniLM: mean window vectors (`--window-vector
    auto`: the full last layer) plus each document's hashed term counts, at fp32 and bf16;
    [CLS] plus hashing; hashing alone (what the terms add to stage one);
  * the original prototype's approach (bench/prototype.py): each document's windows
    padded to 512 and run as one batch, fp32 (as it ran) and under bf16 autocast;
and reports tokens/s, the speed-ups the stage-one issue asks for, and model FLOP
utilisation: tokens/s x encoder FLOPs per token / measured matmul FLOP/s, same dtype
(with the FLOPs stage one executes; see stages/longdoc/encoding/cls_forward.py).
With `--processes`, instead: whole processes, alternating, each one's best of two
(`whole_processes`): `cli.py embed --no-terms` at the default precision, at bf16 autocast and at
int8, against
sentence-transformers with torch fp32, ONNX Runtime fp32 and ONNX Runtime dynamic int8
(`export_dynamic_quantized_onnx_model(..., "avx512_vnni")` of the packaged MiniLM, exported
locally by bench/onnx_export.py: nothing downloaded) on the same windows as text; the ONNX rows
run in `--st-python`, a venv with sentence-transformers' `onnx` extra (not a dependency).
Every method embeds exactly the same token windows; tokens/s counts real (unpadded)
window tokens, special tokens included.
Reads the 20 Newsgroups train split and MiniLM (ours and sentence-transformers' copy of
the same folder); writes the results as JSON to `--json` and prints them.
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

import prototype  # noqa: E402  (bench/prototype.py, beside this file)
from machine import machine_name  # noqa: E402  (bench/machine.py, beside this file)

from longdoc.corpus.sources import load_corpus
from longdoc.encoding.batches import encode_windows
from longdoc.encoding.encoder import load_encoder, resolve_model_path, resolve_precision
from longdoc.encoding.int8 import int8_problem
from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize
from longdoc.settings.model import DEFAULT_MODEL
from longdoc.terms.hashing import TermHashing


def bf16_autocast(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` under bf16 autocast on the CPU."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn(*args, **kwargs)


def best_times(methods: dict, rounds: int) -> dict:
    """Best wall time of each method over `rounds` rounds, the methods interleaved
    within each round, so slow drifts of a shared machine hit all of them alike."""
    best = {name: float("inf") for name in methods}
    for round_ in range(rounds):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
            print(f"round {round_ + 1}: {name:55s} {time.perf_counter() - start:7.1f} s", flush=True)
    return best


def matmul_flops(dtype: torch.dtype, sizes=(2048, 4096), repeats: int = 3) -> float:
    """Best measured FLOP/s of a square matrix multiply at `dtype` on this machine."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, repeats * 2 * n ** 3 / (time.perf_counter() - start))
    return best


def encoder_flops_per_token(config, window_lengths: np.ndarray, cls_only_last_layer: bool) -> float:
    """Forward FLOPs per token actually executed: 2 x (dense weights) + attention scores
    and mixing, averaged over tokens of windows with the given lengths. With
    `cls_only_last_layer` (what longdoc.encoding.cls_forward runs), the last layer computes keys
    and values for every token but query, output, feed-forward and attention for the
    first position only."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = window_lengths.astype(np.float64)
    tokens = lengths.sum()
    dense = 2 * (4 * h * h + 2 * h * inter)  # Q, K, V, O projections and the two FFN matrices
    attention = 4 * h * (lengths ** 2).sum() / tokens  # QK^T and AV, per token of a window of length L
    if not cls_only_last_layer:
        return layers * (dense + attention)
    last_every_token = 2 * (2 * h * h)  # K and V
    last_per_window = 2 * (2 * h * h + 2 * h * inter) + 4 * h * lengths  # Q, O, FFN, attention of one query
    return (layers - 1) * (dense + attention) + last_every_token + last_per_window.sum() / tokens


# --- whole processes: what a user runs, against sentence-transformers' ONNX Runtime backend ---------

ROOT = Path(__file__).resolve().parent.parent


def st_child(folder: str, texts_file: str, file_name: str | None, batch_size: int):
    """In a child process: load `folder` with sentence-transformers (ONNX `file_name`, or torch
    when None) and encode the window texts of `texts_file`; the parent times the whole process."""
    from sentence_transformers import SentenceTransformer

    texts = json.loads(Path(texts_file).read_text())
    kwargs = {"backend": "onnx", "model_kwargs": {"file_name": file_name}} if file_name else {}
    model = SentenceTransformer(folder, device="cpu", **kwargs)
    model.max_seq_length = 256
    vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=False)
    print(json.dumps({"windows": len(vectors)}))


def whole_processes(args) -> dict:
    """Each command as a fresh process, the commands alternating, each one's best of `--process-rounds`:
    `cli.py embed --no-terms` at the default precision, at bf16 autocast and at int8 on the first `--docs` posts,
    and sentence-transformers (torch fp32, ONNX fp32, ONNX dynamic int8) on the same windows as text.
    sentence-transformers' ONNX rows run in `--st-python` (a venv with its `onnx` extra; see
    bench/int8_candidates.py), on the packaged MiniLM exported locally (bench/onnx_export.py)."""
    import subprocess
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="embed-speed-"))
    encoder = load_encoder(DEFAULT_MODEL, "cpu", "fp32")
    corpus = load_corpus("20newsgroups", "train", data_home=args.data_home, limit=args.docs)
    spec = WindowSpec(args.chunk_tokens, args.stride, SpecialTokens.of(encoder.tokenizer))
    windows = [w for t in tokenize(encoder.tokenizer, corpus.texts) for w in spec.windows(t)]
    texts = encoder.tokenizer.batch_decode([w[len(spec.special.prefix):len(w) - len(spec.special.suffix)]
                                            for w in windows])
    (work / "texts.json").write_text(json.dumps(texts))
    folder = Path(args.onnx_folder)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'stages'}:{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([args.st_python, str(ROOT / "bench" / "onnx_export.py"), str(folder)], check=True, env=env)
    embed = [sys.executable, str(ROOT / "cli.py"), "embed", "--limit", str(args.docs), "--no-terms",
             "--chunk-tokens", str(args.chunk_tokens), "--stride", str(args.stride), "--no-progress",
             "--overwrite", "--out", str(work / "cache.h5")] + (["--data-home", args.data_home] if args.data_home else [])
    child = [str(Path(__file__).resolve()), "--st-child", str(folder), "--texts", str(work / "texts.json")]
    commands = {
        "ours: cli.py embed --no-terms (defaults)": embed,
        "ours: cli.py embed --no-terms --precision bf16 (autocast)": embed + ["--precision", "bf16"],
        "ours: cli.py embed --no-terms --precision int8": embed + ["--precision", "int8"],
        "sentence-transformers torch fp32 (its defaults)": [sys.executable, *child],
        "sentence-transformers ONNX Runtime fp32": [args.st_python, *child, "--onnx-file", "onnx/model.onnx"],
        "sentence-transformers ONNX Runtime dynamic int8 (avx512_vnni)":
            [args.st_python, *child, "--onnx-file", "onnx/model_qint8_avx512_vnni.onnx"],
    }
    best = dict.fromkeys(commands, float("inf"))
    for round_ in range(args.process_rounds):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env=env)
            seconds = time.perf_counter() - start
            best[name] = min(best[name], seconds)
            print(f"round {round_ + 1}: {name:65s} {seconds:7.1f} s", flush=True)
    ours = best["ours: cli.py embed --no-terms (defaults)"]
    return {"docs": len(corpus), "windows": len(windows), "tokens": int(sum(len(w) for w in windows)),
            "default_precision": resolve_precision("auto", torch.device("cpu")),  # what `auto` ran at
            "seconds": best, "ours_default_speedup_over": {name: s / ours for name, s in best.items()},
            "machine": machine_name(),
            "date": time.strftime("%Y-%m-%d", time.gmtime())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--batch-tokens", type=int, default=1024, help="ours: the CPU default")
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--no-bf16", action="store_true",
                        help="skip every bf16 method: on a CPU without native bf16 (no AVX-512 BF16) "
                             "`--precision auto` runs fp32, and emulated bf16 is several times slower")
    parser.add_argument("--processes", action="store_true",
                        help="only the whole-process comparison with sentence-transformers' ONNX backend")
    parser.add_argument("--process-rounds", type=int, default=2, help="--processes: each command's best of this")
    parser.add_argument("--st-python", default="/work/venv-int8/bin/python",
                        help="--processes: a Python with sentence-transformers[onnx] (not a project dependency)")
    parser.add_argument("--onnx-folder", default="data/bench/minilm-onnx",
                        help="--processes: where the packaged MiniLM is exported to ONNX")
    parser.add_argument("--st-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--texts", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--onnx-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.st_child:
        return st_child(args.st_child, args.texts, args.onnx_file, 32)
    if args.processes:
        results = whole_processes(args)
        print(json.dumps(results, indent=1))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        return

    corpus = load_corpus("20newsgroups", "train", data_home=args.data_home, limit=args.docs)
    fp32 = load_encoder(DEFAULT_MODEL, "cpu", "fp32")  # [CLS] window vectors: the [CLS]-only fast path
    bf16 = load_encoder(DEFAULT_MODEL, "cpu", "bf16")
    # What `embed --window-vector auto` caches for MiniLM: the mean of each window's tokens
    # (the full last layer runs), plus each document's hashed term counts.
    fp32_mean = load_encoder(DEFAULT_MODEL, "cpu", "fp32", window_vector="mean")
    bf16_mean = load_encoder(DEFAULT_MODEL, "cpu", "bf16", window_vector="mean")
    # `--precision int8`: every Linear layer in int8 (longdoc.encoding.int8), where its kernels run.
    int8_mean = load_encoder(DEFAULT_MODEL, "cpu", "int8", window_vector="mean") if int8_problem() is None else None
    hashing = TermHashing()
    spec = WindowSpec(args.chunk_tokens, args.stride, SpecialTokens.of(fp32.tokenizer))
    tokens = tokenize(fp32.tokenizer, corpus.texts)
    windows_by_doc = [spec.windows(t) for t in tokens]
    windows = [w for doc in windows_by_doc for w in doc]
    lengths = np.array([len(w) for w in windows])
    n_tokens = int(lengths.sum())
    texts = fp32.tokenizer.batch_decode([w[len(spec.special.prefix):len(w) - len(spec.special.suffix)]
                                         for w in windows])

    from sentence_transformers import SentenceTransformer

    st_path = resolve_model_path(DEFAULT_MODEL)
    st = SentenceTransformer(st_path, device="cpu")
    st.max_seq_length = args.chunk_tokens
    st_bf16 = SentenceTransformer(st_path, device="cpu", model_kwargs={"dtype": torch.bfloat16})
    st_bf16.max_seq_length = args.chunk_tokens
    # sentence-transformers takes text: check it sees the very same token ids we do
    retokenized = st.tokenizer(texts[:200], truncation=True, max_length=st.max_seq_length)["input_ids"]
    same_ids = np.mean([r == np.asarray(w).tolist() for r, w in zip(retokenized, windows[:200])])

    methods = {
        "ours fp32": lambda: encode_windows(fp32, windows, args.batch_tokens),
        "ours bf16 autocast (default)": lambda: encode_windows(bf16, windows, args.batch_tokens),
        "ours fp32, [CLS] + term hashing": lambda: (encode_windows(fp32, windows, args.batch_tokens),
                                                    hashing.counts(corpus.texts)),
        "ours fp32, mean window vector + term hashing (embed's default)":
            lambda: (encode_windows(fp32_mean, windows, args.batch_tokens), hashing.counts(corpus.texts)),
        "ours bf16 autocast, mean window vector + term hashing":
            lambda: (encode_windows(bf16_mean, windows, args.batch_tokens), hashing.counts(corpus.texts)),
        "ours int8, mean window vector + term hashing":
            lambda: (encode_windows(int8_mean, windows, args.batch_tokens), hashing.counts(corpus.texts)),
        "term hashing alone (HashingVectorizer, unigrams + bigrams)": lambda: hashing.counts(corpus.texts),
        "sentence-transformers encode fp32 (its defaults)": lambda: st.encode(texts, show_progress_bar=False),
        "sentence-transformers encode bf16 autocast":
            lambda: bf16_autocast(st.encode, texts, show_progress_bar=False),
        "sentence-transformers encode bf16 weights": lambda: st_bf16.encode(texts, show_progress_bar=False),
        "original prototype fp32 (doc = one batch, pad 512)":
            lambda: prototype.embed_documents(fp32.model, windows_by_doc, spec.special.pad_id),
        "original prototype bf16 autocast":
            lambda: bf16_autocast(prototype.embed_documents, fp32.model, windows_by_doc, spec.special.pad_id),
    }
    if args.no_bf16:
        methods = {name: fn for name, fn in methods.items() if "bf16" not in name}
    if int8_mean is None:
        methods = {name: fn for name, fn in methods.items() if "int8" not in name}
    # warm-up: first calls allocate, pick kernels and fill caches
    for encoder in [e for e in (fp32, fp32_mean, *(() if args.no_bf16 else (bf16, bf16_mean)), int8_mean)
                    if e is not None]:
        encode_windows(encoder, windows[:64], args.batch_tokens)
    for model in (st,) if args.no_bf16 else (st, st_bf16):
        model.encode(texts[:64], show_progress_bar=False)

    rates = {name: n_tokens / seconds for name, seconds in best_times(methods, args.repeats).items()}
    for name, rate in rates.items():
        print(f"{name:55s} {rate:9,.0f} tokens/s", flush=True)

    from longdoc.encoding.cls_forward import supports_cls_shortcut

    executed = encoder_flops_per_token(fp32.model.config, lengths, supports_cls_shortcut(fp32.model))
    full = encoder_flops_per_token(fp32.model.config, lengths, False)
    peak = {"fp32": matmul_flops(torch.float32)}
    if not args.no_bf16:
        peak["bf16"] = matmul_flops(torch.bfloat16)
    default, st_encode = "ours bf16 autocast (default)", "sentence-transformers encode"
    ours = {"fp32": rates["ours fp32"], "bf16": rates.get(default)}
    ours = {dtype: rate for dtype, rate in ours.items() if rate is not None}
    speedups = {  # name: (a, b), two methods of `rates`: a's speed over b's
        "ours fp32 / sentence-transformers fp32": ("ours fp32", f"{st_encode} fp32 (its defaults)"),
        "ours fp32 / original prototype fp32": ("ours fp32", "original prototype fp32 (doc = one batch, pad 512)"),
        "ours bf16 autocast / sentence-transformers bf16 autocast": (default, f"{st_encode} bf16 autocast"),
        "ours bf16 autocast / sentence-transformers bf16 weights": (default, f"{st_encode} bf16 weights"),
        "ours default / sentence-transformers defaults": (default, f"{st_encode} fp32 (its defaults)"),
        "ours default / original prototype (fp32)": (default, "original prototype fp32 (doc = one batch, pad 512)"),
        "ours bf16 / original prototype bf16": (default, "original prototype bf16 autocast"),
        # stage one's cost of the terms, and of the mean vector over [CLS] (both at fp32)
        "[CLS] + terms / [CLS]": ("ours fp32, [CLS] + term hashing", "ours fp32"),
        "mean + terms / [CLS]": ("ours fp32, mean window vector + term hashing (embed's default)", "ours fp32"),
        "ours int8 / ours bf16 (mean + terms)": ("ours int8, mean window vector + term hashing",
                                                 "ours bf16 autocast, mean window vector + term hashing"),
    }
    results = {
        "docs": len(corpus), "windows": len(windows), "tokens": n_tokens,
        "window_settings": {"chunk_tokens": args.chunk_tokens, "stride": args.stride,
                            "batch_tokens": args.batch_tokens},
        "st_retokenization_identical_fraction": float(same_ids),
        "tokens_per_s": rates,
        "speedups": {name: rates[faster] / rates[slower] for name, (faster, slower) in speedups.items()
                     if faster in rates and slower in rates},
        "flops_per_token": {"executed": executed, "full_encoder": full},
        "matmul_flops_per_s": peak,
        # executed FLOPs: what the hardware really did (the conservative figure)
        "model_flops_utilisation": {dtype: ours[dtype] * executed / peak[dtype] for dtype in ours},
        # full-encoder FLOPs: useful work, as if every token went through every layer
        "model_flops_utilisation_full_encoder": {dtype: ours[dtype] * full / peak[dtype] for dtype in ours},
        "machine": f"{machine_name()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
