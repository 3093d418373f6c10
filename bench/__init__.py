"""Benchmark scripts (run them as ``python bench/<name>.py``); each prints a table."""
