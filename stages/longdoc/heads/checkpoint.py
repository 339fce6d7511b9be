"""The head checkpoint: one file that rebuilds a trained head with nothing else.

`torch.save` of a plain dict (loadable with `weights_only=True`, so opening a
checkpoint never runs code from it):

    format, format_version   "longdoc-head", 3 (1 and 2 still load: single-label heads)
    head                     HeadConfig as a dict (pooling, sizes, dropout, task, ...)
    state_dict               the head's weights
    label_names              class names, in the order of the logits
    encoder                  model, model_fingerprint, chunk_tokens, stride, precision,
                             hidden_size of the cache it was trained on
    training                 the training arguments, best epoch, validation scores,
                             per-epoch history (for the record; loading ignores it)
    terms                    heads with a term branch: the term hashing (JSON), the kept
                             hashed feature ids and their idf (`longdoc.terms.tfidf`); else None
    decision                 multi-label heads (HeadConfig.task): how probabilities become label
                             sets (`longdoc.heads.decision.Decision.to_dict`: a threshold per label,
                             the empty-set rule, the rule that fitted them); absent or None otherwise

It is serialised in memory, then written to a private temporary beside `<out>`,
fsynced and renamed (`longdoc.runtime.workdir.atomic_path`), so an interrupted or failed
save (disk full) leaves any earlier checkpoint intact.

`load_checkpoint` reads it with `longdoc.runtime.workdir.load_torch_file` (every record's CRC-32,
then `weights_only`) and checks every field before it is used: the fields above and no
others, the head record's types and ranges (sizes before anything is allocated), each
weight's name, shape, dtype and finiteness against the head that record describes, the
term statistics against their hashing, distinct printable label names, the encoder
record's types and ranges. A head that fails is one line naming the file and the field.
Not told apart from a trained head: finite weights (or idf, or term ids in order and
range) changed to other finite values, and label names put in another order. A decision
is checked by `Decision.from_dict`: one finite threshold in [0, 1] per label, known rules.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from pathlib import Path

import torch

import longdoc
from longdoc.cache.reader import ENCODER_IDENTITY, WindowCache, differences
from longdoc.heads.decision import Decision
from longdoc.heads.head import Head
from longdoc.runtime.errors import UserError
from longdoc.runtime.workdir import atomic_write_bytes, brief, first_line, load_torch_file, tensor_problem
from longdoc.settings.model import PRECISIONS, WINDOW_VECTORS, HeadConfig, precision_differences
from longdoc.terms.tfidf import TermWeights

FORMAT_NAME = "longdoc-head"
# 2: the term branch (`terms`, HeadConfig.inputs) and `window_vector` in `encoder`.
# 3: `task` in `head` and, for label sets, `decision`.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
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
    decision: Decision | None = None  # a multi-label head's thresholds and empty-set rule


def encoder_record(cache: WindowCache) -> dict:
    return {k: cache.attrs.get(k) for k in ENCODER_KEYS} | {"hidden_size": cache.hidden_size}


def save_checkpoint(path: str | Path, head: Head, label_names: list[str], encoder: dict, training: dict,
                    terms: TermWeights | None = None, decision: Decision | None = None):
    path = Path(path)
    if head.multi_label != (decision is not None):
        raise ValueError("a multi-label head is saved with its decision, a single-label one without")
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
        **({"decision": decision.to_dict()} if decision is not None else {}),
    }
    buffer = io.BytesIO()  # a head is small; a failed write is then an OSError, not torch's RuntimeError
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a head; anything that is not one is a UserError naming the file and the field.

    Everything read is checked before it is used, and the sizes the file declares before
    anything is allocated: the head record first (its fields, types and ranges), then every
    weight against the shape that record implies (computed on torch's meta device, which
    allocates nothing), so a head is built only from sizes its own tensors, read from the
    file, hold."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such head file (train one with `python cli.py train-head`)")
    try:
        payload = load_torch_file(path)
    except ValueError as error:
        raise UserError(f"{path}: not a head checkpoint ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise UserError(f"{path}: not a head checkpoint (no format={FORMAT_NAME!r})")
    version = payload.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise UserError(f"{path}: head format version {brief(version)}, "
                        f"this code reads {' and '.join(map(str, READABLE_VERSIONS))}")
    missing = [key for key in PAYLOAD_KEYS if key not in payload]
    unknown = [key for key in payload if key not in (*PAYLOAD_KEYS, *OPTIONAL_PAYLOAD_KEYS)]
    if missing or unknown:
        raise _damaged(path, _field("", (missing or unknown)[0]), "missing" if missing else "a field heads do not have")
    head_record = payload["head"]
    if version < 3 and isinstance(head_record, dict):  # before label sets every head was single-label
        head_record = {**head_record, "task": "single_label"}
    config = _head_config(path, head_record)
    weights = _weights(path, payload["state_dict"], config)
    terms = None
    if config.inputs != "windows":
        try:
            terms = TermWeights.from_dict(payload.get("terms"), config.n_terms)
        except ValueError as error:
            raise UserError(f"{path}: damaged head checkpoint ({error})") from None
    elif payload.get("terms") is not None:
        raise _damaged(path, "terms", "term statistics in a head without a term branch")
    label_names = _label_names(path, payload["label_names"], config)
    decision = _decision(path, payload.get("decision"), config)
    encoder = _encoder(path, payload["encoder"], config, version)
    training = payload.get("training")
    if training is not None and not isinstance(training, dict):
        raise _damaged(path, "training", f"{brief(training)}, not a record")
    if not isinstance(payload.get("package_version", ""), str):
        raise _damaged(path, "package_version", f"{brief(payload['package_version'])}, not a version")
    head = Head(config)  # every size checked against the tensors read: no more than the file holds
    head.load_state_dict(weights)
    head.eval()
    return Checkpoint(head, label_names, encoder, dict(training or {}), path, terms, decision)


# What a head file holds (the module docstring); `terms`, `training`, `package_version` and `decision` may be absent.
PAYLOAD_KEYS = ("format", "format_version", "head", "state_dict", "label_names", "encoder")
OPTIONAL_PAYLOAD_KEYS = ("package_version", "training", "terms", "decision")
# No size of a head comes near this; a bound keeps the meta-device arithmetic far from overflowing.
MAX_SIZE = 2**31 - 1
# The types of HeadConfig's fields (their annotations), as a head file must hold them.
FIELD_TYPES = {"str": str, "int": int, "float": float, "bool": bool}
# An encoder record's window settings as a cache records them: resolved, never "auto".
RECORDED_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")
RECORDED_WINDOW_VECTORS = tuple(v for v in WINDOW_VECTORS if v != "auto")


def _damaged(path: Path, field: str, problem: str) -> UserError:
    return UserError(f"{path}: damaged head checkpoint ({field}: {problem})")


def _field(record: str, name) -> str:
    """`record.name` for an error message; a key that is not a short string is shown briefly."""
    shown = name if isinstance(name, str) and name.isprintable() and len(name) <= 40 else brief(name)
    return f"{record}.{shown}" if record else shown


def _head_config(path: Path, record) -> HeadConfig:
    """HeadConfig of the `head` record: exactly its fields, each of its type; then its own
    checks (ranges, choices) and sizes below MAX_SIZE."""
    if not isinstance(record, dict):
        raise _damaged(path, "head", f"{brief(record)}, not a record")
    types = {f.name: FIELD_TYPES[f.type] for f in fields(HeadConfig)}
    for name in [*types, *record]:
        if name not in record or name not in types:
            raise _damaged(path, _field("head", name), "missing" if name in types else "a field heads do not have")
        wanted, value = types[name], record[name]
        if type(value) is not wanted and not (wanted is float and type(value) is int):
            raise _damaged(path, f"head.{name}", f"{brief(value)}, not a {wanted.__name__}")
        if wanted is int and not 0 <= value <= MAX_SIZE:
            raise _damaged(path, f"head.{name}", f"{value} is outside 0 to {MAX_SIZE}")
    try:
        return HeadConfig(**record)
    except UserError as error:
        raise _damaged(path, "head", str(error)) from None


def _weights(path: Path, state, config: HeadConfig) -> dict:
    """`state_dict` checked against the head `config` describes: the same names, and each a
    tensor of the shape and dtype that head has (built on the meta device: nothing allocated),
    finite; `mix` (the branches' weights) not negative."""
    if not isinstance(state, dict):
        raise _damaged(path, "state_dict", f"{brief(state)}, not a dict of tensors")
    try:
        with torch.device("meta"):
            expected = Head(config).state_dict()
    except RuntimeError as error:  # sizes whose product overflows: no head has them
        raise _damaged(path, "head", f"sizes no head can have ({first_line(error)[:80]})") from None
    names = sorted(set(map(str, state)) ^ set(expected))
    if names or not all(isinstance(name, str) for name in state):
        raise _damaged(path, "state_dict", f"the weights of another head ({', '.join(names[:3])} differ from what "
                                           f"a {config.pooling} head of {config.inputs} holds)")
    for name, want in expected.items():
        problem = tensor_problem(state[name], tuple(want.shape), want.dtype)
        if problem:
            raise _damaged(path, f"state_dict.{name}", problem)
    if "mix" in state and (state["mix"] < 0).any():
        raise _damaged(path, "state_dict.mix", "a negative weight of a branch")
    return state


def _decision(path: Path, record, config: HeadConfig) -> Decision | None:
    """A multi-label head's decision, checked (`Decision.from_dict`); none in a single-label head."""
    if not config.multi_label:
        if record is not None:
            raise _damaged(path, "decision", "thresholds in a single-label head")
        return None
    if record is None:
        raise _damaged(path, "decision", "missing (a multi-label head decides by its thresholds)")
    try:
        return Decision.from_dict(record, config.n_classes)
    except (ValueError, TypeError) as error:
        raise _damaged(path, "decision", first_line(error)[:120]) from None


def _label_names(path: Path, names, config: HeadConfig) -> list[str]:
    """A printable, distinct name per output: predict prints them and evaluate matches by them."""
    if not isinstance(names, list) or len(names) != config.n_classes:
        count = f"{len(names)} label names" if isinstance(names, list) else brief(names)
        raise _damaged(path, "label_names", f"{count} for {config.n_classes} outputs")
    for name in names:
        if not isinstance(name, str) or not name or not name.isprintable():
            raise _damaged(path, "label_names", f"label name {brief(name)} is empty or not printable")
    seen = set()
    for name in names:
        if name in seen:
            raise _damaged(path, "label_names", f"{brief(name)} names two outputs")
        seen.add(name)
    return list(names)


def _encoder(path: Path, record, config: HeadConfig, version: int) -> dict:
    """The encoder and window settings predict runs and evaluate compares with a cache's:
    exactly ENCODER_KEYS (version 1 heads, of [CLS] windows, lack `window_vector`)."""
    if not isinstance(record, dict):
        raise _damaged(path, "encoder", f"{brief(record)}, not a record")
    record = {"window_vector": "cls", **record} if version == 1 else record
    for key in [*ENCODER_KEYS, *record]:
        if key not in record or key not in ENCODER_KEYS:
            raise _damaged(path, _field("encoder", key),
                           "missing" if key in ENCODER_KEYS else "a field an encoder record does not have")
    problems = {
        "model": None if isinstance(record["model"], str) and record["model"].strip() else "not a model name",
        "model_fingerprint": None if isinstance(record["model_fingerprint"], str) and record["model_fingerprint"]
        else "not a fingerprint",
        "chunk_tokens": None if type(record["chunk_tokens"]) is int and 1 <= record["chunk_tokens"] <= MAX_SIZE
        else "not a positive window size",
        "stride": None if type(record["stride"]) is int and type(record["chunk_tokens"]) is int
        and 0 <= record["stride"] < record["chunk_tokens"] else "not at least 0 and below chunk_tokens",
        "precision": None if record["precision"] in RECORDED_PRECISIONS
        else f"not one of {', '.join(RECORDED_PRECISIONS)}",
        "window_vector": None if record["window_vector"] in RECORDED_WINDOW_VECTORS
        else f"not one of {', '.join(RECORDED_WINDOW_VECTORS)}",
        "hidden_size": None if type(record["hidden_size"]) is int and record["hidden_size"] == config.hidden_size
        else f"not the head's {config.hidden_size}",
    }
    for key, problem in problems.items():
        if problem:
            raise _damaged(path, f"encoder.{key}", f"{brief(record[key])} is {problem}")
    return dict(record)


def check_task(checkpoint: Checkpoint, cache: WindowCache):
    """Refuse, in one line, a cache of the other task than the head's (classes vs label sets)."""
    head_task, cache_task = checkpoint.head.config.task, cache.task
    if head_task != cache_task:
        raise UserError(f"{cache.path} is a {cache_task.replace('_', '-')} cache and the head {checkpoint.path} "
                        f"a {head_task.replace('_', '-')} one; score a head on a cache of its own task")


def check_compatible(checkpoint: Checkpoint, cache: WindowCache):
    """Refuse a cache of the other task (`check_task`), or made by another encoder, other
    window settings or a precision of another family (`longdoc.settings.model.PRECISION_FAMILIES`)
    than the head's."""
    check_task(checkpoint, cache)
    names = ("the head", "the cache")
    diff = (differences(cache.attrs, checkpoint.encoder, ENCODER_IDENTITY, names=names)
            + precision_differences(cache.attrs, checkpoint.encoder, names=names))
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
        raise UserError(f"{cache.path} has classes the head {checkpoint.path} does not know: {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''}; the head knows "
                        f"{', '.join(checkpoint.label_names[:5])}{' ...' if len(checkpoint.label_names) > 5 else ''}")
    index = [checkpoint.label_names.index(n) for n in cache.label_names]
    return torch.as_tensor(index)[torch.from_numpy(cache.labels)].numpy()


def label_matrix_by_name(checkpoint: Checkpoint, cache: WindowCache):
    """A multi-label cache's label sets against the head's labels, matched by name: (bool
    [docs, head labels], bool [docs, unseen labels], the unseen labels' names). Unseen labels
    are those of the cache the head was never trained on: it cannot predict them, so a
    report scores them as missed rather than refusing the cache."""
    import numpy as np

    matrix = cache.label_matrix()
    position = {name: i for i, name in enumerate(checkpoint.label_names)}
    known = [i for i, name in enumerate(cache.label_names) if name in position]
    unseen = [i for i, name in enumerate(cache.label_names) if name not in position]
    head_matrix = np.zeros((cache.n_docs, len(checkpoint.label_names)), dtype=bool)
    head_matrix[:, [position[cache.label_names[i]] for i in known]] = matrix[:, known]
    return head_matrix, matrix[:, unseen], [cache.label_names[i] for i in unseen]
