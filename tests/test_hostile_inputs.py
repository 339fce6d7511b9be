"""Every command, through cli.py, against files a user can hand us: malformed corpora,
damaged caches, damaged or planted heads. Each must end in exit 2 and one `error:`
line naming the file, with no traceback, and leave every existing output as it was.

Most cases run in this process (`cli.main`, fast); the ones that crashed the process
before (scrambled HDF5) run in a real subprocess too."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re

import h5py
import numpy as np
import pytest
import torch
from assertions import refused
from checkout import run_cli
from synthetic import write_synthetic_cache

from longdoc.configs import TrainConfig
from longdoc.terms.hashing import TermHashing

# --- the table of hostile corpora ----------------------------------------------------------
from longdoc.train_head import run as run_train_head

# --- the table of hostile corpora ----------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def jsonl(*rows) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


GOOD_ROWS = [{"text": "space rocket orbit", "label": "space"}, {"text": "god church faith", "label": "religion"}]

CORPORA = {  # name: (file name, bytes or a builder, what the error line must say)
    "deeply nested JSON": ("c.jsonl", jsonl(*GOOD_ROWS, '{"text": ' + DEEP + ', "label": "a"}'),
                           "line 3: JSON nested too deeply"),
    "integer of 5000 digits": ("c.jsonl", jsonl(*GOOD_ROWS, '{"text": ' + "7" * 5000 + ', "label": "a"}'),
                               "line 3: not JSON"),
    "lone surrogate in a text": ("c.jsonl", jsonl(*GOOD_ROWS, '{"text": "a \\ud800 b", "label": "space"}'),
                                 "line 3: the text holds a lone surrogate"),
    "lone surrogate in an id": ("c.jsonl", jsonl('{"id": "\\udfff", "text": "a", "label": "space"}', *GOOD_ROWS),
                                "line 1: the id holds a lone surrogate"),
    "lone surrogate in a label": ("c.jsonl", jsonl(*GOOD_ROWS, '{"text": "a", "label": "sp\\ud83dce"}'),
                                  "line 3: the label holds a lone surrogate"),
    "label with a newline": ("c.jsonl", jsonl(*GOOD_ROWS, {"text": "a", "label": "space\nreligion"}),
                             "line 3: the label 'space\\nreligion' holds a control character"),
    "label with a tab": ("c.csv", b"text,label\nspace rocket,space\ngod,\"reli\tgion\"\n",
                         "row 2: the label 'reli\\tgion' holds a control character"),
    "null label (JSONL)": ("c.jsonl", jsonl(*GOOD_ROWS, {"text": "a", "label": None}),
                           "line 3: the label is missing"),
    "missing label (CSV)": ("c.csv", b"text,label\nspace rocket,space\ngod church\n", "row 2: the label is missing"),
    "empty label (CSV)": ("c.csv", b"text,label\nspace rocket,space\ngod church,\n", "row 2: the label is empty"),
    "a JSON line that is a list": ("c.jsonl", jsonl(*GOOD_ROWS, [1, 2]), "line 3: each record needs"),
    "not JSON": ("c.jsonl", jsonl(*GOOD_ROWS, "{text: 1"), "line 3: not JSON"),
    "a label set holding a number": ("c.jsonl", jsonl({"text": "a", "labels": ["space"]},
                                                      {"text": "b", "labels": ["space", 3]}),
                                     "line 2: label 2 of 'labels' is a number, not a string"),
    "a CSV label set of separators only": ("c.csv", b"text,labels\nspace rocket,space\ngod church, | \n",
                                           "row 2: the labels ' | ' are nothing but separators"),
    "'label' and 'labels' in one file": ("c.jsonl", jsonl(*GOOD_ROWS, {"text": "a", "labels": ["space"]}),
                                         "line 3: 'labels' here but 'label' on line 1"),
    "undecodable file name": ("folder", {b"space/\xff\xfe.txt": b"rocket", b"religion/a.txt": b"god"},
                              "the id holds a file name that is not UTF-8"),
    "folder name with a newline": ("folder", {b"spa\nce/a.txt": b"rocket", b"religion/a.txt": b"god"},
                                   "holds a control character"),
}


def write_corpus(folder, name):
    file_name, content, _ = CORPORA[name]
    path = folder / file_name
    if isinstance(content, dict):
        for relative, data in content.items():
            target = os.path.join(os.fsencode(path), relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
    else:
        path.write_bytes(content)
    return path


def snapshot(folder) -> dict:
    """Every file under `folder` (names as bytes: some are not UTF-8) and its sha256."""
    found = {}
    for root, _, files in os.walk(os.fsencode(folder)):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


@pytest.mark.parametrize("name", list(CORPORA))
@pytest.mark.parametrize("command", ["embed", "finetune"])
def test_hostile_corpora_are_refused_before_the_encoder_runs(command, name, tiny_bert, tmp_path, capsys,
                                                              monkeypatch):
    corpus = write_corpus(tmp_path, name)
    out = tmp_path / ("previous.h5" if command == "embed" else "previous-model")
    if command == "embed":
        out.write_bytes(b"previous output")
    else:
        out.mkdir()
        (out / "config.json").write_text("{}")
    before = snapshot(tmp_path)

    import longdoc.embedding.job  # imported before the patch, so none binds the stand-in for good
    import longdoc.encoding.encoder
    import longdoc.finetune  # noqa: F401

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder was loaded before the corpus was checked")

    monkeypatch.setattr(longdoc.encoding.encoder, "load_encoder", no_encoder)
    monkeypatch.setattr("longdoc.embedding.job.load_encoder", no_encoder)
    monkeypatch.setattr("longdoc.finetune.load_encoder", no_encoder)
    args = [command, "--data", corpus, "--model", tiny_bert, "--out", out, "--chunk-tokens", "32", "--stride", "4",
            "--precision", "fp32", "--no-progress", "--overwrite"]
    line = refused(capsys, args, CORPORA[name][2])
    if CORPORA[name][0] != "folder":
        assert str(corpus) in line
    assert snapshot(tmp_path) == before


# --- damaged caches --------------------------------------------------------------------------


def damage_cache(path, how):
    with h5py.File(path, "r+") as f:
        if how == "a group where a dataset belongs":
            del f["labels"]
            f.create_group("labels")
        elif how == "one-dimensional embeddings":
            flat = f["embeddings"][:].ravel()
            del f["embeddings"]
            f["embeddings"] = flat
        elif how == "a document with zero windows":
            offsets = f["doc_offsets"][:]
            offsets[1] = 0
            f["doc_offsets"][:] = offsets
        elif how == "NaN vectors":
            f["embeddings"][7] = np.nan
        elif how == "label_names not JSON":
            f.attrs["label_names"] = "[class0, "
        elif how == "label_names not a list of names":
            f.attrs["label_names"] = json.dumps({"a": 1})
        elif how == "doc_ids shorter than labels":
            ids = f["doc_ids"][:-1]
            del f["doc_ids"]
            f.create_dataset("doc_ids", data=ids, dtype=h5py.string_dtype("utf-8"))
        elif how == "offsets past the end":
            f["doc_offsets"][-1] = 10**9
        elif how in FIELD_DAMAGE:
            FIELD_DAMAGE[how][0](f)
        else:
            raise ValueError(how)


def replace(f, name, data, **options):
    del f[name]
    f.create_dataset(name, data=data, **options)


def set_entry(name, at, value):
    def damage(f):
        data = f[name][:]
        data[at] = value(data) if callable(value) else value
        replace(f, name, data)
    return damage


def set_attr(name, value):
    def damage(f):
        f.attrs[name] = value
    return damage


def swap_first_terms(f):
    indices = f["terms/indices"][:]
    assert f["terms/indptr"][1] >= 2  # the first document has two terms to swap
    indices[[0, 1]] = indices[[1, 0]]
    f["terms/indices"][:] = indices


def window_starts_off_by_one(f):  # the second window of the first document with two
    offsets = f["doc_offsets"][:]
    doc = int(np.flatnonzero(np.diff(offsets) >= 3)[0])
    f["window_starts"][offsets[doc] + 2] += 1


def undecodable_id(f):
    ids = [x for x in f["doc_ids"][:]]
    ids[3] = b"doc\xff3"
    replace(f, "doc_ids", np.array(ids, dtype=object), dtype=h5py.string_dtype("ascii"))


STEP = 222  # the synthetic caches' window step: chunk_tokens 256 - 2 specials - stride 32
# Damage that each crashed a command, or changed its result silently, before the cache was
# checked field by field (`longdoc.cache.reader.open_cache`): (how, the field the error must name).
# Those marked terms apply to a cache with term counts.
FIELD_DAMAGE = {
    "no model attribute": (lambda f: f.attrs.__delitem__("model"), "model attribute"),
    "no hidden_size attribute": (lambda f: f.attrs.__delitem__("hidden_size"), "hidden_size attribute"),
    "doc_ids not UTF-8": (undecodable_id, "doc_ids of document 3 is not UTF-8"),
    "complete = 'no'": (set_attr("complete", "no"), "incomplete (complete = 'no')"),
    "complete = 1": (set_attr("complete", 1), "incomplete"),
    "duplicate label names": (set_attr("label_names", json.dumps(["class0", "class1", "class0"])),
                              "'class0' appears twice"),
    "a label name with a newline": (set_attr("label_names", json.dumps(["class0", "class\n1", "class2"])),
                                    "control character"),
    "chunk_tokens a string": (set_attr("chunk_tokens", "256"), "attribute chunk_tokens is '256'"),
    "chunk_tokens a float": (set_attr("chunk_tokens", 256.0), "attribute chunk_tokens"),
    "chunk_tokens zero": (set_attr("chunk_tokens", 0), "attribute chunk_tokens is 0"),
    "chunk_tokens an array": (set_attr("chunk_tokens", np.array([256, 256])), "attribute chunk_tokens"),
    "stride negative": (set_attr("stride", -1), "attribute stride is -1"),
    "stride past chunk_tokens": (set_attr("stride", 256), "attribute stride is 256"),
    "hidden_size not the embeddings' width": (set_attr("hidden_size", 17), "attribute hidden_size is 17"),
    "hidden_size a bool": (set_attr("hidden_size", True), "attribute hidden_size"),
    "window_vector unknown": (set_attr("window_vector", "max"), "attribute window_vector is 'max'"),
    "precision unknown": (set_attr("precision", "fp8"), "attribute precision is 'fp8'"),
    "precision auto": (set_attr("precision", "auto"), "attribute precision is 'auto'"),
    "model_fingerprint not a sha256": (set_attr("model_fingerprint", "abc"), "attribute model_fingerprint"),
    "model empty": (set_attr("model", " "), "attribute model is ' '"),
    "model not UTF-8": (set_attr("model", b"\xff\xfe"), "attribute model is not valid UTF-8"),
    "format_version a string": (set_attr("format_version", "2"), "cache format version '2'"),
    "window_starts shorter": (lambda f: replace(f, "window_starts", f["window_starts"][:-1]),
                              "window_starts holds"),
    "window_starts two-dimensional": (lambda f: replace(f, "window_starts", f["window_starts"][:][:, None]),
                                      "window_starts is a 2-D"),
    "window_starts past the document": (set_entry("window_starts", 1, 10**9), "window_starts of document 0"),
    "window_starts off by one": (window_starts_off_by_one, "window_starts of document"),
    "window_starts negative": (set_entry("window_starts", 0, -5), "window_starts of document 0"),
    "doc_tokens shorter": (lambda f: replace(f, "doc_tokens", f["doc_tokens"][:-1]), "doc_tokens holds"),
    "doc_tokens negative": (set_entry("doc_tokens", 2, -1), "doc_tokens of document 2 is negative"),
    "doc_tokens too many for the windows": (set_entry("doc_tokens", 2, lambda a: a[2] + 10 * STEP),
                                            "doc_tokens of document 2"),
    "doc_tokens floats": (lambda f: replace(f, "doc_tokens", f["doc_tokens"][:].astype(np.float64)),
                          "doc_tokens is a 1-D float64"),
    "an external link for labels": (lambda f: (f.__delitem__("labels"),
                                               f.__setitem__("labels", h5py.ExternalLink("/etc/passwd", "x"))),
                                    "labels is a link"),
    "terms: indptr not from 0": (set_entry("terms/indptr", 0, 1), "terms/indptr starts at 1"),
    "terms: indptr decreasing": (set_entry("terms/indptr", 2, lambda a: a[1] - 1), "terms/indptr decreases"),
    "terms: an index past n_features": (set_entry("terms/indices", 5, 2**20), "terms/indices holds 1048576"),
    "terms: a negative index": (set_entry("terms/indices", 5, -1), "terms/indices holds -1"),
    "terms: unsorted ids in a row": (swap_first_terms, "terms/indices of document 0 are not strictly increasing"),
    "terms: a repeated id in a row": (set_entry("terms/indices", 1, lambda a: a[0]),
                                      "terms/indices of document 0 are not strictly increasing"),
    "terms: negative counts": (lambda f: f["terms/counts"].__setitem__(slice(None), -f["terms/counts"][:]),
                               "terms/counts holds -"),
    "terms: a zero count": (set_entry("terms/counts", 4, 0), "terms/counts holds 0 at entry 4"),
    "terms: counts floats": (lambda f: replace(f, "terms/counts", f["terms/counts"][:].astype(np.float32)),
                             "terms/counts is a 1-D float32"),
    "terms: indptr shorter": (lambda f: replace(f, "terms/indptr", f["terms/indptr"][:-1]), "terms/"),
    "terms: term_hashing not JSON": (set_attr("term_hashing", "{n_features: 5"), "term_hashing is not this code's"),
    "terms: term_hashing with an unknown key": (
        set_attr("term_hashing", json.dumps({**json.loads(TermHashing().to_json()), "extra": 1})), "unknown key"),
    "terms: term_hashing with a planted pattern": (
        set_attr("term_hashing", json.dumps({**json.loads(TermHashing().to_json()), "token_pattern": "(a+)+b"})),
        "token_pattern"),
    "terms: term_hashing of no terms": (set_attr("term_hashing", "{}"), "term_hashing"),
    "terms: a group where terms/ belongs, as a dataset": (lambda f: replace(f, "terms", np.zeros(3)),
                                                          "terms is not a group"),
}
CACHE_DAMAGE = ["a group where a dataset belongs", "one-dimensional embeddings", "a document with zero windows",
                "NaN vectors", "label_names not JSON", "label_names not a list of names", "doc_ids shorter than labels",
                "offsets past the end", "scrambled metadata", "empty file", "not HDF5", *FIELD_DAMAGE]


def make_damaged_cache(folder, how, seed=0):
    texts = [f"word{i % 7} and common text{i % 3} here" for i in range(30)] if how.startswith("terms:") else None
    path = write_synthetic_cache(folder / f"damaged-{seed}.h5", n_docs=30, seed=seed, texts=texts)
    if how == "scrambled metadata":  # the group B-trees, symbol tables and heaps overwritten at random
        data = bytearray(path.read_bytes())
        rng = random.Random(seed)
        structures = [m.start() for m in re.finditer(rb"TREE|HEAP|SNOD|GCOL", bytes(data))]
        for at in rng.sample(structures, k=max(1, len(structures) // 2)):
            data[at:at + 24] = bytes(rng.randrange(256) for _ in range(24))
        path.write_bytes(bytes(data))
    elif how == "empty file":
        path.write_bytes(b"")
    elif how == "not HDF5":
        path.write_text("text,label\na,b\n")
    else:
        damage_cache(path, how)
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A good cache and a head trained on it (the same synthetic encoder settings)."""
    folder = tmp_path_factory.mktemp("good")
    cache = write_synthetic_cache(folder / "good.h5", n_docs=30)
    head = folder / "head.pt"
    run_train_head(TrainConfig(train=str(cache), out=str(head), pooling="mean", max_epochs=1, progress=False,
                               curve=False), log=lambda line: None)
    return cache, head


