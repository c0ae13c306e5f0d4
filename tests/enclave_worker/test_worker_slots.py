"""The worker's job slots alone: slots, memory reservations, duplicates and draining."""

from __future__ import annotations

import threading

import pytest

from enclave_worker.slots import MIB, JobSlots
from protocols.errors import WorkerBusy


def test_slots_hold_jobs_up_to_their_count_and_free_them_when_done() -> None:
    slots = JobSlots(2, None)
    with slots.reserve("a", 0), slots.reserve("b", 0):
        assert slots.status().job_ids == ("a", "b")
        with pytest.raises(WorkerBusy, match=r"all 2 job slots .*\(\[resources\] processes"):
            with slots.reserve("c", 0):
                pass
    assert slots.status().job_ids == ()
    with slots.reserve("c", 0):  # free again
        assert slots.status().job_ids == ("c",)


def test_a_job_id_already_running_is_refused() -> None:
    slots = JobSlots(4, None)
    with slots.reserve("a", 0):
        with pytest.raises(WorkerBusy, match="job 'a' is already running"):
            with slots.reserve("a", 0):
                pass


def test_memory_reservations_stay_within_the_limit_together() -> None:
    slots = JobSlots(4, 1000 * MIB)
    with slots.reserve("a", 600 * MIB):
        assert slots.status().reserved_bytes == 600 * MIB
        with pytest.raises(WorkerBusy) as busy:
            with slots.reserve("b", 500 * MIB):
                pass
        text = str(busy.value)
        assert "job 'b' needs an estimated 500.0 MiB, but the 1 job running now hold 600.0" in text
        assert "memory limit of 1,000.0 MiB ([resources] memory_mb in libos.toml)" in text
        with slots.reserve("c", 400 * MIB):  # exactly the rest fits
            pass
        # Too large even alone: left to the job process's own refusal, which names the limit.
    with slots.reserve("huge", 2000 * MIB):
        assert slots.status().job_ids == ("huge",)


def test_a_draining_worker_takes_no_job_and_waits_for_the_running_ones() -> None:
    slots = JobSlots(2, None)
    release = threading.Event()

    def job() -> None:
        with slots.reserve("running", 0):
            release.wait(10)

    runner = threading.Thread(target=job)
    runner.start()
    try:
        while not slots.status().job_ids:
            threading.Event().wait(0.01)
        slots.drain()
        assert slots.status().draining
        with pytest.raises(WorkerBusy, match="stopping and takes no new job"):
            with slots.reserve("new", 0):
                pass
        assert not slots.wait_idle(0.05)
        release.set()
        assert slots.wait_idle(10)
    finally:
        release.set()
        runner.join(10)
