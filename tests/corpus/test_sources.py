import codecs
import json
import pickle
import tarfile

import numpy as np
import pytest
from checkout import SHARED_DATASETS

from longdoc.corpus.sources import iter_documents, load_corpus
from longdoc.runtime.errors import UserError
from longdoc.settings.labels import MAX_LABEL_CHARS, check_label_names


def test_class_folders_replace_undecodable_bytes(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.txt").write_bytes(b"caf\xe9 \xff\xfe ok")
    (tmp_path / "b" / "2.txt").write_text("plain")
    corpus = load_corpus(str(tmp_path))
    assert corpus.label_names == ["a", "b"]
    assert corpus.doc_ids == ["a/1.txt", "b/2.txt"]
    assert corpus.labels.tolist() == [0, 1]
    assert "\ufffd" in corpus.texts[0] and corpus.texts[0].endswith("ok")


def test_csv_and_jsonl_agree(tmp_path):
    rows = [{"id": "x1", "text": "hello, world", "label": "pos"}, {"id": "x2", "text": "bye", "label": "neg"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "d.csv").write_text('id,text,label\nx1,"hello, world",pos\nx2,bye,neg\n')
    a, b = load_corpus(str(tmp_path / "d.jsonl")), load_corpus(str(tmp_path / "d.csv"))
    assert a.doc_ids == b.doc_ids == ["x1", "x2"]
    assert a.texts == b.texts == ["hello, world", "bye"]
    assert a.label_names == ["neg", "pos"] and a.labels.tolist() == [1, 0]
    assert a.fingerprint() == b.fingerprint()


# Names every consumer shows as given (report.md and .html escape them, plots draw `$` as
# text): refusing them would refuse real class names.
SHOWN_AS_GIVEN = ["$x^$", "price in $", "<script>alert(1)</script>", "a & b | c", "\u0631\u064a\u0627\u0636\u0629",
                  "comp.sys.ibm.pc.hardware", "C++", "x" * MAX_LABEL_CHARS, "caf\u00e9", "\U0001F680 rockets"]


def test_label_names_every_consumer_can_show_are_accepted():
    check_label_names(SHOWN_AS_GIVEN, "here")


@pytest.mark.parametrize("names, message", [
    ("abc", "are not a list"), (["a", 1], "the label '1' is not a string"), (["a", ""], "the label is empty"),
    (["a", "  "], "the label is empty"), (["a\nb"], "control character"), (["a\tb"], "control character"),
    (["a\x00b"], "control character"), (["a\x1b[31mred"], "control character"),
    (["a\u200bb"], "U\\+200B ZERO WIDTH SPACE"), (["a\u200db"], "U\\+200D ZERO WIDTH JOINER"),
    (["abc\u202edef"], "U\\+202E RIGHT-TO-LEFT OVERRIDE"), (["a\u2028b"], "U\\+2028 LINE SEPARATOR"),
    (["a\ufeffb"], "U\\+FEFF"), (["sp\ud83dce"], "lone surrogate"),
    (["x" * (MAX_LABEL_CHARS + 1)], "1,001 characters long"), (["a", "b", "a"], "'a' appears twice"),
    (["caf\u00e9", "cafe\u0301"], "appears twice \\(in another Unicode normalisation\\)"),
])
def test_label_names_no_consumer_could_show_are_refused_naming_the_place(names, message):
    with pytest.raises(UserError, match=f"^here: .*{message}"):
        check_label_names(names, "here")


@pytest.mark.parametrize("kind, label, message", [
    *((kind, label, message) for kind in ("jsonl", "csv", "folder")
      for label, message in (("a\u200bb", "ZERO WIDTH SPACE"), ("\u202eevil", "RIGHT-TO-LEFT OVERRIDE"))),
    ("jsonl", "x" * 1001, "characters long"), ("csv", "x" * 1001, "characters long"),  # no file name is this long
])
def test_every_corpus_kind_checks_its_label_names(tmp_path, kind, label, message):
    rows = [{"text": "space rocket", "label": "space"}, {"text": "god church", "label": label}]
    if kind == "jsonl":
        data = tmp_path / "c.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "csv":
        data = tmp_path / "c.csv"
        data.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows), encoding="utf-8")
    else:
        data = tmp_path / "folder"
        for r in rows:
            (data / r["label"]).mkdir(parents=True)
            (data / r["label"] / "1.txt").write_text(r["text"])
    with pytest.raises(UserError, match=message):
        load_corpus(str(data))


