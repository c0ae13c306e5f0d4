"""Scripted experiments, benchmarks and the three-party demo."""
