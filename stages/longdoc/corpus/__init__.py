"""Corpora: what `--data` names, read into documents with ids, texts and labels
(`sources`), the names of the built-in ones (`builtin`). Reads, never writes.
"""