@pytest.mark.parametrize("how", CACHE_DAMAGE)
@pytest.mark.parametrize("command", ["train-head --train", "train-head --val", "evaluate --cache"])
def test_damaged_caches_are_refused_in_one_line(command, how, good, tmp_path, capsys):
    cache, head = good
    damaged = make_damaged_cache(tmp_path, how)
    out = tmp_path / "out"
    out.mkdir()
    (out / "head.pt").write_bytes(b"previous head")
    (out / "head-curve.png").write_bytes(b"previous curve")
    (out / "metrics.json").write_text("{}")
    before = snapshot(tmp_path)
    if command == "train-head --train":
        args = ["train-head", "--train", damaged, "--out", out / "head.pt", "--overwrite", "--epochs", "1"]
    elif command == "train-head --val":
        args = ["train-head", "--train", cache, "--val", damaged, "--out", out / "head.pt", "--overwrite",
                "--epochs", "1"]
    else:
        args = ["evaluate", "--head", head, "--cache", damaged, "--report", out]
    refused(capsys, [*args], str(damaged), *FIELD_DAMAGE.get(how, (None, ""))[1:])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("seed", [0, *(pytest.param(seed, marks=pytest.mark.slow) for seed in (1, 2, 3))])
def test_scrambled_caches_never_crash_a_real_process(good, tmp_path, seed):
    cache, head = good
    damaged = make_damaged_cache(tmp_path, "scrambled metadata", seed)
    for args in (["train-head", "--train", damaged, "--out", tmp_path / "h.pt", "--epochs", "1"],
                 ["evaluate", "--head", head, "--cache", damaged]):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(damaged) in lines[0], result.stderr


