"""Text to window vectors: where windows are cut (`windows`), loading an encoder with its
device, precision and fingerprint (`encoder`), its int8 Linear layers on CPUs (`int8`), the
[CLS]-only last layer (`cls_forward`), and length-sorted, token-budgeted batches through it
(`batches`).
"""
