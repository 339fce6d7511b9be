"""Reuters-21578: the SGML reader on hand-written irregular stories, the ModApte R90 split
on small made-up archives, `--data reuters21578` through `load_corpus`, and the counts of
the real archive in ../shared/datasets (skipped, with the reason, when it is absent)."""

from __future__ import annotations

import time

import pytest
from checkout import SHARED_DATASETS
from synthetic import story, write_archive

from longdoc.corpus.reuters import Story, modapte_r90, parse_sgml
from longdoc.corpus.sources import iter_documents, load_corpus
from longdoc.runtime.errors import UserError

REAL_ARCHIVE = SHARED_DATASETS / "reuters21578.tar.gz"


def parse_one(sgml: str | bytes) -> Story:
    raw = sgml.encode("latin-1") if isinstance(sgml, str) else sgml
    (only,) = parse_sgml(b'<!DOCTYPE lewis SYSTEM "lewis.dtd">\n' + raw, "reut2-000.sgm")
    return only


# --- the SGML reader -----------------------------------------------------------------------


def test_title_blank_line_body_and_the_attributes():
    parsed = parse_one(story(newid=42, text='<TITLE>BAHIA COCOA REVIEW</TITLE>\n<DATELINE>    SALVADOR, Feb 26 - '
                                            '</DATELINE><BODY>Showers continued.\n Reuter\n&#3;</BODY>'))
    assert parsed == Story(42, "TRAIN", "YES", ("grain",), "BAHIA COCOA REVIEW\n\nShowers continued.\n Reuter",
                           "NORM")


def test_entities_are_decoded_after_tags_are_removed():
    parsed = parse_one(story(text="<TITLE>AT&amp;T &lt;T> BUYS &#x41;CME</TITLE>"
                                  "<BODY>&lt;IBM> said 5 &gt; 4 &quot;ok&quot; &apos;x&apos; R&D&#3;</BODY>"))
    assert parsed.text == "AT&T <T> BUYS ACME\n\n<IBM> said 5 > 4 \"ok\" 'x' R&D"


def test_control_characters_are_deleted_but_tabs_and_newlines_kept():
    parsed = parse_one(story(text="<BODY>a\x01b\x1fc&#5;&#22;&#127;&#27;&#0;d\x7fe\tf\ng&#3;&#55296;</BODY>"))
    assert parsed.text == "abcde\tf\ng"


def test_crlf_and_cr_line_ends_become_lf():
    sgml = story(text="<TITLE>T</TITLE><BODY>one\ntwo\rthree\n</BODY>").replace("\n", "\r\n")
    assert "\r\n" in sgml and "\rthree" in sgml
    parsed = parse_one(sgml)
    assert parsed.text == "T\n\none\ntwo\nthree" and parsed.topics == ("grain",)


def test_an_odd_byte_is_read_as_latin1():
    assert parse_one(story(text="<BODY>growth.\xfc&#5;&#30;side</BODY>")).text == "growth.\u00fcside"


def test_stories_without_a_body_keep_the_text_they_have():
    brief = parse_one(story(text_tag='<TEXT TYPE="BRIEF">',
                            text="******<TITLE>ASSETS OF MONEY MARKET FUNDS ROSE\n</TITLE>Blah blah blah.\n&#3;"))
    assert (brief.text, brief.text_type) == ("ASSETS OF MONEY MARKET FUNDS ROSE", "BRIEF")
    unprocessed = parse_one(story(text_tag='<TEXT TYPE="UNPROC">',
                                  text="FEDERAL RESERVE WEEKLY REPORT\n    Net free reserves...644 vs 1,337\n&#3;"))
    assert unprocessed.text == "FEDERAL RESERVE WEEKLY REPORT\n    Net free reserves...644 vs 1,337"
    assert unprocessed.text_type == "UNPROC"
    assert parse_one(story(text="<TITLE>HEADLINE ONLY</TITLE>")).text == "HEADLINE ONLY"
    assert parse_one(story(text="&#3;")).text == ""
    no_text_element = story().replace("<TEXT>&#2;\n<TITLE>GRAIN UP</TITLE><BODY>Grain rose.</BODY>\n</TEXT>\n", "")
    assert parse_one(no_text_element).text == ""


def test_topics_empty_missing_spaced_repeated():
    assert parse_one(story(topics="")).topics == ()
    assert parse_one(story().replace("<TOPICS><D>grain</D></TOPICS>\n", "")).topics == ()
    spaced = parse_one(story(topics="<D> wheat </D><D>\n grain\n</D><D> </D><D>money  fx</D><D>wheat</D>"))
    assert spaced.topics == ("grain", "money fx", "wheat")


