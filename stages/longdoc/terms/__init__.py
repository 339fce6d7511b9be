"""The lexical signal beside the windows: each document's hashed term counts (`hashing`)
and their TF-IDF weighting learned from training documents (`tfidf`).
"""
