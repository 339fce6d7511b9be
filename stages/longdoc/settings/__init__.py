"""How a setting is declared once (`fields`: a dataclass field that is also a command-line
option), and the model settings every file records about itself (`model`: window geometry,
precisions, window vectors, poolings, `HeadConfig`). Torch-free.
"""