def test_unclosed_and_nested_tags():
    # TOPICS and its D's unclosed: they end where PLACES begins (usa is a place, not a topic)
    unclosed_topics = story().replace("<TOPICS><D>grain</D></TOPICS>", "<TOPICS><D>grain<D>wheat")
    assert parse_one(unclosed_topics).topics == ("grain", "wheat")
    # TITLE unclosed ends at BODY; BODY unclosed ends with TEXT
    assert parse_one(story(text="<TITLE>HEAD\n<BODY>Body text\n Reuter")).text == "HEAD\n\nBody text\n Reuter"
    # tags inside a body are removed, their text kept
    assert parse_one(story(text="<BODY>Price <B>up</B> 5 <I>pct</BODY>")).text == "Price up 5 pct"
    # lower-case tags, unquoted and single-quoted attributes
    lower = "<reuters topics=yes lewissplit='test' newid=7>\n<topics><d>trade</d></topics><text><body>x</body></text>"
    assert parse_one(lower) == Story(7, "TEST", "YES", ("trade",), "x", "NORM")


def test_an_unclosed_story_ends_where_the_next_begins():
    first = story(newid=1, text="<BODY>first</BODY>").replace("</TEXT>\n</REUTERS>\n", "")
    stories = parse_sgml((first + story(newid=2, text="<BODY>second</BODY>")).encode(), "f.sgm")
    assert [(s.newid, s.text) for s in stories] == [(1, "first"), (2, "second")]


def test_a_story_without_a_numeric_newid_is_a_damaged_archive():
    for bad in ('NEWID="12a"', 'NEWID="\xb2"', ""):  # "\xb2" is a superscript 2: a digit to str.isdigit
        with pytest.raises(UserError, match=r"reut2-000.sgm: <REUTERS> element 1 has no numeric NEWID"):
            parse_one(story().replace('NEWID="1"', bad))


# --- ModApte R90 ---------------------------------------------------------------------------


def test_modapte_r90_keeps_topics_on_both_sides_and_stories_left_with_one():
    stories = [
        Story(1, "TRAIN", "YES", ("grain", "wheat"), "a", "NORM"),
        Story(2, "TRAIN", "YES", ("rare",), "b", "NORM"),  # rare is never in a test story
        Story(3, "TRAIN", "YES", (), "c", "NORM"),  # TOPICS="YES" with no topic
        Story(4, "TRAIN", "NO", ("grain",), "d", "NORM"),  # not ModApte
        Story(5, "NOT-USED", "YES", ("grain",), "e", "NORM"),
        Story(6, "TRAIN", "YES", ("grain",), "", "NORM"),  # no text
        Story(7, "TEST", "YES", ("grain", "wheat", "testonly"), "g", "NORM"),
        Story(8, "TEST", "BYPASS", ("grain",), "h", "NORM"),
    ]
    assert [(s.newid, s.topics) for s in modapte_r90(stories, "train")] == [(1, ("grain", "wheat"))]
    assert [(s.newid, s.topics) for s in modapte_r90(stories, "test")] == [(7, ("grain", "wheat"))]


# --- --data reuters21578 on a made-up archive ---------------------------------------------


@pytest.fixture
def small_archive(tmp_path):
    """Two SGML files, members out of order, NEWIDs interleaved across them."""
    home = tmp_path / "home"
    home.mkdir()
    write_archive(home / "reuters21578.tar.gz", {
        "README.txt": "not a story <REUTERS NEWID=\"99\">",
        "reut2-001.sgm": story(4, "<D>wheat</D><D>grain</D>") + story(9, "<D>trade</D>", split="TEST")
                         + story(5, "<D>lonely</D>"),
        "reut2-000.sgm": story(2, "<D>trade</D>") + story(3, "<D>grain</D>", split="TEST")
                         + story(8, "<D>wheat</D><D>trade</D>", split="TEST"),
    })
    return home


def test_load_corpus_reads_the_split_newid_ascending_as_a_multi_label_corpus(small_archive):
    train = load_corpus("reuters21578", "train", data_home=str(small_archive))
    assert train.multi_label and train.labels is None and train.source == "reuters21578:train"
    assert train.doc_ids == ["reuters/2", "reuters/4"]  # 5 has no R90 topic
    assert train.label_names == ["grain", "trade", "wheat"] and train.label_sets == [[1], [0, 2]]
    test = load_corpus("reuters21578", "test", data_home=str(small_archive))
    assert test.doc_ids == ["reuters/3", "reuters/8", "reuters/9"]
    assert [test.label_of(i) for i in range(3)] == [("grain",), ("trade", "wheat"), ("trade",)]
    assert list(iter_documents("reuters21578", "test", data_home=str(small_archive), limit=2)) == [
        ("reuters/3", "GRAIN UP\n\nGrain rose.", ("grain",)),
        ("reuters/8", "GRAIN UP\n\nGrain rose.", ("trade", "wheat"))]
    only_wheat = load_corpus("reuters21578", "test", ["wheat"], data_home=str(small_archive))
    assert only_wheat.doc_ids == ["reuters/8"] and only_wheat.label_sets == [[0]]
    assert load_corpus("reuters21578", "test", data_home=str(small_archive), limit=1).doc_ids == ["reuters/3"]


