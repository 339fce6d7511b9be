"""What a label name may be, stated once for every file and every consumer.

A corpus (`longdoc.corpus.sources`), a cache (`longdoc.cache.reader`) and a head
(`longdoc.heads.checkpoint`) all hand label names to the same consumers: report.md and
report.html, the PNG plots, CSV and JSONL rows, the terminal's tab-separated lines. Each
checks its names with `check_label_names` at its boundary. Reads and writes nothing.
"""

from __future__ import annotations

import unicodedata

from longdoc.runtime.errors import UserError

# No class name is longer; a longer "label" is a text in the label column, and a plot's
# axis or a table's column cannot show it.
MAX_LABEL_CHARS = 1000


def check_label_names(names, where: str) -> None:
    """What a class name may be, stated once for every consumer (report.md and report.html,
    the PNG plots, CSV and JSONL rows, the terminal's tab-separated lines); a UserError
    naming `where` and the name otherwise. A name is:

    - a non-empty string, not only whitespace;
    - valid UTF-8 (no lone surrogates);
    - printable (`str.isprintable`): no control character (a newline or tab would break
      one-line output), no invisible format character (zero-width spaces and joiners,
      right-to-left overrides: a name holding one looks like another name, or reorders
      the line around it), no line or paragraph separator;
    - at most MAX_LABEL_CHARS characters;
    - unique, also after Unicode normalisation (NFC): two classes shown alike would be
      scored as one.

    Everything else is shown as given: `$` (plots draw it as text, not as math), `<` and
    `&` (escaped in HTML and Markdown), right-to-left scripts, any language."""
    if not isinstance(names, (list, tuple)):
        raise UserError(f"{where}: the label names are not a list ({type(names).__name__})")
    seen = {}
    for name in names:
        if not isinstance(name, str):
            raise UserError(f"{where}: the label {str(name)[:80]!r} is not a string")
        shown = repr(name[:80]) + ("..." if len(name) > 80 else "")
        if not name.strip():
            raise UserError(f"{where}: the label is empty")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as error:
            raise UserError(f"{where}: the label holds a lone surrogate ({name[error.start:error.end]!r} at "
                            f"character {error.start})") from None
        if not name.isprintable():
            bad = next(c for c in name if not c.isprintable())
            raise UserError(f"{where}: the label {shown} holds a control character such as a newline or tab, "
                            f"or an invisible one (U+{ord(bad):04X} {unicodedata.name(bad, 'unnamed')})")
        if len(name) > MAX_LABEL_CHARS:
            raise UserError(f"{where}: the label {shown} is {len(name):,} characters long, more than the "
                            f"{MAX_LABEL_CHARS:,} a class name may have (is a text in the label field?)")
        key = unicodedata.normalize("NFC", name)
        if key in seen:
            same = "" if seen[key] == name else " (in another Unicode normalisation)"
            raise UserError(f"{where}: the label {shown} appears twice{same}")
        seen[key] = name
