"""Fuzz the head file (`longdoc.heads.checkpoint`) and train-head's work folder (`longdoc.training.state`).

Once per module: a small head of both inputs (so the term branch is there) is trained on a
synthetic cache with terms, and a windows-only train-head run is stopped after its second
epoch, leaving `<out>.partial/state.pt`. Under a fixed seed (`FUZZ_SEED`, default 0) each
test makes `FUZZ_CASES` mutants (default 150 per test, 300 in all; `FUZZ_CASES=5000`
runs more): the file loaded with `torch.load(weights_only=True)`, changed, saved again (a
key dropped, a value of another type, a tensor resized, reshaped, of another dtype or a
view, a NaN or infinite number in a float tensor, an id out of range in an integer
tensor, a number out of range or off by one, a junk string, a flipped bool, an extra key),
or its bytes damaged (truncated, bits flipped).

Each mutant runs in this process through `cli.main`: `evaluate --json` for a head,
`train-head` rerun to its end for a work folder. It must end in
- exit 0 with exactly the result of the unmutated file (the same metrics; the same head:
  weights, history and best epoch as a run never stopped), or
- exit 2 with one `error:` line naming the file,
and never in a traceback (any other exception), a hang (each case runs under an alarm),
an out-of-memory line, or a rise of the process's peak memory beyond a few hundred MB
(sizes read from a file are checked before anything is allocated). The cases run under
an address-space limit a few GB above the process's, so a regression fails as
`MemoryError` instead of exhausting the machine.

Left out, since no check can tell them from a real file: mutations that change only
finite values of tensors (weights, idf, term ids within their order and range, the
optimizer's moments and step counts, torch's generator state), the finite losses and
scores a work folder's history records, valid-looking states of numpy's generator, and
label names put in another order (docs/RELIABILITY.md, "Not covered").
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import lexical_cache, write_synthetic_cache

from longdoc import cli
from longdoc.configs import TrainConfig
from longdoc.heads.checkpoint import load_checkpoint
from longdoc.terms.hashing import TermHashing
from longdoc.train_head import run as run_train_head

CASES = int(os.environ.get("FUZZ_CASES", "150"))
SEED = int(os.environ.get("FUZZ_SEED", "0"))
CASE_SECONDS = 60  # a case takes well under a second; a hang is one that takes a minute
PEAK_GROWTH = 256 * 2**20  # bytes of peak memory a case may add (a head here is a few hundred kB)
ADDRESS_HEADROOM = 4 * 2**30  # what the cases may map beyond the process's address space when they start

JUNK = [None, "junk", "", -1, 0, 3.5, float("nan"), True, [], {}, [1, "a"], {"x": 1}, (1, 2), torch.zeros(2),
        10**12, "\n", "x" * 100_000]
JUNK_STRINGS = ["", "junk", "\n", "\x00", "x" * 100_000, "{}", "null", "[]", '{"n_features": 4}', "\ud800"]


# --- the mutations ----------------------------------------------------------------------------


def locations(value, path=()):
    """(path, value) of `value` and of everything inside it (dict keys, list and tuple items)."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from locations(item, (*path, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from locations(item, (*path, index))


def replaced(root, path, new=None, drop=False):
    """`root` with the item at `path` replaced by `new` (or dropped), tuples rebuilt on the way."""
    if not path:
        return new
    key, rest = path[0], path[1:]
    if isinstance(root, tuple):
        items = list(root)
        if drop and not rest:
            del items[key]
        else:
            items[key] = replaced(items[key], rest, new, drop)
        return tuple(items)
    if drop and not rest:
        del root[key]
    else:
        root[key] = replaced(root[key], rest, new, drop)
    return root


