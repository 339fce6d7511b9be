"""Stage one's job, shared by `embed` (one process) and `distributed` (torchrun): checks,
loading and block-by-block embedding (`job`), and the shards of a torchrun run (`shards`).
"""
