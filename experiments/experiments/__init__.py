"""Benchmarks against plain baselines (the demo and its cluster harness live in detente)."""
