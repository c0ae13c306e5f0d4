"""The enclave worker: the trusted code of a Detente enclave image, run by ``detente libos run``.

``main`` is the image's entry point; ``identity`` holds the enclave's keys
(sealed, attested, RA-TLS); ``service`` is the Enclave gRPC edge; ``jobs``
checks consent and runs a job (join, training, release); ``job_process``
runs each job in a child process of its own, ``slots`` bounds how many run
at once and the memory they plan to use; ``models`` keeps the sealed models,
answers their queries and retires them; ``withdrawals`` keeps the data sets
their owners withdrew (no job may open them again); ``provisioning`` hands
the identity keys to another worker of the same build (``--join``).

Nothing is imported here: each job process imports only what it runs.
"""

__all__ = [
    "identity",
    "job_process",
    "jobs",
    "main",
    "models",
    "provisioning",
    "service",
    "slots",
    "withdrawals",
]
