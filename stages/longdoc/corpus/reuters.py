"""Reuters-21578 (Distribution 1.0): the ModApte "R90" split, read straight from the
original `reuters21578.tar.gz`.

Reads the archive's 22 SGML files (`reuters21578/reut2-NNN.sgm`) in memory, one member
at a time, with the standard library alone (1 to 2 s for all 21,578 stories on 2 busy cores);
writes nothing. `longdoc.corpus.sources` makes a multi-label `Corpus` of what `load_reuters`
returns (`--data reuters21578 --split train|test`), and looks for the archive where it
looks for 20 Newsgroups; nothing is downloaded.

The split, as the collection's README.txt defines ModApte (section VIII.B) and as the
literature's "R90" narrows it:

* a training story has `LEWISSPLIT="TRAIN"` and `TOPICS="YES"`, a test story
  `LEWISSPLIT="TEST"` and `TOPICS="YES"`;
* its labels are the `<D>` entries of its `<TOPICS>` element; the R90 topics are the 90
  that label at least one training and at least one test story (118 of the 135 valid
  topics occur in the split: 25 in training stories only, 3 in test stories only);
* stories left with no R90 topic are dropped, and so are stories without text.

What that gives in this archive (`tests/corpus/test_reuters.py::test_the_real_archive` holds it):

| stories | train | test |
| --- | --- | --- |
| ModApte (LEWISSPLIT and TOPICS="YES") | 9,603 | 3,299 |
| dropped: an empty TOPICS element | 1,828 | 280 |
| dropped: topics outside R90 only (NEWIDs 4808, 4811, 8114: inventories; 12096: stg; 12502: wool) | 5 | 0 |
| dropped: no text | 0 | 0 |
| **kept** | **7,770** | **3,019** |
| of those, with 2 or more topics | 1,192 | 436 |
| of those, `TYPE="UNPROC"` (no TITLE, no BODY) | 47 | 14 |

Topics per kept story: 1.234 on average (at most 15) in train, 1.240 (at most 14) in test.

Against other counts. The literature (Yang and Liu 1999; the "ApteMod" copy that NLTK
ships) says 7,769 / 3,019 with the same 90 topics: the same test set, and one training
story fewer, which the ModApte definition above does not explain and which cannot be
named here without ApteMod's list of files. The shared datasets README says 7,723 /
3,005 because it counted the 47 + 14 UNPROC stories as stories without text: their text
is not in a TITLE or a BODY but stands in TEXT itself (money-supply tables, freight
reports, corrections), and this reader takes it, as the collection's README asks for
the test set ("Please do NOT screen out any of the 3,299 documents"). The only story of
the whole collection without any text (NEWID 12793, an empty UNPROC) is TOPICS="NO",
outside the split.

Text: the TITLE, a blank line, then the BODY; a story with neither (UNPROC) takes its
whole TEXT. A BRIEF story is a headline in TITLE followed by asterisks and Reuters'
placeholder "Blah blah blah." outside any element: it is its TITLE. DATELINE and AUTHOR
are left out (metadata, not story). Topic names have their white space collapsed.

The SGML is old and irregular, and this reader assumes only what it checks: bytes are
decoded as latin-1 (the collection is 7-bit ASCII but for one stray 0xFC byte in NEWID
17980, read as "u" with umlaut); CRLF and CR line ends become LF; each `<REUTERS ...>`
element is cut out on its own (one left unclosed ends at the next); an element ends at
its end tag, or without one where the next element of its parent begins (an unclosed
TOPICS does not swallow PLACES); tags left inside a TITLE or BODY are removed; numeric
entities and the five SGML named ones (`&#3;`, `&lt;`, `&amp;`) are decoded after tags
are removed (so `&lt;IBM>` is the text "<IBM>", as in 11,000 stories); control
characters are deleted, tabs and newlines excepted: every story's text begins with
`&#2;` and ends with `&#3;`, and wire-service noise (`&#1;`, `&#5;`, `&#22;`, `&#31;`,
`&#127;`, `&#27;`, `&#30;`) sits in UNKNOWN elements and now and then in a body. A
`<REUTERS>` element without a numeric NEWID, or a NEWID given twice, is a damaged
archive: one line names it.

Order: NEWID ascending. NEWIDs were assigned in chronological order (README VI.A) and
are the order of the files, so the order needs no seed, is the one a reader of the
archive sees, and `--val-split latest` (ids compared as numbers) holds out the latest
training stories, as the ModApte test set is later than its training set (from April
8, 1987 on). Document ids are `reuters/NEWID`.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from longdoc.runtime.errors import UserError

REUTERS = "reuters21578"
REUTERS_ARCHIVE = "reuters21578.tar.gz"
REUTERS_SPLITS = ("train", "test")
# Where to get it: the UCI KDD archive's copy of Distribution 1.0.
REUTERS_SOURCE = "https://kdd.ics.uci.edu/databases/reuters21578/reuters21578.tar.gz"
_LEWISSPLIT = {"train": "TRAIN", "test": "TEST"}

_MEMBER = re.compile(r"(?:^|/)reut2-\d{3}\.sgm$")
_REUTERS_OPEN = re.compile(r"<REUTERS\b([^>]*)>", re.IGNORECASE)
_REUTERS_CLOSE = re.compile(r"</REUTERS\s*>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"""([A-Za-z][\w.-]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_ENTITY = re.compile(r"&(?:#(\d+)|#[xX]([0-9a-fA-F]+)|(lt|gt|amp|quot|apos));")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
# Control characters (C0, DEL, C1) but tab and newline: junk on a wire, never text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# The children of REUTERS and of TEXT (lewis.dtd): an unclosed element ends at the
# next sibling's start tag.
_STORY_PARTS = ("DATE", "MKNOTE", "TOPICS", "PLACES", "PEOPLE", "ORGS", "EXCHANGES", "COMPANIES", "UNKNOWN",
                "TEXT")
_TEXT_PARTS = ("TITLE", "BODY", "AUTHOR", "DATELINE")


@dataclass(frozen=True)
class Story:
    """One `<REUTERS>` element: the attributes the split needs, its topics, its text."""

    newid: int
    lewissplit: str  # TRAIN, TEST or NOT-USED
    topics_attribute: str  # YES, NO or BYPASS: whether the raw data had topics (README VI.A)
    topics: tuple[str, ...]  # the <D> entries of <TOPICS>, sorted, without duplicates
    text: str  # TITLE, a blank line, BODY; "" when the story has none
    text_type: str  # NORM, BRIEF or UNPROC


def _decode(raw: str) -> str:
    """Character data as text: entities decoded, control characters deleted."""
    def entity(match: re.Match) -> str:
        decimal, hexadecimal, name = match.groups()
        if name:
            return _NAMED[name]
        code = int(decimal) if decimal else int(hexadecimal, 16)
        return chr(code) if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else ""
    return _CONTROL.sub("", _ENTITY.sub(entity, raw))


def _content(markup: str) -> str:
    """An element's text: inner tags removed, then entities decoded, ends stripped."""
    return _decode(_TAG.sub("", markup)).strip()


def _element(markup: str, name: str, siblings: tuple[str, ...]) -> tuple[str, dict, int, int] | None:
    """The first `<name ...>` element of `markup`: (inner markup, attributes, start, end
    of the whole element), or None. It ends at its end tag (so it may hold other tags);
    without one, where the next of `siblings` starts, or at the end of `markup`."""
    opening = re.search(rf"<{name}\b([^>]*)>", markup, re.IGNORECASE)
    if opening is None:
        return None
    attributes = _attributes(opening.group(1))
    closing = re.compile(rf"</{name}\s*>", re.IGNORECASE).search(markup, opening.end())
    if closing is not None:
        return markup[opening.end():closing.start()], attributes, opening.start(), closing.end()
    sibling = re.compile(rf"<(?:{'|'.join(siblings)})\b[^>]*>", re.IGNORECASE).search(markup, opening.end())
    end = sibling.start() if sibling else len(markup)
    return markup[opening.end():end], attributes, opening.start(), end


def _attributes(markup: str) -> dict[str, str]:
    return {m.group(1).upper(): next(v for v in m.groups()[1:] if v is not None).strip()
            for m in _ATTRIBUTE.finditer(markup)}


def _topics(story: str) -> tuple[str, ...]:
    found = _element(story, "TOPICS", _STORY_PARTS)
    if found is None:
        return ()
    entries = re.findall(r"<D\b[^>]*>(.*?)(?=</D\s*>|<D\b|\Z)", found[0], re.IGNORECASE | re.DOTALL)
    return tuple(sorted({" ".join(_content(entry).split()) for entry in entries} - {""}))


def _story_text(story: str) -> tuple[str, str]:
    """(text, TYPE) of a story's TEXT element."""
    text = _element(story, "TEXT", _STORY_PARTS)
    if text is None:
        return "", "NORM"
    inner, attributes, _, _ = text
    text_type = attributes.get("TYPE", "NORM").upper()
    title = _element(inner, "TITLE", _TEXT_PARTS)
    body = _element(inner, "BODY", _TEXT_PARTS)
    if title is None and body is None:  # UNPROC: the whole TEXT is the story
        return _content(inner), text_type
    parts = (_content(title[0]) if title else "", _content(body[0]) if body else "")
    return "\n\n".join(part for part in parts if part), text_type


def parse_sgml(raw: bytes, where: str = "") -> list[Story]:
    """Every `<REUTERS>` element of one SGML file, in file order."""
    markup = raw.decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")
    opens = list(_REUTERS_OPEN.finditer(markup))
    stories = []
    for n, opening in enumerate(opens):
        end = opens[n + 1].start() if n + 1 < len(opens) else len(markup)
        closing = _REUTERS_CLOSE.search(markup, opening.end(), end)
        story = markup[opening.end():closing.start() if closing else end]
        attributes = _attributes(opening.group(1))
        newid = attributes.get("NEWID", "")
        if not re.fullmatch(r"[0-9]+", newid):
            raise UserError(f"{where}: <REUTERS> element {n + 1} has no numeric NEWID ({newid!r}); "
                            f"the archive is damaged")
        text, text_type = _story_text(story)
        stories.append(Story(int(newid), attributes.get("LEWISSPLIT", "").upper(),
                             attributes.get("TOPICS", "").upper(), _topics(story), text, text_type))
    return stories


def read_archive(archive: Path) -> list[Story]:
    """Every story of the archive's `reut2-NNN.sgm` files, NEWID ascending."""
    stories = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isfile() and _MEMBER.search(member.name):
                    stories += parse_sgml(tar.extractfile(member).read(), f"{archive} {member.name}")
    except (OSError, tarfile.TarError, EOFError) as error:
        raise UserError(f"cannot read {archive}: {error}") from None
    if not stories:
        raise UserError(f"{archive}: no reut2-NNN.sgm files with <REUTERS> stories; is it Reuters-21578?")
    stories.sort(key=lambda s: s.newid)
    twice = sorted({a.newid for a, b in zip(stories, stories[1:]) if a.newid == b.newid})
    if twice:
        raise UserError(f"{archive}: NEWID {twice[0]} names two stories; the archive is damaged")
    return stories


def modapte_r90(stories: list[Story], split: str) -> list[Story]:
    """The stories of `split` in ModApte R90 (see the module docstring), their topics
    narrowed to the R90 ones."""
    in_split = {name: [s for s in stories if s.topics_attribute == "YES" and s.lewissplit == value]
                for name, value in _LEWISSPLIT.items()}
    seen = [{t for s in chosen for t in s.topics} for chosen in in_split.values()]
    r90 = set.intersection(*seen)
    kept = []
    for story in in_split[split]:
        topics = tuple(t for t in story.topics if t in r90)
        if topics and story.text:
            kept.append(Story(story.newid, story.lewissplit, story.topics_attribute, topics, story.text,
                              story.text_type))
    return kept


def find_archive(places: list[Path]) -> Path:
    """The first `reuters21578.tar.gz` in `places`; a UserError naming them if none."""
    for place in places:
        if (place / REUTERS_ARCHIVE).is_file():
            return place / REUTERS_ARCHIVE
    raise UserError(f"{REUTERS_ARCHIVE} is not in any of: {', '.join(str(p) for p in places)} "
                    f"(nothing is downloaded; get it from {REUTERS_SOURCE} and put it in one of them)")


def load_reuters(split: str, places: list[Path]) -> tuple[list[str], list[str], list[tuple[str, ...]]]:
    """(doc ids, texts, topic sets) of ModApte R90 `split`, NEWID ascending."""
    if split not in REUTERS_SPLITS:
        raise UserError(f"--split for {REUTERS} is one of {', '.join(REUTERS_SPLITS)}; got {split!r}")
    stories = modapte_r90(read_archive(find_archive(places)), split)
    return [f"reuters/{s.newid}" for s in stories], [s.text for s in stories], [s.topics for s in stories]