# --- damaged and planted heads -------------------------------------------------------------


class Planted:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('PLANTED_MARKER', '/nonexistent/marker')}",))


def first_weight(payload):
    return next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.dim() == 2)


def flip_a_bit_in_a_tensor(path, target):
    """The file with one bit of a weight flipped: torch's reader checks no CRC, so this is read
    as another (finite) weight unless the loader checks the records' CRC-32 itself."""
    import zipfile

    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = next(r for r in archive.infolist() if "/data/" in r.filename and r.file_size >= 64)
    name_length, extra_length = int.from_bytes(data[record.header_offset + 26:record.header_offset + 28], "little"), \
        int.from_bytes(data[record.header_offset + 28:record.header_offset + 30], "little")
    start = record.header_offset + 30 + name_length + extra_length
    data[start + 5] ^= 0x01  # the lowest mantissa bit of a float32: a finite value still
    target.write_bytes(bytes(data))
    return target


# how: (which head it damages, the change, what the error line names)
HEAD_DAMAGE = {
    "missing state_dict": ("windows", lambda p: p.pop("state_dict"), "state_dict: missing"),
    "missing label_names": ("windows", lambda p: p.pop("label_names"), "label_names: missing"),
    "missing encoder record": ("windows", lambda p: p["encoder"].pop("model_fingerprint"),
                               "encoder.model_fingerprint: missing"),
    "fewer label names than outputs": ("windows", lambda p: p["label_names"].pop(), "label_names"),
    "a label with a newline": ("windows", lambda p: p["label_names"].__setitem__(0, "class\n0"), "label_names"),
    "duplicate label names": ("windows", lambda p: p["label_names"].__setitem__(1, p["label_names"][0]),
                              "'class0' names two outputs"),
    "NaN weights": ("windows", lambda p: p["state_dict"][first_weight(p)].fill_(float("nan")), "NaN or infinite"),
    "head config of another shape": ("windows", lambda p: p["head"].update(hidden_size=7), "state_dict"),
    "a huge declared size": ("windows", lambda p: p["head"].update(n_terms=10**10, inputs="both"), "head.n_terms"),
    "a size the weights do not have": ("both", lambda p: p["head"].update(n_terms=2**31 - 1), "state_dict.terms"),
    "a negative size": ("windows", lambda p: p["head"].update(inner_dim=-5), "head.inner_dim"),
    "a size of another type": ("windows", lambda p: p["head"].update(inner_dim="128"), "head.inner_dim"),
    "no transformer heads": ("windows", lambda p: p["head"].update(transformer_heads=0), "transformer_heads"),
    "dropout out of range": ("windows", lambda p: p["head"].update(dropout=1.5), "--dropout"),
    "an unknown pooling": ("windows", lambda p: p["head"].update(pooling="median"), "--pooling"),
    "an extra head field": ("windows", lambda p: p["head"].update(layers=3), "head.layers"),
    "an extra field": ("windows", lambda p: p.update(code="x"), "code: a field heads do not have"),
    "a weight of another dtype": ("windows", lambda p: p["state_dict"].update(
        {first_weight(p): p["state_dict"][first_weight(p)].double()}), "float64"),
    "an expanded weight": ("windows", lambda p: p["state_dict"].update(
        {first_weight(p): torch.zeros(1).expand(p["state_dict"][first_weight(p)].shape)}), "a view"),
    "chunk_tokens as text": ("windows", lambda p: p["encoder"].update(chunk_tokens="256"), "encoder.chunk_tokens"),
    "a stride not below the window": ("windows", lambda p: p["encoder"].update(stride=256), "encoder.stride"),
    "an unknown precision": ("windows", lambda p: p["encoder"].update(precision="fp8"), "encoder.precision"),
    "an unknown window vector": ("windows", lambda p: p["encoder"].update(window_vector="max"),
                                 "encoder.window_vector"),
    "the encoder's width not the head's": ("windows", lambda p: p["encoder"].update(hidden_size=17),
                                           "encoder.hidden_size"),
    "training not a record": ("windows", lambda p: p.update(training="junk"), "training"),
    "a term hashing that is not JSON": ("both", lambda p: p["terms"].update(hashing="{not json"), "terms.hashing"),
    "a term hashing that is no hashing": ("both", lambda p: p["terms"].update(hashing='{"colour": 3}'),
                                          "terms.hashing"),
    "term ids out of range": ("both", lambda p: p["terms"]["features"].__setitem__(-1, 2**40), "terms.features"),
    "term ids as floats": ("both", lambda p: p["terms"].update(features=p["terms"]["features"].double()),
                           "terms.features"),
    "a negative idf": ("both", lambda p: p["terms"]["idf"].__setitem__(0, -2.0), "terms.idf"),
    "an infinite idf": ("both", lambda p: p["terms"]["idf"].__setitem__(0, float("inf")), "terms.idf"),
    "idf of another length": ("both", lambda p: p["terms"].update(idf=p["terms"]["idf"][:-1]), "terms.idf"),
    "term statistics in a windows head": ("windows", lambda p: p.update(terms={"hashing": "{}"}), "terms"),
    "a negative branch weight": ("both", lambda p: p["state_dict"]["mix"].__setitem__(0, -1.0), "state_dict.mix"),
    "an infinite branch weight": ("both", lambda p: p["state_dict"]["mix"].__setitem__(1, float("inf")),
                                  "state_dict.mix"),
    "not a dict": ("windows", None, "not a head checkpoint"),
    "planted pickle": ("windows", None, "not a head checkpoint"),
    "text file": ("windows", None, "not a head checkpoint"),
    "truncated": ("windows", None, "not a head checkpoint"),
    "a flipped bit in a weight": ("windows", None, "fails its CRC-32 check"),
}


