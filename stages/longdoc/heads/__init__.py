"""Stage two's model: the poolings (`pooling`), the head with its linear branch (`head`),
batches of cached documents for it (`batches`), the head file (`checkpoint`).
"""