def another_shape(value: torch.Tensor, rng: random.Random) -> torch.Tensor:
    shape = list(value.shape)
    how = rng.choice(["grow", "shrink", "add a dimension", "drop a dimension", "empty", "dtype", "view"])
    if how == "dtype":
        dtype = rng.choice([d for d in (torch.float64, torch.float16, torch.int64, torch.int32, torch.bool)
                            if d != value.dtype])
        return value.to(dtype)
    if how == "view":  # the same shape, over one number: a tensor that holds less than it claims
        return torch.zeros(1, dtype=value.dtype).expand(shape) if shape and math.prod(shape) > 1 else value[None]
    if how == "add a dimension":
        shape.insert(rng.randrange(len(shape) + 1), rng.choice([1, 2]))
    elif how == "drop a dimension" and shape:
        shape.pop(rng.randrange(len(shape)))
    elif how == "empty" and shape:
        shape[rng.randrange(len(shape))] = 0
    elif shape:
        i = rng.randrange(len(shape))
        shape[i] = max(0, shape[i] + (1 if how == "grow" else -1))
    else:
        shape = [rng.choice([0, 2])]
    return torch.zeros(shape, dtype=value.dtype)


def not_finite_or_out_of_range(value: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """A NaN or infinite number in a float tensor; an id out of range or out of order in an
    integer one (never a finite value a real file could hold: see the module docstring)."""
    value = value.clone()
    flat = value.view(-1)
    i = rng.randrange(flat.numel())
    if value.is_floating_point():
        flat[i] = rng.choice([float("nan"), float("inf"), float("-inf")])
    elif value.dtype == torch.uint8:
        return value[:-1]  # bytes of a generator state: only their count can be told wrong
    else:
        choices = [-1, -(2**40), 2**40, TermHashing().n_features]
        if flat.numel() > 1:
            choices.append(int(flat[i - 1]) if i else int(flat[1]))  # a duplicate: out of order
        flat[i] = rng.choice(choices)
    return value


def other_number(value, rng: random.Random):
    if isinstance(value, float):
        return rng.choice([float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 1.5, value * 2, 1e308, -value])
    return rng.choice([value + 1, value - 1, 0, -1, -(10**9), 10**10, 2**31, 2**63 - 1])


def mutate(payload, rng: random.Random, excluded) -> tuple[object, str] | None:
    """One random mutation of `payload` (changed in place where it can be) and its description;
    None when the drawn one is of the kind `excluded(path, old, new)` says cannot be told apart."""
    where = list(locations(payload))
    kind = rng.choice(["drop", "retype", "extra", "tensor shape", "tensor value", "number", "string", "bool"])
    candidates = {
        "drop": [(p, v) for p, v in where if p],
        "retype": [(p, v) for p, v in where if p],
        "extra": [(p, v) for p, v in where if isinstance(v, dict)],
        "tensor shape": [(p, v) for p, v in where if isinstance(v, torch.Tensor)],
        "tensor value": [(p, v) for p, v in where if isinstance(v, torch.Tensor) and v.numel()],
        "number": [(p, v) for p, v in where if type(v) in (int, float)],
        "string": [(p, v) for p, v in where if isinstance(v, str)],
        "bool": [(p, v) for p, v in where if type(v) is bool],
    }[kind]
    if not candidates:
        return None
    path, old = rng.choice(candidates)
    if kind == "drop":
        return replaced(payload, path, drop=True), f"drop {path}"
    if kind == "extra":
        key = rng.choice(["extra", "", 0, "state_dict2", "hashing"])
        if key in old:
            return None
        old[key] = rng.choice(JUNK)
        return payload, f"extra key {key!r} in {path}"
    new = {
        "retype": lambda: rng.choice([j for j in JUNK if type(j) is not type(old)]),
        "tensor shape": lambda: another_shape(old, rng),
        "tensor value": lambda: not_finite_or_out_of_range(old, rng),
        "number": lambda: other_number(old, rng),
        "string": lambda: rng.choice([*JUNK_STRINGS, old + "x", old[:-1], old.upper()]),
        "bool": lambda: not old,
    }[kind]()
    if excluded(path, old, new):
        return None
    shown = new if not isinstance(new, (str, torch.Tensor)) else (
        f"{new[:20]!r}..." if isinstance(new, str) else f"tensor {new.dtype} {list(new.shape)}")
    return replaced(payload, path, new), f"{kind} at {path}: {shown}"


def damaged_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if rng.random() < 0.4:
        cut = rng.randrange(len(data))
        return data[:cut], f"truncated to {cut} of {len(data)} bytes"
    data = bytearray(data)
    flips = [rng.randrange(len(data) * 8) for _ in range(rng.randint(1, 4))]
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data), f"bits {flips} flipped"


