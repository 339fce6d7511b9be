"""Fuzzing the window cache format: every command that reads a cache either gives exactly
the result of the unmutated cache or refuses it in one line.

One small cache with term counts, written by the real writer (`tests/synthetic.py`), and
a head trained on it, once per module. Each case copies the cache, applies one mutation
drawn under a fixed seed, and runs `evaluate --json` in this process through `cli.main`
(and, every TRAIN_EVERY-th case, `train-head` with the mutated cache as `--train`). The
outcome must be one of

- exit 0 with exactly the unmutated result (evaluate's summary; the trained head's
  weights, term statistics and training record), or
- exit 2 with one `error:` line naming the mutated file, and no head written,

never a traceback, another exit code, a hang (each case runs under a SIGALRM of
CASE_SECONDS) or a different result.

The mutations: drop a dataset, group or attribute; truncate or extend a dataset; cut the
file short; change a dataset's dtype or rank; put a value out of range (a document's
window offsets or window starts, a label past the classes, a negative or zero term count,
a term id outside the hashing, NaN or infinity in the vectors, doc_ids that are not UTF-8);
an attribute of another type or out of range; a link where a dataset belongs; a planted
extra dataset, group or attribute.

Left out by design, because no reader can tell them from real data: finite changes to
vector values, labels changed to another class in range, term counts or ids changed to
other valid ones, renamed classes, and identity attributes changed to other valid values
(a head compares those and refuses a cache made otherwise; see test_evaluate).

    FUZZ_CASES=5000 pytest tests/test_cache_fuzz.py      # more cases (default DEFAULT_CASES)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal

import h5py
import numpy as np
import pytest
import torch
from synthetic import write_synthetic_cache

from longdoc import cli
from longdoc.terms.hashing import TermHashing

SEED = 20_260_112
DEFAULT_CASES = 300  # 20-30 s on two shared cores; FUZZ_CASES=N for more
CASES = int(os.environ.get("FUZZ_CASES", DEFAULT_CASES))
TRAIN_EVERY = 8  # train-head costs ~10x evaluate: every 8th case also trains
CASE_SECONDS = 60  # far above any case (~0.1 s evaluate, ~0.5 s train-head): only a hang reaches it
TRAIN_ARGS = ["--pooling", "mean", "--epochs", "2", "--threads", "1", "--no-progress"]

DATASETS = ["embeddings", "doc_offsets", "window_starts", "labels", "doc_ids", "doc_tokens",
            "terms/indptr", "terms/indices", "terms/counts"]
LABEL_SET_DATASETS = ["label_sets/indptr", "label_sets/indices"]  # a multi-label cache's, instead of labels
ATTRIBUTES = ["format", "format_version", "complete", "model", "model_fingerprint", "chunk_tokens", "stride",
              "precision", "hidden_size", "window_vector", "data_source", "data_fingerprint", "label_names",
              "term_hashing", "package_version", "task"]
INTEGER_ATTRIBUTES = ["format_version", "chunk_tokens", "stride", "hidden_size"]
FREE_TEXT = ["model", "data_source", "package_version"]
N_FEATURES = TermHashing().n_features  # the cache's term hashing: ids are below it
N_LABELS = 5  # the multi-label cache's labels


# --- the mutations: each (file, rng, target) -> None, on a copy open for writing --------------


def recreate(f, name, data, **options):
    del f[name]
    f.create_dataset(name, data=data, **options)


def drop_dataset(f, rng, name):
    del f[name]


def drop_group(f, rng, name):
    del f[name]


def drop_attribute(f, rng, name):
    del f.attrs[name]


def truncate(f, rng, name):
    data = f[name][:]
    recreate(f, name, data[:rng.randrange(len(data))], dtype=f[name].dtype)


def extend(f, rng, name):
    data = f[name][:]
    recreate(f, name, np.concatenate([data, data[-rng.randrange(1, 4):]]), dtype=f[name].dtype)


def retype(f, rng, name):
    data = f[name][:]
    if name == "doc_ids":
        choices = [np.arange(len(data)), np.array([x[:5] for x in data], dtype="S5"), np.zeros(len(data), np.float32)]
    elif name == "embeddings":
        choices = [data.astype(np.float64), data.astype(np.float16), data.astype(np.int32)]
    else:  # integers: floats, text, or another width holding the same values
        choices = [data.astype(np.float64), data.astype(np.float32), data.astype("S12"), data.astype(np.uint64),
                   data.astype(np.int64), (data != 0)]
    recreate(f, name, rng.choice(choices))


def rerank(f, rng, name):
    data = f[name][:]
    recreate(f, name, rng.choice([data[..., None], data.reshape(1, -1) if data.ndim == 1 else data.ravel(),
                                  np.asarray(data[0]) if len(data) else np.zeros(())]))


def out_of_range(f, rng, name):
    """One entry set to a value no valid cache holds there (or, for the per-document
    offsets and every window start, any other value: the window geometry pins each one)."""
    data = f[name][:]
    at = rng.randrange(len(data))
    if name == "embeddings":
        data[at, rng.randrange(data.shape[1])] = rng.choice([np.nan, np.inf, -np.inf])
    elif name == "doc_ids":
        data = np.array([*data[:at], b"id-\xff\xfe", *data[at + 1:]], dtype=object)
        recreate(f, name, data, dtype=h5py.string_dtype("ascii"))
        return
    elif name == "labels":
        data[at] = rng.choice([-1, 3, 4, 2**31, 2**62])
    elif name == "terms/indices":
        indptr = f["terms/indptr"][:]
        in_one_row = at > 0 and indptr.searchsorted(at, "right") == indptr.searchsorted(at - 1, "right")
        repeat = [int(data[at - 1])] if in_one_row else []  # a term twice in a document's row
        data[at] = rng.choice([-1, N_FEATURES, N_FEATURES + 7, 2**31 - 1, *repeat])
    elif name == "terms/counts":
        data[at] = rng.choice([0, -1, -(2**31)])
    elif name in ("terms/indptr", "label_sets/indptr"):
        data[at] = rng.choice([-1, int(data[-1]) + 1, 2**40]) if at else rng.choice([1, -1])
    elif name == "label_sets/indices":
        indptr = f["label_sets/indptr"][:]
        in_one_row = at > 0 and indptr.searchsorted(at, "right") == indptr.searchsorted(at - 1, "right")
        repeat = [int(data[at - 1])] if in_one_row else []  # a label twice in a document's set
        data[at] = rng.choice([-1, N_LABELS, N_LABELS + 3, 2**31 - 1, *repeat])
    elif name == "doc_tokens":
        data[at] = rng.choice([-1, -(2**40), 2**40, int(data[at]) + rng.choice([-300, 1, 300, 10_000])])
    else:  # doc_offsets, window_starts
        data[at] = int(data[at]) + rng.choice([-1, 1, -(2**40), 2**40, 2**62])
    f[name][:] = data


JUNK = [7, -1, 0, 1.5, np.nan, True, "", " ", "yes", "no", b"\xff\xfe", "x" * 300, np.array([1, 2]),
        np.array(["a", "b"], dtype=h5py.string_dtype()), np.float32(256), np.int8(5), "{}", "[]", "null",
        json.dumps(["class0", "class1", "class0"]), json.dumps(["class0", "class1"]), json.dumps([1, 2, 3])]


def junk_attribute(f, rng, name):
    """An attribute replaced by a value of another type, or one out of its range. A free
    text (a model's name, the corpus's description) gets no other text: any is valid."""
    value = f.attrs[name]
    choices = JUNK + ([0, -1, 2**21, 2**63 - 1] if name in INTEGER_ATTRIBUTES else [])
    if name in ("hidden_size", "format_version"):  # one more is another valid window size or stride
        choices.append(int(value) + 1)
    if name in FREE_TEXT:
        choices = [junk for junk in choices if not isinstance(junk, str)] + ["", " "]
    while True:
        junk = rng.choice(choices)
        if not (type(junk) is type(value) and junk == value):
            break
    f.attrs[name] = junk


def link(f, rng, name):
    other = rng.choice([d for d in DATASETS + LABEL_SET_DATASETS if d != name and d in f])
    del f[name]
    f[name] = rng.choice([h5py.SoftLink("/" + other), h5py.ExternalLink("/etc/hostname", "/data"),
                          h5py.SoftLink("/nowhere")])


def plant(f, rng, name):
    """An extra dataset, group or attribute the format does not name: ignored, never used."""
    where = rng.choice([f, f["terms"]])
    what = rng.choice(["dataset", "group", "attribute"])
    if what == "dataset":
        where.create_dataset(f"planted_{rng.randrange(99)}", data=np.arange(rng.randrange(1, 50)))
    elif what == "group":
        where.create_group(f"planted_{rng.randrange(99)}").create_dataset("x", data=[1.0])
    else:
        where.attrs[f"planted_{rng.randrange(99)}"] = rng.choice(JUNK)


def cut_file(path, rng):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(rng.randrange(size))


MUTATIONS = {  # name: (mutation, its targets)
    "drop dataset": (drop_dataset, DATASETS), "drop group": (drop_group, ["terms"]),
    "drop attribute": (drop_attribute, ATTRIBUTES), "truncate": (truncate, DATASETS), "extend": (extend, DATASETS),
    "cut the file": (None, ["file"]), "retype": (retype, DATASETS), "rerank": (rerank, DATASETS),
    "out of range": (out_of_range, DATASETS), "junk attribute": (junk_attribute, ATTRIBUTES),
    "link": (link, DATASETS), "plant": (plant, ["extra"]),
}


def plan(n_cases: int) -> list[tuple[int, str, str]]:
    """(case, mutation, target) for each case: every pair in turn, in an order shuffled
    under SEED, so the first len(pairs) cases hold each once; each case draws its own values."""
    pairs = sorted((mutation, target) for mutation, (_, targets) in MUTATIONS.items() for target in targets)
    random.Random(SEED).shuffle(pairs)
    return [(case, *pairs[case % len(pairs)]) for case in range(n_cases)]


def mutate(path, case: int, mutation: str, target: str):
    rng = random.Random(f"{SEED}-{case}")
    if mutation == "cut the file":
        cut_file(path, rng)
        return
    with h5py.File(path, "r+") as f:
        MUTATIONS[mutation][0](f, rng, target)


# --- running the commands -------------------------------------------------------------------


class Hung(Exception):
    pass


def run(args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of cli.main(ARGS), ended by Hung after CASE_SECONDS."""
    def alarm(signum, frame):
        raise Hung(f"{' '.join(map(str, args))} ran past {CASE_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CASE_SECONDS)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([str(a) for a in args])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue(), err.getvalue()


def evaluation(stdout: str) -> dict:
    """evaluate's summary, less the cache's path."""
    metrics = json.loads(stdout)["metrics"]
    return {k: v for k, v in metrics.items() if k != "cache"}


def trained_head(path) -> dict:
    """What train-head learnt from a cache: weights, term statistics, the training record
    (less paths and timing)."""
    payload = torch.load(path, weights_only=True)
    training = {k: v for k, v in payload["training"].items() if k not in ("config", "train_cache", "seconds")}
    return {"state_dict": {k: v.tolist() for k, v in payload["state_dict"].items()},
            "terms": {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in payload["terms"].items()},
            "label_names": payload["label_names"], "head": payload["head"], "encoder": payload["encoder"],
            "training": training}


def texts(n_docs: int) -> list[str]:
    """Texts whose words say their class for most documents (class = index % 3)."""
    rng = random.Random(0)
    filler = ["the", "a", "of", "and", "to", "in", "is", "it"]
    return [" ".join([*rng.sample(filler, 4), f"marker{(i if rng.random() < 0.7 else rng.randrange(3)) % 3}x",
                      *rng.sample(filler, 3)]) for i in range(n_docs)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The unmutated cache, a head trained on it, and what each command gives on it."""
    folder = tmp_path_factory.mktemp("fuzz")
    cache = write_synthetic_cache(folder / "cache.h5", n_docs=30, max_windows=5, hidden=8, separable=False,
                                  texts=texts(30))
    code, _, err = run(["train-head", "--train", cache, "--out", folder / "head.pt", *TRAIN_ARGS])
    assert code == 0, err
    code, out, err = run(["evaluate", "--head", folder / "head.pt", "--cache", cache, "--json"])
    assert code == 0, err
    return cache, folder / "head.pt", evaluation(out), trained_head(folder / "head.pt")


def assert_refused_in_one_line(code, stdout, stderr, path):
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], \
        (code, stderr[-2000:])
    assert "Traceback" not in stdout + stderr


@pytest.mark.parametrize("case, mutation, target", plan(CASES), ids=lambda x: str(x).replace("/", "_"))
def test_a_mutated_cache_gives_the_same_result_or_one_line(reference, tmp_path, case, mutation, target):
    cache, head, evaluated, trained = reference
    mutant = tmp_path / "mutant.h5"
    shutil.copyfile(cache, mutant)
    mutate(mutant, case, mutation, target)
    code, out, err = run(["evaluate", "--head", head, "--cache", mutant, "--json"])
    if code == 0:
        assert evaluation(out) == evaluated, f"evaluate accepted {mutation} {target} and gave another result"
    else:
        assert_refused_in_one_line(code, out, err, mutant)
    if case % TRAIN_EVERY == 0:
        out_head = tmp_path / "head.pt"
        code, out, err = run(["train-head", "--train", mutant, "--out", out_head, *TRAIN_ARGS])
        if code == 0:
            assert trained_head(out_head) == trained, f"train-head accepted {mutation} {target} and learnt otherwise"
        else:
            assert_refused_in_one_line(code, out, err, mutant)
            assert not list(tmp_path.glob("head*"))  # nor its curve


def test_the_default_cases_draw_every_mutation_of_every_target():
    drawn = {(mutation, target) for _, mutation, target in plan(DEFAULT_CASES)}
    every = {(mutation, target) for mutation, (_, targets) in MUTATIONS.items() for target in targets}
    assert drawn == every and len(every) * 3 <= DEFAULT_CASES


# --- multi-label caches: label_sets/ and the task attribute ---------------------------------------
# These cases read the cache with `open_cache` itself: either the label sets read back exactly
# as written, and train-head trains on them, or one UserError line naming the file, and
# train-head refuses it in that line. The named checks below each get their own case.

LABEL_SET_MUTATIONS = {"drop dataset": drop_dataset, "truncate": truncate, "extend": extend, "retype": retype,
                       "rerank": rerank, "out of range": out_of_range, "link": link}


@pytest.fixture(scope="module")
def multi_label_reference(tmp_path_factory):
    from synthetic import write_multilabel_cache

    cache = write_multilabel_cache(tmp_path_factory.mktemp("fuzz-multi") / "multi.h5", n_docs=30, n_labels=N_LABELS,
                                   max_windows=4, hidden=8, texts=True)
    with open_cache_of(cache) as opened:
        return cache, opened.label_sets_of()


def open_cache_of(path):
    from longdoc.cache.reader import open_cache

    return open_cache(path)


def assert_one_line_naming(error, path):
    message = str(error)
    assert str(path) in message and "\n" not in message.strip(), message


def label_set_cases():
    pairs = [(m, t) for m in LABEL_SET_MUTATIONS for t in LABEL_SET_DATASETS]
    pairs += [("drop group", "label_sets"), ("drop attribute", "task"), ("junk attribute", "task")]
    return [(seed, m, t) for m, t in pairs for seed in range(3)]


@pytest.mark.parametrize("seed, mutation, target", label_set_cases(), ids=lambda x: str(x).replace("/", "_"))
def test_a_mutated_multi_label_cache_reads_the_same_label_sets_or_one_line(multi_label_reference, tmp_path,
                                                                           seed, mutation, target):
    from longdoc.runtime.errors import UserError

    cache, label_sets = multi_label_reference
    mutant = tmp_path / "mutant.h5"
    shutil.copyfile(cache, mutant)
    rng = random.Random(f"{SEED}-multi-{seed}-{mutation}-{target}")
    with h5py.File(mutant, "r+") as f:
        ({**MUTATIONS, **{k: (v, None) for k, v in LABEL_SET_MUTATIONS.items()}}[mutation][0])(f, rng, target)
    readable = True
    try:
        with open_cache_of(mutant) as opened:
            assert opened.label_sets_of() == label_sets, f"{mutation} {target} read other label sets"
    except UserError as error:
        assert_one_line_naming(error, mutant)
        readable = False
    code, out, err = run(["train-head", "--train", mutant, "--out", tmp_path / "head.pt", *TRAIN_ARGS])
    if readable:
        assert code == 0 and "Traceback" not in out + err, err[-2000:]
    else:
        assert_refused_in_one_line(code, out, err, mutant)


def set_indptr(values):
    def mutate(f):
        recreate(f, "label_sets/indptr", np.asarray(values, dtype=np.int64))
    return mutate


def set_indices(values):
    def mutate(f):
        recreate(f, "label_sets/indices", np.asarray(values, dtype=np.int32))
    return mutate


def set_attribute(name, value):
    def mutate(f):
        f.attrs[name] = value
    return mutate


def drop_attr(name):
    def mutate(f):
        del f.attrs[name]
    return mutate


def with_labels(f):
    f.create_dataset("labels", data=np.zeros(4, dtype=np.int64))


def label_sets_as_dataset(f):
    del f["label_sets"]
    f.create_dataset("label_sets", data=np.zeros(5, dtype=np.int64))


def float_indices(f):
    recreate(f, "label_sets/indices", f["label_sets/indices"][:].astype(np.float64))


def as_version_2(f):
    f.attrs["format_version"] = 2
    del f.attrs["task"]


# Four documents: {0, 2}, {}, {1}, {0, 3, 4}, in a cache of five labels.
NAMED_CHECKS = [
    ("indptr does not start at 0", set_indptr([1, 2, 2, 3, 6]), "label_sets/indptr starts at 1, not at 0"),
    ("indptr decreases", set_indptr([0, 3, 2, 3, 6]), "label_sets/indptr decreases after document 1"),
    ("indptr ends before the indices", set_indptr([0, 2, 2, 3, 5]),
     "label_sets/indptr ends at 5, not at the 6 entries of label_sets/indices"),
    ("a label past the labels", set_indices([0, 2, 1, 0, 3, 5]),
     "label_sets/indices holds 5 for document 3, outside the 5 label_names"),
    ("a negative label", set_indices([0, 2, -1, 0, 3, 4]),
     "label_sets/indices holds -1 for document 2, outside the 5 label_names"),
    ("an unsorted set", set_indices([0, 2, 1, 3, 0, 4]), "label_sets/indices: the label set of document 3 is not sorted"),
    ("a label twice in a set", set_indices([0, 2, 1, 0, 4, 4]),
     "label_sets/indices: the label set of document 3 holds label 4 twice"),
    ("float indices", float_indices, "label_sets/indices is a 1-D float64, not a 1-D dataset of integers as the cache format says"),
    ("both labels and label_sets", with_labels, "cache holds both labels and label_sets/, one label and a set of labels per document"),
    ("task unknown", set_attribute("task", "multi"), "attribute task is 'multi', not one of single_label, multi_label"),
    ("task not text", set_attribute("task", 3), "attribute task is '3', not one of single_label, multi_label"),
    ("task single_label on label sets", set_attribute("task", "single_label"),
     "attribute task is single_label but the cache holds label_sets/, not labels"),
    ("no task", drop_attr("task"), "cache lacks its task attribute"),
    ("version 2 with label sets", as_version_2,
     "cache format version 2 holds one label per document, yet the file holds label_sets/"),
    ("label_sets not a group", label_sets_as_dataset, "label_sets is not a group of this file as the cache format says"),
]


@pytest.mark.parametrize("name, mutation, message", NAMED_CHECKS, ids=[c[0] for c in NAMED_CHECKS])
def test_each_check_of_label_sets_is_one_line_naming_the_file(tmp_path, name, mutation, message):
    from synthetic import write_multilabel_cache

    from longdoc.runtime.errors import UserError

    path = write_multilabel_cache(tmp_path / "c.h5", n_labels=N_LABELS, label_sets=[[0, 2], [], [1], [0, 3, 4]])
    with h5py.File(path, "r+") as f:
        mutation(f)
    with pytest.raises(UserError) as refused:
        open_cache_of(path)
    assert str(refused.value) == f"{path}: {message} (damaged cache)" or \
        str(refused.value) == f"{path}: {message}", str(refused.value)
    code, out, err = run(["train-head", "--train", path, "--out", tmp_path / "head.pt", *TRAIN_ARGS])
    assert_refused_in_one_line(code, out, err, path)
    assert message in err


def test_a_single_label_cache_claiming_multi_label_is_one_line(tmp_path):
    from longdoc.runtime.errors import UserError

    path = write_synthetic_cache(tmp_path / "c.h5", n_docs=6)
    with h5py.File(path, "r+") as f:
        f.attrs["task"] = "multi_label"
    with pytest.raises(UserError, match=r"c.h5: attribute task is multi_label but the cache holds labels, not "
                                        r"label_sets/ \(damaged cache\)$"):
        open_cache_of(path)