def damage_head(path, how, target):
    if how == "text file":
        target.write_text("not a head")
        return target
    if how == "truncated":
        target.write_bytes(path.read_bytes()[:-300])
        return target
    if how == "a flipped bit in a weight":
        return flip_a_bit_in_a_tensor(path, target)
    payload = torch.load(path, weights_only=True)
    if how == "not a dict":
        payload = [1, 2, 3]
    elif how == "planted pickle":
        payload = {"format": "longdoc-head", "code": Planted()}
    else:
        HEAD_DAMAGE[how][1](payload)
    torch.save(payload, target)
    return target


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """A cache with terms and a head of both inputs trained on it (the term branch's statistics)."""
    from synthetic import lexical_cache

    folder = tmp_path_factory.mktemp("fused")
    cache = lexical_cache(folder / "lexical.h5")
    head = folder / "head.pt"
    run_train_head(TrainConfig(train=str(cache), out=str(head), pooling="mean", max_epochs=1, progress=False,
                               curve=False), log=lambda line: None)
    return cache, head


@pytest.mark.parametrize("how", HEAD_DAMAGE)
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_damaged_heads_are_refused_in_one_line(command, how, good, fused, tmp_path, capsys, monkeypatch):
    cache, head = good if HEAD_DAMAGE[how][0] == "windows" else fused
    marker = tmp_path / "marker"
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    damaged = damage_head(head, how, tmp_path / "damaged.pt")
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text("{}")
    text = tmp_path / "post.txt"
    text.write_text("space rocket")
    before = snapshot(tmp_path)
    if command == "evaluate":
        args = ["evaluate", "--head", damaged, "--cache", cache, "--report", report]
    else:
        args = ["predict", "--head", damaged, text]
    refused(capsys, args, str(damaged), HEAD_DAMAGE[how][2])
    assert snapshot(tmp_path) == before and not marker.exists()


