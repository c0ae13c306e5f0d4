"""The Detente coordinator: an untrusted relay, scheduler and ciphertext store.

It is trusted for availability only (DESIGN.md §1): it keeps ciphertext and
signed statements, checks what it can as a convenience, and leaves every
decision that matters to the enclave, which re-checks everything itself.
"""
