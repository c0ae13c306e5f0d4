"""The operator's ceilings on one job: how long it may hold the enclave, how much work it is."""

from __future__ import annotations

from dataclasses import dataclass

from protocols.documents import JobTerms


@dataclass(frozen=True)
class JobLimits:
    """The operator's ceilings on one job (``detente coordinator serve --max-…``).

    ``max_seconds`` bounds how long a job may hold an enclave (terms may ask for
    less, never more); ``max_work`` bounds rounds × rows, the size of the
    training, checked when a job is proposed.
    """

    max_seconds: int = 3600
    max_work: int = 10_000_000_000

    def seconds_for(self, terms: JobTerms) -> int:
        asked = terms.max_seconds
        return self.max_seconds if asked is None else min(asked, self.max_seconds)
