"""The names of the corpora `--data` knows by name, beside folders and .csv/.jsonl files.

A module of its own, with no imports, so the command-line settings (`longdoc.configs`) can
offer the names without loading any corpus code. Reads and writes nothing.
"""

NEWSGROUPS = "20newsgroups"  # 20 Newsgroups, the bydate split (longdoc.corpus.sources)