def test_labels_alike_after_normalisation_are_refused_for_the_whole_corpus(tmp_path):
    """Each record's label is fine on its own; two classes that differ only in their Unicode
    form would be shown alike in every report."""
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"text": "a", "label": "caf\u00e9"}) + "\n"
                    + json.dumps({"text": "b", "label": "cafe\u0301"}) + "\n")
    with pytest.raises(UserError, match=f"--data {data}: .*appears twice"):
        load_corpus(str(data))


@pytest.mark.parametrize("content,message", [
    ('{"text": "no label"}\n', "needs 'text' and 'label'"),
    ("not json\n", "not JSON"),
])
def test_bad_jsonl_names_the_line(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(UserError, match=message):
        load_corpus(str(tmp_path / "d.jsonl"))


def test_categories_limit_and_empty(tmp_path):
    for label in "abc":
        (tmp_path / label).mkdir()
        for i in range(3):
            (tmp_path / label / f"{i}").write_text(f"{label} {i}")
    corpus = load_corpus(str(tmp_path), categories=["c", "a"], limit=4)
    assert corpus.label_names == ["a", "c"] and len(corpus) == 4
    assert set(corpus.labels.tolist()) <= {0, 1}
    with pytest.raises(UserError, match="unknown z"):
        load_corpus(str(tmp_path), categories=["z"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no documents"):
        load_corpus(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no such file"):
        load_corpus(str(tmp_path / "missing"))


def _fake_bydate(root, seed=0):
    """A small archive laid out like 20news-bydate.tar.gz, with headers, quotes, footers."""
    rng = np.random.default_rng(seed)
    folders = root / "unpacked"
    for split in ("train", "test"):
        for group in ("sci.space", "alt.atheism", "comp.graphics"):
            folder = folders / f"20news-bydate-{split}" / group
            folder.mkdir(parents=True)
            for n in rng.choice(100000, size=7, replace=False):
                folder.joinpath(str(n)).write_bytes(
                    f"From: a@b.c\nSubject: {group} {n}\n\nIn article <x> someone wrote:\n> quoted text\n"
                    f"body of {group} post {n} caf\xe9\n\n--\nsignature\n".encode("latin1"))
    archive = root / "home" / "20news-bydate.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(folders / f"20news-bydate-{split}", arcname=f"20news-bydate-{split}")
    return folders, archive


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("categories,remove", [
    (None, ()), (["sci.space", "alt.atheism"], ()), (None, ("headers", "footers", "quotes")),
])
def test_20newsgroups_matches_scikit_learn(tmp_path, split, categories, remove):
    """Same documents, order, labels and text as fetch_20newsgroups on the same archive."""
    from sklearn.datasets import fetch_20newsgroups, load_files
    from sklearn.datasets._base import _pkl_filepath
    from sklearn.datasets._twenty_newsgroups import CACHE_NAME

    folders, archive = _fake_bydate(tmp_path)
    # Build scikit-learn's own cache exactly as its downloader does, then ask it.
    sk_home = tmp_path / "sk"
    sk_home.mkdir()
    cache = {s: load_files(folders / f"20news-bydate-{s}", encoding="latin1") for s in ("train", "test")}
    open(_pkl_filepath(str(sk_home), CACHE_NAME), "wb").write(codecs.encode(pickle.dumps(cache), "zlib_codec"))
    expected = fetch_20newsgroups(data_home=sk_home, subset=split, categories=categories, remove=remove,
                                  download_if_missing=False)
    for data_home in (archive.parent, folders):  # from the archive and from unpacked folders
        corpus = load_corpus("20newsgroups", split, categories, remove, data_home=str(data_home))
        assert corpus.texts == list(expected.data)
        assert corpus.labels.tolist() == expected.target.tolist()
        assert corpus.label_names == list(expected.target_names)
        assert corpus.doc_ids == ["/".join(f.split("/")[-2:]) for f in expected.filenames]


def test_20newsgroups_offline_without_copy_is_one_clear_error(tmp_path, monkeypatch):
    import longdoc.corpus.newsgroups

    monkeypatch.setattr(longdoc.corpus.newsgroups, "newsgroups_search_path", lambda home: [tmp_path])
    monkeypatch.setattr("sklearn.datasets.fetch_20newsgroups",
                        lambda **kw: (_ for _ in ()).throw(OSError("network unreachable")))
    with pytest.raises(UserError, match="put 20news-bydate.tar.gz in one of"):
        load_corpus("20newsgroups", "train")


@pytest.mark.skipif(not (SHARED_DATASETS / "20news-bydate.tar.gz").exists(), reason="needs ../shared/datasets")
def test_real_20newsgroups_sizes():
    train = load_corpus("20newsgroups", "train", data_home=str(SHARED_DATASETS))
    test = load_corpus("20newsgroups", "test", data_home=str(SHARED_DATASETS))
    assert (len(train), len(test)) == (11314, 7532)
    assert len(train.label_names) == 20 and np.bincount(train.labels).min() > 300
    small = load_corpus("20newsgroups", "train", ["talk.religion.misc", "alt.atheism", "comp.graphics"],
                        ("headers", "footers", "quotes"), data_home=str(SHARED_DATASETS), limit=50)
    assert small.label_names == ["alt.atheism", "comp.graphics", "talk.religion.misc"]
    assert len(small) == 50 and len(set(small.labels.tolist())) == 3  # a fixed, mixed order


# --- label sets (multi-label corpora) ----------------------------------------------------


def _jsonl(path, *rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_single_label_fingerprint_is_unchanged(tmp_path):
    """The bytes a single-label corpus hashes are those of before label sets: caches made
    then still match their corpus (the value was computed by that code)."""
    rows = [{"id": "x1", "text": "hello, world", "label": "pos"}, {"id": "x2", "text": "bye caf\u00e9", "label": "neg"}]
    corpus = load_corpus(str(_jsonl(tmp_path / "d.jsonl", *rows)))
    assert not corpus.multi_label and corpus.label_sets is None
    assert corpus.fingerprint() == "cc38eff0775b23c50b6b0757a41437d48b2b65630462ffe6654ae175a4a6383e"
    assert corpus.head(1).fingerprint() == "89ad5d7b77022c6c7ab7da2594dea593d58835036cafd54d2f5889c9503de4b5"


def test_jsonl_and_csv_label_sets_agree(tmp_path):
    rows = [{"id": "a", "text": "wheat and corn", "labels": ["grain", "corn"]},
            {"id": "b", "text": "nothing here", "labels": []},
            {"id": "c", "text": "trade, again", "labels": ["trade"]}]
    from_jsonl = load_corpus(str(_jsonl(tmp_path / "d.jsonl", *rows)))
    (tmp_path / "d.csv").write_text('id,text,labels\na,wheat and corn,grain | corn\nb,nothing here,\n'
                                    'c,"trade, again",trade\n')
    (tmp_path / "semi.csv").write_text('id,text,labels\na,wheat and corn,grain;corn\nb,nothing here, \n'
                                       'c,"trade, again",trade\n')
    for corpus in (from_jsonl, load_corpus(str(tmp_path / "d.csv")),
                   load_corpus(str(tmp_path / "semi.csv"), label_sep=";")):
        assert corpus.multi_label and corpus.labels is None
        assert corpus.label_names == ["corn", "grain", "trade"]  # every label that occurs, sorted
        assert corpus.label_sets == [[0, 1], [], [2]]
        assert [corpus.label_of(i) for i in range(3)] == [("corn", "grain"), (), ("trade",)]
        assert corpus.fingerprint() == from_jsonl.fingerprint()
    assert load_corpus(str(tmp_path / "d.jsonl"), limit=2).label_sets == [[0, 1], []]


def test_the_fingerprint_covers_label_sets_and_the_task(tmp_path):
    one = [{"id": "a", "text": "t", "label": "x"}, {"id": "b", "text": "u", "label": "y"}]
    single = load_corpus(str(_jsonl(tmp_path / "single.jsonl", *one)))
    as_sets = load_corpus(str(_jsonl(tmp_path / "sets.jsonl",
                                     *({"id": r["id"], "text": r["text"], "labels": [r["label"]]} for r in one))))
    assert as_sets.label_sets == [[0], [1]] and as_sets.fingerprint() != single.fingerprint()
    changed = load_corpus(str(_jsonl(tmp_path / "changed.jsonl", {"id": "a", "text": "t", "labels": ["x", "y"]},
                                     {"id": "b", "text": "u", "labels": ["y"]})))
    assert changed.fingerprint() != as_sets.fingerprint()


def test_categories_keep_documents_with_one_of_them_and_narrow_their_sets(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", {"text": "1", "labels": ["a", "b", "c"]}, {"text": "2", "labels": ["c"]},
                  {"text": "3", "labels": []}, {"text": "4", "labels": ["b"]})
    kept = load_corpus(str(path), categories=["c", "b"])
    assert kept.label_names == ["b", "c"] and kept.doc_ids == ["line1", "line2", "line4"]
    assert kept.label_sets == [[0, 1], [1], [0]] and kept.source.endswith("[categories=b,c]")
    assert [r[2] for r in iter_documents(str(path), categories=["c"])] == [("c",), ("c",)]
    with pytest.raises(UserError, match="--categories: unknown z"):
        load_corpus(str(path), categories=["z"])


def test_iter_documents_yields_label_sets_or_none(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", {"text": "1", "labels": ["b", "a"]}, {"text": "2"},
                  {"text": "3", "labels": None}, {"text": "4", "labels": []})
    assert [r[2] for r in iter_documents(str(path))] == [("a", "b"), None, None, ()]
    (tmp_path / "d.csv").write_text("text,labels\n1,b|a\n2,\n3\n")
    assert [r[2] for r in iter_documents(str(tmp_path / "d.csv"))] == [("a", "b"), (), None]
    assert [r[2] for r in iter_documents(str(tmp_path / "d.csv"), label_sep=";")] == [("b|a",), (), None]


@pytest.mark.parametrize("rows,message", [
    ([{"text": "a", "label": "x"}, {"text": "b", "labels": ["x"]}],
     "line 2: 'labels' here but 'label' on line 1"),
    ([{"text": "a", "labels": ["x"]}, {"text": "b", "labels": []}, {"text": "c", "label": "x"}],
     "line 3: 'label' here but 'labels' on line 1"),
    ([{"text": "a", "label": "x", "labels": ["x"]}], "line 1: both 'label' and 'labels'"),
])
def test_a_jsonl_file_mixing_label_and_labels_is_refused(tmp_path, rows, message):
    path = _jsonl(tmp_path / "d.jsonl", *rows)
    for read in (load_corpus, lambda p: list(iter_documents(p))):
        with pytest.raises(UserError, match=message):
            read(str(path))


def test_a_csv_with_both_columns_is_refused(tmp_path):
    (tmp_path / "d.csv").write_text("text,label,labels\na,x,x\n")
    with pytest.raises(UserError, match=r"d.csv: both a 'label' and a 'labels' column"):
        load_corpus(str(tmp_path / "d.csv"))


HOSTILE_LABEL_SETS = [  # (file name, content, what the one line says)
    ("c.jsonl", '{"text": "t", "labels": ["a", 3]}', "line 2: label 2 of 'labels' is a number, not a string"),
    ("c.jsonl", '{"text": "t", "labels": [null]}', "line 2: label 1 of 'labels' is null, not a string"),
    ("c.jsonl", '{"text": "t", "labels": [["a"]]}', "line 2: label 1 of 'labels' is a list, not a string"),
    ("c.jsonl", '{"text": "t", "labels": ["a", ""]}', "line 2: label 2 of 'labels' is empty"),
    ("c.jsonl", '{"text": "t", "labels": [" \\t "]}', "line 2: label 1 of 'labels' is empty"),
    ("c.jsonl", '{"text": "t", "labels": ["a", "b", "a"]}', "line 2: the label 'a' appears twice"),
    ("c.jsonl", '{"text": "t", "labels": ["a\\nb"]}', "line 2: the label 'a\\\\nb' holds a control character"),
    ("c.jsonl", '{"text": "t", "labels": ["a\\ud800"]}', "line 2: the label holds a lone surrogate"),
    ("c.jsonl", '{"text": "t", "labels": "a"}', "line 2: 'labels' must be a list of strings, not a string"),
    ("c.jsonl", '{"text": "t", "labels": 3}', "line 2: 'labels' must be a list of strings, not a number"),
    ("c.jsonl", '{"text": "t", "labels": true}', "line 2: 'labels' must be a list of strings, not true or false"),
    ("c.jsonl", '{"text": "t", "labels": {"a": 1}}', "line 2: 'labels' must be a list of strings, not an object"),
    ("c.csv", "t,|", r"row 2: the labels '\|' are nothing but separators \('\|'\)"),
    ("c.csv", "t, | ", r"row 2: the labels ' \| ' are nothing but separators"),
    ("c.csv", "t,a||b", r"row 2: the labels 'a\|\|b' hold an empty label"),
    ("c.csv", "t,a | ", r"row 2: the labels 'a \| ' hold an empty label"),
    ("c.csv", "t,a|b|a", "row 2: the label 'a' appears twice"),
    ("c.csv", 't,"a|b\tc"', r"row 2: the label 'b\\tc' holds a control character"),
]


@pytest.mark.parametrize("name,bad,message", HOSTILE_LABEL_SETS)
def test_hostile_label_sets_are_one_line_naming_the_file_and_line(tmp_path, name, bad, message):
    path = tmp_path / name
    good = '{"text": "fine", "labels": ["a"]}' if name.endswith(".jsonl") else "text,labels\nfine,a"
    path.write_text(f"{good}\n{bad}\n")
    for read in (load_corpus, lambda p: list(iter_documents(p))):  # training and predict --data
        with pytest.raises(UserError, match=f"{path} {message}"):
            read(str(path))


def test_missing_or_null_labels_are_refused_where_labels_are_required(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", {"text": "a", "labels": ["x"]}, {"text": "b", "labels": None})
    with pytest.raises(UserError, match="line 2: 'labels' must be a list of strings, not null"):
        load_corpus(str(path))
    (tmp_path / "d.csv").write_text("text,labels\na,x\nb\n")
    with pytest.raises(UserError, match="row 2: the labels are missing"):
        load_corpus(str(tmp_path / "d.csv"))
    with pytest.raises(UserError, match="line 2: each record needs 'text' and 'label' \\(or 'labels'\\) fields"):
        load_corpus(str(_jsonl(tmp_path / "e.jsonl", {"text": "a", "labels": ["x"]}, {"text": "b"})))


def test_the_default_search_path_is_the_checkouts_data_and_the_shared_datasets_beside_it(monkeypatch):
    """Without --data-home or $SCIKIT_LEARN_DATA, `data/` of this checkout, then
    `../shared/datasets` beside it (where the tests, CI and benchmarks keep the archives)."""
    from checkout import ROOT

    from longdoc.corpus.sources import newsgroups_search_path

    monkeypatch.delenv("SCIKIT_LEARN_DATA", raising=False)
    assert newsgroups_search_path(None) == [ROOT / "data", ROOT.parent / "shared" / "datasets"]
