"""The int8 encoder path on CPUs: torch's own dynamic quantization of every nn.Linear.

`--precision int8` replaces each Linear of a loaded encoder (Q, K, V, the attention output,
both feed-forward matrices; about 90% of MiniLM's FLOPs at 256 tokens) by torch's dynamic
int8 Linear: weights quantized once per output channel (symmetric int8), activations per
tensor at run time (uint8), int8 dot products accumulated in int32, output in fp32.
Embeddings, LayerNorm, softmax and the attention matmuls stay fp32. No new dependency: the
kernels ship in torch's CPU wheel (the x86/fbgemm/onednn engines).

Activations use all 8 bits on CPUs with VNNI (`Int8Linear`). torch's own module keeps them to
7 bits (`reduce_range`), so that AVX2's 16-bit pair sums (vpmaddubsw) cannot saturate; VNNI
(vpdpbusd) accumulates in 32 bits, so the 8th bit is free there, and on MiniLM it takes the
window vectors' 1st-percentile cosine to fp32 from 0.936 to 0.986 (bench/int8_candidates.py).
Without VNNI the 7-bit module runs, as torch intends.

The module tree keeps BERT's layout (`encoder.layer[i].attention.self.query` is still a
callable module), so the [CLS]-only last layer (`longdoc.encoding.cls_forward`) runs on it
unchanged; since activations are quantized per tensor, a window's vector moves a little
with the other windows of its batch (the padding included), as under bf16 autocast.

`int8_problem()` says why int8 cannot run here (no quantized engine, kernels missing, the
API gone from a later torch: torch marks `torch.ao.quantization` deprecated), proven by
running one tiny quantized Linear; `--precision int8` is then refused with that reason and
`auto` never picks it. Reads /proc/cpuinfo; writes nothing.
"""

from __future__ import annotations

import functools
import warnings

import torch

from longdoc.runtime.devices import cpu_flags

# Quantized engines in the order tried: x86 (fbgemm or onednn by shape, torch's default on
# x86), fbgemm, onednn; qnnpack is the ARM one.
ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")


def cpu_has_vnni() -> bool:
    """True where the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8):
    without them an int8 dot product takes three instructions (AVX2/AVX-512 multiply-adds) and
    7-bit activations, so int8 gains little there."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def choose_engine() -> str | None:
    """The quantized engine to run on: the current one if it is one of ENGINES, else the first
    this torch build supports; None when there is none."""
    supported = list(torch.backends.quantized.supported_engines)
    if torch.backends.quantized.engine in ENGINES:
        return torch.backends.quantized.engine
    return next((e for e in ENGINES if e in supported), None)


@functools.lru_cache(maxsize=1)
def int8_problem() -> str | None:
    """None when dynamic int8 Linear layers run here; else why not, in a few words."""
    try:
        from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic"
    engine = choose_engine()
    if engine is None:
        return f"torch {torch.__version__} has no quantized CPU engine (none of {', '.join(ENGINES)})"
    try:
        probe = quantize_linear_layers(torch.nn.Sequential(torch.nn.Linear(4, 4)))
        with torch.inference_mode():
            out = probe(torch.ones(2, 4))
    except (RuntimeError, NotImplementedError, AttributeError) as error:
        return f"the int8 kernels do not run on engine {engine} ({type(error).__name__}: {str(error)[:80]})"
    if out.shape != (2, 4) or not torch.isfinite(out).all():
        return f"the int8 kernels of engine {engine} gave no usable result"
    return None


@functools.lru_cache(maxsize=2)
def int8_linear_class(full_range: bool):
    """torch's dynamic int8 Linear, or with `full_range` a subclass whose activations use all 8
    bits (torch's own keeps 7: the module docstring says why)."""
    from torch.ao.nn.quantized.dynamic import Linear

    if not full_range:
        return Linear

    class Int8Linear(Linear):
        """torch's dynamic int8 Linear with 8-bit activations (for CPUs with VNNI)."""

        def forward(self, x):
            return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                      reduce_range=False).to(x.dtype)

        def _get_name(self):
            return "Int8Linear"

    return Int8Linear


def quantize_linear_layers(model: torch.nn.Module, per_channel: bool = True,
                           full_range: bool | None = None) -> torch.nn.Module:
    """`model` (in eval mode, on the CPU) with every nn.Linear replaced, in place, by a dynamic
    int8 Linear. Per-channel weight scales by default: per-tensor cost MiniLM's window vectors
    3x more cosine to fp32 (bench/int8_candidates.py). `full_range` (None: where the CPU has
    VNNI) quantizes activations to 8 bits instead of torch's 7."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    engine = choose_engine()
    if engine is not None and torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    linear = int8_linear_class(cpu_has_vnni() if full_range is None else full_range)
    with warnings.catch_warnings():  # torch warns at every call that the API is deprecated; a CLI says none of it
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
        return quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8,
                                mapping={torch.nn.Linear: linear}, inplace=True)
