"""Shared foundations for every stage: file I/O (local and gs://), configuration, metrics."""
