"""Corpora: what `--data` names, read into documents with ids, texts and labels or label sets
(`sources`), Reuters-21578 from its original SGML (`reuters`), and the names of the built-in
ones (`builtin`). Reads, never writes.
"""
