"""memq: a distributed job queue for GPU clusters whose nodes share a filesystem."""

__version__ = "0.1.0"
