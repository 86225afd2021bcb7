"""Scores kept for reuse: the in-process pair cache and the store replicas share."""
