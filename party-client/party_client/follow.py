"""Following a job live: its state, rounds and other events as the coordinator records them.

The coordinator offers no push, so :func:`follow` polls ``GetJob``: quickly
while events arrive, less often while none do, never more than
:data:`MAX_INTERVAL` seconds apart, until the job has finished. Each poll
verifies the job's terms again (:func:`~party_client.job_control.job_view`).

Released metrics are not among the events: the enclave encrypts them to the
recipients, who read them with `detente party results`; the events say which
round the enclave has reached, and when it checkpoints, fails or finishes.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass

from party_client.home import PartyHome
from party_client.job_control import FINISHED, JobView, job_view
from party_client.remote import Coordinator, RemoteEvent, connected

MIN_INTERVAL = 0.25  # seconds between polls while events arrive
MAX_INTERVAL = 5.0  # and at most this long while none do


@dataclass(frozen=True)
class JobUpdate:
    """One thing seen while following: a new ``event`` of the job (None for the last update,
    the job as it ended) and the job as fetched with it."""

    job: JobView
    event: RemoteEvent | None

    @property
    def finished(self) -> bool:
        return self.event is None


def follow(
    home: PartyHome,
    job_id: str,
    *,
    interval: float = MIN_INTERVAL,
    max_interval: float = MAX_INTERVAL,
    remote: Coordinator | None = None,
) -> Generator[JobUpdate, None, None]:
    """Yield each event of the job as it arrives (those already recorded first), then one
    update with ``event=None`` once the job has finished (succeeded, failed, cancelled or
    rejected), and stop.

    The wait between polls starts at ``interval`` and doubles while nothing new
    arrives, up to ``max_interval`` (both bounded to [0.05, 60] seconds).
    Closing the iterator (or Ctrl-C in the loop around it) stops following;
    the job goes on.
    """
    low = min(max(interval, 0.05), 60.0)
    high = min(max(max_interval, low), 60.0)
    wait = low
    seen = 0
    with connected(home, remote) as coordinator:
        while True:
            job = job_view(coordinator.job(job_id), job_id)
            new = job.events[seen:]
            seen = len(job.events)
            for event in new:
                yield JobUpdate(job, event)
            if job.state in FINISHED:
                yield JobUpdate(job, None)
                return
            wait = low if new else min(wait * 2, high)
            time.sleep(wait)
