"""Detente's LibOS: measured enclave images, their start, and what code inside an enclave sees.

Host side: ``config`` (``libos.toml``), ``image`` (build, measure, verify),
``launcher`` (start an image), ``gramine`` (export a Gramine manifest) and
``cli`` (``detente libos``). In-enclave start: ``enclave_start``,
``verified_imports``, ``limits``, ``egress`` and ``logs``. What enclave code
uses: ``runtime`` (measurement, quotes, sealing, encrypted mounts), ``efs``
(the encrypted file system), ``process`` (child processes of the enclave) and
``sealing``; ``sim`` and ``counter`` are the SIMULATION platform and its
monotonic counters. docs/libos.md describes each.

This package imports nothing when it is imported: an enclave imports
``libos`` before its verifying import finder is installed, so every module
is imported by name (``from libos import runtime``) once that finder checks it.
"""

__all__ = [
    "cli",
    "config",
    "counter",
    "efs",
    "egress",
    "enclave_start",
    "gramine",
    "image",
    "launcher",
    "limits",
    "logs",
    "process",
    "runtime",
    "sealing",
    "sim",
    "verified_imports",
]
