"""Benchmarks of the core path (issue #2 §12). Run `python -m bench.core`; see README.md."""
