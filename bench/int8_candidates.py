"""Which int8 backend for stage one on CPUs: speed, closeness to fp32, install size.

    python3.11 -m venv /work/venv-int8            # once: the candidates' packages, never the project's
    /work/venv-int8/bin/pip install "sentence-transformers[onnx]>=5,<6" "transformers>=4.56,<4.58" \
        "optimum-onnx[onnxruntime]==0.1.0" openvino nncf   # the pins spare pip a long backtrack
    echo "$PWD/.venv/lib/python3.11/site-packages" > /work/venv-int8/lib/python3.11/site-packages/zz-project.pth
    PYTHONPATH=stages /work/venv-int8/bin/python bench/int8_candidates.py --docs 2000 --rounds 3 \
        --json docs/bench/int8_candidates.json

(sentence-transformers 6 wants transformers 5, which optimum-onnx does not take yet: hence
5.x in that venv; the `.pth` line lends it the project's torch.) Candidates the venv lacks
are skipped and said so.

On the windows of the first `--docs` 20 Newsgroups train posts (embed's defaults: 256-token
windows, stride 32, MiniLM's mean window vector), every candidate gets the very same
token-budgeted, length-sorted batches (`longdoc.encoding.batches.pack_batches`/`pad_batch`):
  * torch fp32, and bf16 autocast (today's `auto` on CPUs with native bf16);
  * torch dynamic int8 of every nn.Linear (`longdoc.encoding.int8`, what `--precision int8`
    runs: per-channel weights, 8-bit activations where the CPU has VNNI), per engine (x86,
    fbgemm, onednn); per-tensor weights, and 7-bit and 8-bit activations, as variants;
  * ONNX Runtime: sentence-transformers' own export (`bench/onnx_export.py`) fp32 and its
    dynamic int8 (`export_dynamic_quantized_onnx_model(..., "avx512_vnni")`);
  * OpenVINO: the same fp32 ONNX file at OpenVINO's default CPU precision, and static int8
    from NNCF post-training quantization (`nncf.quantize`, transformer preset, 300 windows of
    calibration drawn from the end of the corpus's windows).
Reported per candidate: tokens/s (best of `--rounds`, candidates interleaved in each round),
each window vector's cosine to torch fp32 (mean, 1st percentile, minimum), and the size of
the packages it adds on disk. tokens/s counts real (unpadded) tokens, special ones included.
Reads the corpus and MiniLM; writes the ONNX files into `--onnx-folder` and the JSON to `--json`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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
from longdoc.encoding.int8 import cpu_has_vnni, quantize_linear_layers
from longdoc.encoding.windows import SpecialTokens, WindowSpec, tokenize
from longdoc.settings.model import DEFAULT_MODEL


def package_mib(*names: str) -> float | None:
    """Disk size of the installed distributions `names` (their own files), or None if one is missing."""
    total = 0
    for name in names:
        try:
            files = importlib.metadata.files(name) or []
        except importlib.metadata.PackageNotFoundError:
            return None
        for file in files:
            try:
                total += file.locate().stat().st_size
            except OSError:
                pass
    return total / 2**20


class Batches:
    """The windows as padded numpy batches, built once: every candidate runs exactly these."""

    def __init__(self, windows, batch_tokens: int, pad_id: int, window_vector: str):
        lengths = np.array([len(w) for w in windows])
        self.order = pack_batches(lengths, batch_tokens)
        self.arrays = []
        for batch in self.order:
            ids, mask = pad_batch(windows, batch, pad_id, torch.device("cpu"))
            mask = torch.ones_like(ids) if mask is None else mask
            self.arrays.append((ids.numpy(), mask.numpy()))
        self.n, self.window_vector = len(windows), window_vector

    def pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.window_vector == "cls":
            return hidden[:, 0]
        weights = mask[..., None].astype(np.float32)
        return (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1.0)

    def run(self, forward) -> np.ndarray:
        """`forward(ids, mask) -> last hidden state [B, T, H]` over every batch, window order restored."""
        out = None
        for batch, (ids, mask) in zip(self.order, self.arrays):
            vectors = self.pool(np.asarray(forward(ids, mask), dtype=np.float32), mask)
            if out is None:
                out = np.empty((self.n, vectors.shape[1]), dtype=np.float32)
            out[batch] = vectors
        return out


def torch_candidates(windows, batch_tokens: int, window_vector: str) -> dict:
    """name: (embed(), packages it adds). Through `encode_windows`, as stage one runs them."""
    def encoder(precision="fp32"):
        return load_encoder(DEFAULT_MODEL, "cpu", precision, window_vector)

    def int8(engine: str, per_channel: bool = True, full_range: bool | None = None):
        enc = encoder("fp32")
        torch.backends.quantized.engine = engine
        quantize_linear_layers(enc.model, per_channel=per_channel, full_range=full_range)

        def run():
            torch.backends.quantized.engine = engine
            return encode_windows(enc, windows, batch_tokens)
        return run

    fp32, bf16 = encoder("fp32"), encoder("bf16")
    found = {"torch fp32": (lambda: encode_windows(fp32, windows, batch_tokens), ()),
             "torch bf16 autocast (today's auto here)": (lambda: encode_windows(bf16, windows, batch_tokens), ())}
    for engine in ("x86", "fbgemm", "onednn"):
        if engine in torch.backends.quantized.supported_engines:
            found[f"torch dynamic int8, {engine}, per-channel"] = (int8(engine), ())
    engine = torch.backends.quantized.supported_engines[0] if "x86" not in \
        torch.backends.quantized.supported_engines else "x86"
    found[f"torch dynamic int8, {engine}, per-tensor"] = (int8(engine, per_channel=False), ())
    found[f"torch dynamic int8, {engine}, per-channel, 7-bit activations (torch's own module)"] = (
        int8(engine, full_range=False), ())
    found[f"torch dynamic int8, {engine}, per-channel, 8-bit activations"] = (int8(engine, full_range=True), ())
    return found


def onnx_candidates(batches: Batches, folder: Path, threads: int) -> tuple[dict, list[str]]:
    try:
        import onnx_export
        import onnxruntime as ort
    except ImportError as error:
        return {}, [f"ONNX Runtime: skipped ({error})"]
    fp32_file, int8_file = onnx_export.export(folder)
    found = {}
    for name, path in (("ONNX Runtime fp32 (sentence-transformers' export)", fp32_file),
                       ("ONNX Runtime dynamic int8 (export_dynamic_quantized_onnx_model avx512_vnni)", int8_file)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def forward(ids, mask, session=session, names=names):
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            return session.run(["last_hidden_state"], {k: feeds[k] for k in names})[0]
        found[name] = (lambda forward=forward: batches.run(forward),
                       ("onnxruntime", "onnx", "optimum", "optimum-onnx", "protobuf", "flatbuffers"))
    return found, []


def openvino_candidates(batches: Batches, folder: Path, threads: int) -> tuple[dict, list[str]]:
    try:
        import nncf
        import openvino as ov
    except ImportError as error:
        return {}, [f"OpenVINO: skipped ({error})"]
    fp32_file = folder / "onnx" / "model.onnx"
    if not fp32_file.exists():
        return {}, ["OpenVINO: skipped (no ONNX export; it needs the ONNX Runtime venv first)"]
    core = ov.Core()
    model = core.read_model(str(fp32_file))
    names = [i.get_any_name() for i in model.inputs]

    def feeds(ids, mask):
        every = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return {k: every[k] for k in names}

    calibration = [feeds(ids, mask) for ids, mask in batches.arrays[-max(1, 300 * len(batches.arrays)
                                                                         // batches.n):]]
    int8_model = nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                               subset_size=len(calibration))
    config = {"INFERENCE_NUM_THREADS": threads}
    found, notes = {}, []
    for name, net in (("OpenVINO fp32 model", model), ("OpenVINO static int8 (NNCF)", int8_model)):
        compiled = core.compile_model(net, "CPU", config)
        name += f", inference precision {compiled.get_property('INFERENCE_PRECISION_HINT')}"

        def forward(ids, mask, compiled=compiled):
            return compiled(feeds(ids, mask))[compiled.output(0)]
        found[name] = (lambda forward=forward: batches.run(forward),
                       ("openvino", "nncf", "openvino-telemetry"))
    notes.append("OpenVINO int8 is static: activation ranges from calibration windows, not per batch")
    return found, notes


def cosines(vectors: np.ndarray, reference: np.ndarray) -> dict:
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True).clip(1e-12)
    cos = (a * b).sum(1)
    return {"mean": float(cos.mean()), "p01": float(np.percentile(cos, 1)), "min": float(cos.min())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each candidate's best is kept")
    parser.add_argument("--batch-tokens", type=int, default=1024, help="stage one's CPU default")
    parser.add_argument("--window-vector", default="mean", choices=("mean", "cls"),
                        help="mean: what embed caches for MiniLM; cls: the [CLS]-only last layer")
    parser.add_argument("--only", default=None, help="run only candidates whose name contains this")
    parser.add_argument("--onnx-folder", default="data/bench/minilm-onnx")
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    corpus = load_corpus("20newsgroups", "train", data_home=args.data_home, limit=args.docs)
    probe = load_encoder(DEFAULT_MODEL, "cpu", "fp32", args.window_vector)
    spec = WindowSpec(256, 32, SpecialTokens.of(probe.tokenizer))
    windows = [w for tokens in tokenize(probe.tokenizer, corpus.texts) for w in spec.windows(tokens)]
    n_tokens = sum(len(w) for w in windows)
    batches = Batches(windows, args.batch_tokens, spec.special.pad_id, args.window_vector)
    threads = torch.get_num_threads()

    candidates = torch_candidates(windows, args.batch_tokens, args.window_vector)
    notes = []
    for more in (onnx_candidates(batches, Path(args.onnx_folder), threads),
                 openvino_candidates(batches, Path(args.onnx_folder), threads)):
        candidates.update(more[0])
        notes += more[1]
    if args.only:
        candidates = {k: v for k, v in candidates.items() if args.only in k or k == "torch fp32"}

    vectors, best = {}, dict.fromkeys(candidates, float("inf"))
    for name, (embed, _) in candidates.items():  # warm-up, and the vectors compared
        vectors[name] = embed()
    for round_ in range(args.rounds):
        for name, (embed, _) in candidates.items():
            start = time.perf_counter()
            embed()
            seconds = time.perf_counter() - start
            best[name] = min(best[name], seconds)
            print(f"round {round_ + 1}: {name:80s} {seconds:7.1f} s", flush=True)

    reference = vectors["torch fp32"]
    rows = {name: {"tokens_per_s": n_tokens / best[name], "cosine_to_fp32": cosines(vectors[name], reference),
                   "adds_packages_mib": package_mib(*packages) if packages else 0.0}
            for name, (_, packages) in candidates.items()}
    results = {"docs": len(corpus), "windows": len(windows), "tokens": n_tokens,
               "window_vector": args.window_vector, "batch_tokens": args.batch_tokens, "threads": threads,
               "vnni": cpu_has_vnni(), "torch": torch.__version__, "machine": machine_name(),
               "date": time.strftime("%Y-%m-%d", time.gmtime()), "notes": notes, "candidates": rows}
    print(f"\n{len(windows):,} windows, {n_tokens:,} tokens, {args.window_vector} vectors, {threads} threads, "
          f"VNNI {cpu_has_vnni()}; {machine_name()}")
    print("| candidate | tokens/s | vs torch fp32 | cosine to fp32: mean / 1st pct / min | adds (MiB) |")
    print("| --- | ---: | ---: | --- | ---: |")
    base = rows["torch fp32"]["tokens_per_s"]
    for name, row in rows.items():
        c, size = row["cosine_to_fp32"], row["adds_packages_mib"]
        print(f"| {name} | {row['tokens_per_s']:,.0f} | {row['tokens_per_s'] / base:.2f}x | "
              f"{c['mean']:.5f} / {c['p01']:.5f} / {c['min']:.5f} | {'?' if size is None else f'{size:,.0f}'} |")
    for note in notes:
        print(f"note: {note}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