def test_reuters_options_and_archives_refused_in_one_line(small_archive, tmp_path, monkeypatch):
    home = str(small_archive)
    with pytest.raises(UserError, match="--split for reuters21578 is one of train, test; got 'dev'"):
        load_corpus("reuters21578", "dev", data_home=home)
    with pytest.raises(UserError, match="--remove applies only to --data 20newsgroups"):
        load_corpus("reuters21578", "train", remove=("headers",), data_home=home)
    with pytest.raises(UserError, match="--categories: unknown corn"):
        load_corpus("reuters21578", "train", ["corn"], data_home=home)
    import longdoc.corpus.sources

    nowhere = tmp_path / "nowhere"
    monkeypatch.setattr(longdoc.corpus.sources, "newsgroups_search_path", lambda data_home: [nowhere, tmp_path])
    with pytest.raises(UserError, match=rf"reuters21578.tar.gz is not in any of: {nowhere}, {tmp_path} \(nothing is "
                                        r"downloaded; get it from https://"):
        load_corpus("reuters21578", "train")
    (tmp_path / "reuters21578.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="cannot read .*reuters21578.tar.gz"):
        load_corpus("reuters21578", "train")
    write_archive(tmp_path / "reuters21578.tar.gz", {"README.txt": "hello"})
    with pytest.raises(UserError, match="no reut2-NNN.sgm files"):
        load_corpus("reuters21578", "train")
    write_archive(tmp_path / "reuters21578.tar.gz", {"reut2-000.sgm": story(1), "reut2-001.sgm": story(1)})
    with pytest.raises(UserError, match="NEWID 1 names two stories"):
        load_corpus("reuters21578", "train")


# --- the real archive ------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_ARCHIVE.exists(), reason=f"needs {REAL_ARCHIVE} (see ../shared/datasets/README.md)")
def test_the_real_archive():
    """The counts of stages/longdoc/corpus/reuters.py's docstring, and text without markup or control characters."""
    from longdoc.corpus.reuters import read_archive

    started = time.perf_counter()
    stories = read_archive(REAL_ARCHIVE)
    print(f"read {len(stories):,} stories in {time.perf_counter() - started:.2f} s")
    assert len(stories) == 21578 and [s.newid for s in stories] == list(range(1, 21579))
    modapte = {split: [s for s in stories if s.topics_attribute == "YES" and s.lewissplit == split]
               for split in ("TRAIN", "TEST")}
    assert {k: len(v) for k, v in modapte.items()} == {"TRAIN": 9603, "TEST": 3299}
    assert [sum(not s.topics for s in modapte[k]) for k in ("TRAIN", "TEST")] == [1828, 280]
    kept = {split: modapte_r90(stories, split) for split in ("train", "test")}
    assert (len(kept["train"]), len(kept["test"])) == (7770, 3019)
    assert sum(len(s.topics) >= 2 for s in kept["train"]) == 1192
    assert sum(len(s.topics) >= 2 for s in kept["test"]) == 436
    assert [sum(s.text_type == "UNPROC" for s in kept[k]) for k in ("train", "test")] == [47, 14]
    r90 = {t for s in kept["train"] for t in s.topics}
    assert len(r90) == 90 and r90 == {t for s in kept["test"] for t in s.topics}
    dropped = sorted(s.newid for s in modapte["TRAIN"] if s.topics and not set(s.topics) & r90)
    assert dropped == [4808, 4811, 8114, 12096, 12502]
    texts = [s.text for s in stories]
    assert sum(not text for text in texts) == 1  # NEWID 12793, outside the split
    assert not any("&#" in t or "&lt;" in t or "<BODY" in t or "Blah blah blah" in t for t in texts)
    assert not any(not c.isprintable() and c not in "\n\t" for t in texts for c in set(t))
    test = load_corpus("reuters21578", "test", data_home=str(SHARED_DATASETS))
    assert test.doc_ids[:4] == ["reuters/14826", "reuters/14828", "reuters/14829", "reuters/14832"]
    assert test.label_of(3) == ("corn", "grain", "rice", "rubber", "sugar", "tin", "trade")
    assert len(test.label_names) == 90
    assert test.texts[0].startswith("ASIAN EXPORTERS FEAR DAMAGE FROM U.S.-JAPAN RIFT\n\nMounting trade friction")
