"""The HDF5 window cache, the one file both halves share: its format and reference reader
(`reader`), its writer with the resumable work area (`writer`), term counts on disk
(`term_files`). docs/cache-format.md documents the format.
"""