# --- what must be accepted -------------------------------------------------------------------


def test_long_fields_and_byte_order_marks_are_read(tmp_path):
    from longdoc.corpus.sources import load_corpus

    long_text = "rocket " * 300_000  # 2.1 MB in one CSV field
    csv_path = tmp_path / "c.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + f'text,label\n"{long_text}",space\nshort,religion\n'.encode())
    corpus = load_corpus(str(csv_path))
    assert corpus.texts[0] == long_text and corpus.label_names == ["religion", "space"]
    jsonl_path = tmp_path / "c.jsonl"
    jsonl_path.write_bytes(b"\xef\xbb\xbf" + jsonl(*GOOD_ROWS))
    assert load_corpus(str(jsonl_path)).label_names == ["religion", "space"]


def test_hidden_files_and_folders_are_not_classes_or_documents(tmp_path):
    from longdoc.corpus.sources import load_corpus

    for relative in ("space/a.txt", "religion/b.txt", ".git/objects", ".git/HEAD", "space/.DS_Store",
                     "religion/.hidden.txt"):
        path = tmp_path / "corpus" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    corpus = load_corpus(str(tmp_path / "corpus"))
    assert corpus.label_names == ["religion", "space"] and corpus.doc_ids == ["religion/b.txt", "space/a.txt"]