def finite_values_changed(old, new) -> bool:
    """`new` is a tensor like `old` (shape, dtype, a dense one) with other finite values only."""
    return (isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and new.shape == old.shape
            and new.dtype == old.dtype and new.is_contiguous() and bool(torch.isfinite(new.float()).all()))


def mutants(path: Path, rng: random.Random, excluded):
    """CASES (mutated bytes, description) of the torch file at `path`."""
    original = path.read_bytes()
    made = 0
    while made < CASES:
        if rng.random() < 0.25:
            data, what = damaged_bytes(original, rng)
        else:
            drawn = mutate(torch.load(io.BytesIO(original), weights_only=True), rng, excluded)
            if drawn is None:
                continue
            buffer = io.BytesIO()
            torch.save(drawn[0], buffer)
            data, what = buffer.getvalue(), drawn[1]
        made += 1
        yield data, what


# --- running a case -------------------------------------------------------------------------


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def bounded_address_space():
    """An address-space limit ADDRESS_HEADROOM above what the process maps now (Linux)."""
    try:
        with open("/proc/self/status") as status:
            mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + ADDRESS_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run(args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of cli.py ARGS in this process, under the alarm."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([str(a) for a in args])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue(), err.getvalue()


def judge(args, named: Path, same_result) -> str | None:
    """None when `cli.py ARGS` ended as the module docstring asks; else what went wrong."""
    before = peak_bytes()
    try:
        code, out, err = run(args)
    except Hang:
        return f"no answer in {CASE_SECONDS} s"
    except BaseException as error:  # noqa: BLE001 - a traceback is the failure being looked for
        return f"traceback: {type(error).__name__}: {str(error)[:200]}"
    grown = peak_bytes() - before
    if grown > PEAK_GROWTH:
        return f"peak memory grew by {grown / 2**20:.0f} MB"
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    if code == 0:
        return None if not errors and same_result(out) else f"exit 0 with another result: {err.strip()[-300:]}"
    if code != 2 or len(errors) != 1 or errors != lines[-1:] or "Traceback" in err:
        return f"exit {code}: {err.strip()[-300:]}"
    if "out of memory" in errors[0]:
        return f"allocated what it should have checked: {errors[0]}"
    if str(named) not in errors[0]:
        return f"the line names another file: {errors[0]}"
    return None


def fuzz(original: Path, write, excluded, rerun) -> tuple[list[str], dict]:
    """Every mutant of `original` put in place by `write(data)` and judged by `rerun()`;
    (the failures, how many mutants ended refused and how many with the same result)."""
    rng = random.Random(SEED)
    failures, outcomes = [], {"same result": 0, "refused": 0}
    with bounded_address_space():
        for data, what in mutants(original, rng, excluded):
            write(data)
            problem, refused = rerun()
            if problem:
                failures.append(f"{what}: {problem}")
            else:
                outcomes["refused" if refused else "same result"] += 1
    return failures, outcomes


# --- the head file ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_and_cache(tmp_path_factory):
    """A head of both inputs (LSTM pooling, small) and a test cache on which it is not perfect,
    so that a head that scores differently shows in the metrics."""
    folder = tmp_path_factory.mktemp("fuzz-head")
    train = lexical_cache(folder / "train.h5")
    head = folder / "head.pt"
    run_train_head(TrainConfig(train=str(train), out=str(head), pooling="lstm", inner_dim=8, max_epochs=2,
                               progress=False, curve=False), log=lambda line: None)
    rng = np.random.default_rng(7)
    labels = np.arange(60) % 3
    words = ["the", "a", "of", "and", "to", "in"]
    markers = [label if rng.random() < 0.6 else rng.integers(3) for label in labels]  # 40% point elsewhere
    texts = [" ".join([*rng.choice(words, 4), f"marker{m}x", *rng.choice(words, 4)]) for m in markers]
    test = write_synthetic_cache(folder / "test.h5", n_docs=60, seed=3, separable=False, labels=labels, texts=texts)
    return head, test


def test_mutated_heads_are_refused_in_one_line_or_score_the_same(head_and_cache, tmp_path):
    head, cache = head_and_cache
    mutant = tmp_path / "head.pt"
    shutil.copy(head, mutant)
    code, want, err = run(["evaluate", "--head", mutant, "--cache", cache, "--json"])
    assert code == 0, err
    assert 0.5 < json.loads(want)["metrics"]["accuracy"] < 1.0  # a change of the scores would show

    def rerun():
        finished = []
        problem = judge(["evaluate", "--head", mutant, "--cache", cache, "--json"], mutant,
                        lambda out: finished.append(1) or out == want)
        return problem, not finished

    def excluded(path, old, new):  # term ids are only ever put out of range or out of order
        return finite_values_changed(old, new) and path[:2] != ("terms", "features")

    failures, outcomes = fuzz(head, mutant.write_bytes, excluded, rerun)
    print(f"{CASES} mutated heads: {outcomes}")
    assert not failures, f"{len(failures)} of {CASES}:\n" + "\n".join(failures[:20])
    assert outcomes["refused"] > CASES // 2 and outcomes["same result"] > 0  # the mutants reach both ends


# --- train-head's work folder -----------------------------------------------------------------

STATE_RUN = dict(pooling="attention", inner_dim=8, max_epochs=4, patience=4, seed=2, batch_docs=16)


def state_run_args(cache, out):
    return ["train-head", "--train", cache, "--out", out, "--pooling", "attention", "--inner-dim", "8",
            "--epochs", "4", "--patience", "4", "--seed", "2", "--batch-docs", "16", "--no-progress"]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """(a windows cache, the work folder of a run stopped after its second epoch, the head of
    that run never stopped)."""
    import longdoc.training.loop

    folder = tmp_path_factory.mktemp("fuzz-state")
    cache = write_synthetic_cache(folder / "train.h5", n_docs=60, separable=False, seed=5)
    real_save = longdoc.training.loop.TrainingProgress.save

    def save_then_stop(progress, *args):
        real_save(progress, *args)
        if progress.epoch == 3:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(longdoc.training.loop.TrainingProgress, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_train_head(TrainConfig(train=str(cache), out=str(folder / "head.pt"), progress=False, **STATE_RUN),
                           log=lambda line: None)
    reference = run_train_head(TrainConfig(train=str(cache), out=str(folder / "reference.pt"), progress=False,
                                           **STATE_RUN), log=lambda line: None)
    return cache, folder / "head.pt.partial", load_checkpoint(reference.out)


def same_head(path: Path, want) -> bool:
    got = load_checkpoint(path)
    return (got.training["history"] == want.training["history"] and
            got.training["best_epoch"] == want.training["best_epoch"] and
            got.head.state_dict().keys() == want.head.state_dict().keys() and
            all(torch.equal(value, want.head.state_dict()[name]) for name, value in got.head.state_dict().items()))


def test_mutated_work_folders_are_refused_in_one_line_or_resume_to_the_same_head(interrupted, tmp_path):
    cache, partial, want = interrupted
    out = tmp_path / "head.pt"
    work = Path(f"{out}.partial")
    shutil.copytree(partial, work)
    state = work / "state.pt"
    original = tmp_path / "original-state.pt"
    shutil.copy(state, original)
    assert run(state_run_args(cache, out))[0] == 0 and same_head(out, want)  # the unmutated state resumes

    def write(data: bytes):  # the interrupted run's work folder, its state.pt replaced; no head yet
        for path in (out, out.with_name("head-curve.png")):
            path.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(partial, work)
        state.write_bytes(data)

    def rerun():
        finished = []
        problem = judge(state_run_args(cache, out), state, lambda _: finished.append(1) or same_head(out, want))
        return problem, not finished

    def excluded(path, old, new):
        recorded_score = (path[:2] == ("progress", "history") and path[-1] != "epoch" and type(new) in (int, float)
                          and math.isfinite(new))
        return finite_values_changed(old, new) or recorded_score

    failures, outcomes = fuzz(original, write, excluded, rerun)
    print(f"{CASES} mutated work folders: {outcomes}")
    assert not failures, f"{len(failures)} of {CASES}:\n" + "\n".join(failures[:20])
    assert outcomes["refused"] > CASES // 2
