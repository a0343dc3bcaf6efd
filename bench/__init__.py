"""Benchmarks and the small-scale reproduction; see BENCHMARKS.md."""
