"""The names of the corpora `--data` knows by name, beside folders and .csv/.jsonl files, and
the one default of how a corpus file spells label sets.

A module of its own, with no imports, so the command-line settings (`longdoc.configs`) can
offer these without loading any corpus code. Reads and writes nothing.
"""

NEWSGROUPS = "20newsgroups"  # 20 Newsgroups, the bydate split (longdoc.corpus.sources)
REUTERS = "reuters21578"  # Reuters-21578, ModApte R90 label sets (longdoc.corpus.reuters)
BUILT_IN_CORPORA = (NEWSGROUPS, REUTERS)

# Between the labels of a CSV `labels` field: "|" is rare inside label names, unlike
# "," or ";", which spreadsheet tools also take for field separators.
LABEL_SEP = "|"
