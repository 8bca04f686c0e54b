"""Benchmarks: ``python -m bench`` prints every figure beside its anchor."""
