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
    terms                    heads with a term branch: the term hashing (JSON), the kept
                             hashed feature ids and their idf (`longdoc.terms.tfidf`); else None

It is serialised in memory, then written to a private temporary beside `<out>`,
fsynced and renamed (`longdoc.runtime.workdir.atomic_path`), so an interrupted or failed
save (disk full) leaves any earlier checkpoint intact.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

import longdoc
from longdoc.cache.reader import ENCODER_IDENTITY, WindowCache, differences
from longdoc.heads.head import Head
from longdoc.runtime.errors import UserError
from longdoc.runtime.workdir import atomic_write_bytes
from longdoc.settings.model import HeadConfig
from longdoc.terms.tfidf import TermWeights

FORMAT_NAME = "longdoc-head"
# 2: the term branch (`terms`, HeadConfig.inputs) and `window_vector` in `encoder`.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# What a head records about its cache; ENCODER_IDENTITY decides compatibility.
ENCODER_KEYS = ("model", *ENCODER_IDENTITY, "precision", "hidden_size")


@dataclass
class Checkpoint:
    head: Head
    label_names: list[str]
    encoder: dict
    training: dict
    path: Path | None = None
    terms: TermWeights | None = None  # TF-IDF statistics of a head with a term branch


def encoder_record(cache: WindowCache) -> dict:
    return {k: cache.attrs.get(k) for k in ENCODER_KEYS} | {"hidden_size": cache.hidden_size}


def save_checkpoint(path: str | Path, head: Head, label_names: list[str], encoder: dict, training: dict,
                    terms: TermWeights | None = None):
    path = Path(path)
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": longdoc.__version__,
        "head": head.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "label_names": list(label_names),
        "encoder": dict(encoder),
        "training": training,
        "terms": terms.to_dict() if terms is not None else None,
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
    if payload.get("format_version") not in READABLE_VERSIONS:
        raise UserError(f"{path}: head format version {payload.get('format_version')}, "
                        f"this code reads {' and '.join(map(str, READABLE_VERSIONS))}")
    try:
        head = Head(HeadConfig(**payload["head"]))
        head.load_state_dict(payload["state_dict"])
        terms = TermWeights.from_dict(payload["terms"]) if payload.get("terms") is not None else None
        if head.reads_terms and (terms is None or terms.n_terms != head.config.n_terms):
            raise ValueError("the term branch's statistics are missing or do not match it")
        label_names = list(payload["label_names"])
        encoder = {"window_vector": "cls", **dict(payload["encoder"])}  # version 1 heads: [CLS] windows
        training = dict(payload.get("training") or {})
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, UserError) as error:
        raise UserError(f"{path}: damaged head checkpoint ({type(error).__name__}: "
                        f"{(str(error).splitlines() or [''])[0][:120]})") from None
    _check_head(path, head, label_names, encoder)
    head.eval()
    return Checkpoint(head, label_names, encoder, training, path, terms)


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
    if checkpoint.terms is not None and not cache.has_terms:
        raise UserError(f"{cache.path} holds no term counts, which the head {checkpoint.path} reads; embed it "
                        f"again with terms (the default, not --no-terms), or use a head trained with --inputs windows")
    if checkpoint.terms is not None and cache.term_hashing != checkpoint.terms.hashing:
        raise UserError(f"{cache.path} hashed its terms differently from the cache {checkpoint.path} was trained "
                        f"on ({cache.term_hashing} vs {checkpoint.terms.hashing}); embed it with the head's settings")


def labels_by_name(checkpoint: Checkpoint, cache: WindowCache):
    """The cache's labels as indices into the head's label_names (matched by name)."""
    unknown = [n for n in cache.label_names if n not in checkpoint.label_names]
    if unknown:
        raise UserError(f"{cache.path} has classes the head does not know: {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''}; the head knows "
                        f"{', '.join(checkpoint.label_names[:5])}{' ...' if len(checkpoint.label_names) > 5 else ''}")
    index = [checkpoint.label_names.index(n) for n in cache.label_names]
    return torch.as_tensor(index)[torch.from_numpy(cache.labels)].numpy()
