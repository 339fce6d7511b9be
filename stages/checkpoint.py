"""The head checkpoint: one file that rebuilds a trained head with nothing else.

`torch.save` of a plain dict (loadable with `weights_only=True`, so opening a
checkpoint never runs code from it):

    format, format_version   "longdoc-head", 1
    head                     HeadConfig as a dict (pooling, sizes, dropout, ...)
    state_dict               the head's weights
    label_names              class names, in the order of the logits
    encoder                  model, model_fingerprint, chunk_tokens, stride, precision,
                             hidden_size of the cache it was trained on
    training                 the training arguments, best epoch, validation scores,
                             per-epoch history (for the record; loading ignores it)

It is serialised in memory, then written to a private temporary beside `<out>`,
fsynced and renamed (`stages.workdir.atomic_path`), so an interrupted or failed
save (disk full) leaves any earlier checkpoint intact.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

import stages
from stages.cache import ENCODER_IDENTITY, WindowCache, differences
from stages.errors import UserError
from stages.heads import Head, HeadConfig
from stages.workdir import atomic_write_bytes

FORMAT_NAME = "longdoc-head"
FORMAT_VERSION = 1
# What a head records about its cache; ENCODER_IDENTITY decides compatibility.
ENCODER_KEYS = ("model", *ENCODER_IDENTITY, "precision", "hidden_size")


@dataclass
class Checkpoint:
    head: Head
    label_names: list[str]
    encoder: dict
    training: dict
    path: Path | None = None


def encoder_record(cache: WindowCache) -> dict:
    return {k: cache.attrs.get(k) for k in ENCODER_KEYS} | {"hidden_size": cache.hidden_size}


def save_checkpoint(path: str | Path, head: Head, label_names: list[str], encoder: dict, training: dict):
    path = Path(path)
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": stages.__version__,
        "head": head.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "label_names": list(label_names),
        "encoder": dict(encoder),
        "training": training,
    }
    buffer = io.BytesIO()  # a head is small; a failed write is then an OSError, not torch's RuntimeError
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a head; anything that is not one is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such head file (train one with `python cli.py train-head`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load on a foreign file: UnpicklingError, KeyError, RuntimeError, ...
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: not a head checkpoint ({first[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise UserError(f"{path}: not a head checkpoint (no format={FORMAT_NAME!r})")
    if payload.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: head format version {payload.get('format_version')}, "
                        f"this code reads {FORMAT_VERSION}")
    try:
        head = Head(HeadConfig(**payload["head"]))
        head.load_state_dict(payload["state_dict"])
        label_names, encoder = list(payload["label_names"]), dict(payload["encoder"])
        training = dict(payload.get("training") or {})
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, UserError) as error:
        raise UserError(f"{path}: damaged head checkpoint ({type(error).__name__}: "
                        f"{(str(error).splitlines() or [''])[0][:120]})") from None
    _check_head(path, head, label_names, encoder)
    head.eval()
    return Checkpoint(head, label_names, encoder, training, path)


def _check_head(path: Path, head: Head, label_names: list, encoder: dict):
    """What predict and evaluate rely on: a printable name per output, the encoder's
    settings, finite weights."""
    if len(label_names) != head.config.n_classes:
        raise UserError(f"{path}: damaged head checkpoint ({len(label_names)} label names for "
                        f"{head.config.n_classes} outputs)")
    bad = [n for n in label_names if not isinstance(n, str) or not n or not n.isprintable()]
    if bad:
        raise UserError(f"{path}: damaged head checkpoint (label name {bad[0]!r} is empty or not printable)")
    missing = [k for k in ("model", "model_fingerprint", "chunk_tokens", "stride") if encoder.get(k) is None]
    if missing:
        raise UserError(f"{path}: damaged head checkpoint (its encoder record lacks {', '.join(missing)})")
    if not all(torch.isfinite(v).all() for v in head.state_dict().values() if v.is_floating_point()):
        raise UserError(f"{path}: damaged head checkpoint (weights that are NaN or infinite)")


def check_compatible(checkpoint: Checkpoint, cache: WindowCache):
    """Refuse a cache made by another encoder or other window settings than the head's."""
    diff = differences(cache.attrs, checkpoint.encoder, ENCODER_IDENTITY, names=("the head", "the cache"))
    if cache.hidden_size != checkpoint.head.config.hidden_size:
        diff.append(f"hidden_size: {checkpoint.head.config.hidden_size} (the head) vs "
                    f"{cache.hidden_size} (the cache)")
    if diff:
        raise UserError(f"{cache.path} was not made like the cache {checkpoint.path} was trained on "
                        f"({'; '.join(diff)}); embed it with the head's settings")


def labels_by_name(checkpoint: Checkpoint, cache: WindowCache):
    """The cache's labels as indices into the head's label_names (matched by name)."""
    unknown = [n for n in cache.label_names if n not in checkpoint.label_names]
    if unknown:
        raise UserError(f"{cache.path} has classes the head does not know: {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''}; the head knows "
                        f"{', '.join(checkpoint.label_names[:5])}{' ...' if len(checkpoint.label_names) > 5 else ''}")
    index = [checkpoint.label_names.index(n) for n in cache.label_names]
    return torch.as_tensor(index)[torch.from_numpy(cache.labels)].numpy()
