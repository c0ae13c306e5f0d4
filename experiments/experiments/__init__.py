"""Benchmarks against plain baselines (the demo and its cluster harness live in detente).

Run each with ``python -m experiments.NAME`` from a checkout; each prints its
figures and the ratio to its plain baseline.
"""

__all__ = [
    "bench_attestation",
    "bench_efs",
    "bench_hpke",
    "bench_libos",
    "bench_party_upload",
    "bench_ratls",
    "bench_scale",
    "bench_training",
    "bench_upload",
    "scale_flows",
]
