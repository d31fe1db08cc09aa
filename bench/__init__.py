"""Benchmarks: speed and memory measured against named baselines."""
