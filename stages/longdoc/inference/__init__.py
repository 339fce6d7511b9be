"""Classifying new text with a trained head: the head, its encoder and window geometry together."""
