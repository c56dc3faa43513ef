"""Benchmarks and the soak test; run as scripts (`python bench/soak.py`), imported by tests."""