@pytest.mark.parametrize("name", [b"post\tone.txt", b"post\none.txt", b"post-\xff.txt"])
def test_predict_refuses_file_names_it_could_not_print_on_one_line(name, good, tmp_path, capsys):
    _, head = good
    path = os.path.join(os.fsencode(tmp_path), name)
    with open(path, "wb") as f:
        f.write(b"space rocket")
    refused(capsys, ["predict", "--head", head, os.fsdecode(path)], "control character or bytes that are not UTF-8")


@pytest.mark.parametrize("where", ["training loss", "validation loss"])
def test_a_diverging_training_saves_nothing(where, good, tmp_path, capsys, monkeypatch):
    import longdoc.training.head_task

    cache, _ = good
    if where == "training loss":
        real = longdoc.training.head_task.window_logits
        monkeypatch.setattr(longdoc.training.head_task, "window_logits", lambda head, batch: real(head, batch) * float("nan"))
        said = "training diverged at epoch 1, step 1 (loss nan)"
    else:
        real_scores = longdoc.training.head_task.HeadTask._scores
        monkeypatch.setattr(longdoc.training.head_task.HeadTask, "_scores",
                            lambda task, logits: {**real_scores(task, logits), "val_loss": float("inf")})
        said = "training diverged at epoch 1 (validation val_loss inf)"
    out = tmp_path / "head.pt"
    refused(capsys, ["train-head", "--train", cache, "--out", out, "--epochs", "2"], said, "nothing saved; lower --lr")
    assert sorted(os.listdir(tmp_path)) == []
